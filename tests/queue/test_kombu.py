"""kombu on the machine's RabbitMQ (py-amqp transport): one trace across the broker, settle spans."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

kombu = pytest.importorskip("kombu")


def test_producer_and_consumer_share_one_trace(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("rabbitmq")
    patched("kombu")
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name, auto_delete=True)
    got: list[str] = []
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=2) as conn:
        with http_request() as server:
            conn.Producer().publish({"order": 1}, exchange=queue.exchange, routing_key=name, declare=[queue],
                                    message_id="k-1", serializer="json")

        def on_message(body, message):  # type: ignore[no-untyped-def]
            got.append(body["order"])
            message.ack()

        with kombu.Consumer(conn, [queue], callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=3)
        queue(conn.default_channel).delete()
    assert got == [1]
    send = tel.span(f"publish {name}")
    assert send.kind == SpanKind.PRODUCER and send.attributes["messaging.system"] == "rabbitmq"
    assert send.attributes["messaging.message.id"] == "k-1"
    assert_child(send, server)
    process = tel.span(f"process {name}")
    assert process.kind == SpanKind.CONSUMER
    assert process.attributes["messaging.message.id"] == "k-1"
    assert_child(process, send)
    assert_child(tel.span("ack"), process)
    assert tel.metric_total("messaging.client.sent.messages", messaging__destination__name=name) == 1
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=name) == 1
