"""Redis Streams on the machine's Redis: XADD carries the trace in a field, XREADGROUP's receive span
links every producer, the process decorator continues the trace, XACK settles; sync and asyncio.

Both registry entries are patched: XADD is described to the redis integration's command hook."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

redis = pytest.importorskip("redis")


@pytest.fixture
def streams(patched):  # type: ignore[no-untyped-def]
    from instrument.integrations import redis_streams

    patched("redis")
    patched("redis_streams")
    return redis_streams


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


def test_a_publish_is_one_span_whose_context_the_entry_carries(tel, streams, name) -> None:  # type: ignore[no-untyped-def]
    """xadd() and execute_command("XADD", ...) alike: one publish span (no XADD command span under it), and
    the entry's last fields are that span's traceparent and the trace's tracestate, after the application's."""
    need("redis")
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    client = redis.Redis("127.0.0.1", 6379)
    parent = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                                          trace_state=TraceState([("vendor", "v1")])))
    try:
        with trace.use_span(parent):
            first = client.xadd(name, {"order": "1"}, maxlen=100, approximate=True)
            second = client.execute_command("XADD", name, "*", "order", "2")
            client.xadd(f"{name}-other", {"order": "3"})  # each stream its own destination
        entries = client.xrange(name)
    finally:
        client.delete(name, f"{name}-other")
    assert tel.span(f"publish {name}-other").attributes["messaging.destination.name"] == f"{name}-other"
    spans = tel.spans(f"publish {name}")
    assert len(spans) == 2 and not tel.spans("XADD 0")
    for span, entry_id, (got_id, fields) in zip(spans, (first, second), entries, strict=True):
        assert got_id == entry_id and span.attributes["messaging.message.id"] == entry_id.decode()
        assert span.context.trace_id == 0x1234 and span.parent.span_id == 0x5678
        assert list(fields)[-2:] == [b"traceparent", b"tracestate"]
        assert fields[b"traceparent"].decode() == \
            f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
        assert fields[b"tracestate"] == b"vendor=v1"
    assert [f[b"order"] for _, f in entries] == [b"1", b"2"]
