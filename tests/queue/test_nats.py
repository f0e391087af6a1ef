"""nats-py on the machine's NATS (JetStream enabled): core publish/subscribe in one trace, JetStream
publish with PubAck, a pull batch whose receive span links every producer, and a failed PubAck."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

nats = pytest.importorskip("nats")


async def _wait(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


async def test_core_publish_and_subscribe_share_one_trace(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("nats")
    patched("nats")
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2)
    got: list[bytes] = []

    async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
        got.append(msg.data)

    await nc.subscribe(name, queue="workers", cb=on_message)
    with http_request() as server:
        await nc.publish(name, b"order")
    await _wait(lambda: got)
    await nc.close()

    send = tel.span(f"publish {name}")
    assert send.kind == SpanKind.PRODUCER and send.attributes["messaging.system"] == "nats"
    assert_child(send, server)
    process = tel.span(f"process {name}")
    assert process.kind == SpanKind.CONSUMER
    assert process.attributes["messaging.consumer.group.name"] == "workers"
    assert_child(process, send)
    assert tel.metric_total("messaging.client.sent.messages", messaging__destination__name=name) == 1
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=name) == 1


async def test_jetstream_pull_batch_links_every_producer(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("nats")
    patched("nats")
    stream = name.replace("-", "_")
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2)
    js = nc.jetstream(timeout=2)
    await js.add_stream(name=stream, subjects=[name])
    try:
        senders = []
        for i in range(3):
            with http_request() as server:  # three requests, three traces
                ack = await js.publish(name, b"order", headers={"Nats-Msg-Id": f"n-{i}"})
                assert ack.seq == i + 1
            senders.append(server.get_span_context().trace_id)
        sub = await js.pull_subscribe(name, durable="fulfil", stream=stream)
        msgs = await sub.fetch(3, timeout=2)
        for msg in msgs:
            await msg.ack()
    finally:
        await js.delete_stream(stream)
        await nc.close()

    sends = tel.spans(f"publish {name}")
    assert len(sends) == 3 and all(s.attributes["messaging.message.id"].startswith("n-") for s in sends)
    receive = tel.span(f"receive {stream}")
    assert receive.attributes["messaging.batch.message_count"] == 3
    assert receive.attributes["messaging.consumer.group.name"] == "fulfil"
    assert sorted(link.context.trace_id for link in receive.links) == sorted(senders)
    assert len(tel.spans("ack")) == 3
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=stream) == 3


async def test_jetstream_publish_without_stream_is_an_error(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("nats")
    patched("nats")
    nc = await nats.connect("nats://127.0.0.1:4222", connect_timeout=2)
    js = nc.jetstream(timeout=1)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish(name, b"lost")
    await nc.close()
    send = tel.span(f"publish {name}")
    assert send.attributes["error.type"] == "nats.js.errors.NoStreamResponseError"
    assert tel.metric_points("messaging.client.sent.messages", messaging__destination__name=name,
                             error__type="nats.js.errors.NoStreamResponseError")
