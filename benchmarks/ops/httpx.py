"""httpx ``Client.get`` against the local keep-alive server."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    return HTTPXClientInstrumentor()


def _make(ctx: Ctx):
    import httpx

    client = httpx.Client()
    ctx.on_close(client.close)
    url = f"http://127.0.0.1:{ctx.http_port}/items"
    get = client.get
    return lambda: get(url)


SPEC = OpSpec("httpx", "httpx GET", ("httpx",), _contrib, _make, "http://127.0.0.1:*", needs_http=True)
