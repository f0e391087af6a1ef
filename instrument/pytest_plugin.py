"""pytest plugin (entry point ``pytest11: instrument``): the ``faults`` and ``telemetry`` fixtures.

::

    def test_checkout_survives_payment_errors(faults, telemetry):
        faults.add("http://payments:*: error 50%", seed=1)
        ...
        assert telemetry.metric_value("instrument.fault.injected", {"instrument.fault.kind": "error"}) > 0
        span = telemetry.span("GET", **{"server.address": "payments"})

    @pytest.mark.faults("redis://*: timeout 2s first=3")
    def test_cache_outage(): ...

``telemetry`` installs in-memory OpenTelemetry providers once per process (the global providers can be
set only once; if the application already installed an SDK TracerProvider, an in-memory processor is
added to it) and shows each test only what happened during that test. Metrics are read with delta
temporality and summed per test. Logs are the toolkit's structlog events (``structlog.testing``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["FaultsFixture", "MetricPoint", "Telemetry"]


# -- faults ---------------------------------------------------------------------------------------


class FaultsFixture:
    """Adds fault rules for the duration of one test; everything is removed at teardown."""

    def __init__(self) -> None:
        self._scopes: list[Any] = []

    def add(self, *rules: Any, seed: int | None = None) -> Any:
        """Inject ``rules`` (text or :class:`instrument.faults.Rule`) until the test ends.

        Returns the :class:`instrument.faults.inject` scope (``.injected``, ``.counts``).
        Raises :class:`instrument.errors.ConfigError` naming the rule and token when a rule is bad.
        """
        from instrument.faults import inject

        scope = inject(*rules, seed=seed)
        scope.__enter__()
        self._scopes.append(scope)
        return scope

    __call__ = add

    def clear(self) -> None:
        """Remove every rule added so far (also done at teardown)."""
        while self._scopes:
            self._scopes.pop().remove()

    @property
    def injected(self) -> int:
        """How many faults this test's rules injected."""
        return sum(scope.injected for scope in self._scopes)


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultsFixture]:
    """Inject faults for this test: ``faults.add("redis://*: timeout 2s first=3", seed=1)``."""
    fixture = FaultsFixture()
    try:
        for marker in reversed(list(request.node.iter_markers("faults"))):
            fixture.add(*marker.args, **marker.kwargs)
        yield fixture
    finally:
        fixture.clear()


@pytest.fixture(autouse=True)
def _instrument_faults_marker(request: pytest.FixtureRequest) -> None:
    """Honour ``@pytest.mark.faults(...)`` on tests that do not ask for the ``faults`` fixture."""
    if request.node.get_closest_marker("faults") is not None and "faults" not in request.fixturenames:
        request.getfixturevalue("faults")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults(*rules, seed=None): inject instrument fault rules during the test")


# -- telemetry ------------------------------------------------------------------------------------


@dataclass
class MetricPoint:
    """One metric stream (name + attributes) summed over the test: ``value`` for counters and gauges,
    ``count``/``sum``/``bucket_counts`` for histograms."""

    name: str
    attributes: dict[str, Any]
    value: float = 0.0
    count: int = 0
    sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)


class _Backend:
    """The process-wide in-memory exporter and reader, installed once."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import (
            Counter,
            Histogram,
            MeterProvider,
            ObservableCounter,
            ObservableUpDownCounter,
            UpDownCounter,
        )
        from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.spans = InMemorySpanExporter()
        current = trace.get_tracer_provider()
        if not isinstance(current, TracerProvider):
            current = TracerProvider()
            trace.set_tracer_provider(current)
        current.add_span_processor(SimpleSpanProcessor(self.spans))
        if trace.get_tracer_provider() is not current:  # someone else won the race to set it
            trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(self.spans))  # type: ignore[attr-defined]

        delta = AggregationTemporality.DELTA
        self.reader: Any = InMemoryMetricReader(preferred_temporality={
            Counter: delta, UpDownCounter: delta, Histogram: delta,
            ObservableCounter: delta, ObservableUpDownCounter: delta})
        self.metrics_error: str | None = None
        if type(metrics.get_meter_provider()).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"):
            metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        else:
            self.reader = None
            self.metrics_error = (
                f"metrics cannot be captured: a {type(metrics.get_meter_provider()).__name__} was installed before the "
                "telemetry fixture first ran (instrument.init() or the application); request the telemetry fixture "
                "before calling init(), or let the test use instrument.testing")

    def collect(self) -> list[Any]:
        if self.reader is None:
            return []
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


_backend: _Backend | None = None


def _get_backend() -> _Backend:
    global _backend
    if _backend is None:
        _backend = _Backend()
    return _backend


def _matches(attributes: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    attributes = attributes or {}
    return all(key in attributes and attributes[key] == value for key, value in wanted.items())


def _want(attributes: Mapping[str, Any] | None, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted attribute names go in the positional mapping; plain ones may also be keywords."""
    return {**(attributes or {}), **attrs}


class Telemetry:
    """What the code under test emitted during this test: spans, span events, metrics, logs, policy events.

    Attribute filters: a mapping for dotted names (``{"server.address": "payments"}``) and/or keywords.
    """

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend
        self._points: dict[tuple[str, frozenset[tuple[str, Any]]], MetricPoint] = {}
        self.logs: list[dict[str, Any]] = []  # structlog event dicts ("event" holds the name)
        self.policy_events: list[Any] = []  # instrument.events.PolicyEvent, in order

    # -- spans ---------------------------------------------------------------------------------

    def spans(self, name: str | None = None, attributes: Mapping[str, Any] | None = None, /,
              **attrs: Any) -> list[Any]:
        """Finished spans (``ReadableSpan``) with this name and these attributes, oldest first."""
        wanted = _want(attributes, attrs)
        return [s for s in self._backend.spans.get_finished_spans()
                if (name is None or s.name == name) and _matches(s.attributes, wanted)]

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any) -> Any:
        """Exactly one finished span matching; else an AssertionError listing what there is."""
        found = self.spans(name, attributes, **attrs)
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one span {name!r} with {_want(attributes, attrs)}, found {len(found)}; "
                f"finished spans:\n{self.describe_spans()}")
        return found[0]

    def describe_spans(self) -> str:
        spans = self._backend.spans.get_finished_spans()
        if not spans:
            return "  (none)"
        return "\n".join(f"  {s.name!r} {dict(s.attributes or {})} events={[e.name for e in s.events]}"
                         for s in spans)

    def events(self, name: str | None = None, attributes: Mapping[str, Any] | None = None, /,
               **attrs: Any) -> list[Any]:
        """Span events (``.name``, ``.attributes``) with this name and these attributes, across spans."""
        wanted = _want(attributes, attrs)
        return [e for s in self._backend.spans.get_finished_spans() for e in s.events
                if (name is None or e.name == name) and _matches(e.attributes, wanted)]

    # -- metrics -------------------------------------------------------------------------------

    def _collect(self) -> None:
        for metric in self._backend.collect():
            for point in metric.data.data_points:
                attrs = dict(point.attributes or {})
                key = (metric.name, frozenset(attrs.items()))
                acc = self._points.get(key)
                if acc is None:
                    acc = self._points[key] = MetricPoint(metric.name, attrs)
                if hasattr(point, "bucket_counts"):
                    acc.count += point.count
                    acc.sum += point.sum
                    counts = list(point.bucket_counts)
                    acc.bucket_counts = [a + b for a, b in zip(acc.bucket_counts, counts)] if acc.bucket_counts \
                        else counts
                    acc.explicit_bounds = list(point.explicit_bounds)
                elif type(metric.data).__name__ == "Gauge":
                    acc.value = point.value
                else:
                    acc.value += point.value

    def metric_points(self, name: str, attributes: Mapping[str, Any] | None = None, /,
                      **attrs: Any) -> list[MetricPoint]:
        """The streams of metric ``name`` whose attributes include these, summed over this test."""
        if self._backend.metrics_error:
            raise AssertionError(self._backend.metrics_error)
        self._collect()
        wanted = _want(attributes, attrs)
        return [p for (n, _), p in self._points.items() if n == name and _matches(p.attributes, wanted)]

    def metric_value(self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any) -> float:
        """Counter/up-down counter total (histograms: the number of recordings) over matching streams."""
        points = self.metric_points(name, attributes, **attrs)
        return sum(p.count if p.bucket_counts else p.value for p in points)

    def metric_names(self) -> list[str]:
        self._collect()
        return sorted({n for n, _ in self._points})

    # -- logs ----------------------------------------------------------------------------------

    def log_events(self, event: str | None = None, /, **fields: Any) -> list[dict[str, Any]]:
        """Captured structlog events named ``event`` whose fields include these."""
        return [e for e in self.logs if (event is None or e.get("event") == event) and _matches(e, fields)]

    def clear(self) -> None:
        """Forget everything captured so far in this test."""
        self._backend.spans.clear()
        self._backend.collect()
        self._points.clear()
        self.logs.clear()
        self.policy_events.clear()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """In-memory spans, metrics, logs and policy events for this test (see :class:`Telemetry`)."""
    import structlog.testing

    from instrument import events

    backend = _get_backend()
    backend.spans.clear()
    backend.collect()  # drop what earlier tests recorded: the reader reports deltas from here on
    captured = Telemetry(backend)
    _ensure_listener()
    listener = captured.policy_events.append
    events.subscribe(listener)
    try:
        with structlog.testing.capture_logs() as logs:
            captured.logs = logs
            yield captured
    finally:
        events.unsubscribe(listener)


def _ensure_listener() -> None:
    """Turn policy events into span events, metrics and logs even when init() was not called."""
    try:
        from instrument import _policy_telemetry
    except ImportError:  # the core's listener is not there: policy events are still captured
        return
    _policy_telemetry.install()
