"""kombu (and so Celery): ``send``/``process``/``settle`` spans and messaging metrics, on any transport.

- ``Producer.publish``: a PRODUCER span ``publish <exchange or routing key>`` with ``traceparent`` in
  the message headers (Celery passes its task headers here, so a ``delay()`` carries the trace).
  The policies for ``rabbitmq://host:port`` (or ``redis://...`` etc.: the transport) apply.
- ``Consumer._receive_callback``: each delivery, to ``on_message`` or the ``callbacks``, runs as the
  CONSUMER span ``process <queue>``, child of the producer's span. (A Celery worker's ``on_message``
  only receives the task and hands it to the pool, so there the span covers receipt and dispatch, not
  the task's run; the task's own span is for a Celery integration to make.)
- ``Message.ack``/``reject``/``requeue``: ``settle`` spans.

``messaging.system`` is ``rabbitmq`` for the AMQP transports, else the transport's name.
Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=kombu.
"""

from __future__ import annotations

from typing import Any

from kombu import exceptions as kex

from instrument import _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

PUBLISH = (Target("kombu.messaging", "Producer.publish"),)
CONSUME = (Target("kombu.messaging", "Consumer._receive_callback"),)
SETTLE = tuple(Target("kombu.message", f"Message.{n}") for n in ("ack", "reject", "requeue"))
TARGETS = PUBLISH + CONSUME + SETTLE


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (kex.OperationalError, ConnectionError, OSError, TimeoutError))


ERRORS = ClientErrors(
    catch=(kex.OperationalError,),
    connect=lambda msg: kex.OperationalError(msg),
    reset=lambda msg: kex.OperationalError(msg),
    is_failure=_is_failure,
)

_SYSTEMS = {"amqp": "rabbitmq", "pyamqp": "rabbitmq", "librabbitmq": "rabbitmq"}


def _endpoint(connection: Any) -> Endpoint:
    transport = getattr(connection, "transport", None)
    driver = getattr(transport, "driver_type", None) or getattr(connection, "transport_cls", None) or "amqp"
    system = _SYSTEMS.get(str(driver), str(driver))
    host = getattr(connection, "hostname", None) or "localhost"
    port = getattr(connection, "port", None)
    if port is None:
        port = getattr(transport, "default_port", None)
    return _messaging.client_endpoint(system, host, port, ERRORS)


def _publish(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) > 9:  # headers given positionally (body, routing_key, ..., serializer, headers)
        headers = dict(args[9] or {})
        args = (*args[:9], headers, *args[10:])
    else:
        headers = kwargs.get("headers")
        headers = {} if headers is None else headers
        kwargs = {**kwargs, "headers": headers}
    routing_key = (args[1] if len(args) > 1 else kwargs.get("routing_key")) or instance.routing_key or ""
    exchange = kwargs.get("exchange") or instance.exchange
    exchange_name = getattr(exchange, "name", exchange) or ""
    ep = _endpoint(instance.connection)
    message_id = kwargs.get("message_id") or headers.get("id")
    op = _messaging.publish_op(ep, exchange_name or routing_key, idempotent=bool(message_id))
    attributes: dict[str, Any] = {"messaging.rabbitmq.destination.routing_key": routing_key} if ep.system == "rabbitmq" else {}
    if message_id:
        attributes["messaging.message.id"] = str(message_id)
    return ep.call(op, wrapped, args, kwargs, attributes=attributes, carrier=headers)


def _headers_of(message: Any) -> Any:
    if isinstance(message, dict):  # virtual transports hand over the payload dict
        return message.get("headers")
    return getattr(message, "headers", None)


def _receive(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    message = args[0] if args else kwargs["message"]
    queues = getattr(instance, "queues", None) or ()
    info = getattr(message, "delivery_info", None) or {}
    destination = queues[0].name if len(queues) == 1 else info.get("routing_key")
    attributes: dict[str, Any] = {}
    props = getattr(message, "properties", None) or {}
    headers = _headers_of(message)
    message_id = props.get("message_id") if isinstance(props, dict) else None
    message_id = message_id or (headers or {}).get("id")
    if message_id:
        attributes["messaging.message.id"] = str(message_id)
    if info.get("delivery_tag") is not None:
        attributes["messaging.rabbitmq.message.delivery_tag"] = info["delivery_tag"]
    ep = _endpoint(instance.connection or instance.channel.connection.client)
    return _messaging.process(ep, destination, wrapped, args, kwargs, headers=headers, attributes=attributes)


def _settle(name: str) -> Any:
    def settle(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        channel = getattr(instance, "channel", None)
        connection = getattr(getattr(channel, "connection", None), "client", None)
        if connection is None:
            return wrapped(*args, **kwargs)
        ep = _endpoint(connection)
        return ep.call(_messaging.settle_op(ep, name), wrapped, args, kwargs)

    return settle


def patch() -> None:
    apply(PUBLISH, _publish)
    apply(CONSUME, _receive)
    for target in SETTLE:
        apply((target,), _settle(target.attribute.split(".", 1)[1]))


def unpatch() -> None:
    revert(TARGETS)
