"""Redis Streams on the machine's Redis: XADD carries the trace in a field, XREADGROUP's receive span
links every producer, the process decorator continues the trace, XACK settles; sync and asyncio.

The registry entry ``redis_streams`` is the lead's to add, so these tests patch the module directly."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

redis = pytest.importorskip("redis")


@pytest.fixture
def streams():  # type: ignore[no-untyped-def]
    from instrument.integrations import redis_streams

    redis_streams.patch()
    yield redis_streams
    redis_streams.unpatch()


def test_stream_entry_carries_the_trace(tel, streams, name) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    from instrument.messaging import MemoryStore, idempotent

    client = redis.Redis("127.0.0.1", 6379)
    client.xgroup_create(name, "fulfil", id="0", mkstream=True)
    try:
        with http_request() as server:
            entry_id = client.xadd(name, {"order": "1"})
        reply = client.xreadgroup("fulfil", "c1", {name: ">"}, count=10, block=100)
        done: list[bytes] = []

        @streams.process(client, group="fulfil")
        @idempotent(MemoryStore(), ack=False)
        def handle(stream, eid, fields):  # type: ignore[no-untyped-def]
            assert fields[b"order"] == b"1" and b"traceparent" in fields
            done.append(eid)
            client.xack(stream, "fulfil", eid)

        for stream, entries in reply:
            for eid, fields in entries:
                handle(stream, eid, fields)
                handle(stream, eid, fields)  # the same entry again: dropped
    finally:
        client.delete(name)
    assert done == [entry_id]

    send = tel.span(f"publish {name}")
    assert send.kind == SpanKind.PRODUCER and send.attributes["messaging.system"] == "redis"
    assert send.attributes["messaging.message.id"] == entry_id.decode()
    assert_child(send, server)
    receive = tel.span(f"receive {name}")
    assert receive.attributes["messaging.consumer.group.name"] == "fulfil"
    assert receive.attributes["messaging.batch.message_count"] == 1
    assert [link.context.span_id for link in receive.links] == [send.context.span_id]
    processes = tel.spans(f"process {name}")
    assert len(processes) == 2
    for process in processes:
        assert_child(process, send)
    assert_child(tel.span(f"ack {name}"), processes[0])
    assert tel.metric_total("instrument.messaging.duplicates", messaging__destination__name=name) == 1
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=name,
                            messaging__operation__name="receive") == 1


async def test_asyncio_client(tel, streams, name) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    from redis import asyncio as aredis

    client = aredis.Redis(host="127.0.0.1", port=6379)
    try:
        with http_request() as server:
            await client.xadd(name, {"a": "1"})
            await client.xadd(name, {"a": "2"})
        reply = await client.xread({name: "0"}, count=10)
        assert len(reply[0][1]) == 2
    finally:
        await client.delete(name)
        await client.aclose()
    assert_child(tel.spans(f"publish {name}")[0], server)
    receive = tel.span(f"receive {name}")
    assert receive.attributes["messaging.batch.message_count"] == 2
    assert {link.context.trace_id for link in receive.links} == {server.get_span_context().trace_id}
