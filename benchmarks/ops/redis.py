"""redis ``GET`` on 127.0.0.1:6379."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return RedisInstrumentor()


def _make(ctx: Ctx):
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    ctx.on_close(client.close)
    client.set("bench:key", "value")
    get = client.get
    return lambda: get("bench:key")


SPEC = OpSpec("redis", "redis GET", ("redis",), _contrib, _make, "redis://*", service=("127.0.0.1", 6379))
