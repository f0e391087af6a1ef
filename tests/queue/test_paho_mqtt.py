"""paho-mqtt on the machine's Mosquitto: MQTT 5 carries the trace in user properties; MQTT 3.1.1 has
no headers, so the consumer starts a new trace (documented in the README, Queues and streams)."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import need
from tests.queue.mq_helpers import assert_child, http_request

mqtt = pytest.importorskip("paho.mqtt.client")


def _client(protocol: int) -> object:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    client.connect("127.0.0.1", 1883, keepalive=10)
    return client


def _roundtrip(topic: str, protocol: int) -> tuple[object, list[object]]:
    got: list[object] = []
    arrived = threading.Event()
    subscribed = threading.Event()
    sub = _client(protocol)

    def on_message(client, userdata, message):  # type: ignore[no-untyped-def]
        got.append(message)
        arrived.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(3)
    pub = _client(protocol)
    pub.loop_start()
    with http_request() as server:
        info = pub.publish(topic, b"order", qos=1)
    info.wait_for_publish(3)
    assert arrived.wait(3)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return server, got


def test_mqtt5_user_properties_carry_the_trace(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("mosquitto")
    patched("paho_mqtt")
    topic = f"instrument/test/{name}"
    server, got = _roundtrip(topic, mqtt.MQTTv5)
    assert got[0].payload == b"order"
    keys = [k for k, _ in got[0].properties.UserProperty]
    assert "traceparent" in keys
    send = tel.span(f"publish {topic}")
    assert send.kind == SpanKind.PRODUCER and send.attributes["messaging.system"] == "mqtt"
    assert_child(send, server)
    process = tel.span(f"process {topic}")
    assert process.kind == SpanKind.CONSUMER
    assert_child(process, send)
    assert tel.metric_total("messaging.client.sent.messages", messaging__destination__name=topic) == 1
    assert tel.metric_total("messaging.client.consumed.messages", messaging__destination__name=topic) == 1


def test_mqtt311_has_no_headers_so_the_consumer_starts_a_new_trace(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    need("mosquitto")
    patched("paho_mqtt")
    topic = f"instrument/test/{name}"
    server, got = _roundtrip(topic, mqtt.MQTTv311)
    assert got[0].payload == b"order"  # the payload is never touched
    send = tel.span(f"publish {topic}")
    assert_child(send, server)
    process = tel.span(f"process {topic}")
    assert process.parent is None and process.context.trace_id != send.context.trace_id


def test_publish_without_connection_is_an_error_on_the_span(tel, patched, name) -> None:  # type: ignore[no-untyped-def]
    patched("paho_mqtt")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    info = client.publish(f"instrument/test/{name}", b"x", qos=0)
    assert info.rc == mqtt.MQTT_ERR_NO_CONN
    assert tel.span(f"publish instrument/test/{name}").attributes["error.type"] == "MQTT_ERR_NO_CONN"
