"""requests ``Session.get`` against the local keep-alive server."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    return RequestsInstrumentor()


def _make(ctx: Ctx):
    import requests

    session = requests.Session()
    ctx.on_close(session.close)
    url = f"http://127.0.0.1:{ctx.http_port}/items"
    get = session.get
    return lambda: get(url)


SPEC = OpSpec("requests", "requests GET", ("requests",), _contrib, _make, "http://127.0.0.1:*", needs_http=True)
