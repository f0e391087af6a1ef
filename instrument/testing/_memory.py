"""In-memory telemetry for tests: SDK providers with in-memory exporters, installed once per process.

OpenTelemetry's global providers can be set only once, so :func:`capture` installs them on first use
(unless the application set its own) and clears what they hold each time it is entered.

    with capture() as tel:
        requests.get(url)
        span = tel.span("GET", **{"server.port": 8080})
        assert tel.metric_points("http.client.request.duration")
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import _logs, metrics, trace

_lock = threading.Lock()
_installed: dict[str, Any] = {}


def _install() -> dict[str, Any]:
    with _lock:
        if _installed:
            return _installed
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from instrument import _aggregates, _instruments

        class _Reader(_aggregates.MergingReader, InMemoryMetricReader):
            """In-memory, with the toolkit's in-place histograms, exactly as the OTLP reader exports them."""

        resource = Resource({"service.name": "test"})
        spans = InMemorySpanExporter()
        tp = TracerProvider(resource=resource, shutdown_on_exit=False)
        tp.add_span_processor(SimpleSpanProcessor(spans))
        reader = _Reader()
        _aggregates.enable(resource)
        _instruments.reset()  # instruments made before now would bypass the in-place histograms
        mp = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        logs = InMemoryLogRecordExporter()
        lp = LoggerProvider(resource=resource, shutdown_on_exit=False)
        lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
        trace.set_tracer_provider(tp)
        metrics.set_meter_provider(mp)
        _logs.set_logger_provider(lp)
        if trace.get_tracer_provider() is not tp:
            raise RuntimeError("instrument.testing.capture(): a TracerProvider was already installed")
        _installed.update(spans=spans, reader=reader, logs=logs, tp=tp, mp=mp, lp=lp)
        return _installed


@dataclass
class Point:
    name: str
    attributes: dict[str, Any]
    value: float  # counters/gauges: the value; histograms: the count
    sum: float = 0.0


class Capture:
    """What the code under test emitted since the capture began, with small finders."""

    def __init__(self, parts: dict[str, Any]) -> None:
        self._parts = parts

    def clear(self) -> None:
        """Start from nothing: the toolkit's in-place metrics are zeroed (an SDK instrument's cumulative
        points, e.g. another library's, stay)."""
        from instrument import _aggregates

        self._parts["spans"].clear()
        self._parts["logs"].clear()
        self._parts["reader"].get_metrics_data()
        _aggregates.forget_recorded()

    # spans
    def spans(self, name: str | None = None, **attributes: Any) -> list[Any]:
        found = []
        for span in self._parts["spans"].get_finished_spans():
            if name is not None and span.name != name:
                continue
            attrs = dict(span.attributes or {})
            if all(attrs.get(_key(k)) == v for k, v in attributes.items()):
                found.append(span)
        return found

    def span(self, name: str | None = None, **attributes: Any) -> Any:
        """Exactly one span matching; otherwise an AssertionError that lists what there is."""
        found = self.spans(name, **attributes)
        if len(found) != 1:
            have = [(s.name, dict(s.attributes or {})) for s in self._parts["spans"].get_finished_spans()]
            raise AssertionError(f"expected one span {name!r} {attributes}, found {len(found)}; spans: {have}")
        return found[0]

    # metrics
    def metric_points(self, name: str, **attributes: Any) -> list[Point]:
        data = self._parts["reader"].get_metrics_data()
        out: list[Point] = []
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for p in metric.data.data_points:
                        attrs = dict(p.attributes or {})
                        if not all(attrs.get(_key(k)) == v for k, v in attributes.items()):
                            continue
                        if hasattr(p, "bucket_counts"):
                            out.append(Point(name, attrs, float(p.count), float(p.sum)))
                        else:
                            out.append(Point(name, attrs, float(p.value)))
        return out

    def metric_total(self, name: str, **attributes: Any) -> float:
        return sum(p.value for p in self.metric_points(name, **attributes))

    # logs
    def logs(self, body: str | None = None, **attributes: Any) -> list[Any]:
        found = []
        for data in self._parts["logs"].get_finished_logs():
            record = getattr(data, "log_record", data)
            if body is not None and record.body != body:
                continue
            attrs = dict(record.attributes or {})
            if all(attrs.get(_key(k)) == v for k, v in attributes.items()):
                found.append(record)
        return found


def _key(name: str) -> str:
    # Python keywords can't hold dots: server_port=8080 also matches "server.port".
    return name.replace("__", ".") if "__" in name else name


@contextmanager
def capture() -> Iterator[Capture]:
    """In-memory spans, metrics and logs for the duration of a block (providers installed once)."""
    parts = _install()
    tel = Capture(parts)
    tel.clear()
    yield tel
