"""pika on the machine's RabbitMQ: one trace from the HTTP request across the broker, metrics, settle,
redelivery dropped by the idempotent helper, and the consume() generator."""

from __future__ import annotations

import time
import uuid

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

pika = pytest.importorskip("pika")


def _connect(port: int = 5672, **kw: object) -> object:
    params = pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1, socket_timeout=2, blocked_connection_timeout=5, **kw)
    return pika.BlockingConnection(params)


@pytest.fixture
def channel(name: str):  # type: ignore[no-untyped-def]
    need("rabbitmq")
    conn = _connect()
    ch = conn.channel()
    ch.queue_declare(name, auto_delete=False)
    yield ch
    try:
        ch.queue_delete(name)
    finally:
        conn.close()


def _drain(conn: object, until: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        conn.process_data_events(time_limit=0.05)  # type: ignore[attr-defined]


def test_http_request_publish_and_consume_share_one_trace(tel, patched, channel, name) -> None:  # type: ignore[no-untyped-def]
    patched("pika")
    channel.confirm_delivery()
    with http_request() as server:
        channel.basic_publish("", name, b"order-1", pika.BasicProperties(message_id="m-1"))
    seen: list[str] = []

    def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
        seen.append(properties.message_id)
        assert b"traceparent" not in body
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(name, on_message)
    _drain(channel.connection, lambda: seen)
    assert seen == ["m-1"]

    send = tel.span(f"publish {name}")
    assert send.kind == SpanKind.PRODUCER
    assert_child(send, server)
    assert send.attributes["messaging.system"] == "rabbitmq"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == name
    assert send.attributes["messaging.rabbitmq.destination.routing_key"] == name
    assert send.attributes["messaging.message.id"] == "m-1"
    assert send.attributes["server.port"] == 5672
    process = tel.span(f"process {name}")
    assert process.kind == SpanKind.CONSUMER
    assert_child(process, send)
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.rabbitmq.message.delivery_tag"] >= 1
    ack = tel.span("ack")
    assert ack.attributes["messaging.operation.type"] == "settle"
    assert_child(ack, process)  # the handler's own calls are traced inside its span
    for span in tel.spans():
        assert "order-1" not in str(dict(span.attributes or {}))  # bodies are never recorded

    sent = tel.metric_points("messaging.client.sent.messages", messaging__destination__name=name)
    assert sum(p.value for p in sent) == 1
    consumed = tel.metric_points("messaging.client.consumed.messages", messaging__operation__name="process",
                                 messaging__destination__name=name)
    assert sum(p.value for p in consumed) == 1
    assert tel.metric_points("messaging.process.duration", messaging__destination__name=name)
    assert tel.metric_points("messaging.client.operation.duration", messaging__operation__name="publish",
                             messaging__destination__name=name)


def test_consume_generator_and_basic_get(tel, patched, channel, name) -> None:  # type: ignore[no-untyped-def]
    patched("pika")
    with http_request() as server:
        for i in range(3):
            channel.basic_publish("", name, f"m{i}".encode())
    got = channel.basic_get(name, auto_ack=True)
    assert got[2] == b"m0"
    receive = tel.span(f"receive {name}")
    assert receive.links and receive.links[0].context.trace_id == server.get_span_context().trace_id
    n = 0
    for method, _props, _body in channel.consume(name, inactivity_timeout=1):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        n += 1
        if n == 2:
            break
    channel.cancel()
    processes = tel.spans(f"process {name}")
    assert len(processes) == 2
    sends = {s.context.span_id for s in tel.spans(f"publish {name}")}
    for p in processes:
        assert p.parent.span_id in sends
    acks = tel.spans("ack")
    assert {a.parent.span_id for a in acks} == {p.context.span_id for p in processes}


def test_handler_failure_is_an_error_on_the_process_span(tel, patched, channel, name) -> None:  # type: ignore[no-untyped-def]
    patched("pika")
    channel.basic_publish("", name, b"x")

    def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
        ch.basic_nack(method.delivery_tag, requeue=False)
        raise ValueError("bad order")

    channel.basic_consume(name, on_message)
    with pytest.raises(ValueError, match="bad order"):
        _drain(channel.connection, lambda: False, timeout=2)
    process = tel.span(f"process {name}")
    assert process.attributes["error.type"] == "ValueError"
    assert tel.span("nack").parent.span_id == process.context.span_id
    assert tel.metric_points("messaging.process.duration", error__type="ValueError", messaging__destination__name=name)


def test_redelivery_after_crash_before_ack_is_dropped(tel, patched, channel, name) -> None:  # type: ignore[no-untyped-def]
    """Consumer A processes message 3, writes the processed marker, and dies before its ack; RabbitMQ
    redelivers message 3 to consumer B, whose idempotent helper (same Redis store) drops and acks it.
    Every message is processed exactly once, none is lost."""
    need("redis")
    import redis

    from instrument.messaging import RedisStore, idempotent

    patched("pika")
    client = redis.Redis("127.0.0.1", 6379)
    prefix = f"instrument-test:{uuid.uuid4().hex}:"
    processed: list[str] = []

    class Crash(Exception):
        pass

    class CrashAfterMark(RedisStore):
        crash_on = "m-3"

        def mark(self, key: str) -> bool:
            done = super().mark(key)
            if key == self.crash_on:
                self.crash_on = ""
                raise Crash(key)  # the process dies here: processed, marked, not acked
            return done

    store = CrashAfterMark(client, ttl=60, prefix=prefix)

    def fulfil(ch, method, properties, body):  # type: ignore[no-untyped-def]
        processed.append(properties.message_id)

    handler = idempotent(store)(fulfil)
    for i in range(1, 6):
        channel.basic_publish("", name, b"order", pika.BasicProperties(message_id=f"m-{i}"))

    conn_a = _connect()
    ch_a = conn_a.channel()
    ch_a.basic_qos(prefetch_count=1)
    ch_a.basic_consume(name, handler)
    with pytest.raises(Crash):
        _drain(conn_a, lambda: False, timeout=5)
    conn_a.close()  # unacked m-3 goes back to the queue

    conn_b = _connect()
    ch_b = conn_b.channel()
    ch_b.basic_consume(name, handler)
    _drain(conn_b, lambda: len(processed) == 5 and ch_b.queue_declare(name, passive=True).method.message_count == 0,
           timeout=5)
    conn_b.close()
    client.delete(*client.keys(prefix + "*"))

    assert sorted(processed) == [f"m-{i}" for i in range(1, 6)]  # nothing lost, nothing twice
    assert tel.metric_total("instrument.messaging.duplicates", messaging__destination__name=name) == 1
    dup = [s for s in tel.spans(f"process {name}") if (s.attributes or {}).get("instrument.messaging.duplicate")]
    assert len(dup) == 1 and dup[0].attributes["messaging.message.id"] == "m-3"
    assert channel.queue_declare(name, passive=True).method.message_count == 0


def test_async_adapter_publish_and_consume(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    """SelectConnection (the async adapters share pika.channel.Channel): same trace, same spans."""
    need("rabbitmq")
    patched("pika")
    params = pika.ConnectionParameters("127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"))
    got: list[bytes] = []
    server_span: list[object] = []

    def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        ch.queue_delete(name)
        conn.close()

    def declared(ch):  # type: ignore[no-untyped-def]
        with http_request() as server:
            ch.basic_publish("", name, b"async-order")
        server_span.append(server)
        ch.basic_consume(name, on_message)

    def on_channel(ch):  # type: ignore[no-untyped-def]
        ch.queue_declare(name, auto_delete=True, callback=lambda _frame: declared(ch))

    conn = pika.SelectConnection(params, on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_close_callback=lambda *_: conn.ioloop.stop(),
                                 on_open_error_callback=lambda *_: conn.ioloop.stop())
    conn.ioloop.call_later(5, conn.ioloop.stop)
    conn.ioloop.start()
    assert got == [b"async-order"]
    send = tel.span(f"publish {name}")
    assert_child(send, server_span[0])
    process = tel.span(f"process {name}")
    assert_child(process, send)
    assert_child(tel.span("ack"), process)
