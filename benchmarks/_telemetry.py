"""One set of SDK providers for every variant (ours and contrib's), installed before ``instrument.init()``.

Default mode: spans go through a BatchSpanProcessor to an exporter that drops them, metrics to an
InMemoryMetricReader that is never collected: the SDK's recording cost is in, export cost is out.
``--otlp``: the real OTLP/gRPC exporters to a local sink in a subprocess (its CPU is not ours).
The sampler can be switched to always_off at run time, for the sampled-out variant in the same run.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


class NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class SamplerSwitch:
    """parentbased_always_on, or always_off while sampled out (the sampled-out variant, same run).

    The SDK's own samplers on every tracer the provider made, swapped in place: a sampler class of our
    own would make every span take the SDK's generic path, which is not what an application runs.
    """

    def __init__(self, tp: TracerProvider) -> None:
        self.tp = tp
        self.on = ParentBased(ALWAYS_ON)
        self.tracers: weakref.WeakSet[Any] = weakref.WeakSet()
        made = tp.get_tracer

        def get_tracer(*args: Any, **kwargs: Any) -> Any:
            tracer = made(*args, **kwargs)
            self.tracers.add(tracer)
            return tracer

        tp.get_tracer = get_tracer  # type: ignore[method-assign]

    def sampled_out(self, value: bool) -> None:
        self.use(ALWAYS_OFF if value else self.on)

    def use(self, sampler: Any) -> None:
        self.tp.sampler = sampler
        for tracer in self.tracers:
            tracer.sampler = sampler


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
    sampler: SamplerSwitch
    counter: CountingProcessor
    mode: str


def install(otlp_endpoint: str | None = None) -> Telemetry:
    """Install the global providers and ``instrument.init()`` with no integration hooked (we toggle them)."""
    # The toolkit's readers (as instrument.init() installs them) export its in-place duration histograms;
    # contrib's instruments go through the same readers as ordinary SDK instruments.
    from instrument import _aggregates

    resource = Resource({"service.name": "benchmarks"})
    _aggregates.enable(resource)
    tp = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False)
    sampler = SamplerSwitch(tp)
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
