"""pytest plugin (entry point ``pytest11: instrument``): the ``faults`` and ``telemetry`` fixtures.

::

    def test_checkout_survives_payment_errors(faults, telemetry):
        faults.add("http://payments:*: error 50%", seed=1)
        ...
        assert telemetry.metric_value("instrument.fault.injected", {"instrument.fault.kind": "error"}) > 0
        span = telemetry.span("GET", **{"server.address": "payments"})

    @pytest.mark.faults("redis://*: timeout 2s first=3")
    def test_cache_outage(): ...

``telemetry`` uses the in-memory providers of :func:`instrument.testing.capture` (installed once per
process: the global providers can be set only once) and shows each test only what happened during
that test: spans are cleared at the start, metric values are counted from the start (cumulative minus
the value at the start; gauges as they are now). Logs are the toolkit's structlog events
(``structlog.testing``); policy decisions are kept as :class:`instrument.events.PolicyEvent` too.
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
    """The process-wide in-memory providers of :func:`instrument.testing.capture`, installed once."""

    def __init__(self) -> None:
        from instrument.testing._memory import _install

        parts = _install()
        self.spans = parts["spans"]  # InMemorySpanExporter
        self.reader = parts["reader"]  # InMemoryMetricReader (cumulative)
        self.otel_logs = parts.get("logs")  # InMemoryLogRecordExporter

    def collect(self) -> list[Any]:
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
        self._baseline = self._snapshot()
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

    def _snapshot(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], MetricPoint]:
        points: dict[tuple[str, frozenset[tuple[str, Any]]], MetricPoint] = {}
        for metric in self._backend.collect():
            gauge = type(metric.data).__name__ == "Gauge"
            for point in metric.data.data_points:
                attrs = dict(point.attributes or {})
                p = MetricPoint(metric.name, attrs)
                if hasattr(point, "bucket_counts"):
                    p.count, p.sum = point.count, point.sum
                    p.bucket_counts, p.explicit_bounds = list(point.bucket_counts), list(point.explicit_bounds)
                else:
                    p.value = point.value
                p.gauge = gauge  # type: ignore[attr-defined]
                points[(metric.name, frozenset(attrs.items()))] = p
        return points

    def _since_start(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], MetricPoint]:
        """Cumulative points minus what they were when the test began (gauges: the current value)."""
        out = {}
        for key, now in self._snapshot().items():
            before = self._baseline.get(key)
            if before is not None and not getattr(now, "gauge", False):
                now.value -= before.value
                now.count -= before.count
                now.sum -= before.sum
                if before.bucket_counts and len(before.bucket_counts) == len(now.bucket_counts):
                    now.bucket_counts = [a - b for a, b in zip(now.bucket_counts, before.bucket_counts)]
                if not (now.value or now.count):
                    continue  # nothing happened to this stream during the test
            out[key] = now
        return out

    def metric_points(self, name: str, attributes: Mapping[str, Any] | None = None, /,
                      **attrs: Any) -> list[MetricPoint]:
        """The streams of metric ``name`` whose attributes include these, summed over this test."""
        wanted = _want(attributes, attrs)
        return [p for (n, _), p in self._since_start().items() if n == name and _matches(p.attributes, wanted)]

    def metric_value(self, name: str, attributes: Mapping[str, Any] | None = None, /, **attrs: Any) -> float:
        """Counter/up-down counter total (histograms: the number of recordings) over matching streams."""
        points = self.metric_points(name, attributes, **attrs)
        return sum(p.count if p.bucket_counts else p.value for p in points)

    def metric_names(self) -> list[str]:
        return sorted({n for n, _ in self._since_start()})

    # -- logs ----------------------------------------------------------------------------------

    def log_events(self, event: str | None = None, /, **fields: Any) -> list[dict[str, Any]]:
        """Captured structlog events named ``event`` whose fields include these."""
        return [e for e in self.logs if (event is None or e.get("event") == event) and _matches(e, fields)]

    def clear(self) -> None:
        """Forget everything captured so far in this test."""
        self._backend.spans.clear()
        self._baseline = self._snapshot()
        self.logs.clear()
        self.policy_events.clear()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """In-memory spans, metrics, logs and policy events for this test (see :class:`Telemetry`)."""
    import structlog.testing

    from instrument import events

    backend = _get_backend()
    backend.spans.clear()
    captured = Telemetry(backend)  # metrics are counted from here on
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
