"""aio-pika on the machine's RabbitMQ: one trace across the broker, iterator receive links, settle
spans, and backpressure (1,000 queued messages, never more than 8 in process)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

aio_pika = pytest.importorskip("aio_pika")

URL = "amqp://guest:guest@127.0.0.1:5672/"


async def _wait(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_publish_and_consume_share_one_trace(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("rabbitmq")
    patched("aio_pika")
    async with await aio_pika.connect(URL) as conn:
        channel = await conn.channel()  # publisher confirms on (aio-pika's default)
        queue = await channel.declare_queue(name, auto_delete=True)
        with http_request() as server:
            await channel.default_exchange.publish(aio_pika.Message(b"order", message_id="a-1"), routing_key=name)
        got: list[str] = []

        async def on_message(message) -> None:  # type: ignore[no-untyped-def]
            got.append(message.message_id)
            await message.ack()

        await queue.consume(on_message)
        await _wait(lambda: got)
        await queue.delete(if_unused=False)

    send = tel.span(f"publish {name}")
    assert send.kind == SpanKind.PRODUCER
    assert_child(send, server)
    assert send.attributes["messaging.message.id"] == "a-1"
    process = tel.span(f"process {name}")
    assert process.kind == SpanKind.CONSUMER
    assert_child(process, send)
    assert process.attributes["messaging.message.id"] == "a-1"
    assert_child(tel.span("ack"), process)
    assert tel.metric_total("messaging.client.sent.messages", messaging__destination__name=name) == 1
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=name) == 1
    assert tel.metric_points("messaging.process.duration", messaging__destination__name=name)


async def test_iterator_and_get_receive_spans_link_to_the_producer(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("rabbitmq")
    patched("aio_pika")
    async with await aio_pika.connect(URL) as conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(name, auto_delete=True)
        with http_request() as server:
            for i in range(2):
                await channel.default_exchange.publish(aio_pika.Message(f"m{i}".encode()), routing_key=name)
        first = await queue.get(timeout=2)
        await first.ack()
        async with queue.iterator() as it:
            async for message in it:
                await message.ack()
                break
        await queue.delete(if_unused=False)
    receives = tel.spans(f"receive {name}")
    assert len(receives) == 2
    trace_id = server.get_span_context().trace_id
    for span in receives:
        assert span.links and span.links[0].context.trace_id == trace_id
    assert not tel.spans(f"process {name}")  # the iterator's internal relay is not a process span


async def test_backpressure_never_more_than_8_in_process(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    """1,000 queued messages, prefetch and bulkhead of 8: the peak number of handlers running at once
    is 8 (and not less: the limit is what bounds it), and in_flight returns to 0."""
    need("rabbitmq")
    from instrument.messaging import alimit

    patched("aio_pika")
    total = 1000
    async with await aio_pika.connect(URL) as conn:
        pub = await conn.channel(publisher_confirms=False)
        queue = await pub.declare_queue(name, auto_delete=False)
        await asyncio.gather(*(pub.default_exchange.publish(aio_pika.Message(b"x"), routing_key=name)
                               for _ in range(total)))
        await _wait(lambda: True)
        consumer = await conn.channel()
        guard = await alimit(consumer, max_in_flight=8)
        running = peak = done = 0

        @guard
        async def handle(message) -> None:  # type: ignore[no-untyped-def]
            nonlocal running, peak, done
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1
            done += 1
            await message.ack()

        q = await consumer.get_queue(name)
        await q.consume(handle)
        await _wait(lambda: done == total, timeout=30)
        await queue.delete(if_unused=False)

    assert peak <= 8 and guard.peak <= 8
    assert guard.peak == 8, f"the consumer never reached its limit (peak {guard.peak})"
    points = tel.metric_points("instrument.messaging.in_flight", messaging__destination__name=name)
    assert points and sum(p.value for p in points) == 0
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=name,
                            messaging__operation__name="process") == total
