"""The deferred OTLP metric exporter gives the metric reader the preferences the real exporter gives.

init() builds OTLP exporters on first export (instrument._otel.Deferred), but the periodic reader reads
the exporter's temporality and aggregation preferences when it is built; they must be the same as the
real OTLP exporter's for every setting of the two variables that drive them.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from instrument._otel import Deferred


def _effective(exporter: object) -> tuple[dict, dict]:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=10**9)
    try:
        return (dict(reader._instrument_class_temporality),
                {k: type(v).__name__ for k, v in reader._instrument_class_aggregation.items()})
    finally:
        reader.shutdown()


@pytest.mark.parametrize("env", [{}, {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"},
                                 {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "LOWMEMORY"},
                                 {"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION":
                                  "base2_exponential_bucket_histogram"}])
def test_deferred_metric_exporter_preferences_match_the_real_one(env, monkeypatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deferred = Deferred(lambda: OTLPMetricExporter(endpoint="http://127.0.0.1:9"), metrics=True)
    real = OTLPMetricExporter(endpoint="http://127.0.0.1:9")
    assert _effective(deferred) == _effective(real)
    assert deferred._real is None  # still not built: nothing was exported
