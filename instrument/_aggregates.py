"""Histograms, counters and up-down counters aggregated in place: the toolkit's metrics without the SDK's
per-record work.

The SDK's ``Histogram.record`` and ``Counter.add`` clean and hash the attribute dict on every call (about
5-20 µs each here, a third of an instrumented call's whole cost). Our attribute sets are fixed per
operation and outcome, so each one is bound once: a histogram's :class:`Bound` keeps bucket counts, sum,
min, max and one exemplar per bucket (a record is an append, folded in batches), a counter's
or up-down counter's :class:`BoundSum` a running total (``http.server.active_requests`` is added to twice
per served request).

The aggregates reach the exporters through :class:`MergingReader`: the toolkit's metric readers (the
periodic OTLP reader it installs, and the in-memory reader of ``instrument.testing``) add them to what
the SDK collected, as ordinary histogram and sum points of scope ``instrument``, cumulative or delta as the
exporter prefers for each instrument kind. When the application installed its own MeterProvider, no
reader of ours exists and :func:`histogram` and :func:`counter` hand out the SDK's own instrument instead,
so nothing is ever lost."""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from instrument._catalog import Metric

__all__ = ["Bound", "BoundSum", "FastCounter", "FastHistogram", "MergingReader", "counter", "enable", "enabled",
           "forget_recorded", "histogram", "use_exemplar_filter", "use_resource"]

_lock = threading.Lock()
_histograms: dict[str, FastHistogram] = {}
_counters: dict[str, FastCounter] = {}
_state = {"enabled": False, "resource": None, "start": time_ns(), "generation": 0}
_ALWAYS_OFF, _TRACE_BASED, _ALWAYS_ON = 0, 1, 2
_exemplars = [_TRACE_BASED]  # OTEL_METRICS_EXEMPLAR_FILTER, as the SDK's instruments apply it

SCOPE_NAME = "instrument"


_FOLD_AT = 128  # measurements a Bound holds before the recording thread folds them in (memory and pause bound)


class Bound:
    """One attribute set of one histogram: the running aggregate.

    A measurement is appended to ``pending`` (one C-level append: atomic, no lock) and folded into the
    aggregate in batches, by the thread whose record fills the batch or by the reader that snapshots it:
    per call, that is a fraction of taking a lock and updating five fields. A sampled one also becomes its
    bucket's exemplar at once (one list slot written: atomic too).
    """

    __slots__ = ("_lock", "attributes", "bounds", "count", "counts", "exemplars", "max", "min",
                 "pending", "sum", "windows")

    def __init__(self, bounds: tuple[float, ...], attributes: Mapping[str, Any]) -> None:
        self.bounds = bounds
        self.attributes = dict(attributes)
        self.counts = [0] * (len(bounds) + 1)
        self.exemplars: list[tuple[float, int, int, int] | None] = [None] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        # [reader, min, max] per delta reader: the min and max since that reader's last collection
        self.windows: list[list[Any]] = []
        self.pending: list[float] = []  # values recorded since the last fold
        self._lock = threading.Lock()

    def record(self, value: float, span_context: Any = None) -> None:
        """Add ``value``; with a sampled ``span_context`` it becomes its bucket's exemplar (with any, or
        none, under OTEL_METRICS_EXEMPLAR_FILTER=always_on or always_off)."""
        pending = self.pending
        pending.append(value)
        rule = _exemplars[0]
        # span_context read as the tuple it is: [3] trace flags, bit 0 sampled, [5] is_valid, [1] span id,
        # [0] trace id (see instrument._span). The last one in each bucket stays, as the SDK's reservoir keeps it.
        if rule and (rule == _ALWAYS_ON or (span_context is not None and span_context[3] & 1)):
            self.exemplars[bisect_left(self.bounds, value)] = (
                (value, time_ns(), span_context[1], span_context[0]) if span_context is not None and span_context[5]
                else (value, time_ns(), None, None))
        if len(pending) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Fold the pending measurements into the aggregate (under the lock; appends go on meanwhile).

        A batch is sorted once and each bucket's count is the distance between two bisections of it, so the
        per-measurement work is C's (the sort, the sum), not a Python loop's: most calls fall in one or two
        buckets, and the walk over the bounds stops at the batch's largest value."""
        with self._lock:
            pending = self.pending
            n = len(pending)
            if n:
                batch = pending[:n]
                del pending[:n]  # what was appended since the copy stays, for the next fold
                self.sum = sum(batch, self.sum)  # in recording order, as the SDK adds them
                batch.sort()
                low, high = batch[0], batch[-1]
                counts = self.counts
                start = 0
                for i, bound in enumerate(self.bounds):  # bucket i: bounds[i-1] < value <= bounds[i]
                    end = bisect_right(batch, bound, start)
                    counts[i] += end - start
                    start = end
                    if start == n:
                        break
                else:
                    counts[-1] += n - start
                self.count += n
                if low < self.min:
                    self.min = low
                if high > self.max:
                    self.max = high
                for window in self.windows:  # none unless a reader exports deltas
                    if low < window[1]:
                        window[1] = low
                    if high > window[2]:
                        window[2] = high

    def snapshot(self, reader: object = None) -> tuple[int, float, float, float, list[int], list[Any]]:
        """The running totals; for a delta ``reader``, min and max since its previous snapshot (the first
        one's are the running ones: its interval starts with the aggregate)."""
        self.fold()
        with self._lock:
            low, high = self.min, self.max
            if reader is not None:
                for window in self.windows:
                    if window[0] is reader:
                        low, high = window[1], window[2]
                        window[1], window[2] = float("inf"), float("-inf")
                        break
                else:
                    if len(self.windows) >= 8:  # readers come and go in tests: keep the newest
                        del self.windows[0]
                    self.windows.append([reader, float("inf"), float("-inf")])
            return self.count, self.sum, low, high, list(self.counts), list(self.exemplars)

    def reset(self) -> None:
        """Zero it in place (a forked child reports only its own calls; bound objects stay valid)."""
        self._lock = threading.Lock()  # the parent's lock may have been held at fork
        self.counts = [0] * len(self.counts)
        self.exemplars = [None] * len(self.exemplars)
        self.count, self.sum = 0, 0.0
        self.min, self.max = float("inf"), float("-inf")
        self.windows = []
        self.pending = []  # the parent's, recorded before the fork


class _Fast:
    """A catalog instrument whose attribute sets are each bound once (bounded, like the SDK's own limit)."""

    def __init__(self, spec: Metric) -> None:
        self.spec = spec
        self._bound: dict[frozenset[tuple[str, Any]], Any] = {}
        self._lock = threading.Lock()

    def _new(self, attributes: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def bind(self, attributes: Mapping[str, Any]) -> Any:
        key = frozenset(attributes.items())
        found = self._bound.get(key)
        if found is None:
            with self._lock:
                found = self._bound.get(key)
                if found is None:
                    found = self._new(attributes)
                    if len(self._bound) < 2000:
                        self._bound[key] = found
        return found

    def bounds_list(self) -> list[Any]:
        with self._lock:
            return list(self._bound.values())


class FastHistogram(_Fast):
    """A catalog histogram: each attribute set a :class:`Bound`."""

    def __init__(self, spec: Metric) -> None:
        super().__init__(spec)
        self.bounds = tuple(spec.buckets or ())

    def _new(self, attributes: Mapping[str, Any]) -> Bound:
        return Bound(self.bounds, attributes)

    def record(self, value: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        """Drop-in for the SDK's ``Histogram.record`` (``context`` is accepted and ignored)."""
        self.bind(attributes or {}).record(value)


class BoundSum:
    """One attribute set of one counter or up-down counter: the running total (amounts appended and summed
    in batches, like :class:`Bound`'s measurements)."""

    __slots__ = ("_lock", "attributes", "pending", "seen", "total")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = dict(attributes)
        self.total = 0
        self.seen = False  # anything added since it was made (or zeroed in a forked child): else not reported
        self.pending: list[float] = []
        self._lock = threading.Lock()

    def add(self, amount: float = 1) -> None:
        self.pending.append(amount)
        if len(self.pending) >= _FOLD_AT:
            self.value()

    def value(self) -> float:
        """The total, with every amount added so far."""
        with self._lock:
            pending = self.pending
            n = len(pending)
            if n:
                self.total += sum(pending[:n])
                del pending[:n]  # what was appended since the copy stays, for the next fold
                self.seen = True
            return self.total


class FastCounter(_Fast):
    """A catalog counter or up-down counter: each attribute set a :class:`BoundSum`."""

    def __init__(self, spec: Metric) -> None:
        super().__init__(spec)
        self.monotonic = spec.instrument == "counter"

    def _new(self, attributes: Mapping[str, Any]) -> BoundSum:
        return BoundSum(attributes)

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        """Drop-in for the SDK's ``Counter.add`` and ``UpDownCounter.add``."""
        self.bind(attributes or {}).add(amount)


class _SdkBound:
    """The fallback when no reader of ours exists: the SDK's instrument with the attributes fixed."""

    __slots__ = ("attributes", "instrument")

    def __init__(self, instrument: Any, attributes: Mapping[str, Any]) -> None:
        self.instrument = instrument
        self.attributes = dict(attributes)

    def record(self, value: float, span_context: Any = None) -> None:
        self.instrument.record(value, self.attributes)

    def add(self, amount: float = 1) -> None:
        self.instrument.add(amount, self.attributes)


class _Sdk:
    """The SDK's histogram or counter, offering ``bind`` like ours."""

    def __init__(self, instrument: Any) -> None:
        self.instrument = instrument

    def bind(self, attributes: Mapping[str, Any]) -> _SdkBound:
        return _SdkBound(self.instrument, attributes)

    def record(self, value: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        self.instrument.record(value, attributes, context)

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        self.instrument.add(amount, attributes, context)


def enable(resource: Any) -> None:
    """Called when a reader of ours is installed: histograms made from now on aggregate in place."""
    _state["enabled"] = True
    _state["resource"] = resource


def use_exemplar_filter(name: str) -> Any:
    """Apply OTEL_METRICS_EXEMPLAR_FILTER (``trace_based``, ``always_on``, ``always_off``) to our histograms;
    returns the SDK's filter of that name, for the MeterProvider (its own instruments do the same)."""
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, AlwaysOnExemplarFilter, TraceBasedExemplarFilter

    rule, sdk = {"always_off": (_ALWAYS_OFF, AlwaysOffExemplarFilter), "always_on": (_ALWAYS_ON, AlwaysOnExemplarFilter),
                 "trace_based": (_TRACE_BASED, TraceBasedExemplarFilter)}[name]
    _exemplars[0] = rule
    return sdk()


def use_resource(resource: Any) -> None:
    """The resource our points are exported under when the SDK has none to report (renewed after fork)."""
    _state["resource"] = resource


def enabled() -> bool:
    return bool(_state["enabled"])


def histogram(spec: Metric, make_sdk: Any) -> Any:
    """The histogram for ``spec``: aggregated in place when a reader of ours exports it, else the SDK's."""
    return _instrument(_histograms, FastHistogram, spec, make_sdk)


def counter(spec: Metric, make_sdk: Any) -> Any:
    """The counter or up-down counter for ``spec``: summed in place when a reader of ours exports it, else
    the SDK's."""
    return _instrument(_counters, FastCounter, spec, make_sdk)


def _instrument(registry: dict[str, Any], fast: Any, spec: Metric, make_sdk: Any) -> Any:
    if not _state["enabled"]:
        return _Sdk(make_sdk())
    with _lock:
        found = registry.get(spec.name)
        if found is None:
            found = registry[spec.name] = fast(spec)
        return found


def forget_recorded() -> None:
    """Zero every aggregate in place (a forked child reports only its own calls; bound objects stay valid)."""
    with _lock:
        histograms = list(_histograms.values())
        counters = list(_counters.values())
    for hist in histograms:
        hist._lock = threading.Lock()  # the parent's locks may have been held at fork
        for bound in hist.bounds_list():
            bound.reset()
    for fast in counters:
        fast._lock = threading.Lock()
        for total in fast.bounds_list():
            total._lock = threading.Lock()
            total.total = 0
            total.pending = []
            total.seen = False
    _state["start"] = time_ns()
    _state["generation"] += 1  # readers forget what they exported before: their deltas start again from zero


# -- export ------------------------------------------------------------------------------------------


def _sums(delta: bool, seen: dict[int, tuple[Any, ...]], now: int, updown_delta: bool = False) -> list[Any]:
    from opentelemetry.sdk.metrics.export import AggregationTemporality, NumberDataPoint, Sum
    from opentelemetry.sdk.metrics.export import Metric as SdkMetric

    with _lock:
        counters = list(_counters.values())
    out = []
    for fast in counters:
        monotonic = fast.monotonic
        as_delta = delta if monotonic else updown_delta
        points = []
        for bound in fast.bounds_list():
            value = bound.value()
            if not bound.seen:
                continue  # nothing added since it was made or zeroed: the SDK has no point for it either
            start = _state["start"]
            if as_delta:
                last = seen.get(id(bound))
                seen[id(bound)] = (value, now)
                if last is not None:
                    if value == last[0]:
                        continue
                    value, start = value - last[0], last[1]
            elif value == 0 and monotonic:
                continue  # never counted; an up-down sum back at zero is reported as zero, like the SDK's
            points.append(NumberDataPoint(attributes=bound.attributes, start_time_unix_nano=start,
                                          time_unix_nano=now, value=value))
        if points:
            temporality = AggregationTemporality.DELTA if as_delta else AggregationTemporality.CUMULATIVE
            out.append(SdkMetric(name=fast.spec.name, description=fast.spec.description, unit=fast.spec.unit,
                                 data=Sum(data_points=points, aggregation_temporality=temporality,
                                          is_monotonic=monotonic)))
    return out


def _points(reader_key: int, delta: bool, previous: dict[int, dict[int, tuple[Any, ...]]], now: int,
            counters_delta: bool = False, updown_delta: bool = False) -> list[Any]:
    from opentelemetry.sdk.metrics import Exemplar
    from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, HistogramDataPoint
    from opentelemetry.sdk.metrics.export import Metric as SdkMetric

    with _lock:
        histograms = list(_histograms.values())
    seen = previous.setdefault(reader_key, {})
    out = _sums(counters_delta, previous.setdefault(reader_key + 1, {}), now, updown_delta)
    for hist in histograms:
        points = []
        for bound in hist.bounds_list():
            count, total, low, high, counts, exemplars = bound.snapshot(seen if delta else None)
            if count == 0:
                continue
            start = _state["start"]
            if delta:
                last = seen.get(id(bound))
                seen[id(bound)] = (count, total, counts, now)
                if last is not None:
                    if count == last[0]:
                        continue
                    count, total = count - last[0], total - last[1]
                    counts = [a - b for a, b in zip(counts, last[2])]
                    start = last[3]
                    # a delta point's exemplars are its interval's: a bucket keeps its last one until replaced
                    exemplars = [e if e is not None and e[1] >= start else None for e in exemplars]
            points.append(HistogramDataPoint(
                attributes=bound.attributes, start_time_unix_nano=start, time_unix_nano=now, count=count,
                sum=total, bucket_counts=counts, explicit_bounds=list(hist.bounds), min=low, max=high,
                exemplars=[Exemplar({}, e[0], e[1], e[2], e[3]) for e in exemplars if e is not None]))
        if points:
            temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
            out.append(SdkMetric(name=hist.spec.name, description=hist.spec.description, unit=hist.spec.unit,
                                 data=Histogram(data_points=points, aggregation_temporality=temporality)))
    return out


def merge(metrics_data: Any, reader_key: int, delta: bool, previous: dict[int, dict[int, tuple[Any, ...]]],
          counters_delta: bool = False, updown_delta: bool = False) -> Any:
    """``metrics_data`` from the SDK (or None) plus our aggregates, as one MetricsData (or None if empty).

    ``delta``/``counters_delta``/``updown_delta``: the reader's temporality for histograms, counters and
    up-down counters.
    """
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    ours = _points(reader_key, delta, previous, time_ns(), counters_delta, updown_delta)
    if not ours:
        return metrics_data
    resource_metrics: Sequence[Any] = list(metrics_data.resource_metrics) if metrics_data is not None else []
    if not resource_metrics:
        from opentelemetry.sdk.resources import Resource

        resource = _state["resource"] or Resource.get_empty()
        resource_metrics = [ResourceMetrics(resource=resource, scope_metrics=[], schema_url="")]
    first = resource_metrics[0]
    scopes = list(first.scope_metrics)
    for i, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == SCOPE_NAME:
            scopes[i] = ScopeMetrics(scope=scope_metrics.scope, metrics=[*scope_metrics.metrics, *ours],
                                     schema_url=scope_metrics.schema_url)
            break
    else:
        from instrument._instruments import VERSION

        scopes.append(ScopeMetrics(scope=InstrumentationScope(SCOPE_NAME, VERSION), metrics=ours, schema_url=""))
    merged_first = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
    return MetricsData(resource_metrics=[merged_first, *resource_metrics[1:]])


class MergingReader:
    """Mixin for a MetricReader: what it collects includes the in-place histograms."""

    _instrument_previous: dict[int, dict[int, tuple[Any, ...]]]

    def collect(self, timeout_millis: float = 10_000) -> None:
        if getattr(self, "_collect", None) is None:
            super().collect(timeout_millis)  # type: ignore[misc] - not registered yet: the SDK warns
            return
        from opentelemetry.sdk.metrics import Counter as SdkCounter
        from opentelemetry.sdk.metrics import Histogram as SdkHistogram
        from opentelemetry.sdk.metrics import UpDownCounter as SdkUpDownCounter
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        metrics_data = self._collect(self, timeout_millis=timeout_millis)  # type: ignore[attr-defined]
        # The reader's table is keyed by the SDK's private instrument classes (subclasses of the public ones)
        table = self._instrument_class_temporality  # type: ignore[attr-defined]
        previous = self.__dict__.setdefault("_instrument_previous", {})
        if self.__dict__.get("_instrument_generation") != _state["generation"]:
            previous.clear()  # the aggregates were zeroed (a forked child, a test's capture.clear())
            self.__dict__["_instrument_generation"] = _state["generation"]

        def delta(kind: type) -> bool:
            return any(issubclass(cls, kind) and t == AggregationTemporality.DELTA for cls, t in table.items())

        try:
            metrics_data = merge(metrics_data, 0, delta(SdkHistogram), previous, delta(SdkCounter),
                                 delta(SdkUpDownCounter))
        except Exception as exc:  # noqa: BLE001 - never lose the SDK's own metrics because of ours
            from instrument._safety import report

            report("histogram export", exc)
        if metrics_data is not None:
            self._receive_metrics(metrics_data, timeout_millis=timeout_millis)  # type: ignore[attr-defined]
