"""nats-py: ``send``/``process``/``receive``/``settle`` spans and messaging metrics, core NATS and JetStream.

- ``Client.publish`` and ``JetStreamContext.publish``: a PRODUCER span ``publish <subject>`` with
  ``traceparent`` in the message headers (NATS 2.2+ headers). A JetStream publish waits for the
  stream's PubAck: no stream, an API error or a timeout is an error on the span, and the policies for
  ``nats://host:port`` apply. It is retried only with a ``Nats-Msg-Id`` header (the stream deduplicates).
- ``Client.subscribe(cb=...)`` and ``JetStreamContext.subscribe(cb=...)``: each callback runs as the
  CONSUMER span ``process <subject>``, child of the producer's span; a queue group is
  ``messaging.consumer.group.name``.
- ``PullSubscription.fetch``: one ``receive <subject>`` span for the batch, linked to every message's
  producer, with ``messaging.batch.message_count``; consumed messages are counted per message.
- ``Msg.ack``/``ack_sync``/``nak``/``term``: ``settle`` spans.

Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=nats.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import nats
from nats import errors as nerr
from nats.js import errors as jerr

from instrument import _context, _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

_C = "nats.aio.client"
_J = "nats.js.client"
PUBLISH = (Target(_C, "Client.publish", is_async=True), Target(_J, "JetStreamContext.publish", is_async=True))
SUBSCRIBE = (Target(_C, "Client.subscribe", is_async=True), Target(_J, "JetStreamContext.subscribe", is_async=True))
FETCH = (Target(_J, "JetStreamContext.PullSubscription.fetch", is_async=True),)
SETTLE = tuple(Target("nats.aio.msg", f"Msg.{n}", is_async=True) for n in ("ack", "ack_sync", "nak", "term"))
TARGETS = PUBLISH + SUBSCRIBE + FETCH + SETTLE
_MSG_ID = "Nats-Msg-Id"
# True while JetStreamContext.subscribe runs: the core subscription it makes carries our traced callback.
_in_js_subscribe: ContextVar[bool] = ContextVar("instrument.nats.js_subscribe", default=False)


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (nerr.ConnectionClosedError, nerr.TimeoutError, nerr.NoRespondersError,
                            nerr.StaleConnectionError, nerr.ConnectionReconnectingError, jerr.NoStreamResponseError,
                            jerr.ServiceUnavailableError, ConnectionError, OSError, TimeoutError))


ERRORS = ClientErrors(
    catch=(nerr.Error,),
    connect=lambda msg: nerr.ConnectionClosedError(),
    timeout=lambda msg: nerr.TimeoutError(),
    reset=lambda msg: nerr.UnexpectedEOF(),
    is_failure=_is_failure,
    is_timeout=lambda exc: isinstance(exc, (nerr.TimeoutError, TimeoutError)),
)


def _endpoint(nc: Any) -> Endpoint:
    server = getattr(nc, "_current_server", None)
    uri = getattr(server, "uri", None)
    host = getattr(uri, "hostname", None) or "localhost"
    port = getattr(uri, "port", None) or 4222
    return _messaging.client_endpoint("nats", host, port, ERRORS)


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


_CORE_PUBLISH = ("subject", "payload", "reply", "headers")
_JS_PUBLISH = ("subject", "payload", "timeout", "stream", "headers")


async def _publish(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    is_js = not isinstance(instance, nats.aio.client.Client)
    bound = _bind(_JS_PUBLISH if is_js else _CORE_PUBLISH, args, kwargs)
    subject = bound.get("subject") or ""
    if not is_js and subject.startswith("$JS."):
        return await wrapped(*args, **kwargs)  # JetStream API traffic (consumer creation, fetch requests ...)
    headers = dict(bound.get("headers") or {})
    bound["headers"] = headers
    ep = _endpoint(instance._nc if is_js else instance)  # noqa: SLF001 - the context's connection
    msg_id = headers.get(_MSG_ID)
    op = _messaging.publish_op(ep, subject, idempotent=bool(msg_id and is_js))
    attributes = {"messaging.message.id": str(msg_id)} if msg_id else None
    if is_js:
        return await ep.acall(op, wrapped, (), bound, attributes=attributes, carrier=headers)
    return await ep.acall(op, _core_publish(wrapped), (), bound, attributes=attributes, carrier=headers)


def _core_publish(wrapped: Any) -> Any:
    async def publish(**bound: Any) -> Any:
        return await wrapped(bound.pop("subject"), **bound)

    return publish


def _traced_cb(ep: Endpoint, subject: str, queue: str | None, cb: Any) -> Any:
    attrs = {"messaging.consumer.group.name": queue} if queue else None

    async def on_message(msg: Any) -> Any:
        return await _messaging.aprocess(ep, subject, cb, (msg,), {}, headers=msg.headers, attributes=attrs)

    on_message.__wrapped__ = cb  # type: ignore[attr-defined]
    return on_message


async def _subscribe(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _bind(("subject", "queue", "cb"), args, kwargs)
    cb = bound.get("cb")
    is_js = not isinstance(instance, nats.aio.client.Client)
    if cb is None or _in_js_subscribe.get() or isinstance(getattr(cb, "__self__", None),
                                                         nats.js.client.JetStreamContext):
        return await wrapped(*args, **kwargs)  # no callback, traced by JetStream's subscribe, or its own replies
    ep = _endpoint(instance._nc if is_js else instance)  # noqa: SLF001
    subject = bound.get("subject") or ""
    rest = {k: v for k, v in kwargs.items() if k not in ("subject", "queue", "cb")}
    positional = args[3:]  # beyond (subject, queue, cb): keep as given
    token = _in_js_subscribe.set(is_js)
    try:
        return await wrapped(subject, bound.get("queue") or ("" if not is_js else None),
                             _traced_cb(ep, subject, bound.get("queue"), cb), *positional, **rest)
    finally:
        _in_js_subscribe.reset(token)


async def _fetch(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    js = getattr(instance, "_js", None)
    ep = _endpoint(getattr(js, "_nc", None))
    subject = getattr(instance, "_stream", None) or ""  # a pull consumer reads a stream
    consumer = getattr(instance, "_consumer", None)
    attributes = {"messaging.consumer.group.name": consumer} if consumer else None

    async def fetch(*a: Any, **k: Any) -> Any:
        msgs = await wrapped(*a, **k)
        state = _context.current.get()
        if state is not None:
            state.count = len(msgs)  # consumed.messages counts messages, not fetches
        return msgs

    def on_result(span: Any, msgs: Any) -> None:
        if span.is_recording():
            for link in _messaging.links(m.headers for m in msgs):
                span.add_link(link.context)
            span.set_attribute("messaging.batch.message_count", len(msgs))

    return await ep.acall(_messaging.receive_op(ep, subject), fetch, args, kwargs, attributes=attributes,
                          on_result=on_result)


def _settle(name: str) -> Any:
    async def settle(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ep = _endpoint(getattr(instance, "_client", None))
        return await ep.acall(_messaging.settle_op(ep, name), wrapped, args, kwargs)

    return settle


def patch() -> None:
    apply(PUBLISH, _publish, _publish)
    apply(SUBSCRIBE, _subscribe, _subscribe)
    apply(FETCH, _fetch, _fetch)
    for target in SETTLE:
        fn = _settle(target.attribute.split(".", 1)[1])
        apply((target,), fn, fn)


def unpatch() -> None:
    revert(TARGETS)
