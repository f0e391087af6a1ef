"""pika ``BlockingChannel.basic_publish`` of a small message (RabbitMQ 127.0.0.1:5672, guest/guest).

Published to the default exchange with a routing key no queue is bound to: RabbitMQ drops it, so
nothing piles up between runs; the client does the same work either way. Contrib's PikaInstrumentor
wraps both ``BlockingConnection.channel`` and ``Connection.channel``, so a BlockingChannel publish makes
two spans under contrib (the self-check shows ``contrib=2``): that is contrib's real cost for this client.
"""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec


def _contrib():
    from opentelemetry.instrumentation.pika import PikaInstrumentor

    return PikaInstrumentor()


def _make(ctx: Ctx):
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))  # made while its variant is active
    channel = conn.channel()
    ctx.on_close(conn.close)
    publish = channel.basic_publish
    return lambda: publish(exchange="", routing_key="instrument.bench.unrouted", body=b"hello")


SPEC = OpSpec("pika", "pika publish", ("pika",), _contrib, _make, "rabbitmq://*", service=("127.0.0.1", 5672))
