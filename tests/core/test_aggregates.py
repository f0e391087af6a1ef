"""The toolkit's in-place aggregates export what the SDK's own instruments would, for every temporality.

The same measurements go to our histogram, counter and up-down counter (read by a MergingReader) and to
the SDK's instruments of the same names (read by a plain SDK reader with the same preferences); two
collections later, both exports must agree point for point: values, counts, sums, buckets, temporality and
monotonicity (an up-down sum stays cumulative and is reported at zero, as the OTLP exporters prefer).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from instrument import _aggregates, _instruments
from instrument._catalog import BY_NAME
from tests.conftest import run_python

HISTOGRAM, COUNTER, UPDOWN = "http.server.request.duration", "messaging.client.sent.messages", \
    "http.server.active_requests"
CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA


class _OurReader(_aggregates.MergingReader, InMemoryMetricReader):
    """What the toolkit's readers are: an SDK reader whose collection includes the in-place aggregates."""


def _exported(reader: Any) -> dict[tuple[str, frozenset], tuple]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, frozenset], tuple] = {}
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name not in (HISTOGRAM, COUNTER, UPDOWN):
                    continue
                for p in metric.data.data_points:
                    key = (metric.name, frozenset(p.attributes.items()))
                    temporality = metric.data.aggregation_temporality
                    if hasattr(p, "bucket_counts"):
                        out[key] = (temporality, p.count, round(p.sum, 9), tuple(p.bucket_counts), p.min, p.max)
                    else:
                        out[key] = (temporality, metric.data.is_monotonic, p.value)
    return out


@pytest.mark.parametrize("preference", [
    {},  # cumulative everywhere (the default)
    {Counter: DELTA, Histogram: DELTA, UpDownCounter: CUMULATIVE},  # OTLP "delta"
    {Counter: DELTA, Histogram: DELTA, UpDownCounter: DELTA},  # a reader asking delta of every kind
])
def test_in_place_aggregates_export_what_the_sdk_would(tel, preference) -> None:  # noqa: ARG001 - tel: init()
    assert _aggregates.enabled()
    ours = _OurReader(preferred_temporality=preference)
    theirs = InMemoryMetricReader(preferred_temporality=preference)
    # Both providers are kept referenced for the whole test: a reader needs its provider to collect.
    ours_provider = MeterProvider(metric_readers=[ours])  # registers the reader (nothing else is made with it)
    sdk = MeterProvider(metric_readers=[theirs]).get_meter("instrument")
    spec = BY_NAME[HISTOGRAM]
    their_histogram = sdk.create_histogram(HISTOGRAM, explicit_bucket_boundaries_advisory=list(spec.buckets or ()))
    their_counter = sdk.create_counter(COUNTER)
    their_updown = sdk.create_up_down_counter(UPDOWN)
    _aggregates.forget_recorded()
    our_histogram, our_counter, our_updown = (_instruments.get(n) for n in (HISTOGRAM, COUNTER, UPDOWN))
    assert type(our_updown) is _aggregates.FastCounter and not our_updown.monotonic
    a, b = {"http.request.method": "GET", "url.scheme": "http"}, {"http.request.method": "POST", "url.scheme": "http"}
    rounds = [
        [("h", 0.003, a), ("h", 0.2, a), ("h", 7.5, b), ("c", 1, a), ("c", 2, b), ("u", 1, a), ("u", 1, a),
         ("u", 1, b)],
        [("h", 0.05, a), ("c", 3, a), ("u", -1, a), ("u", -1, b)],  # b's counter and histogram: no news
        [("u", -1, a)],  # a is back to zero
    ]
    for measurements in rounds:
        for kind, value, attrs in measurements:
            if kind == "h":
                our_histogram.record(value, attrs)
                their_histogram.record(value, attrs)
            elif kind == "c":
                our_counter.add(value, attrs)
                their_counter.add(value, attrs)
            else:
                our_updown.add(value, attrs)
                their_updown.add(value, attrs)
        expected = _exported(theirs)
        assert expected  # the SDK reported something each time: the comparison is not vacuous
        assert _exported(ours) == expected


def test_a_delta_reader_starts_again_from_zero_when_the_aggregates_are_zeroed(tel) -> None:  # noqa: ARG001
    """What a forked worker does (instrument._fork): its delta reader must not subtract the parent's totals."""
    reader = _OurReader(preferred_temporality={Counter: DELTA, Histogram: DELTA})
    provider = MeterProvider(metric_readers=[reader])  # noqa: F841 - registers the reader
    _aggregates.forget_recorded()
    counter, histogram = _instruments.get(COUNTER), _instruments.get(HISTOGRAM)
    attrs = {"messaging.system": "test"}
    counter.add(5, attrs)
    histogram.record(0.5, attrs)
    assert _exported(reader)[(COUNTER, frozenset(attrs.items()))] == (DELTA, True, 5)
    _aggregates.forget_recorded()  # as in a forked child
    counter.add(2, attrs)
    histogram.record(0.25, attrs)
    exported = _exported(reader)
    assert exported[(COUNTER, frozenset(attrs.items()))] == (DELTA, True, 2)
    temporality, count, total, _buckets, low, high = exported[(HISTOGRAM, frozenset(attrs.items()))]
    assert (temporality, count, total, low, high) == (DELTA, 1, 0.25, 0.25, 0.25)


_EXPORT = textwrap.dedent("""
    import json
    import instrument
    instrument.init()
    from opentelemetry import trace
    from instrument import _messaging

    ep = _messaging.client_endpoint("kafka", "broker", 9092)
    with trace.get_tracer("app").start_as_current_span("parent") as parent:
        ep.call(_messaging.publish_op(ep, "orders"), lambda: None, (), {})
    instrument.shutdown(5)
    print(json.dumps({"trace_id": f"{parent.get_span_context().trace_id:032x}"}))
""")


@pytest.mark.parametrize(("env", "exemplar", "temporality"), [
    ({}, "the call's trace", "cumulative"),
    ({"OTEL_METRICS_EXEMPLAR_FILTER": "always_off"}, None, "cumulative"),
    ({"OTEL_METRICS_EXEMPLAR_FILTER": "always_on", "OTEL_TRACES_SAMPLER": "always_off"}, "the call's trace",
     "cumulative"),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, None, "cumulative"),  # trace_based: not sampled, no exemplar
    ({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}, "the call's trace", "delta"),
], ids=["default", "always_off", "always_on-unsampled", "trace_based-unsampled", "delta"])
def test_exported_points_follow_the_exemplar_filter_and_temporality_preference(receiver, env, exemplar,
                                                                               temporality) -> None:
    result = run_python(_EXPORT, env={**receiver.env("grpc"), **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    trace_id = json.loads(result.stdout.strip().splitlines()[-1])["trace_id"]
    duration = receiver.wait_for(lambda: receiver.metric_points("messaging.client.operation.duration"))[-1]
    sent = receiver.wait_for(lambda: receiver.metric_points("messaging.client.sent.messages"))[-1]
    assert duration.value == 1 and sent.value == 1
    assert duration.temporality == sent.temporality == temporality
    assert duration.exemplar_trace_ids == ([trace_id] if exemplar else [])


def test_measurements_recorded_from_many_threads_while_readers_snapshot_are_each_counted_once() -> None:
    """Records append without a lock and are folded in batches (by a recording thread or a snapshot):
    none is lost or counted twice, and a delta reader's intervals add up to the whole."""
    import threading

    from opentelemetry.trace import SpanContext, TraceFlags

    bound = _aggregates.Bound((0.5, 1.0), {})
    sampled = SpanContext(7, 9, False, TraceFlags(1))
    threads, per_thread = 4, 3 * _aggregates._FOLD_AT + 17
    values = [0.25, 0.75, 2.0]
    delta_reader = object()
    deltas: list[tuple[float, float]] = []
    done = threading.Event()

    def work(n: int) -> None:
        for i in range(per_thread):
            bound.record(values[i % 3], sampled if n == 0 and i == per_thread - 1 else None)

    def read() -> None:
        while not done.is_set():
            _count, _total, low, high, *_ = bound.snapshot(delta_reader)
            deltas.append((low, high))

    import sys

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between almost any two bytecodes: races show up
    try:
        reader.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(interval)
    count, total, low, high, counts, exemplars = bound.snapshot()
    assert count == threads * per_thread == sum(counts)
    assert counts == [sum(1 for i in range(per_thread) if values[i % 3] == v) * threads for v in values]
    assert total == pytest.approx(sum(values[i % 3] for i in range(per_thread)) * threads)
    assert (low, high) == (0.25, 2.0)
    # the one sampled measurement (thread 0's last: 0.75) is its bucket's exemplar, with its span and trace
    assert [None if e is None else (e[0], e[2], e[3]) for e in exemplars] == [None, (0.75, 9, 7), None]
    assert bound.pending == [] and all(values[0] <= lo and hi <= values[2] for lo, hi in deltas if lo <= hi)


def test_a_measurement_recorded_while_a_fold_copies_its_batch_is_kept_for_the_next() -> None:
    bound = _aggregates.Bound((1.0,), {})

    class Racing(list):  # type: ignore[type-arg]
        def __getitem__(self, index: Any) -> Any:
            batch = list.__getitem__(self, index)
            if isinstance(index, slice):
                self.append(5.0)  # another thread's record, landing right after the fold's copy
            return batch

    bound.pending = Racing([0.5, 0.5])
    bound.fold()
    assert list(bound.pending) == [5.0] and bound.count == 2
    count, total, *_ = bound.snapshot()  # folds the 5.0 (and keeps the one that races this fold)
    assert (count, total, list(bound.pending)) == (3, 6.0, [5.0])


def test_a_counter_amount_added_while_its_batch_is_summed_is_kept_and_every_amount_counts_once() -> None:
    total = _aggregates.BoundSum({})

    class Racing(list):  # type: ignore[type-arg]
        def __getitem__(self, index: Any) -> Any:
            batch = list.__getitem__(self, index)
            if isinstance(index, slice):
                self.append(-1)  # another thread's add (an up-down counter going down), after the copy
            return batch

    total.pending = Racing([1, 1, 1])
    assert total.value() == 3 and list(total.pending) == [-1]
    total.pending = list(total.pending)
    adds = _aggregates._FOLD_AT * 3 + 5
    for _ in range(adds):  # summed on their own every _FOLD_AT adds
        total.add(2)
    assert len(total.pending) < _aggregates._FOLD_AT
    assert total.value() == 3 - 1 + 2 * adds and total.pending == []


@pytest.mark.parametrize("preference", [{}, {Counter: DELTA, UpDownCounter: DELTA}])
def test_a_sum_zeroed_with_nothing_added_since_is_not_reported(tel, preference) -> None:  # noqa: ARG001 - tel: init()
    ours = _OurReader(preferred_temporality=preference)
    provider = MeterProvider(metric_readers=[ours])  # noqa: F841 - a reader needs its provider to collect
    counter, updown = _instruments.get(COUNTER), _instruments.get(UPDOWN)
    attrs = {"messaging.destination.name": "zeroed-in-a-child"}
    counter.add(5, attrs)
    updown.add(1, attrs)
    _aggregates.forget_recorded()  # what a forked child does: the parent's sums are not its own
    assert [k for k in _exported(ours) if dict(k[1]) == attrs] == []  # the SDK has no point for them either
    updown.add(1, attrs)
    updown.add(-1, attrs)  # back to zero, but measured: reported, as the SDK reports it
    assert [v for k, v in _exported(ours).items() if dict(k[1]) == attrs] == [(
        DELTA if preference else CUMULATIVE, False, 0)]


_BOUNDS = (0.005, 0.01, 0.025, 0.5, 10.0)


@given(st.lists(st.one_of(st.sampled_from(_BOUNDS), st.floats(0, 20, allow_nan=False),
                          st.just(0.0), st.just(1e9)), max_size=3 * _aggregates._FOLD_AT))
@settings(max_examples=200, deadline=None)
def test_a_folded_batch_counts_each_value_in_the_bucket_the_sdk_puts_it_in(values: list[float]) -> None:
    """Batches are sorted and bisected, not walked value by value: each value, one equal to a bound
    included (a bucket's upper bound is inclusive), lands where the SDK's own bisect puts it; sum, min and
    max are the recording-order ones."""
    from bisect import bisect_left

    bound = _aggregates.Bound(_BOUNDS, {})
    expected = [0] * (len(_BOUNDS) + 1)
    total = 0.0
    for value in values:
        bound.record(value)
        expected[bisect_left(_BOUNDS, value)] += 1
        total += value
    count, got_total, low, high, counts, _exemplars = bound.snapshot()
    assert counts == expected and count == len(values)
    assert got_total == total  # the same additions in the same order: equal, not approximately
    assert (low, high) == ((min(values), max(values)) if values else (float("inf"), float("-inf")))


def test_each_bucket_keeps_its_last_sampled_measurement_as_its_exemplar(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """trace_based: a sampled measurement replaces its own bucket's exemplar only; an unsampled one never does.
    always_on: every measurement is a candidate, without a span when it has none."""
    from opentelemetry.trace import SpanContext, TraceFlags

    def ctx(span_id: int, sampled: bool = True) -> SpanContext:
        return SpanContext(0xAB, span_id, False, TraceFlags(1 if sampled else 0))

    bound = _aggregates.Bound((1.0, 10.0), {})
    bound.record(0.5, ctx(1))
    bound.record(5.0, ctx(2))
    bound.record(0.7, ctx(3))  # replaces 0.5: the same bucket
    bound.record(0.9, ctx(4, sampled=False))  # not sampled: kept out
    bound.record(1.0, None)  # no span
    *_, exemplars = bound.snapshot()
    assert [None if e is None else (e[0], e[2], e[3]) for e in exemplars] == [(0.7, 3, 0xAB), (5.0, 2, 0xAB), None]
    monkeypatch.setattr(_aggregates, "_exemplars", [_aggregates._ALWAYS_ON])
    bound.record(50.0, None)
    *_, exemplars = bound.snapshot()
    assert exemplars[2][0] == 50.0 and exemplars[2][2:] == (None, None)
