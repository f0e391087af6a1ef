"""urllib3 ``PoolManager.request("GET")`` against the local keep-alive server."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    return URLLib3Instrumentor()


def _make(ctx: Ctx):
    import urllib3

    pool = urllib3.PoolManager()
    ctx.on_close(pool.clear)
    url = f"http://127.0.0.1:{ctx.http_port}/items"
    request = pool.request
    return lambda: request("GET", url)


SPEC = OpSpec("urllib3", "urllib3 GET", ("urllib3",), _contrib, _make, "http://127.0.0.1:*", needs_http=True)
