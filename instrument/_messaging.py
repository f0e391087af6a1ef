"""Shared pieces of the messaging integrations: endpoints, operations, header carriers, the consumer wrapper.

Every messaging integration does the same four things, and they live here so each module stays small:

- a *client* endpoint per broker (``endpoint("messaging", system, "rabbitmq://host:port")``) on which
  ``publish`` (PRODUCER, ``send``), ``receive`` and ``ack``/``nack`` (CLIENT, ``settle``) run; the
  resilience policies and faults configured for that target apply to them like any other call;
- a *consumer* endpoint per broker for ``process`` (CONSUMER) spans around the application's handler.
  It carries no policies: a Retry or Timeout configured for ``rabbitmq://...`` is about talking to the
  broker, and must not re-run or cut short the application's own handler (backpressure for handlers is
  :func:`instrument.messaging.limit`);
- header carriers: the producer hands a ``dict`` to the pipeline (``carrier=``), which injects
  ``traceparent``; the consumer reads it back with :func:`extract` (values may arrive as ``bytes``);
- batches: one ``process`` span linked to every message's producer (:func:`links`).

Message bodies are never read or recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from instrument import _call, _context
from instrument._call import DEFAULT_ERRORS, ClientErrors, Endpoint, Op, endpoint

__all__ = ["client_endpoint", "consumer_endpoint", "extract", "links", "process", "aprocess",
           "publish_op", "receive_op", "settle_op", "process_op"]

SENT = "messaging.client.sent.messages"
CONSUMED = "messaging.client.consumed.messages"
PROCESS_DURATION = "messaging.process.duration"


class _Getter:
    """Reads header values that brokers hand back as ``str``, ``bytes`` or lists of either."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        try:
            value = carrier.get(key)
        except Exception:  # noqa: BLE001 - an odd carrier means "no context", never a failure
            return None
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            return [bytes(value).decode("utf-8", "replace")]
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v) for v in value]
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        try:
            return [str(k) for k in carrier]
        except Exception:  # noqa: BLE001
            return []


GETTER = _Getter()


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context | None:
    """The producer's context from message headers, or None when there is none (then the current one is used)."""
    if not headers:
        return None
    ctx = _call.extract(headers, GETTER)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def link_of(headers: Mapping[str, Any] | None) -> Link | None:
    ctx = extract(headers)
    if ctx is None:
        return None
    return Link(trace.get_current_span(ctx).get_span_context())


def links(all_headers: Iterable[Mapping[str, Any] | None]) -> list[Link]:
    """One link per message that carries a producer context (a batch's ``process`` span)."""
    out: list[Link] = []
    seen: set[tuple[int, int]] = set()
    for headers in all_headers:
        link = link_of(headers)
        if link is not None:
            key = (link.context.trace_id, link.context.span_id)
            if key not in seen and len(out) < 128:  # bounded: a huge batch must not make a huge span
                seen.add(key)
                out.append(link)
    return out


# -- endpoints ----------------------------------------------------------------------------------


def client_endpoint(system: str, host: str | None, port: int | None, errors: ClientErrors = DEFAULT_ERRORS,
                    scheme: str | None = None) -> Endpoint:
    """The (cached) endpoint for talking to a broker: publish, receive and settle run here, with policies."""
    target = f"{scheme or system}://{host or 'localhost'}:{port}" if port is not None else f"{scheme or system}://{host}"
    return endpoint("messaging", system, target, server_address=host, server_port=port, errors=errors)


def consumer_endpoint(client: Endpoint) -> Endpoint:
    """The policy-free twin of ``client`` on which ``process`` spans run (a handler is never retried or cut)."""
    return endpoint("messaging", client.system, client.target, server_address=client.server_address,
                    server_port=client.server_port, errors=client.errors, policies=False)


_SEND = {"messaging.operation.type": "send"}
_publish_ops: dict[tuple[Endpoint, str | None, bool, str], Op] = {}


def publish_op(ep: Endpoint, destination: str | None, *, idempotent: bool = False, name: str = "publish") -> Op:
    """``publish <destination>``: a PRODUCER span counted in ``messaging.client.sent.messages``.

    ``idempotent``: pass True when the message carries an id consumers can deduplicate on; only then
    may a Retry policy publish it again.
    """
    key = (ep, destination, idempotent, name)
    found = _publish_ops.get(key)
    if found is None:
        found = ep.op(name, destination or None, span_kind=SpanKind.PRODUCER, counter=SENT, idempotent=idempotent,
                      attributes=_SEND)
        if len(_publish_ops) >= 1024:
            _publish_ops.clear()
        _publish_ops[key] = found
    return found


def receive_op(ep: Endpoint, destination: str | None, *, name: str = "receive") -> Op:
    return ep.op(name, destination or None, span_kind=SpanKind.CLIENT, counter=CONSUMED,
                 attributes={"messaging.operation.type": "receive"})


def settle_op(ep: Endpoint, name: str, destination: str | None = None) -> Op:
    return ep.op(name, destination or None, span_kind=SpanKind.CLIENT,
                 attributes={"messaging.operation.type": "settle"})


def process_op(ep: Endpoint, destination: str | None) -> Op:
    return ep.op("process", destination or None, span_kind=SpanKind.CONSUMER, histogram=PROCESS_DURATION,
                 counter=CONSUMED, attributes={"messaging.operation.type": "process"})


# -- running the application's handler ------------------------------------------------------------


def _parent_and_links(headers: Mapping[str, Any] | None, batch: Iterable[Mapping[str, Any] | None] | None
                      ) -> tuple[Any, Any]:
    if batch is not None:
        return None, links(batch)
    return extract(headers), None


def process(ep: Endpoint, destination: str | None, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *, headers: Mapping[str, Any] | None = None,
            batch: list[Mapping[str, Any] | None] | None = None,
            attributes: Mapping[str, Any] | None = None) -> Any:
    """Run a handler as the ``process`` span: child of the producer (one message) or linked (``batch``)."""
    if _context.is_suppressed() and not _context.suppressed.get():
        return fn(*args, **kwargs)  # OpenTelemetry's suppress_instrumentation()
    try:
        cep = consumer_endpoint(ep)
        op = process_op(cep, destination)
        parent, batch_links = _parent_and_links(headers, batch)
        attrs = dict(attributes or {})
        if batch is not None:
            attrs["messaging.batch.message_count"] = len(batch)
    except Exception as exc:  # noqa: BLE001 - never let our code break the handler
        from instrument._safety import report

        report("messaging process", exc)
        return fn(*args, **kwargs)
    token = _context.suppressed.set(False)  # a handler run from inside another call is still its own
    try:
        return cep.call(op, fn, args, kwargs, attributes=attrs, parent=parent,
                        links=batch_links, activate=True)
    finally:
        _context.suppressed.reset(token)


async def aprocess(ep: Endpoint, destination: str | None, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, headers: Mapping[str, Any] | None = None,
                   batch: list[Mapping[str, Any] | None] | None = None,
                   attributes: Mapping[str, Any] | None = None) -> Any:
    """The async twin of :func:`process`: ``fn`` returns an awaitable."""
    if _context.is_suppressed() and not _context.suppressed.get():
        return await fn(*args, **kwargs)
    try:
        cep = consumer_endpoint(ep)
        op = process_op(cep, destination)
        parent, batch_links = _parent_and_links(headers, batch)
        attrs = dict(attributes or {})
        if batch is not None:
            attrs["messaging.batch.message_count"] = len(batch)
    except Exception as exc:  # noqa: BLE001
        from instrument._safety import report

        report("messaging process", exc)
        return await fn(*args, **kwargs)
    token = _context.suppressed.set(False)
    try:
        return await cep.acall(op, fn, args, kwargs, attributes=attrs, parent=parent,
                               links=batch_links, activate=True)
    finally:
        _context.suppressed.reset(token)

