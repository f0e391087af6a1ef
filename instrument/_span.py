"""Span start for the call pipeline: the SDK's own span class, without the SDK's per-span generality.

``Tracer.start_span`` validates every attribute into a fresh ``BoundedAttributes``, asks the sampler
through two layers, calls every processor's ``on_start``, and at ``end`` copies the span for the
processors: about 18 µs here, the largest part of a call's overhead. A call's attributes are known and
valid per :class:`~instrument._call.Op`, so they are validated once (by the SDK's own
``BoundedAttributes``, under the provider's limits) and copied per span; the span is the SDK's ``Span``
class, so everything downstream (processors, exporters, ``set_attribute``, ``record_exception``,
``trace.get_current_span()``) sees what it always sees.

This applies only where nothing could observe the difference: an SDK tracer whose processors do
nothing on start or ending (the SDK's batch and simple processors), the SDK's own samplers, and no SDK
self-metrics. Anything else (an application's span processor, a custom sampler) gets
``Tracer.start_span`` unchanged; :func:`start` decides once per tracer and processor set.
"""

from __future__ import annotations

import random
import threading
from time import time_ns
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span, SpanProcessor, SynchronousMultiSpanProcessor, Tracer, sampling
try:
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
except ImportError:  # an SDK older than the one this path mirrors: Tracer.start_span throughout
    NoOpTracerMetrics = None  # type: ignore[assignment,misc]
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import DEFAULT_TRACE_STATE, NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY

__all__ = ["CallSpan", "start"]

_get_current_span = trace_api.get_current_span
_Lock = threading.Lock
_new = object.__new__
_tuple_new = tuple.__new__
_bits = random.getrandbits
_DEFAULT_STATE = DEFAULT_TRACE_STATE
_SAMPLED = TraceFlags.SAMPLED
_UNSET = trace_api.Status(trace_api.StatusCode.UNSET)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", None)  # W3C level 2 flag; SDKs that set it have the hooks below
# Tracer._is_enabled() is `return self._tracer_config.is_enabled`: start() reads that inline (one call fewer)
_ENABLED_INLINE = getattr(getattr(Tracer, "_is_enabled", None), "__code__", None) is not None and \
    Tracer._is_enabled.__code__.co_names == ("_tracer_config", "is_enabled")
_QUIET_START = {SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start}
_QUIET_ENDING = {getattr(cls, "_on_ending", None) for cls in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)}
_PLAIN = {str, int, float, bool}
# SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid). Its properties
# are Python functions; on the hot path the fields are read by index (checked below, at import).
TRACE_ID, SPAN_ID, IS_REMOTE, FLAGS, STATE, IS_VALID = range(6)
assert tuple(SpanContext(3, 5, True, TraceFlags(1))) == (3, 5, True, 1, DEFAULT_TRACE_STATE, True)
_KNOWN_SAMPLERS = (sampling.StaticSampler, sampling.TraceIdRatioBased, sampling.ParentBased,
                   sampling.ParentBasedTraceIdRatio)


class CallSpan(Span):
    """The SDK's span, built field by field from a validated template; handed to the processors itself
    at its end (it refuses every change once ended, so it is its own snapshot). Events and links lists
    are made on first use: most calls have neither."""

    def set_attribute(self, key: str, value: Any) -> None:
        # str/int/float/bool need no cleaning without a value length limit: set them as BoundedAttributes would
        if value.__class__ in _PLAIN and key.__class__ is str and key:
            attrs = self._attributes
            with self._lock:
                values = attrs._dict  # noqa: SLF001
                if (self._end_time is None and attrs.max_value_len is None
                        and (key in values or attrs.maxlen is None or len(values) < attrs.maxlen)):
                    values.pop(key, None)
                    values[key] = value
                    return
        Span.set_attribute(self, key, value)  # anything else, and the SDK's warnings, as the SDK does it

    def _add_event(self, event: Any) -> None:
        self._append("_events", event, self._limits.max_events, Span._add_event)

    def _add_link(self, link: Any) -> None:
        self._append("_links", link, self._limits.max_links, Span._add_link)

    def _append(self, name: str, item: Any, maxlen: int | None, ended: Any) -> None:
        with self._lock:
            if self._end_time is None:
                fields = self.__dict__
                items = fields[name]
                if items.__class__ is tuple:
                    items = fields[name] = BoundedList(maxlen)
                items.append(item)
                return
        ended(self, item)  # the SDK's own warning for an ended span

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                ended = True
            else:
                ended = False
                self._end_time = end_time if end_time is not None else time_ns()
                self._attributes._immutable = True  # noqa: SLF001
        if ended:
            Span.end(self)  # logs the SDK's "end() on an ended span" warning
            return
        processor = self._span_processor
        plan = _plan[0]
        enders = plan.enders if plan is not None and plan.multi is processor else None
        if enders is not None and plan.processors is processor._span_processors:  # noqa: SLF001
            for on_end in enders:  # what the processors do on end, resolved once per processor set
                on_end(self)
        else:
            processor.on_end(self)


class _Plan:
    """What spans from one SDK tracer need, resolved once: or ``lean=False`` to use ``start_span``."""

    __slots__ = ("bounds", "enders", "flags", "id_generator", "lean", "limits", "multi", "plain", "processors",
                 "random_ids", "real", "resource", "room", "root_random", "sampler", "shared", "source")

    def __init__(self, source: Any) -> None:
        self.source = source
        real = getattr(source, "_real_tracer", source) or source  # a ProxyTracer's, once its provider is set
        self.real = real
        self.lean = False
        self.multi = self.processors = self.sampler = self.resource = self.enders = None
        if (type(real) is not Tracer or _RANDOM is None or not hasattr(real, "_is_enabled")
                or NoOpTracerMetrics is None
                or not isinstance(getattr(real, "_tracer_metrics", None), NoOpTracerMetrics)):
            return
        multi = real.span_processor
        processors = getattr(multi, "_span_processors", None)
        if processors is None:
            return
        # What current() compares, set before any way out: an ineligible plan is cached as well
        self.multi, self.processors, self.resource = multi, processors, real.resource
        sampler = self.sampler = real.sampler
        for p in processors:
            if type(p).on_start not in _QUIET_START or getattr(type(p), "_on_ending", None) not in _QUIET_ENDING:
                return
        if type(sampler) not in _KNOWN_SAMPLERS:  # exact types: a subclass may add attributes or decide otherwise
            return
        # The SDK's own samplers (always_on/off, traceidratio, directly or as ParentBased delegates) decide
        # without a call: by comparing the trace id's low 64 bits with a bound per parent slot.
        self.bounds = _bounds(sampler)
        self.id_generator = real.id_generator
        self.random_ids = type(self.id_generator) is RandomIdGenerator  # ids drawn here, as it draws them
        self.limits = real._span_limits  # noqa: SLF001
        self.plain = self.limits.max_span_attribute_length is None
        maximum = self.limits.max_span_attributes
        self.room = 2**31 if maximum is None else maximum  # attributes a span may hold
        self.root_random = self.id_generator.is_trace_id_random()
        # [sampled][random]: indexed by the two bools (a bool is a list index), no key built per span
        self.flags = [[TraceFlags(TraceFlags.SAMPLED * s | (_RANDOM if r else 0)) for r in (0, 1)] for s in (0, 1)]
        self.shared = {
            "_instrumentation_info": real.instrumentation_info,
            "_instrumentation_scope": real._instrumentation_scope,  # noqa: SLF001
            "_end_time": None, "_events": (), "_links": (), "_resource": real.resource, "_status": _UNSET,
            "_sampler": sampler, "_trace_config": None, "_record_exception": True,
            "_set_status_on_exception": True, "_span_processor": multi, "_limits": self.limits,
            "_record_end_metrics": None,
        }
        self.enders = _enders(multi, processors)
        self.lean = True

    def current(self) -> bool:
        """Still true of its tracer: same processors, sampler and resource (renewed after a fork), or for a
        ProxyTracer, same real tracer."""
        if self.multi is None:
            return (getattr(self.source, "_real_tracer", self.source) or self.source) is self.real
        real = self.real
        return (self.multi._span_processors is self.processors  # noqa: SLF001
                and real.sampler is self.sampler and real.resource is self.resource)

    def template(self, attributes: dict[str, Any]) -> BoundedAttributes:
        """``attributes`` validated as the SDK validates a span's (cached on the op by the caller)."""
        return BoundedAttributes(self.limits.max_span_attributes, attributes, immutable=False,
                                 max_value_len=self.limits.max_span_attribute_length)


def _enders(multi: Any, processors: tuple[Any, ...]) -> tuple[Any, ...]:
    """What ending a (sampled) span calls: each processor's ``on_end``, or for the SDK's batch processor
    the queue's ``emit`` that its ``on_end`` calls for a sampled span; the multi-processor's loop and the
    batch processor's sampled check (three property reads) are done here once instead of per span."""
    if type(multi) is not SynchronousMultiSpanProcessor:
        return (multi.on_end,)
    enders = []
    for p in processors:
        queue = getattr(p, "_batch_processor", None)
        if type(p) is BatchSpanProcessor and callable(getattr(queue, "emit", None)):
            enders.append(queue.emit)
        else:
            enders.append(p.on_end)
    return tuple(enders)


_LOW_64 = sampling.TraceIdRatioBased.TRACE_ID_LIMIT  # the bits TraceIdRatioBased decides on
_ALWAYS = _LOW_64 + 1  # a bound every trace id is below: always sampled (0: never)


def _bound(sampler: Any) -> int | None:
    """A sampler's decision as a bound: sampled when ``trace_id & _LOW_64 < bound``, as TraceIdRatioBased
    decides; always_on/off as the bounds that every and no trace id is below. None: not one of these."""
    if type(sampler) is sampling.StaticSampler:
        return _ALWAYS if sampler._decision.is_sampled() else 0  # noqa: SLF001
    if type(sampler) is sampling.TraceIdRatioBased:
        return sampler.bound
    return None


def _bounds(sampler: Any) -> tuple[int, int, int, int, int] | None:
    """For the SDK's ParentBased over static or ratio samplers, or such a sampler alone: the bound for
    (root, remote sampled, remote unsampled, local sampled, local unsampled). None: ask the sampler per span.
    What these samplers return besides the decision is what the span gets anyway: the parent's trace state,
    and the span's own attributes when sampled."""
    if type(sampler) in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio):
        delegates = (sampler._root, sampler._remote_parent_sampled,  # noqa: SLF001
                     sampler._remote_parent_not_sampled, sampler._local_parent_sampled,  # noqa: SLF001
                     sampler._local_parent_not_sampled)  # noqa: SLF001
    else:
        delegates = (sampler,) * 5
    bounds = tuple(_bound(d) for d in delegates)
    return None if None in bounds else bounds  # type: ignore[return-value]


_plan: list[_Plan | None] = [None]


def start(source: Any, name: str, kind: trace_api.SpanKind, attributes: dict[str, Any],
          template: Any, extra: Any, parent: Any, links: Any) -> tuple[Any, Any]:
    """A started span for a call, and the attribute template to cache for ``attributes`` (or None).

    ``template`` is the one previously returned for the same attributes and tracer (or None);
    ``extra`` holds per-call attributes on top of them, or is a function returning them, called only when
    the span needs them (a sampled span, or a sampler that reads attributes): a sampled-out request's
    attributes are never built. ``parent`` is the Context to start the span in (the current one, or an
    explicit parent's).
    """
    plan = _plan[0]
    if plan is None or plan.source is not source or not plan.current():
        plan = _plan[0] = _Plan(source)
    if not plan.lean or not (plan.real._tracer_config.is_enabled if _ENABLED_INLINE  # noqa: SLF001
                             else plan.real._is_enabled()):  # noqa: SLF001
        if extra.__class__ is not dict and callable(extra):  # a function: build them now
            extra = extra()
        merged = attributes if not extra else {**attributes, **extra}
        return source.start_span(name, context=parent, kind=kind, attributes=merged, links=links), None
    if template is None or template[0] is not plan:
        validated = plan.template(attributes)
        state = {k: v for k, v in validated.__dict__.items() if k not in ("_dict", "_lock")}
        template = (plan, validated, state)
    current = parent.get(_SPAN_KEY) if parent is not None else _get_current_span()
    parent_sc = current.get_span_context() if current is not None else None
    if parent_sc is None or not parent_sc[IS_VALID]:
        parent_sc = None
        if plan.random_ids:
            trace_id = _bits(128)
            while not trace_id:  # the SDK's RandomIdGenerator draws again for the invalid id 0
                trace_id = _bits(128)
        else:
            trace_id = plan.id_generator.generate_trace_id()
        random_flag = plan.root_random
        trace_state = None
        slot = 0
    else:
        trace_id = parent_sc[TRACE_ID]
        flags = parent_sc[FLAGS]
        random_flag = flags & _RANDOM
        trace_state = parent_sc[STATE]
        slot = (1 if parent_sc[IS_REMOTE] else 3) + (0 if flags & _SAMPLED else 1)
    bounds = plan.bounds
    if bounds is not None:
        sampled = trace_id & _LOW_64 < bounds[slot]
    else:
        if extra.__class__ is not dict and callable(extra):  # a function: build them now
            extra = extra()
        merged = attributes if not extra else {**attributes, **extra}
        result = plan.sampler.should_sample(parent, trace_id, name, kind, merged, links)
        sampled = result.decision.is_sampled()
        trace_state = result.trace_state
    flags = plan.flags[sampled][random_flag != 0]
    if plan.random_ids:
        span_id = _bits(64)
        while not span_id:
            span_id = _bits(64)
        # SpanContext(...) without its range checks: both ids are non-zero and drawn within range
        context = _tuple_new(SpanContext, (trace_id, span_id, False, flags, trace_state or _DEFAULT_STATE, True))
    else:
        context = SpanContext(trace_id, plan.id_generator.generate_span_id(), False, flags, trace_state)
    if not sampled:  # the SDK's samplers record exactly what they sample
        span = _new(NonRecordingSpan)
        span._context = context  # noqa: SLF001 - all that NonRecordingSpan.__init__ does
        return span, template
    if extra.__class__ is not dict and callable(extra):  # a function: build them now
        extra = extra()
    attrs = _new(BoundedAttributes)
    attrs.__dict__ = {**template[2], "_dict": template[1]._dict.copy(), "_lock": _Lock()}  # noqa: SLF001
    if extra:
        values = attrs._dict  # noqa: SLF001
        if plan.plain and len(values) + len(extra) <= plan.room:
            # str/int/float/bool need no cleaning when no value length limit applies; the rest is the SDK's
            for key, value in extra.items():
                if value.__class__ in _PLAIN and key.__class__ is str and key:
                    values.pop(key, None)
                    values[key] = value
                else:
                    attrs[key] = value
        else:
            attrs._set_items(extra)  # noqa: SLF001 - validated as the SDK would
    span = _new(CallSpan)
    span.__dict__ = {**plan.shared, "_name": name, "_context": context, "_kind": kind, "_parent": parent_sc,
                     "_attributes": attrs, "_lock": _Lock(), "_start_time": time_ns()}
    if links:
        span._links = Span._new_links(span, links)  # noqa: SLF001 - the SDK's link validation
    return span, template
