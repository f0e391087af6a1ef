"""Broker down mid-publish: the publisher's breaker opens, then closes after recovery, and every message
published with confirms after recovery arrives.

Other engineers' tests use the machine's RabbitMQ at the same time, so the broker is never stopped:
"down" is a TCP fault proxy (instrument.testing._proxy.FaultProxy) in front of it, whose connections
are reset (RST) and refused while cut, then forwarded again. The publisher connects through the proxy,
so its target identity is rabbitmq://127.0.0.1:<proxy port>, and only its breaker is affected."""

from __future__ import annotations

import time

import pytest

from tests.conftest import need

pika = pytest.importorskip("pika")
proxy_module = pytest.importorskip("instrument.testing._proxy")
policies = pytest.importorskip("instrument.policies")


def _connect(port: int) -> object:
    params = pika.ConnectionParameters("127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1, socket_timeout=1, stack_timeout=2,
                                       blocked_connection_timeout=2)
    return pika.BlockingConnection(params)


def _breaker_state(target: str) -> str | None:
    for view in policies.breakers():
        if view.target == target:
            return view.state
    return None


class Publisher:
    """What a real publisher does: publish with confirms; on a connection error, reconnect next time."""

    def __init__(self, port: int, queue: str) -> None:
        self.port, self.queue = port, queue
        self.channel: object = None

    def publish(self, message_id: str) -> None:
        if self.channel is None or not self.channel.is_open:  # type: ignore[attr-defined]
            try:
                self.channel = _connect(self.port).channel()  # type: ignore[attr-defined]
                self.channel.confirm_delivery()  # type: ignore[attr-defined]
            except (pika.exceptions.AMQPError, ValueError):
                # still down: publish on the dead channel fails (and counts) below. (pika raises ValueError
                # "Expected connected socket" when the reset lands between its connect() and getpeername())
                pass
        self.channel.basic_publish("", self.queue, b"order",  # type: ignore[attr-defined]
                                   pika.BasicProperties(message_id=message_id, delivery_mode=2))


def test_breaker_opens_while_broker_is_cut_and_closes_after(tel, patched, settings_env, name) -> None:  # type: ignore[no-untyped-def]
    need("rabbitmq")
    patched("pika")
    admin = _connect(5672)
    admin_ch = admin.channel()  # type: ignore[attr-defined]
    admin_ch.queue_declare(name)
    with proxy_module.FaultProxy("127.0.0.1", 5672) as proxy:
        target = f"rabbitmq://127.0.0.1:{proxy.port}"
        settings_env({"INSTRUMENT_POLICIES": f"{target}=breaker(window=4,min_calls=2,failure_rate=50%,wait=300ms,probes=1)"})
        pub = Publisher(proxy.port, name)
        pub.publish("before")
        assert _breaker_state(target) == "closed"

        proxy.reset_peer()  # the broker "goes down"
        errors: list[str] = []
        deadline = time.monotonic() + 5
        while _breaker_state(target) != "open" and time.monotonic() < deadline:
            try:
                pub.publish("during")
            except pika.exceptions.AMQPError as exc:
                errors.append(type(exc).__name__)
        assert _breaker_state(target) == "open", errors
        with pytest.raises(pika.exceptions.AMQPConnectionError) as rejected:  # fast, without touching the socket
            pub.publish("rejected")
        assert type(rejected.value).__name__ == "CircuitOpen" or "circuit" in str(rejected.value).lower()

        proxy.pass_through()  # the broker is back
        time.sleep(0.35)  # the breaker's wait: the next publish is its probe
        sent = [f"after-{i}" for i in range(20)]
        deadline = time.monotonic() + 5
        while _breaker_state(target) != "closed" and time.monotonic() < deadline:
            try:
                pub.publish(sent[0])
            except pika.exceptions.AMQPError:
                time.sleep(0.05)
        assert _breaker_state(target) == "closed"
        for message_id in sent[1:]:
            pub.publish(message_id)  # confirms on: returns only once the broker has it
        pub.channel.connection.close()  # type: ignore[attr-defined]

    received: list[str] = []
    while True:
        method, props, _body = admin_ch.basic_get(name, auto_ack=True)
        if method is None:
            break
        received.append(props.message_id)
    admin_ch.queue_delete(name)
    admin.close()  # type: ignore[attr-defined]
    assert set(sent) <= set(received)  # every confirmed publish after recovery arrived
    assert "before" in received
    assert errors, "publishing while cut must fail"
    failed = [s for s in tel.spans(f"publish {name}") if (s.attributes or {}).get("error.type")]
    assert failed, "failed publishes are errors on their spans"
    assert tel.metric_points("messaging.client.sent.messages", messaging__destination__name=name)
