"""Server-side faults: rules, Envoy-style request headers (refused unless enabled), and the middleware."""

from __future__ import annotations

import time
from typing import Any

import pytest

from instrument.faults import ServerFault, inject, server_fault, validate_settings
from instrument.faults import _registry

TARGET = "http://orders:8000"
ABORT = {"x-instrument-fault-abort": "503", "x-instrument-fault-retry-after": "2"}
DELAY = {"X-Instrument-Fault-Delay": "30"}  # any case


class _Settings:
    def __init__(self, faults: str = "", header: bool = False) -> None:
        self.faults, self.faults_seed, self.faults_header = faults, 7, header


def test_nothing_configured_is_none() -> None:
    assert server_fault(TARGET, "GET", "/api/orders", {}) is None
    assert server_fault(TARGET, "GET", "/api/orders", ABORT) is None


def test_header_faults_are_refused_by_default(policy_events: list[Any]) -> None:
    assert _registry.header_enabled[0] is False
    assert server_fault(TARGET, "GET", "/", {**ABORT, **DELAY}) is None
    validate_settings(_Settings(header=False))
    assert server_fault(TARGET, "GET", "/", {**ABORT, **DELAY}) is None
    assert policy_events == []


def test_header_faults_work_when_enabled(policy_events: list[Any]) -> None:
    validate_settings(_Settings(header=True))
    found = server_fault(TARGET, "GET", "/", {**ABORT, **DELAY})
    assert found == ServerFault(delay=0.03, status=503, retry_after=2.0, source="header")
    assert ("retry-after", "2") in found.headers()
    assert found.body.startswith(b"fault injected")
    assert [(e.detail["kind"], e.detail["source"], e.pipeline) for e in policy_events] == [
        ("latency", "header", TARGET), ("status", "header", TARGET)]
    assert server_fault(TARGET, "GET", "/", {"x-other": "1"}) is None


def test_explicit_override_of_the_setting() -> None:
    assert server_fault(TARGET, "GET", "/", ABORT, header_enabled=True).status == 503
    validate_settings(_Settings(header=True))
    assert server_fault(TARGET, "GET", "/", ABORT, header_enabled=False) is None


@pytest.mark.parametrize("headers", [
    {"x-instrument-fault-abort": "99"},
    {"x-instrument-fault-abort": "abc"},
    {"x-instrument-fault-delay": "-5"},
    {"x-instrument-fault-delay": "nan"},
    {"x-instrument-fault-abort": "503", "x-instrument-fault-abort-percentage": "0"},
    {"x-instrument-fault-delay": "10", "x-instrument-fault-delay-percentage": "101"},
])
def test_invalid_or_unlucky_headers_are_ignored(headers: dict[str, str]) -> None:
    assert server_fault(TARGET, "GET", "/", headers, header_enabled=True) is None


def test_header_delay_is_capped() -> None:
    found = server_fault(TARGET, "GET", "/", {"x-instrument-fault-delay": "99999999"}, header_enabled=True)
    assert found.delay == 30.0


def test_header_percentage_is_sampled() -> None:
    hits = sum(server_fault(TARGET, "GET", "/", {"x-instrument-fault-abort": "500",
                                                 "x-instrument-fault-abort-percentage": "25"},
                            header_enabled=True) is not None for _ in range(2000))
    assert 400 < hits < 600


def test_rules_match_path_and_method() -> None:
    with inject("server:/api/* op=POST: status 429 retry-after=1; server:/slow: latency 20ms"):
        assert server_fault(TARGET, "POST", "/api/orders", {}) == ServerFault(0.0, 429, 1.0, "rule")
        assert server_fault(TARGET, "GET", "/api/orders", {}) is None
        assert server_fault(TARGET, "GET", "/slow", {}) == ServerFault(0.02, None, None, "rule")
    assert server_fault(TARGET, "POST", "/api/orders", {}) is None


def test_rules_with_a_scheme_match_target_and_path() -> None:
    with inject("server:http://orders:*/api/*: status 503"):
        assert server_fault(TARGET, "GET", "/api/x", {}).status == 503
        assert server_fault("http://billing:8000", "GET", "/api/x", {}) is None


def test_server_rules_never_reach_clients_and_client_rules_never_reach_servers() -> None:
    from instrument._call import endpoint
    from instrument.faults import faults_for

    with inject("server:*: status 503", "*: error"):
        assert server_fault(TARGET, "GET", "/", {}).status == 503
        injector = faults_for(endpoint("http", "http", "http://server-rule-test:1"))
        assert [a.rule.fault for a in injector.rules] == ["error"]


def test_server_rules_from_the_environment_with_count_limits() -> None:
    validate_settings(_Settings("server:/checkout op=POST: status 503 first=2"))
    got = [server_fault(TARGET, "POST", "/checkout", {}) for _ in range(4)]
    assert [g.status if g else None for g in got] == [503, 503, None, None]


# -- end to end through the middleware ------------------------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


def _wsgi(headers: dict[str, str], path: str = "/") -> tuple[str, list[tuple[str, str]], bytes]:
    wsgi = pytest.importorskip("instrument.wsgi")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "orders", "SERVER_PORT": "8000",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "orders:8000"}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    seen: list[Any] = []
    response = wsgi.InstrumentMiddleware(_wsgi_app)(environ, lambda s, h, *a: seen.append((s, h)))
    try:
        body = b"".join(response)
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()  # as every WSGI server does: the request (and its span) ends here
    return seen[0][0], seen[0][1], body


def test_wsgi_middleware_refuses_then_honours_header_faults() -> None:
    assert _wsgi(ABORT)[0] == "200 OK"
    validate_settings(_Settings(header=True))
    status, headers, body = _wsgi({**ABORT, "x-instrument-fault-delay": "50"})
    assert status.startswith("503") and ("retry-after", "2") in headers and body.startswith(b"fault injected")


def test_wsgi_middleware_rule_latency(telemetry: Any) -> None:
    with inject("server:/slow: latency 50ms"):
        start = time.perf_counter()
        assert _wsgi({}, "/slow")[2] == b"app"
        assert time.perf_counter() - start >= 0.05
    assert telemetry.metric_value("instrument.fault.injected", {"instrument.fault.kind": "latency"}) == 1


@pytest.mark.asyncio
async def test_asgi_middleware_refuses_then_honours_header_faults() -> None:
    asgi = pytest.importorskip("instrument.asgi")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    async def run() -> list[Any]:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
                 "headers": [(k.encode(), v.encode()) for k, v in ABORT.items()] + [(b"host", b"orders:8000")],
                 "server": ("orders", 8000), "client": ("127.0.0.1", 5000)}
        await asgi.InstrumentMiddleware(app)(scope, receive, send)
        return sent

    assert (await run())[0]["status"] == 200
    validate_settings(_Settings(header=True))
    sent = await run()
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
