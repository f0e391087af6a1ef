"""One set of SDK providers for every variant (ours and contrib's), installed before ``instrument.init()``.

Default mode: spans go through a BatchSpanProcessor to an exporter that drops them, metrics to an
InMemoryMetricReader that is never collected: the SDK's recording cost is in, export cost is out.
``--otlp``: the real OTLP/gRPC exporters to a local sink in a subprocess (its CPU is not ours).
The sampler can be switched to always_off at run time, for the sampled-out variant in the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler


class NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class SwitchSampler(Sampler):
    """parentbased_always_on, or always_off while ``off`` is set (the sampled-out variant)."""

    def __init__(self) -> None:
        self.on = ParentBased(ALWAYS_ON)
        self.off = ALWAYS_OFF
        self.current: Sampler = self.on

    def sampled_out(self, value: bool) -> None:
        self.current = self.off if value else self.on

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        return self.current.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "SwitchSampler"


class CountingProcessor(SpanProcessor):
    """Counts ended spans (for the self-check: bare 0, ours 1, contrib 1)."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: Any) -> None:
        self.ended += 1


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    sampler: SwitchSampler
    counter: CountingProcessor
    mode: str


def install(otlp_endpoint: str | None = None) -> Telemetry:
    """Install the global providers and ``instrument.init()`` with no integration hooked (we toggle them)."""
    # The toolkit's readers (as instrument.init() installs them) export its in-place duration histograms;
    # contrib's instruments go through the same readers as ordinary SDK instruments.
    from instrument import _aggregates

    resource = Resource({"service.name": "benchmarks"})
    _aggregates.enable(resource)
    sampler = SwitchSampler()
    tp = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    counter = CountingProcessor()
    tp.add_span_processor(counter)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))

        class OtlpReader(_aggregates.MergingReader, PeriodicExportingMetricReader):
            pass

        reader: Any = OtlpReader(OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True),
                                 export_interval_millis=5000)
        mode = "otlp"
    else:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        tp.add_span_processor(BatchSpanProcessor(NullSpanExporter()))

        class MemoryReader(_aggregates.MergingReader, InMemoryMetricReader):
            pass

        reader = MemoryReader()
        mode = "memory"
    mp = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)

    import instrument
    from instrument import integrations

    env = {
        "OTEL_SERVICE_NAME": "benchmarks",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "INSTRUMENT_LOG_LEVEL": "error",
        "INSTRUMENT_DISABLED_INTEGRATIONS": ",".join(integrations.REGISTRY),
    }
    instrument.init(env=env)
    return Telemetry(tp, mp, sampler, counter, mode)
