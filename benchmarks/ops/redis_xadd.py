"""redis Streams ``XADD`` on 127.0.0.1:6379 (a publish: our redis_streams integration makes a PRODUCER span and
injects the trace context into a message field; contrib's redis instrumentation makes a plain command span)."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    return RedisInstrumentor()


def _make(ctx: Ctx):
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    ctx.on_close(client.close)
    client.delete("bench:stream")
    xadd = client.xadd
    return lambda: xadd("bench:stream", {"order": "42"}, maxlen=1000, approximate=True)


SPEC = OpSpec("redis_xadd", "redis XADD", ("redis", "redis_streams"), _contrib, _make, "redis://*",
              service=("127.0.0.1", 6379))
