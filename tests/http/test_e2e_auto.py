"""End to end under ``import instrument.auto``, in a fresh interpreter, asserted on what arrives over OTLP.

- every client kind (requests, urllib3, urllib, httpx sync and async, aiohttp) called from a Flask
  (WSGI) service to a Starlette (ASGI) service: one trace SERVER -> CLIENT -> SERVER per client, with
  route names, and the HTTP client and server duration histograms;
- the toolkit's own OTLP/HTTP export traffic (which goes through requests) never makes a span, and
  INSTRUMENT_DISABLED_INTEGRATIONS switches one integration off.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import run_python

HERE = Path(__file__).resolve().parent

SERVICES = f"""
import sys; sys.path.insert(0, {str(HERE)!r})
import instrument.auto  # the one line: everything below is plain application code

import asyncio, urllib.request
import aiohttp, flask, httpx, requests, urllib3
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from http_servers import serve_asgi, serve_wsgi


async def echo(request):
    return PlainTextResponse(request.path_params["client"])


async def _httpx_async(url):
    async with httpx.AsyncClient() as c:
        return (await c.get(url)).text


async def _aiohttp(url):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            return await r.text()


CALLS = {{
    "requests": lambda url: requests.get(url, timeout=5).text,
    "urllib3": lambda url: urllib3.PoolManager().request("GET", url).data.decode(),
    "urllib": lambda url: urllib.request.urlopen(url, timeout=5).read().decode(),
    "httpx": lambda url: httpx.get(url).text,
    "httpx_async": lambda url: asyncio.run(_httpx_async(url)),
    "aiohttp": lambda url: asyncio.run(_aiohttp(url)),
}}

with serve_asgi(Starlette(routes=[Route("/echo/{{client}}", echo)])) as backend:
    shop = flask.Flask("shop")

    @shop.route("/via/<client>")
    def via(client):
        return CALLS[client](f"http://127.0.0.1:{{backend}}/echo/{{client}}")

    with serve_wsgi(shop) as front:
        for name in CALLS:
            answer = urllib3.PoolManager().request("GET", f"http://127.0.0.1:{{front}}/via/{{name}}").data
            assert answer.decode() == name, answer
print("OK")
"""


def test_every_client_joins_the_trace_across_wsgi_and_asgi(receiver):  # type: ignore[no-untyped-def]
    result = run_python(SERVICES, env={**receiver.env("grpc"), "OTEL_SERVICE_NAME": "shop"}, timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    clients = ("requests", "urllib3", "urllib", "httpx", "httpx_async", "aiohttp")
    receiver.wait_for(lambda: len([s for s in receiver.spans() if s.name == "GET /echo/{client}"]) >= len(clients))
    spans = receiver.spans()
    by_id = {s.span_id: s for s in spans}
    for name in clients:
        (backend,) = [s for s in spans if s.kind == "SERVER" and s.attributes.get("url.path") == f"/echo/{name}"]
        assert backend.attributes["http.route"] == "/echo/{client}"
        call = by_id[backend.parent_span_id]
        assert call.kind == "CLIENT" and call.name == "GET", name
        assert call.attributes["url.full"].endswith(f"/echo/{name}")
        assert call.attributes["http.response.status_code"] == 200
        front = by_id[call.parent_span_id]
        assert front.kind == "SERVER" and front.name == "GET /via/<client>", name
        assert front.attributes["url.path"] == f"/via/{name}"
        caller = by_id[front.parent_span_id]  # the script's own urllib3 call
        assert caller.kind == "CLIENT"
        assert len({backend.trace_id, call.trace_id, front.trace_id, caller.trace_id}) == 1
        # exactly one CLIENT span for this hop, whatever the layering (requests over urllib3)
        assert len([s for s in spans if s.kind == "CLIENT" and s.attributes["url.full"].endswith(f"/echo/{name}")]) == 1
    client_points = receiver.wait_for(lambda: receiver.metric_points("http.client.request.duration"))
    assert {p.unit for p in client_points} == {"s"}
    assert client_points[0].bounds[:3] == [0.005, 0.01, 0.025]
    server_routes = receiver.wait_for(lambda: {p.attributes.get("http.route")
                                               for p in receiver.metric_points("http.server.request.duration")}
                                      >= {"/echo/{client}", "/via/<client>"})
    assert server_routes
    # every duration point (client and server) keeps a sampled request of its bucket as the exemplar
    traces = {s.trace_id for s in spans}
    for name in ("http.client.request.duration", "http.server.request.duration"):
        exemplars = [t for p in receiver.metric_points(name) for t in p.exemplar_trace_ids]
        assert exemplars and set(exemplars) <= traces, name


EXPORT = """
import instrument.auto
import threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import httpx, requests
import instrument


class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
port = httpd.server_address[1]
for _ in range(3):
    requests.get(f"http://127.0.0.1:{port}/requests", timeout=5)
    httpx.get(f"http://127.0.0.1:{port}/httpx")
    time.sleep(0.3)  # several metric and span exports happen meanwhile
instrument.shutdown()
print("OK")
"""


def test_own_export_traffic_is_never_traced_and_integrations_switch_off(receiver):  # type: ignore[no-untyped-def]
    env = {**receiver.env("http/protobuf"), "INSTRUMENT_DISABLED_INTEGRATIONS": "httpx"}
    result = run_python(EXPORT, env=env, timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    receiver.wait_for(lambda: len(receiver.spans()) >= 3)
    receiver.wait_for(lambda: receiver.metric_points("http.client.request.duration"))
    spans = receiver.spans()
    assert receiver.http_port and [s for s in spans if s.attributes.get("server.port") == receiver.http_port] == []
    assert [s.attributes["url.full"].rsplit("/", 1)[1] for s in spans] == ["requests"] * 3
    ports = {p.attributes.get("server.port") for p in receiver.metric_points("http.client.request.duration")}
    assert receiver.http_port not in ports


