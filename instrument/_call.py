"""The call pipeline: the one place that wraps a patched call.

An integration describes *where* a call goes once (an :class:`Endpoint`: kind, system, target identity,
static attributes, how the client fails) and *what* it does per operation (an :class:`Op`, cached on the
endpoint). Per call it hands over the wrapped function and its arguments; :meth:`Endpoint.call` (sync)
and :meth:`Endpoint.acall` (async) then run, around it:

    span start -> context injection -> [policies ... -> faults] -> the client call -> span end,
    duration histogram, failure/slow-call log event

Everything that does not change per call (attribute dicts, metric attribute sets, the policy chain)
is computed once per endpoint or per operation. Any failure in this module's own code is contained
(:func:`instrument._safety.report`): the application sees exactly the result or exception of its call.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import (
    _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH,
    TraceContextTextMapPropagator,
)

from instrument import _context, _instruments, _span
from instrument._safety import report
from instrument.errors import Rejected

__all__ = ["CallState", "ClientErrors", "Endpoint", "Op", "endpoint", "error_type"]

_perf = time.perf_counter
_suppressed = _context.suppressed
_current = _context.current
_otel_current = _context.otel_current  # OpenTelemetry's current Context
_SUPPRESS_KEY = _SUPPRESS_INSTRUMENTATION_KEY  # OpenTelemetry's own suppression (the SDK's exports ...)
_NonRecordingSpan = trace.NonRecordingSpan
_CallSpan = _span.CallSpan
_TRACE_ID, _SPAN_ID, _FLAGS, _STATE, _IS_VALID = _span.TRACE_ID, _span.SPAN_ID, _span.FLAGS, _span.STATE, _span.IS_VALID
_NO_STATE = trace.DEFAULT_TRACE_STATE
OWN_SPANS = (_CallSpan, _NonRecordingSpan)  # spans whose context is their ``_context`` (no method call)

_set_span_in_context = trace.set_span_in_context
_start_span = _span.start
_w3c_textmap: list[Any] = [None]
_HEX2 = [f"{i:02x}" for i in range(256)]  # trace flags as traceparent writes them
_FLAGS_OF = [TraceFlags(i) for i in range(256)]  # and as a SpanContext holds them
_new = object.__new__
_tuple_new = tuple.__new__  # set by _otel._setup_propagators to the composite it installed, if plain W3C


def _inject(carrier: MutableMapping[str, str], span: trace.Span) -> None:
    """``propagate.inject(carrier, set_span_in_context(span))``, written directly for the default propagators.

    When the global propagator is still the plain tracecontext(+baggage) composite that init() installed,
    all the generic path would write is ``traceparent`` (and ``tracestate``), byte for byte as below, and
    the context's ``baggage`` as the composite's own baggage propagator writes it (see :func:`_baggage`).
    Anything else (b3, jaeger, an application's propagator) takes the generic path.
    """
    textmap = propagate.get_global_textmap()
    if textmap is _w3c_textmap[0]:
        sc = span._context if span.__class__ in OWN_SPANS else span.get_span_context()  # noqa: SLF001
        if sc[_IS_VALID]:
            # ids as big-endian bytes in hex: the same text as "%032x"/"%016x", in about half the time
            carrier["traceparent"] = \
                f"00-{sc[_TRACE_ID].to_bytes(16, 'big').hex()}-{sc[_SPAN_ID].to_bytes(8, 'big').hex()}-{_HEX2[sc[_FLAGS]]}"
            state = sc[_STATE]
            if state is not _NO_STATE and state:  # (the default empty state, without TraceState.__len__)
                carrier["tracestate"] = state.to_header()
        entries = _otel_current().get(_BAGGAGE_KEY)
        if entries and _w3c_baggage[0] is not None:
            header = _baggage(entries)
            if header:
                carrier["baggage"] = header
        return
    textmap.inject(carrier, context=_set_span_in_context(span))


_w3c_baggage: list[Any] = [None]  # set by _otel._setup_propagators: the composite's W3CBaggagePropagator
_last_baggage: list[tuple[Any, str | None] | None] = [None]


def _baggage(entries: Any) -> str | None:
    """The ``baggage`` header for a context's baggage, written by the baggage propagator itself, once per
    baggage: the API never changes a context's baggage in place (``set_baggage`` copies it), so the last
    one's header is kept with it and reused while calls run under the same baggage (it is held here, so its
    identity cannot be reused by another)."""
    last = _last_baggage[0]
    if last is not None and last[0] is entries:
        return last[1]
    written: dict[str, str] = {}
    _w3c_baggage[0].inject(written, context=Context({_BAGGAGE_KEY: entries}))
    header = written.get("baggage")
    _last_baggage[0] = (entries, header)  # one tuple: a concurrent reader sees the old pair or the new one
    return header


_TRACEPARENT = TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE  # noqa: SLF001 - the SDK's own format
_MAX_STATE = _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


def extract(carrier: Any, getter: Any) -> Any:
    """``propagate.extract(carrier, getter=getter)``, read directly for the default propagators.

    When the global propagator is still the plain tracecontext(+baggage) composite that init() installed,
    the generic path would return a new Context holding the remote span context of a valid ``traceparent``
    (and ``tracestate``), or an empty one, then given to the baggage propagator: built here the same way, with
    the SDK's own header format and ``TraceState.from_header``, and handed to the composite's own baggage
    propagator only when the carrier has ``baggage``, without the composite's layers. Anything else (and a
    ``tracestate`` over the SDK's length limit, for its warning) takes the generic path.
    """
    textmap = propagate.get_global_textmap()
    if textmap is not _w3c_textmap[0]:
        return textmap.extract(carrier, getter=getter)
    ctx = None
    header = getter.get(carrier, "traceparent")
    match = _TRACEPARENT.search(header[0]) if header else None
    if match is not None:
        version, trace_id, span_id, flags, rest = match.groups()
        if not (trace_id == _NO_TRACE or span_id == _NO_SPAN or version == "ff" or (version == "00" and rest)):
            state = _NO_STATE
            fields = getter.get(carrier, "tracestate")
            if fields is not None:
                if sum(map(len, fields)) + len(fields) - 1 > _MAX_STATE:  # the SDK's limit: its path and warning
                    return textmap.extract(carrier, getter=getter)
                state = TraceState.from_header(fields)  # the SDK's parsing (fields joined as RFC 9110 joins them)
            # SpanContext(...) without its range checks (32 and 16 hex digits, neither all zero: valid), and the
            # span without NonRecordingSpan.__init__ (which only stores it)
            span = _new(_NonRecordingSpan)
            span._context = _tuple_new(SpanContext, (int(trace_id, 16), int(span_id, 16), True,  # noqa: SLF001
                                                     _FLAGS_OF[int(flags, 16)], state, True))
            ctx = Context({_SPAN_KEY: span})
    if ctx is None:
        ctx = Context()
    baggage_propagator = _w3c_baggage[0]
    if baggage_propagator is not None and getter.get(carrier, "baggage"):
        return baggage_propagator.extract(carrier, context=ctx, getter=getter)
    return ctx


_ERROR = StatusCode.ERROR
_CancelledError = asyncio.CancelledError


def _any_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


@dataclass(frozen=True, slots=True)
class ClientErrors:
    """How a client library fails, so that policies, faults and error.type look like the real thing.

    ``catch``: exception types users of the client already catch; rejections (CircuitOpen ...) and
    injected faults on this client's calls also subclass the first one. ``message`` gives an exception's
    text with parameter values removed (a database's ``DETAIL: Key (id)=(...)``); it replaces ``str(exc)``
    in the span status, the exception event and the log line. ``connect``/``timeout``/``reset``
    build the client's own exception for a message; ``status`` synthesizes a response with a status
    code and optional Retry-After seconds (HTTP only). ``is_failure`` decides which exceptions count
    against a breaker and are retried; ``describe`` adds attributes for an error (SQLSTATE ...).
    """

    catch: tuple[type[BaseException], ...] = ()
    connect: Callable[[str], BaseException] = ConnectionRefusedError
    timeout: Callable[[str], BaseException] = TimeoutError
    reset: Callable[[str], BaseException] = ConnectionResetError
    status: Callable[[int, float | None], Any] | None = None
    is_failure: Callable[[BaseException], bool] = _any_exception
    is_timeout: Callable[[BaseException], bool] = _is_timeout
    describe: Callable[[BaseException], Mapping[str, Any] | None] | None = None
    message: Callable[[BaseException], str] | None = None  # an exception's text without values or secrets


DEFAULT_ERRORS = ClientErrors()

_error_types: dict[type, str] = {}


def error_type(exc: BaseException) -> str:
    """``error.type`` for an exception: its fully qualified class name (builtins unqualified)."""
    cls = type(exc)
    name = _error_types.get(cls)
    if name is None:
        module = cls.__module__
        name = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        if len(_error_types) < 1024:
            _error_types[cls] = name
    return name


_HISTOGRAM = {
    "http": "http.client.request.duration",
    "db": "db.client.operation.duration",
    "messaging": "messaging.client.operation.duration",
}
_OPERATION_KEY = {"http": "http.request.method", "db": "db.operation.name", "messaging": "messaging.operation.name"}
_SUBJECT_KEY = {"db": "db.collection.name", "messaging": "messaging.destination.name"}


class Op:
    """One kind of operation on one endpoint (``GET``, ``SELECT users``, ``publish orders``).

    Holds everything per-operation that the hot path would otherwise rebuild: span name, kind and
    attributes, the histogram, and the metric attribute dicts per outcome.
    """

    __slots__ = ("counter", "endpoint", "histogram", "idempotent", "metric_base", "name",
                 "span_attributes", "span_kind", "span_name", "subject", "_metric_attrs", "_ok", "_span_template")

    def __init__(self, endpoint: Endpoint, name: str, subject: str | None, *, span_name: str,
                 span_kind: SpanKind, histogram: str, counter: str | None, idempotent: bool,
                 span_attributes: dict[str, Any], metric_base: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.name = name
        self.subject = subject
        self.span_name = span_name
        self.span_kind = span_kind
        self.histogram = _instruments.get(histogram)
        self.counter = _instruments.get(counter) if counter else None
        self.idempotent = idempotent
        self.span_attributes = span_attributes
        self.metric_base = metric_base
        self._metric_attrs: dict[tuple[int | None, str | None], tuple[dict[str, Any], Any, Any]] = {}
        self._span_template: Any = None  # span_attributes validated once (instrument._span)
        self._ok: tuple[dict[str, Any], Any, Any] | None = None  # outcome(None, None), once known

    def with_span_attributes(self, extra: Mapping[str, Any]) -> Op:
        """This operation with span attributes of its own on top (a SQL statement's text): merged and
        validated once instead of per call. The metrics, and their cached outcomes, stay shared."""
        op = Op.__new__(Op)
        for name in Op.__slots__:
            setattr(op, name, getattr(self, name))
        op.span_attributes = {**self.span_attributes, **extra}
        op._span_template = None
        return op

    def metric_attributes(self, status: int | None, error: str | None) -> dict[str, Any]:
        """The (cached, shared, never mutated) metric attributes for one outcome."""
        return self.outcome(status, error)[0]

    def outcome(self, status: int | None, error: str | None) -> tuple[dict[str, Any], Any, Any]:
        """Metric attributes for one outcome, and the histogram and counter bound to them (all cached)."""
        key = (status, error)
        found = self._metric_attrs.get(key)
        if found is None:
            attrs = dict(self.metric_base)
            if status is not None:
                attrs["http.response.status_code"] = status
            if error is not None:
                attrs["error.type"] = error
            found = (attrs, self.histogram.bind(attrs), self.counter.bind(attrs) if self.counter else None)
            if len(self._metric_attrs) < 64:
                self._metric_attrs[key] = found
            if status is None and error is None:
                self._ok = found
        return found


class CallState:
    """What policies and faults may read or note about the running call (see ``_context.current``)."""

    __slots__ = ("count", "op", "resend_count", "span", "start")

    def __init__(self, op: Op, span: trace.Span, start: float) -> None:
        self.op = op
        self.span = span
        self.start = start
        self.resend_count = 0
        self.count = 1

    @property
    def idempotent(self) -> bool:
        return self.op.idempotent

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.span.add_event(name, attributes)


DeadlineHook = Callable[[tuple[Any, ...], dict[str, Any], float], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(eq=False)
class Endpoint:
    """A dependency as seen by one client library: resolved once per target, then reused per call.

    Build it with :func:`endpoint` (cached). ``status_of(result)`` reads a status code from a result
    (HTTP); codes ``>= error_status`` set error.type and the span's error status. ``apply_deadline``
    hands the remaining deadline of a Timeout policy to the client's own timeout arguments.
    """

    kind: str
    system: str
    target: str
    server_address: str | None = None
    server_port: int | None = None
    namespace: str | None = None
    errors: ClientErrors = DEFAULT_ERRORS
    status_of: Callable[[Any], int | None] | None = None
    error_status: int = 400
    apply_deadline: DeadlineHook | None = None
    policies: bool = True  # False: telemetry only (consumer process spans must not be retried or cut short)
    span_attributes: dict[str, Any] = field(default_factory=dict)
    metric_attributes: dict[str, Any] = field(default_factory=dict)
    _ops: dict[tuple[str, str | None, SpanKind | None, bool, str | None], Op] = field(default_factory=dict, repr=False)
    _chain: Any = field(default=None, repr=False)
    _chain_generation: int = field(default=-1, repr=False)
    _in_flight: set[int] = field(default_factory=set, repr=False)
    # (statement, parameterized, dialect) -> the statement's Op: instrument._dbapi.prepare's cache
    statements: dict[tuple[str, bool, str | None], Op] = field(default_factory=dict, repr=False)

    # -- per operation ---------------------------------------------------------------------------

    def op(self, name: str, subject: str | None = None, *, span_kind: SpanKind | None = None,
           span_name: str | None = None, histogram: str | None = None, counter: str | None = None,
           idempotent: bool = True, attributes: Mapping[str, Any] | None = None) -> Op:
        """The cached :class:`Op` for ``name`` on ``subject`` (table, queue, topic). Cheap after the first call."""
        key = (name, subject, span_kind, idempotent, span_name)
        found = self._ops.get(key)
        if found is not None:
            return found
        kind = self.kind
        span_attrs = dict(self.span_attributes)
        metric_attrs = dict(self.metric_attributes)
        if name:
            span_attrs[_OPERATION_KEY.get(kind, "operation.name")] = name
            metric_attrs[_OPERATION_KEY.get(kind, "operation.name")] = name
        subject_key = _SUBJECT_KEY.get(kind)
        if subject and subject_key:
            span_attrs[subject_key] = subject
            if kind == "messaging":
                metric_attrs[subject_key] = subject
        if attributes:
            span_attrs.update(attributes)
        if span_name is None:
            span_name = _default_span_name(self, name, subject)
        created = Op(self, name, subject, span_name=span_name, span_kind=span_kind or SpanKind.CLIENT,
                     histogram=histogram or _HISTOGRAM.get(kind, "http.client.request.duration"),
                     counter=counter, idempotent=idempotent, span_attributes=span_attrs, metric_base=metric_attrs)
        if len(self._ops) < 256:  # bounded: operation names come from code, but be safe
            self._ops[key] = created
        return created

    # -- the call --------------------------------------------------------------------------------

    def call(self, op: Op, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             attributes: Mapping[str, Any] | None = None, carrier: MutableMapping[str, str] | None = None,
             on_result: Callable[[trace.Span, Any], None] | None = None, parent: Any = None,
             links: Any = None, activate: bool = False, deadline_hook: DeadlineHook | None = None) -> Any:
        """Run ``fn(*args, **kwargs)`` as ``op`` on this endpoint, with telemetry and policies."""
        ctx = _otel_current()
        if _suppressed.get() or ctx.get(_SUPPRESS_KEY):
            return fn(*args, **kwargs)
        try:
            state = self._start(op, attributes, carrier, ctx if parent is None else parent, links)
            chain = self._chain if self._chain_generation == _context.generation.value else self._rebuild()
        except Exception as exc:  # noqa: BLE001 - never let our code break the call
            report("call start", exc)
            return fn(*args, **kwargs)
        # A consumer span (activate=True) wraps application code whose own calls must be traced.
        token = _suppressed.set(not activate)
        state_token = _current.set(state)  # read by policies, faults, message handlers, integrations
        activated = _activate(state.span) if activate else None
        try:
            if chain is None:
                result = fn(*args, **kwargs)
            else:
                result = chain.call(self._invoke, fn, args, kwargs, deadline_hook or self.apply_deadline)
        except BaseException as exc:
            if activated is not None:
                _detach(activated)
            _current.reset(state_token)
            _suppressed.reset(token)
            self._finish(state, None, exc, on_result)
            raise
        if activated is not None:
            _detach(activated)
        _current.reset(state_token)
        _suppressed.reset(token)
        self._finish(state, result, None, on_result)
        return result

    async def acall(self, op: Op, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                    attributes: Mapping[str, Any] | None = None, carrier: MutableMapping[str, str] | None = None,
                    on_result: Callable[[trace.Span, Any], None] | None = None, parent: Any = None,
                    links: Any = None, activate: bool = False, deadline_hook: DeadlineHook | None = None) -> Any:
        """The async twin of :meth:`call`: ``fn`` returns an awaitable."""
        ctx = _otel_current()
        if _suppressed.get() or ctx.get(_SUPPRESS_KEY):
            return await fn(*args, **kwargs)
        try:
            state = self._start(op, attributes, carrier, ctx if parent is None else parent, links)
            chain = self._chain if self._chain_generation == _context.generation.value else self._rebuild()
        except Exception as exc:  # noqa: BLE001 - never let our code break the call
            report("call start", exc)
            return await fn(*args, **kwargs)
        token = _suppressed.set(not activate)
        state_token = _current.set(state)  # read by policies, faults, message handlers, integrations
        activated = _activate(state.span) if activate else None
        try:
            if chain is None:
                result = await fn(*args, **kwargs)
            else:
                result = await chain.acall(self._ainvoke, fn, args, kwargs, deadline_hook or self.apply_deadline)
        except BaseException as exc:
            if activated is not None:
                _detach(activated)
            _current.reset(state_token)
            _suppressed.reset(token)
            self._finish(state, None, exc, on_result)
            raise
        if activated is not None:
            _detach(activated)
        _current.reset(state_token)
        _suppressed.reset(token)
        self._finish(state, result, None, on_result)
        return result

    @contextmanager
    def span(self, op: Op, *, attributes: Mapping[str, Any] | None = None, parent: Any = None,
             links: Any = None, activate: bool = True) -> Iterator[CallState | None]:
        """A span (and metrics) around a block rather than a call: for work that spans a ``yield``,
        such as a consumer generator handing one message to the application. No policies apply."""
        ctx = _otel_current()
        if _suppressed.get() or ctx.get(_SUPPRESS_KEY):
            yield None
            return
        try:
            state = self._start(op, attributes, None, ctx if parent is None else parent, links)
        except Exception as exc:  # noqa: BLE001 - never let our code break the block
            report("span start", exc)
            yield None
            return
        activated = _activate(state.span) if activate else None
        try:
            yield state
        except BaseException as exc:
            _detach(activated)
            self._finish(state, None, exc, None)
            raise
        _detach(activated)
        self._finish(state, None, None, None)

    # -- pieces ----------------------------------------------------------------------------------

    @staticmethod
    def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                hook: DeadlineHook | None) -> Any:
        """The innermost step: hand a Timeout policy's remaining deadline to the client, then call."""
        if hook is not None:
            left = _context.remaining()
            if left is not None:
                args, kwargs = hook(args, kwargs, left)
        return fn(*args, **kwargs)

    @staticmethod
    async def _ainvoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                       hook: DeadlineHook | None) -> Any:
        if hook is not None:
            left = _context.remaining()
            if left is not None:
                args, kwargs = hook(args, kwargs, left)
        return await fn(*args, **kwargs)

    def _start(self, op: Op, attributes: Mapping[str, Any] | None, carrier: MutableMapping[str, str] | None,
               parent: Any, links: Any) -> CallState:
        span, op._span_template = _start_span(_instruments.tracer(), op.span_name, op.span_kind,
                                              op.span_attributes, op._span_template, attributes, parent, links)
        if carrier is not None:
            _inject(carrier, span)
        state = CallState(op, span, _perf())
        if self.kind == "http":  # http.client.active_requests
            self._in_flight.add(id(state))
        return state

    def _finish(self, state: CallState, result: Any, exc: BaseException | None,
                on_result: Callable[[trace.Span, Any], None] | None) -> None:
        try:
            duration = _perf() - state.start
            if self.kind == "http":
                self._in_flight.discard(id(state))
            op = state.op
            span = state.span
            status: int | None = None
            error: str | None = None
            if exc is None:
                if self.status_of is not None:
                    status = self.status_of(result)
                    if status is not None and status >= self.error_status:
                        error = str(status)
                if on_result is not None:
                    on_result(span, result)
            elif not isinstance(exc, (_CancelledError, GeneratorExit)):  # cancelled or abandoned: not an error
                error = error_type(exc)
            cls = span.__class__
            if cls is _NonRecordingSpan:  # sampled out: nothing to set, nothing to end
                sc = span._context  # noqa: SLF001
            else:
                if (status is not None or error is not None or state.resend_count) and (
                        span._end_time is None if cls is _CallSpan else span.is_recording()):  # noqa: SLF001
                    self._annotate(span, state, status, error, exc)
                span.end()
                sc = span._context if cls is _CallSpan else span.get_span_context()  # noqa: SLF001
            found = op._ok if status is None and error is None else None  # noqa: SLF001 - the common outcome
            _attrs, histogram, counter = found if found is not None else op.outcome(status, error)
            histogram.record(duration, sc)  # a sampled span becomes the exemplar
            if counter is not None:
                counter.add(state.count)
            if error is not None or duration >= _slow_threshold[0]:
                _log_call(self, state, duration, status, error, exc)
        except Exception as internal:  # noqa: BLE001 - never let our code break the call
            report("call finish", internal)

    def _annotate(self, span: trace.Span, state: CallState, status: int | None, error: str | None,
                  exc: BaseException | None) -> None:
        """A recording span's outcome: status code, resends, and for a failure error.type, the exception
        (its text cleaned of values and secrets) and the error status."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if state.resend_count and self.kind == "http":
            span.set_attribute("http.request.resend_count", state.resend_count)
        if error is not None:
            span.set_attribute("error.type", error)
            if exc is not None:
                errors = self.errors
                extra = errors.describe(exc) if errors.describe is not None else None
                if extra:
                    span.set_attributes(extra)
                if isinstance(exc, Rejected):  # our own refusal: its span event says why, no stack
                    text = str(exc)
                elif errors.message is None:
                    span.record_exception(exc)
                    text = str(exc)
                else:  # the exception's own text may hold secrets: record cleaned text only
                    text = errors.message(exc)
                    span.record_exception(exc, attributes={"exception.message": text,
                                                           "exception.stacktrace": _stack(exc, text)})
                span.set_status(Status(_ERROR, f"{type(exc).__name__}: {text}"[:512]))
            else:
                span.set_status(Status(_ERROR))

    def _rebuild(self) -> Any:
        """Resolve the policy and fault chain for this target from the current rules."""
        generation = _context.generation.value
        chain = None
        if not self.policies:
            self._chain, self._chain_generation = None, generation
            return None
        try:
            from instrument._chain import build_chain

            chain = build_chain(self)
        except Exception as exc:  # noqa: BLE001 - a broken rule set must not break calls
            report("policy chain", exc)
        self._chain = chain
        self._chain_generation = generation
        return chain

    @property
    def active_requests(self) -> int:
        return len(self._in_flight)


def _stack(exc: BaseException, text: str) -> str:
    """A stack trace whose last line is the cleaned message (frames' source lines scrubbed of URL secrets)."""
    from instrument._http import scrub

    frames = "".join(traceback.format_tb(exc.__traceback__))
    return scrub(f"Traceback (most recent call last):\n{frames}{error_type(exc)}: {text}\n")


def _activate(span: trace.Span) -> object:
    return _context.otel_attach(_set_span_in_context(span))


def _detach(activated: object) -> None:
    if activated is not None:
        try:
            _context.otel_detach(activated)
        except Exception as exc:  # noqa: BLE001 - a token of another context: as OpenTelemetry's detach, logged
            report("context detach", exc)


def _default_span_name(ep: Endpoint, name: str, subject: str | None) -> str:
    if ep.kind == "http":
        return "HTTP" if name in ("_OTHER", "") else name
    if ep.kind == "db":
        if name and subject:
            return f"{name} {subject}"
        if name and ep.namespace:
            return f"{name} {ep.namespace}"
        return name or ep.system
    if subject:
        return f"{name} {subject}"
    return name or ep.system


_slow_threshold = [1.0]  # seconds; set by init() from INSTRUMENT_SLOW_CALL_THRESHOLD


def _log_call(ep: Endpoint, state: CallState, duration: float, status: int | None, error: str | None,
              exc: BaseException | None) -> None:
    import structlog

    ctx = state.span.get_span_context()
    fields: dict[str, Any] = {
        "target": ep.target,
        "operation": state.op.name,
        "duration_ms": round(duration * 1000, 3),
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
    }
    if status is not None:
        fields["status_code"] = status
    log = structlog.get_logger("instrument")
    if error is not None:
        fields["error_type"] = error
        if exc is not None:
            message = ep.errors.message
            fields["error"] = (message(exc) if message is not None else str(exc))[:300]
        log.warning("call.failed", **fields)
    else:
        log.info("call.slow", **fields)


_endpoints: dict[tuple[str, str, str, bool, str], Endpoint] = {}
_ENDPOINTS_MAX = 4096


def endpoint(kind: str, system: str, target: str, *, server_address: str | None = None,
             server_port: int | None = None, namespace: str | None = None,
             errors: ClientErrors = DEFAULT_ERRORS, status_of: Callable[[Any], int | None] | None = None,
             error_status: int = 400, apply_deadline: DeadlineHook | None = None,
             attributes: Mapping[str, Any] | None = None, policies: bool = True, client: str = "") -> Endpoint:
    """The cached :class:`Endpoint` for ``(kind, system, target)``; built on first use.

    ``kind`` is ``http``, ``db`` or ``messaging``; ``target`` is the identity policies and faults
    match on, e.g. ``http://payments:8080``, ``postgresql://db:5432/orders``, ``rabbitmq://mq:5672``.
    ``policies=False`` makes a telemetry-only endpoint (no policy or fault ever applies). ``client`` names
    the library: an endpoint describes how *a library* fails (exception types, response objects, timeout
    arguments), so two libraries calling the same target get two endpoints.
    """
    key = (kind, system, target, policies, client)
    found = _endpoints.get(key)
    if found is not None:
        return found
    span_attrs: dict[str, Any] = {}
    metric_attrs: dict[str, Any] = {}
    if kind == "db":
        span_attrs["db.system.name"] = metric_attrs["db.system.name"] = system
        if namespace:
            span_attrs["db.namespace"] = metric_attrs["db.namespace"] = namespace
    elif kind == "messaging":
        span_attrs["messaging.system"] = metric_attrs["messaging.system"] = system
    if server_address:
        span_attrs["server.address"] = metric_attrs["server.address"] = server_address
    if server_port is not None:
        span_attrs["server.port"] = metric_attrs["server.port"] = server_port
    if attributes:
        span_attrs.update(attributes)
    if kind == "http" and errors.message is None:
        # HTTP clients put the request URL in their error text (urllib3's "Max retries exceeded with url:
        # /x?token=..."): every exception message is scrubbed like url.full before it is recorded.
        from instrument._http import scrub

        errors = replace(errors, message=lambda exc: scrub(str(exc)))
    created = Endpoint(kind, system, target, server_address, server_port, namespace, errors, status_of,
                       error_status, apply_deadline, policies, span_attrs, metric_attrs)
    if len(_endpoints) >= _ENDPOINTS_MAX:
        _endpoints.pop(next(iter(_endpoints)))  # oldest first: insertion order
    _endpoints[key] = created
    return created


def endpoints() -> list[Endpoint]:
    """Every endpoint seen so far (for observable metrics and ``instrument doctor``)."""
    return list(_endpoints.values())
