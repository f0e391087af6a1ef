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
