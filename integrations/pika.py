"""pika: ``send``/``process``/``receive``/``settle`` spans and messaging metrics for RabbitMQ.

Targets, for ``BlockingConnection`` and the async adapters (``SelectConnection``, asyncio, Tornado,
Twisted all share ``pika.channel.Channel``):

- ``basic_publish``: a PRODUCER span ``publish <exchange or routing key>``; ``traceparent`` goes into
  ``properties.headers`` (properties are created when absent). With ``confirm_delivery()`` a Nack or an
  unroutable return (``NackError``/``UnroutableError``) is an error on the span, and the policies for
  ``rabbitmq://host:port`` (retry, breaker, timeout) apply to publishing. A publish is retried only if
  it carries a ``message_id`` (consumers can deduplicate it, see :mod:`instrument.messaging`).
- ``basic_consume``: the ``on_message_callback`` runs as the CONSUMER span ``process <queue>``, child
  of the producer's span; ``BlockingChannel.consume()`` does the same for each message it yields, the
  span lasting until the loop asks for the next one.
- ``BlockingChannel.basic_get``: a ``receive <queue>`` span linked to the producer.
- ``basic_ack``/``basic_nack``/``basic_reject``: ``settle`` spans.

Bodies are never recorded. Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=pika.
"""

from __future__ import annotations

from typing import Any

import pika
from pika import exceptions as pex
from pika.adapters import blocking_connection

from instrument import _context, _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

_B = "pika.adapters.blocking_connection"
_C = "pika.channel"
PUBLISH = (Target(_B, "BlockingChannel.basic_publish"), Target(_C, "Channel.basic_publish"))
CONSUME = (Target(_B, "BlockingChannel.basic_consume"), Target(_C, "Channel.basic_consume"))
SETTLE = tuple(Target(m, f"{c}.basic_{n}") for m, c in ((_B, "BlockingChannel"), (_C, "Channel"))
               for n in ("ack", "nack", "reject"))
GET = (Target(_B, "BlockingChannel.basic_get"),)
GENERATOR = (Target(_B, "BlockingChannel.consume"),)
TARGETS = PUBLISH + CONSUME + SETTLE + GET + GENERATOR

_suppressed = _context.suppressed


def _is_failure(exc: BaseException) -> bool:
    # Connection and channel failures, and failed publisher confirms (Nack, unroutable with mandatory).
    return isinstance(exc, (pex.AMQPConnectionError, pex.AMQPChannelError, ConnectionError, OSError))


ERRORS = ClientErrors(
    catch=(pex.AMQPConnectionError,),
    connect=lambda msg: pex.AMQPConnectionError(msg),
    timeout=lambda msg: pex.AMQPHeartbeatTimeout(msg),
    reset=lambda msg: pex.StreamLostError(msg),
    is_failure=_is_failure,
    is_timeout=lambda exc: isinstance(exc, (TimeoutError, pex.AMQPHeartbeatTimeout, pex.ConnectionBlockedTimeout)),
)


_by_params: dict[tuple[Any, Any], Endpoint] = {}


def _endpoint(channel: Any) -> Endpoint:
    impl = getattr(channel, "_impl", channel)
    params = getattr(getattr(impl, "connection", None), "params", None)
    host = getattr(params, "host", None) or "localhost"
    port = getattr(params, "port", None) or 5672
    key = (host, port)
    found = _by_params.get(key)
    if found is None:
        found = _messaging.client_endpoint("rabbitmq", host, port, ERRORS)
        if len(_by_params) > 1024:
            _by_params.clear()
        _by_params[key] = found
    return found


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


# -- publish -----------------------------------------------------------------------------------------


_PUBLISH_ARGS = ("exchange", "routing_key", "body", "properties", "mandatory")


def _publish(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _suppressed.get():
        # Inside another call of ours (BlockingChannel.basic_publish -> Channel.basic_publish): no span here;
        # the outer call already gave the message properties with headers, so there is nothing to prepare.
        given = args[3] if len(args) > 3 else kwargs.get("properties")
        if given is not None and given.headers is not None:
            return wrapped(*args, **kwargs)
    bound = dict(zip(_PUBLISH_ARGS, args))
    bound.update(kwargs)
    exchange = bound.get("exchange") or ""
    routing_key = bound.get("routing_key") or ""
    properties = bound.get("properties")
    if properties is None:
        properties = bound["properties"] = pika.BasicProperties()
    if properties.headers is None:
        properties.headers = {}
    ep = _endpoint(instance)
    op = _messaging.publish_op(ep, exchange or routing_key, idempotent=properties.message_id is not None)
    attributes: dict[str, Any] = {"messaging.rabbitmq.destination.routing_key": routing_key}
    if properties.message_id is not None:
        attributes["messaging.message.id"] = str(properties.message_id)
    return ep.call(op, wrapped, (), bound, attributes=attributes, carrier=properties.headers)


# -- consume -------------------------------------------------------------------------------------------


def _delivery_attributes(method: Any, properties: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tag = getattr(method, "delivery_tag", None)
    if tag is not None:
        attrs["messaging.rabbitmq.message.delivery_tag"] = tag
    routing_key = getattr(method, "routing_key", None)
    if routing_key is not None:
        attrs["messaging.rabbitmq.destination.routing_key"] = routing_key
    message_id = getattr(properties, "message_id", None)
    if message_id is not None:
        attrs["messaging.message.id"] = str(message_id)
    return attrs


def _traced_callback(ep: Endpoint, queue: str, callback: Any) -> Any:
    def on_message(channel: Any, method: Any, properties: Any, body: Any) -> Any:
        return _messaging.process(ep, queue, callback, (channel, method, properties, body), {},
                                  headers=getattr(properties, "headers", None),
                                  attributes=_delivery_attributes(method, properties))

    on_message.__wrapped__ = callback  # type: ignore[attr-defined]
    return on_message


def _consume(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    callback = _arg(args, kwargs, 1, "on_message_callback")
    if callback is None or isinstance(getattr(callback, "__self__", None), blocking_connection.BlockingChannel):
        return wrapped(*args, **kwargs)  # BlockingChannel's own relay: the user's callback is wrapped above it
    queue = _arg(args, kwargs, 0, "queue", "") or ""
    traced = _traced_callback(_endpoint(instance), queue, callback)
    if len(args) > 1:
        args = (args[0], traced, *args[2:])
    else:
        kwargs = {**kwargs, "on_message_callback": traced}
    return wrapped(*args, **kwargs)


def _generator(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    queue = _arg(args, kwargs, 0, "queue", "") or ""
    return _ProcessEach(_endpoint(instance), queue, wrapped(*args, **kwargs))


def _ProcessEach(ep: Endpoint, queue: str, inner: Any) -> Any:  # noqa: N802 - a generator standing in for one
    """``consume()``: each yielded message is processed by the loop body, so its span lasts until the
    loop comes back for the next message (or stops); it is current while the body runs."""
    cep = _messaging.consumer_endpoint(ep)
    op = _messaging.process_op(cep, queue)
    try:
        for item in inner:
            method, properties, _body = item
            if method is None:  # inactivity timeout: nothing to process
                yield item
                continue
            with cep.span(op, attributes=_delivery_attributes(method, properties),
                          parent=_messaging.extract(getattr(properties, "headers", None))):
                yield item
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


# -- receive and settle ------------------------------------------------------------------------------------


def _get(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    queue = _arg(args, kwargs, 0, "queue", "") or ""
    ep = _endpoint(instance)

    def on_result(span: Any, result: Any) -> None:
        method, properties, _body = result
        if method is None:
            return
        link = _messaging.link_of(getattr(properties, "headers", None))
        if span.is_recording():
            if link is not None:
                span.add_link(link.context)
            span.set_attributes(_delivery_attributes(method, properties))

    return ep.call(_messaging.receive_op(ep, queue), wrapped, args, kwargs, on_result=on_result)


def _settle(name: str) -> Any:
    def settle(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ep = _endpoint(instance)
        tag = _arg(args, kwargs, 0, "delivery_tag", 0)
        return ep.call(_messaging.settle_op(ep, name), wrapped, args, kwargs,
                       attributes={"messaging.rabbitmq.message.delivery_tag": tag})

    return settle


_SETTLERS = {n: _settle(n) for n in ("ack", "nack", "reject")}


def patch() -> None:
    apply(PUBLISH, _publish)
    apply(CONSUME, _consume)
    for target in SETTLE:
        apply((target,), _SETTLERS[target.attribute.rsplit("_", 1)[1]])
    apply(GET, _get)
    apply(GENERATOR, _generator)


def unpatch() -> None:
    revert(TARGETS)
