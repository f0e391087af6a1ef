"""The WSGI and ASGI middleware, plain and through the Flask/Starlette/Django integrations, on real
loopback servers (werkzeug, uvicorn): the SERVER span continues the caller's trace, is named
``{method} {route}``, is an error only for 5xx, and records ``http.server.*``; two services in a row
make one trace SERVER -> CLIENT -> SERVER."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
from http_helpers import wait_spans
from http_servers import serve_asgi, serve_wsgi
from opentelemetry.trace import SpanKind, StatusCode

from instrument.asgi import InstrumentMiddleware as AsgiMiddleware
from instrument.wsgi import InstrumentMiddleware as WsgiMiddleware

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def fetch(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    """A raw request with http.client (not instrumented): exactly the headers given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers={"User-Agent": "probe/1", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


def server_span(tel: Any) -> Any:
    (span,) = wait_spans(tel, 1, SpanKind.SERVER)
    return span


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    status = {"/missing": "404 Not Found", "/fail": "503 Service Unavailable"}.get(path, "200 OK")
    start_response(status, [("Content-Type", "text/plain"), ("X-Response-Id", "r-9")])
    return [b"hello ", b"world"]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    status = {"/missing": 404, "/fail": 503}.get(path, 200)
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture(params=["wsgi", "asgi"])
def plain(request):  # type: ignore[no-untyped-def]
    """A plain app wrapped in our middleware by hand, served for real; yields the port."""
    if request.param == "wsgi":
        with serve_wsgi(WsgiMiddleware(wsgi_app)) as port:
            yield port
    else:
        with serve_asgi(AsgiMiddleware(asgi_app)) as port:
            yield port


def _count(tel: Any, attributes: dict[str, Any]) -> float:
    """Requests counted so far by the server histogram with exactly these attributes (points are cumulative)."""
    return sum(p.value for p in tel.metric_points("http.server.request.duration") if p.attributes == attributes)


def test_server_span_continues_the_callers_trace(tel, plain):  # type: ignore[no-untyped-def]
    expected = {"http.request.method": "GET", "url.scheme": "http", "http.response.status_code": 200}
    before = _count(tel, expected)
    status, body, _ = fetch(plain, "/hello?q=1&token=t0k", headers={"traceparent": TRACEPARENT})
    assert status == 200 and body.startswith(b"hello")
    span = server_span(tel)
    assert span.kind == SpanKind.SERVER
    assert span.name == "GET"  # no framework: no route
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN and span.parent.is_remote
    attrs = dict(span.attributes)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/hello"
    assert attrs["url.query"] == "q=1&token=REDACTED"
    assert attrs["url.scheme"] == "http"
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == plain
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user_agent.original"] == "probe/1"
    assert attrs["http.response.status_code"] == 200
    assert "error.type" not in attrs and span.status.status_code == StatusCode.UNSET
    assert _count(tel, expected) == before + 1
    assert tel.metric_total("http.server.active_requests") == 0


def test_4xx_is_not_an_error_on_a_server_span(tel, plain):  # type: ignore[no-untyped-def]
    assert fetch(plain, "/missing")[0] == 404
    span = server_span(tel)
    assert span.attributes["http.response.status_code"] == 404
    assert "error.type" not in span.attributes and span.status.status_code == StatusCode.UNSET


def test_5xx_is_an_error(tel, plain):  # type: ignore[no-untyped-def]
    assert fetch(plain, "/fail")[0] == 503
    span = server_span(tel)
    assert span.attributes["error.type"] == "503" and span.status.status_code == StatusCode.ERROR
    assert tel.metric_points("http.server.request.duration", error__type="503")


def test_exception_is_recorded(tel, plain):  # type: ignore[no-untyped-def]
    assert fetch(plain, "/boom")[0] == 500
    span = server_span(tel)
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes["http.response.status_code"] == 500
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_a_new_trace_without_traceparent(tel, plain):  # type: ignore[no-untyped-def]
    fetch(plain, "/hello")
    assert server_span(tel).parent is None


def test_response_headers_captured_when_listed(tel, settings_env):  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_CAPTURE_RESPONSE_HEADERS": "x-response-id",
                  "INSTRUMENT_CAPTURE_REQUEST_HEADERS": "cookie,x-tenant"})
    with serve_wsgi(WsgiMiddleware(wsgi_app)) as port:
        fetch(port, "/hello", headers={"Cookie": "session=s3cr3t", "X-Tenant": "t1"})
    attrs = dict(server_span(tel).attributes)
    assert attrs["http.response.header.x-response-id"] == ("r-9",)
    assert attrs["http.request.header.cookie"] == ("REDACTED",)
    assert attrs["http.request.header.x-tenant"] == ("t1",)


def test_server_fault_answers_instead_of_the_app(tel, plain):  # type: ignore[no-untyped-def]
    from instrument.faults import inject

    with inject("server:/hello: status 503 retry-after=7s"):
        status, _, headers = fetch(plain, "/hello")
    assert status == 503 and headers["retry-after"] == "7"
    span = server_span(tel)
    assert span.attributes["http.response.status_code"] == 503
    assert span.status.status_code == StatusCode.ERROR
    assert fetch(plain, "/hello")[0] == 200  # the scope is gone: the app answers again


# -- frameworks through the registry ------------------------------------------------------------


def test_flask_route_and_one_span_with_a_hand_added_middleware(tel, patched):  # type: ignore[no-untyped-def]
    import flask

    patched("flask")
    app = flask.Flask("orders")

    @app.route("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        if order_id == 0:
            raise ValueError("no order 0")
        return f"order {order_id}"

    app.wsgi_app = WsgiMiddleware(app.wsgi_app)  # type: ignore[method-assign] - also added by hand: still one span
    with serve_wsgi(app) as port:
        assert fetch(port, "/orders/7", headers={"traceparent": TRACEPARENT})[0] == 200
        span = server_span(tel)
        assert span.name == "GET /orders/<int:order_id>"
        assert span.attributes["http.route"] == "/orders/<int:order_id>"
        assert tel.metric_points("http.server.request.duration", http__route="/orders/<int:order_id>")
        tel.clear()
        assert fetch(port, "/orders/0")[0] == 500  # Flask turns the exception into a 500 response
        span = server_span(tel)
        assert span.name == "GET /orders/<int:order_id>" and span.attributes["error.type"] == "500"
        tel.clear()
        assert fetch(port, "/nowhere")[0] == 404
        assert server_span(tel).name == "GET"


def test_starlette_route_with_mount(tel, patched):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    patched("starlette")

    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse("user " + request.path_params["user_id"])

    app = Starlette(routes=[Route("/users/{user_id}", user), Mount("/api", routes=[Route("/items/{item}", user)])])
    with serve_asgi(AsgiMiddleware(app)) as port:  # hand-added too: still one span
        assert fetch(port, "/users/5")[0] == 200
        assert server_span(tel).name == "GET /users/{user_id}"
        tel.clear()
        fetch(port, "/api/items/3")
        assert server_span(tel).attributes["http.route"] == "/api/items/{item}"


def test_two_services_one_trace(tel, patched):  # type: ignore[no-untyped-def]
    """WSGI (Flask) calls ASGI (Starlette) with httpx: SERVER -> CLIENT -> SERVER, parents correct."""
    import flask
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    for name in ("flask", "starlette", "httpx"):
        patched(name)

    async def stock(request: Any) -> JSONResponse:
        return JSONResponse({"sku": request.path_params["sku"], "baggage": request.headers.get("baggage")})

    inventory = Starlette(routes=[Route("/stock/{sku}", stock)])
    with serve_asgi(inventory) as inventory_port:
        shop = flask.Flask("shop")

        @shop.route("/buy/<sku>")
        def buy(sku: str) -> Any:
            return httpx.get(f"http://127.0.0.1:{inventory_port}/stock/{sku}").json()

        with serve_wsgi(shop) as shop_port:
            status, body, _ = fetch(shop_port, "/buy/abc", headers={"traceparent": TRACEPARENT,
                                                                      "baggage": "tenant=t1"})
    assert status == 200 and b'"tenant=t1"' in body  # baggage travelled too
    spans = wait_spans(tel, 3)
    by_kind = {(s.kind, s.name): s for s in spans}
    shop_span = by_kind[(SpanKind.SERVER, "GET /buy/<sku>")]
    call = by_kind[(SpanKind.CLIENT, "GET")]
    inventory_span = by_kind[(SpanKind.SERVER, "GET /stock/{sku}")]
    assert {f"{s.context.trace_id:032x}" for s in spans} == {CALLER_TRACE}
    assert f"{shop_span.parent.span_id:016x}" == CALLER_SPAN
    assert call.parent.span_id == shop_span.context.span_id
    assert inventory_span.parent.span_id == call.context.span_id
    assert call.attributes["server.port"] == inventory_port


def _active_sum(tel: Any) -> tuple[float | None, bool | None]:
    """The served-requests-in-flight sum for GET over http as exported now: (value, is_monotonic)."""
    data = tel._parts["reader"].get_metrics_data()  # noqa: SLF001 - the raw SDK points, for is_monotonic
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "http.server.active_requests":
                    for p in metric.data.data_points:
                        if dict(p.attributes) == {"http.request.method": "GET", "url.scheme": "http"}:
                            return p.value, metric.data.is_monotonic
    return None, None


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_active_requests_counts_a_request_while_it_runs_and_reports_zero_after(tel, kind):  # type: ignore[no-untyped-def]
    during: list[tuple[float | None, bool | None]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        during.append(_active_sum(tel))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def aapp(scope: Any, receive: Any, send: Any) -> None:
        during.append(_active_sum(tel))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    serve = serve_wsgi(WsgiMiddleware(app)) if kind == "wsgi" else serve_asgi(AsgiMiddleware(aapp))
    with serve as port:
        assert fetch(port, "/")[0] == 200
    wait_spans(tel, 1, SpanKind.SERVER)
    assert during == [(1, False)]  # an up-down sum, one request in flight
    assert _active_sum(tel) == (0, False)  # back to zero, and still reported (as the SDK's own sum would be)


def test_a_sampled_out_request_is_counted_and_its_span_attributes_never_built(tel, plain, monkeypatch):  # type: ignore[no-untyped-def]
    """Sampled out (OTEL_TRACES_SAMPLER=always_off): the duration histogram and active requests as ever, no
    span, and the span's per-request attributes not even built (a sampled request's are, once)."""
    import time

    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from instrument import _instruments, _server

    built: list[str] = []
    real = _server._request_attributes
    monkeypatch.setattr(_server, "_request_attributes", lambda *a: built.append(a[3]) or real(*a))
    tracer = _instruments.tracer()
    tracer = getattr(tracer, "_real_tracer", None) or tracer
    sampler = tracer.sampler
    tracer.sampler = ALWAYS_OFF
    try:
        expected = {"http.request.method": "GET", "url.scheme": "http", "http.response.status_code": 200}
        before = _count(tel, expected)
        assert fetch(plain, "/hello", headers={"traceparent": TRACEPARENT})[0] == 200
        deadline = time.monotonic() + 5
        while _count(tel, expected) == before and time.monotonic() < deadline:  # recorded when the body closes
            time.sleep(0.01)
        assert _count(tel, expected) == before + 1
        assert tel.metric_total("http.server.active_requests") == 0
        assert not tel.spans() and built == []
    finally:
        tracer.sampler = sampler
    fetch(plain, "/sampled", headers={"traceparent": TRACEPARENT})
    assert server_span(tel).attributes["url.path"] == "/sampled" and built == ["/sampled"]


def test_a_flask_app_gets_wrappers_of_its_own_and_unpatching_takes_them_away(tel):  # type: ignore[no-untyped-def]
    """The flask integration's per-app wrappers (a request does not bind class-level wrappers to the app):
    middleware added after the first request still wraps ours (one span), and unpatching leaves the app bare."""
    import flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from instrument import integrations

    assert integrations.patch("flask")
    try:
        app = flask.Flask("per-app")
        app.add_url_rule("/items/<int:item_id>", "item", lambda item_id: f"item {item_id}")
        assert app.test_client().get("/items/1").status_code == 200
        assert server_span(tel).name == "GET /items/<int:item_id>"
        assert {"wsgi_app", "dispatch_request"} <= set(vars(app))  # its own, made at its first request
        app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
        tel.clear()
        assert app.test_client().get("/items/2").status_code == 200
        assert server_span(tel).attributes["http.route"] == "/items/<int:item_id>"
    finally:
        integrations.unpatch("flask")
    assert "dispatch_request" not in vars(app)
    other = flask.Flask("after")
    other.add_url_rule("/x", "x", lambda: "x")
    tel.clear()
    assert other.test_client().get("/x").status_code == 200
    assert not tel.spans() and "wsgi_app" not in vars(other)
