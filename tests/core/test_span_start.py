"""The pipeline's span start (instrument._span) gives what the SDK's Tracer.start_span gives.

Each case starts one span through ``_span.start`` and one through the SDK, from a tracer of its own
provider, and compares what processors and exporters read. Where the lean path must not apply (a
processor that acts on start, a custom sampler, span limits), the SDK's own span class comes back.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from instrument import _call, _span

ATTRS = {"db.system.name": "redis", "server.address": "127.0.0.1", "server.port": 6379, "db.operation.name": "GET"}


@pytest.fixture(autouse=True)
def _propagators_restored():  # type: ignore[no-untyped-def]
    """Tests here install propagators of their own (tracecontext only ...): the next module gets init()'s back."""
    saved = propagate.get_global_textmap(), _call._w3c_textmap[0], _call._w3c_baggage[0]
    yield
    propagate.set_global_textmap(saved[0])
    _call._w3c_textmap[0], _call._w3c_baggage[0] = saved[1], saved[2]


def _provider(sampler: Any = None, limits: Any = None) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource({"service.name": "span-test"}), sampler=sampler,
                        span_limits=limits, shutdown_on_exit=False)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def _both(tracer: Any, parent: Any = None, extra: Any = None) -> tuple[Any, Any]:
    lean, _ = _span.start(tracer, "GET", SpanKind.CLIENT, ATTRS, None, extra, parent, None)
    sdk = tracer.start_span("GET", context=parent, kind=SpanKind.CLIENT, attributes={**ATTRS, **(extra or {})})
    return lean, sdk


def _remote(sampled: bool, state: TraceState | None = None) -> Any:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    ctx = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags, trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def _readable(span: Any) -> dict[str, Any]:
    return {"name": span.name, "kind": span.kind, "parent": span.parent, "attributes": dict(span.attributes),
            "resource": span.resource, "scope": span.instrumentation_scope, "status": span.status.status_code,
            "events": [(e.name, dict(e.attributes)) for e in span.events], "links": [(link.context, dict(link.attributes)) for link in span.links],
            "flags": span.context.trace_flags, "state": span.context.trace_state,
            "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links)}


@pytest.mark.parametrize("parent", [None, "sampled", "state"])
def test_lean_span_exports_what_the_sdk_span_exports(parent: str | None) -> None:
    tp, exporter = _provider()
    tracer = tp.get_tracer("instrument", "1")
    ctx = {None: None, "sampled": _remote(True), "state": _remote(True, TraceState([("k", "v")]))}[parent]
    lean, sdk = _both(tracer, ctx, extra={"db.query.text": "GET ?", "server.port": 1, "tags": ["a", "b"]})
    assert type(lean) is _span.CallSpan and type(sdk) is not _span.CallSpan
    assert set(vars(lean)) == set(vars(sdk))  # every field the SDK's span methods and exporters read
    for span in (lean, sdk):
        span.set_attribute("error.type", "X")
        span.set_attribute("http.response.status_code", 503)
        span.set_attribute("server.port", 2)  # overwritten in place
        span.set_attribute("tags", ["c"])
        span.add_event("retry", {"attempt": 2})
        span.add_link(SpanContext(0x99, 0x98, False), {"link.kind": "batch"})
        span.record_exception(ValueError("boom"))
        span.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        span.end()
    got, want = exporter.get_finished_spans()
    assert got.context.trace_id == (0x1234 if ctx else got.context.trace_id)
    a, b = _readable(got), _readable(want)
    assert a["events"][1][1].pop("exception.stacktrace") and b["events"][1][1].pop("exception.stacktrace")
    assert a == b
    assert got.start_time <= got.end_time


def test_ended_lean_span_refuses_changes_like_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    tp, exporter = _provider()
    lean, _ = _both(tp.get_tracer("t"))
    lean.end()
    lean.set_attribute("late", 1)
    lean.add_event("late")
    lean.end()
    (span,) = [s for s in exporter.get_finished_spans() if s is lean]
    assert "late" not in span.attributes and not span.events and not lean.is_recording()
    assert "ended span" in caplog.text


@pytest.mark.parametrize("sampler, parent", [
    (sampling.ParentBased(sampling.ALWAYS_ON), "unsampled"),
    (sampling.ParentBased(sampling.ALWAYS_ON), "sampled"),
    (sampling.ParentBased(sampling.ALWAYS_OFF), None),
    (sampling.ALWAYS_OFF, None),
    (sampling.ALWAYS_ON, "unsampled"),
    (sampling.TraceIdRatioBased(0.0), None),
    (sampling.TraceIdRatioBased(1.0), None),
    (sampling.ParentBasedTraceIdRatio(0.0), "sampled"),
])
def test_sampling_decisions_match_the_sdk(sampler: Any, parent: str | None) -> None:
    tp, _ = _provider(sampler)
    ctx = {None: None, "sampled": _remote(True), "unsampled": _remote(False)}[parent]
    lean, sdk = _both(tp.get_tracer("t"), ctx)
    assert lean.is_recording() == sdk.is_recording()
    assert lean.get_span_context().trace_flags == sdk.get_span_context().trace_flags
    if ctx is not None:
        assert lean.get_span_context().trace_id == 0x1234
    for span in (lean, sdk):
        span.end()


# name -> (sampler, the kinds of parent it decides by ratio: 0 root, 1/2 remote sampled/unsampled, 3/4 local)
_RATIOS = {
    "parentbased_traceidratio": (sampling.ParentBasedTraceIdRatio(0.5), {0}),
    "traceidratio": (sampling.TraceIdRatioBased(0.5), {0, 1, 2, 3, 4}),
    "ratio per parent": (sampling.ParentBased(sampling.TraceIdRatioBased(0.5),
                                              remote_parent_sampled=sampling.TraceIdRatioBased(0.25),
                                              remote_parent_not_sampled=sampling.TraceIdRatioBased(0.75),
                                              local_parent_sampled=sampling.ALWAYS_OFF,
                                              local_parent_not_sampled=sampling.TraceIdRatioBased(0.5)), {0, 1, 2, 4}),
}


@pytest.mark.parametrize("name", list(_RATIOS))
def test_ratio_sampling_decides_as_the_sdk_without_asking_it(name: str) -> None:
    """Ratio samplers (directly or as ParentBased delegates) are decided by their bound, span by span as the
    SDK decides: the same decision, flags and trace state for every kind of parent and many trace ids."""
    import random

    sampler, by_ratio = _RATIOS[name]
    tp, _ = _provider(sampler)
    tracer = tp.get_tracer("t")
    rng = random.Random(7)
    seen = set()
    for i in range(400):
        kind = i % 5  # root, remote sampled, remote unsampled, local sampled, local unsampled
        if kind == 0:
            ctx = None
        else:
            flags = TraceFlags(TraceFlags.SAMPLED if kind in (1, 3) else 0)
            parent_sc = SpanContext(rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, is_remote=kind < 3,
                                    trace_flags=flags, trace_state=TraceState([("k", str(i))]))
            ctx = trace.set_span_in_context(NonRecordingSpan(parent_sc))
        lean, sdk = _both(tracer, ctx)
        got = lean.get_span_context()
        if ctx is None:  # a new trace id each: ask the SDK's sampler about the lean span's own
            want = sampler.should_sample(ctx, got.trace_id, "GET", SpanKind.CLIENT, ATTRS).decision.is_sampled()
            assert lean.is_recording() == want, (i, hex(got.trace_id))
        else:
            want_sc = sdk.get_span_context()
            assert (lean.is_recording(), got.trace_flags, got.trace_state) == \
                (sdk.is_recording(), want_sc.trace_flags, want_sc.trace_state), (i, kind)
        seen.add((kind, lean.is_recording()))
        for span in (lean, sdk):
            span.end()
    assert _span._plan[0] is not None and _span._plan[0].bounds is not None  # decided here, not by the sampler
    # both decisions came up for every kind of parent decided by ratio, and only for those
    assert {k for k, recorded in seen if recorded} & {k for k, recorded in seen if not recorded} == by_ratio


class _OnStart(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[Any] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span)


class _Custom(sampling.Sampler):
    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, {**(attributes or {}), "sampler.rule": "x"})

    def get_description(self) -> str:
        return "custom"


def test_a_processor_that_acts_on_start_gets_the_sdk_path_from_then_on() -> None:
    tp, _ = _provider()
    tracer = tp.get_tracer("t")
    first, _ = _both(tracer)
    assert type(first) is _span.CallSpan
    watcher = _OnStart()
    tp.add_span_processor(watcher)
    second, _ = _both(tracer)
    assert type(second) is not _span.CallSpan and second in watcher.started
    plan = _span._plan[0]
    _both(tracer)
    assert _span._plan[0] is plan  # the decision is kept, not remade per span


@pytest.mark.parametrize("case", ["custom sampler", "value length limit"])
def test_other_configurations_give_the_sdks_result(case: str) -> None:
    if case == "custom sampler":
        tp, _ = _provider(sampler=_Custom())
    else:
        tp, _ = _provider(limits=SpanLimits(max_span_attribute_length=4))
    lean, sdk = _both(tp.get_tracer("t"), extra={"db.query.text": "GET something long"})
    assert dict(lean.attributes) == dict(sdk.attributes)
    if case == "custom sampler":
        assert type(lean) is not _span.CallSpan and lean.attributes["sampler.rule"] == "x"
    else:  # limits are applied by the SDK's own BoundedAttributes on the lean path too
        assert lean.attributes["db.query.text"] == "GET "


@pytest.mark.parametrize("case", ["sampled", "sampled out", "custom sampler", "value length limit"])
def test_attributes_given_as_a_function_are_built_only_when_the_span_needs_them(case: str) -> None:
    sampler = {"sampled out": sampling.ALWAYS_OFF, "custom sampler": _Custom()}.get(case)
    limits = SpanLimits(max_span_attribute_length=4) if case == "value length limit" else None
    tp, _ = _provider(sampler=sampler, limits=limits)
    tracer = tp.get_tracer("t")
    built: list[int] = []
    extra = {"db.query.text": "GET something long"}

    def attributes() -> dict[str, Any]:
        built.append(1)
        return dict(extra)

    lean, _ = _span.start(tracer, "GET", SpanKind.CLIENT, ATTRS, None, attributes, None, None)
    _, sdk = _both(tracer, extra=extra)
    assert lean.is_recording() == sdk.is_recording()
    if case == "sampled out":
        assert built == [] and not lean.is_recording()  # a span that keeps nothing: never built
    else:  # built once, and what the span (and a sampler reading attributes) got is the SDK's
        assert built == [1] and dict(lean.attributes) == dict(sdk.attributes)


def test_a_swapped_sampler_is_noticed() -> None:
    tp, _ = _provider()
    tracer = tp.get_tracer("t")
    assert _both(tracer)[0].is_recording()
    tracer.sampler = sampling.ALWAYS_OFF
    assert not _both(tracer)[0].is_recording()


@pytest.mark.parametrize("case", ["sampled", "unsampled", "tracestate", "largest ids"])
def test_direct_traceparent_is_byte_identical_to_the_propagator(case: str) -> None:
    from instrument._otel import _setup_propagators
    from instrument._settings import Settings

    _setup_propagators(Settings.from_env({}))
    assert _call._w3c_textmap[0] is propagate.get_global_textmap()
    flags = TraceFlags(0 if case == "unsampled" else TraceFlags.SAMPLED)
    state = TraceState([("vendor", "abc"), ("k", "v")]) if case == "tracestate" else None
    ids = (2**128 - 1, 2**64 - 1) if case == "largest ids" else (0xABC, 0xDEF)  # every hex digit, and zero-padded
    span = NonRecordingSpan(SpanContext(*ids, False, flags, state))
    direct: dict[str, str] = {}
    generic: dict[str, str] = {}
    _call._inject(direct, span)
    propagate.inject(generic, context=trace.set_span_in_context(span))
    assert direct == generic and direct["traceparent"].startswith("00-")


_BAGGAGES = {
    "one": {"tenant": "t1"},
    "quoted": {"user id": "a b,c;d=é", "k/€": "%20"},
    "not str": {"n": 7, "f": 1.5},
    "over the limits": {f"k{i}": "v" * 60 for i in range(200)},  # more pairs and a longer header than allowed
    "one pair too long": {"big": "x" * 5000, "small": "s"},
}


@pytest.mark.parametrize("propagators", ["tracecontext,baggage", "tracecontext"])
@pytest.mark.parametrize("name", list(_BAGGAGES))
def test_direct_baggage_is_byte_identical_to_the_propagator(name: str, propagators: str) -> None:
    """The context's baggage is written as the composite writes it (with its limits), or not at all when the
    propagators leave baggage out; the next calls under the same baggage reuse the header, a new baggage gets
    its own."""
    from instrument._otel import _setup_propagators
    from instrument._settings import Settings

    _setup_propagators(Settings.from_env({"OTEL_PROPAGATORS": propagators}))
    assert _call._w3c_textmap[0] is propagate.get_global_textmap()
    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(1)))
    first = None
    for key, value in _BAGGAGES[name].items():
        first = baggage.set_baggage(key, value, context=first)
    for ctx in (first, first, baggage.set_baggage("added", "later", context=first)):
        token = otel_context.attach(ctx)
        try:
            direct: dict[str, str] = {}
            _call._inject(direct, span)
            generic: dict[str, str] = {}
            propagate.inject(generic, context=trace.set_span_in_context(span))
        finally:
            otel_context.detach(token)
        assert direct == generic
        assert ("baggage" in direct) == (propagators == "tracecontext,baggage"), direct.keys()
        assert "traceparent" in direct
    if name == "one" and propagators == "tracecontext,baggage":
        assert generic["baggage"] == "tenant=t1,added=later"  # the last context: the first one's pair, and one more


def test_an_id_generator_of_its_own_is_used() -> None:
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class Fixed(IdGenerator):
        def generate_span_id(self) -> int:
            return 0x1111

        def generate_trace_id(self) -> int:
            return 0x2222

    tp = TracerProvider(id_generator=Fixed(), shutdown_on_exit=False)
    lean, sdk = _both(tp.get_tracer("t"))
    assert type(lean) is _span.CallSpan
    for span in (lean, sdk):
        ctx = span.get_span_context()
        assert (ctx.trace_id, ctx.span_id, ctx.trace_flags) == (0x2222, 0x1111, sdk.get_span_context().trace_flags)


def test_a_full_attribute_set_drops_the_oldest_as_the_sdk_does() -> None:
    tp, _ = _provider(limits=SpanLimits(max_span_attributes=len(ATTRS)))
    lean, sdk = _both(tp.get_tracer("t"))
    for span in (lean, sdk):
        span.set_attribute("error.type", "X")
        span.set_attribute("db.operation.name", "SET")
    assert type(lean) is _span.CallSpan
    assert dict(lean.attributes) == dict(sdk.attributes) and "db.system.name" not in lean.attributes
    assert lean.dropped_attributes == sdk.dropped_attributes == 1


class _OnEnd(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.ended.append(span)


def test_ending_reaches_every_processor_the_provider_has_at_the_end() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource({"service.name": "span-test"}), shutdown_on_exit=False)
    tp.add_span_processor(BatchSpanProcessor(exporter))
    first = _OnEnd()
    tp.add_span_processor(first)
    tracer = tp.get_tracer("t")
    early, _ = _both(tracer)
    assert type(early) is _span.CallSpan
    assert _span._plan[0].enders[0] == tp._active_span_processor._span_processors[0]._batch_processor.emit
    later = _OnEnd()
    tp.add_span_processor(later)  # while `early` runs: the SDK's span would reach it too
    lean, sdk = _both(tracer)
    for span in (early, lean, sdk):
        span.end()
    ids = [s.context.span_id for s in (early, lean, sdk)]
    assert [s.context.span_id for s in first.ended] == ids and [s.context.span_id for s in later.ended] == ids
    tp.force_flush()
    assert sorted(s.context.span_id for s in exporter.get_finished_spans()) == sorted(ids)


def test_the_current_context_is_read_from_its_contextvar_only_when_that_is_the_runtime() -> None:
    from instrument import _context

    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(1)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        assert _context.otel_current() is otel_context.get_current()
    finally:
        otel_context.detach(token)
    # attached and detached directly: what the API sees, and the API's own tokens, are the same
    before = otel_context.get_current()
    ctx = trace.set_span_in_context(span)
    token = _context.otel_attach(ctx)
    try:
        assert otel_context.get_current() is ctx and trace.get_current_span() is span
    finally:
        _context.otel_detach(token)
    assert otel_context.get_current() is before
    token = otel_context.attach(ctx)
    _context.otel_detach(token)
    assert otel_context.get_current() is before

    class Other:  # a runtime context of an application's own (OTEL_PYTHON_CONTEXT)
        _current_context = None

    original = otel_context._RUNTIME_CONTEXT
    otel_context._RUNTIME_CONTEXT = Other()
    try:
        assert _context._otel_context_var() is None  # so the API's get_current/attach/detach are used
    finally:
        otel_context._RUNTIME_CONTEXT = original
    assert _context._otel_context_var() is not None


def test_a_tracer_its_configurator_disabled_gives_what_the_sdk_gives() -> None:
    from opentelemetry.sdk.trace import _TracerConfig

    assert _span._ENABLED_INLINE  # the SDK's Tracer._is_enabled still reads what start() reads inline
    tp, _ = _provider()
    tracer = tp.get_tracer("t")
    assert _both(tracer)[0].is_recording()
    tracer._set_tracer_config(_TracerConfig(is_enabled=False))
    lean, sdk = _both(tracer)
    assert not lean.is_recording() and not sdk.is_recording() and type(lean) is type(sdk)


_VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("headers", [
    {}, {"traceparent": _VALID}, {"traceparent": _VALID.replace("-01", "-00")}, {"traceparent": " " + _VALID + "\t"},
    {"traceparent": _VALID + "-extra"}, {"traceparent": "01" + _VALID[2:] + "-extra"}, {"traceparent": "ff" + _VALID[2:]},
    {"traceparent": _VALID.upper()}, {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"}, {"traceparent": "garbage"},
    {"traceparent": _VALID, "tracestate": "vendor=abc,k=v"}, {"traceparent": _VALID, "baggage": "tenant=t1"},
    {"baggage": "tenant=t1"}, {"traceparent": ""},
    {"traceparent": _VALID, "tracestate": ["vendor=abc", "k=v,other=1"]},  # two fields, joined
    {"traceparent": _VALID, "tracestate": "bad key=v"}, {"traceparent": _VALID, "tracestate": ""},
    {"traceparent": _VALID, "tracestate": [f"k{i}=" + "v" * 200 for i in range(32)]},  # 32 members, 6.6k
    {"traceparent": _VALID, "tracestate": [f"k{i}=" + "v" * 255 for i in range(32)]},  # valid, but over 8192 joined
    {"traceparent": _VALID, "tracestate": "k=" + "v" * 300},  # a value over 256 characters
    {"traceparent": "garbage", "tracestate": "k=v"},
    {"traceparent": _VALID, "baggage": "a=1;prop=x, b = %20two ,bad pair,c"}, {"baggage": ["a=1", "b=2"]},
    {"traceparent": _VALID, "baggage": ",".join(f"k{i}=v" for i in range(200))}, {"baggage": ""},
    {"traceparent": _VALID, "tracestate": [f"k{i}=" + "v" * 255 for i in range(32)], "baggage": "a=1"},
], ids=lambda h: ",".join(f"{k}={str(v)[:12]}({len(str(v))})" for k, v in h.items()) or "none")
@pytest.mark.parametrize("propagators", ["tracecontext,baggage", "tracecontext"])
def test_direct_extract_gives_what_the_propagators_give(headers: dict[str, str], propagators: str) -> None:
    from instrument._otel import _setup_propagators
    from instrument._settings import Settings

    _setup_propagators(Settings.from_env({"OTEL_PROPAGATORS": propagators}))
    assert _call._w3c_textmap[0] is propagate.get_global_textmap()
    direct = _call.extract(headers, propagate.textmap.default_getter)
    generic = propagate.extract(headers)
    got, want = trace.get_current_span(direct).get_span_context(), trace.get_current_span(generic).get_span_context()
    assert got == want and list(got.trace_state.items()) == list(want.trace_state.items())
    assert baggage.get_all(direct) == baggage.get_all(generic)
    assert dict(direct).keys() == dict(generic).keys()
