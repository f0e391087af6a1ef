"""aio-pika: ``send``/``process``/``receive``/``settle`` spans and messaging metrics for RabbitMQ (asyncio).

- ``Exchange.publish``: a PRODUCER span ``publish <exchange or routing key>``, ``traceparent`` in
  ``message.headers``. aio-pika channels confirm publishes by default: a Nack (``DeliveryError``) or
  an unroutable mandatory message (``PublishError``) is an error on the span; the policies for
  ``rabbitmq://host:port`` apply, and a publish is retried only if the message has a ``message_id``.
- ``Queue.consume(callback)``: each callback runs as the CONSUMER span ``process <queue>``, child of
  the producer's span.
- ``Queue.iterator()`` and ``Queue.get()``: a ``receive <queue>`` span per message, linked to the
  producer (the loop body is application code we cannot delimit; wrap it in your own span if needed).
- ``IncomingMessage.ack``/``nack``/``reject``: ``settle`` spans.

Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=aio_pika.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika import exceptions as aex
from aio_pika.queue import QueueIterator

from instrument import _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

PUBLISH = (Target("aio_pika.exchange", "Exchange.publish", is_async=True),)
CONSUME = (Target("aio_pika.queue", "Queue.consume", is_async=True),)
RECEIVE = (Target("aio_pika.queue", "Queue.get", is_async=True),
           Target("aio_pika.queue", "QueueIterator.__anext__", is_async=True))
SETTLE = tuple(Target("aio_pika.message", f"IncomingMessage.{n}", is_async=True) for n in ("ack", "nack", "reject"))
TARGETS = PUBLISH + CONSUME + RECEIVE + SETTLE


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (aex.AMQPConnectionError, aex.AMQPChannelError, aex.DeliveryError, aex.PublishError,
                            ConnectionError, OSError, TimeoutError))


ERRORS = ClientErrors(
    catch=(aex.AMQPConnectionError,),
    connect=lambda msg: aex.AMQPConnectionError(msg),
    reset=lambda msg: aex.ConnectionClosed(320, msg),
    is_failure=_is_failure,
)


def _endpoint(channel: Any) -> Endpoint:
    return _endpoint_for(getattr(getattr(channel, "_connection", None), "url", None))


def _endpoint_for(url: Any) -> Endpoint:
    host = getattr(url, "host", None) or "localhost"
    port = getattr(url, "port", None) or 5672
    return _messaging.client_endpoint("rabbitmq", host, port, ERRORS)


def _delivery_attributes(message: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tag = getattr(message, "delivery_tag", None)
    if tag is not None:
        attrs["messaging.rabbitmq.message.delivery_tag"] = tag
    if getattr(message, "routing_key", None):
        attrs["messaging.rabbitmq.destination.routing_key"] = message.routing_key
    if getattr(message, "message_id", None):
        attrs["messaging.message.id"] = str(message.message_id)
    return attrs


async def _publish(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    message = args[0] if args else kwargs["message"]
    routing_key = (args[1] if len(args) > 1 else kwargs.get("routing_key")) or ""
    if message.headers is None:
        message.headers = {}
    headers = message.headers
    ep = _endpoint(instance.channel)
    op = _messaging.publish_op(ep, instance.name or routing_key, idempotent=bool(message.message_id))
    attributes: dict[str, Any] = {"messaging.rabbitmq.destination.routing_key": routing_key}
    if message.message_id:
        attributes["messaging.message.id"] = str(message.message_id)
    return await ep.acall(op, wrapped, args, kwargs, attributes=attributes, carrier=headers)


async def _consume(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    callback = args[0] if args else kwargs.get("callback")
    if callback is None or isinstance(getattr(callback, "__self__", None), QueueIterator):
        return await wrapped(*args, **kwargs)  # the iterator's relay: its messages get receive spans
    ep = _endpoint(instance.channel)
    queue = instance.name

    async def on_message(message: Any) -> Any:
        async def run(m: Any) -> Any:
            result = callback(m)
            if hasattr(result, "__await__"):
                result = await result
            return result

        return await _messaging.aprocess(ep, queue, run, (message,), {}, headers=message.headers,
                                         attributes=_delivery_attributes(message))

    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    if args:
        args = (on_message, *args[1:])
    else:
        kwargs = {**kwargs, "callback": on_message}
    return await wrapped(*args, **kwargs)


def _link_received(span: Any, message: Any) -> None:
    if message is None or not span.is_recording():
        return
    link = _messaging.link_of(getattr(message, "headers", None))
    if link is not None:
        span.add_link(link.context)
    span.set_attributes(_delivery_attributes(message))


async def _receive(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    queue = instance if isinstance(instance, aio_pika.queue.Queue) else getattr(instance, "_amqp_queue", None)
    if queue is None:
        return await wrapped(*args, **kwargs)
    ep = _endpoint(queue.channel)
    return await ep.acall(_messaging.receive_op(ep, queue.name), wrapped, args, kwargs, on_result=_link_received)


def _settle(name: str) -> Any:
    async def settle(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # An IncomingMessage holds aiormq's channel, whose connection has the URL.
        ep = _endpoint_for(getattr(getattr(instance.channel, "connection", None), "url", None))
        attrs = {"messaging.rabbitmq.message.delivery_tag": instance.delivery_tag or 0}
        return await ep.acall(_messaging.settle_op(ep, name), wrapped, args, kwargs, attributes=attrs)

    return settle


def patch() -> None:
    apply(PUBLISH, _publish, _publish)
    apply(CONSUME, _consume, _consume)
    apply(RECEIVE, _receive, _receive)
    for target in SETTLE:
        fn = _settle(target.attribute.rsplit(".", 1)[1])
        apply((target,), fn, fn)


def unpatch() -> None:
    revert(TARGETS)
