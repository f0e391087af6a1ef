"""OpenTelemetry providers: tracer, meter and logger providers with OTLP (or console) exporters.

If the application already installed its own providers, they are used as they are and nothing is
replaced. Exports run in the SDK's background threads with bounded queues and timeouts, so a missing
or hanging collector costs the application nothing but dropped telemetry.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.composite import CompositePropagator

from instrument import _export, _fork
from instrument._instruments import VERSION
from instrument._settings import Exporter, Settings


@dataclass
class Providers:
    """What init() installed (owned) or found (not owned): shutdown only flushes what we own."""

    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    owned: list[Any] = field(default_factory=list)


def build_resource(settings: Settings) -> Any:
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = {
        "service.name": settings.service_name,
        "service.instance.id": str(uuid.uuid4()),
        "telemetry.sdk.language": "python",
        "telemetry.distro.name": "instrument",
        "telemetry.distro.version": VERSION,
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": sys.platform,
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.executable.path": sys.executable,
    }
    if settings.service_version:
        attrs["service.version"] = settings.service_version
    attrs.update(settings.resource_attributes)
    attrs["service.name"] = settings.service_name
    # Resource.create would also read OTEL_RESOURCE_ATTRIBUTES itself; we already parsed it once.
    return Resource(attrs)


def _sampler(settings: Settings) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }[settings.sampler]()


def _otlp_kwargs(exp: Exporter) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"timeout": exp.timeout}
    if exp.endpoint:
        kwargs["endpoint"] = exp.endpoint
    if exp.headers:
        kwargs["headers"] = dict(exp.headers)
    if exp.protocol == "grpc" and exp.endpoint:
        kwargs["insecure"] = not exp.endpoint.startswith("https://")
    return kwargs


# signal -> (OTLP/gRPC module, OTLP/HTTP module, OTLP class, console module, console class)
_EXPORTERS = {
    "traces": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
               "opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter",
               "opentelemetry.sdk.trace.export", "ConsoleSpanExporter"),
    "metrics": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
                "opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter",
                "opentelemetry.sdk.metrics.export", "ConsoleMetricExporter"),
    "logs": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter",
             "opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter",
             "opentelemetry.sdk._logs.export", "ConsoleLogRecordExporter"),
}


class Deferred:
    """An OTLP exporter built on its first use, in the SDK's export thread.

    Importing gRPC and the OTLP protobuf modules takes about 100 ms; a service should not wait for it at
    start-up, and the first export happens in the background anyway. A metric exporter's temporality and
    aggregation preferences (read by the metric reader at construction) come from the OTLP exporters' own
    logic (:func:`_metric_preferences`).
    """

    _instances: Any = None  # a WeakSet of every Deferred, for the fork guard

    def __init__(self, build: Any, *, metrics: bool = False) -> None:
        import threading
        import weakref

        self._build = build
        self._real: Any = None
        self._lock = threading.Lock()
        if Deferred._instances is None:
            Deferred._instances = weakref.WeakSet()  # instrument._fork holds their locks across fork()
        Deferred._instances.add(self)
        if metrics:
            self._preferred_temporality, self._preferred_aggregation = _metric_preferences()

    def _exporter(self) -> Any:
        if self._real is None:
            with self._lock:
                if self._real is None:
                    self._real = self._build()
        return self._real

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        return self._exporter().export(batch, *args, **kwargs)

    def force_flush(self, *args: Any, **kwargs: Any) -> Any:
        return True if self._real is None else self._real.force_flush(*args, **kwargs)

    def shutdown(self, *args: Any, **kwargs: Any) -> Any:
        return None if self._real is None else self._real.shutdown(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the built exporter's own attributes (fork handling reads them)
        real = self.__dict__.get("_real")
        if real is None:
            raise AttributeError(name)
        return getattr(real, name)


_PREFERENCE_VARIABLES = ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                         "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION")


def _metric_preferences() -> tuple[Any, Any]:
    """The OTLP metric exporters' temporality and aggregation preferences, from their own code.

    That code lives beside the protobuf encoder (~20 ms to import). Unless one of its two variables is
    set, its answer is cumulative everywhere (the reader's default) and explicit-bucket histograms.
    """
    if not any(os.environ.get(name) for name in _PREFERENCE_VARIABLES):
        from opentelemetry.sdk.metrics import Histogram
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation

        return None, {Histogram: ExplicitBucketHistogramAggregation()}
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import OTLPMetricExporterMixin

    class _Preferences(OTLPMetricExporterMixin):
        def __init__(self) -> None:
            self._common_configuration()

    preferences = _Preferences()
    return preferences._preferred_temporality, preferences._preferred_aggregation


def _exporter(signal: str, exp: Exporter) -> Any:
    import importlib

    grpc_module, http_module, otlp_class, console_module, console_class = _EXPORTERS[signal]
    if exp.kind == "console":
        return getattr(importlib.import_module(console_module), console_class)()
    module = grpc_module if exp.protocol == "grpc" else http_module
    kwargs = _otlp_kwargs(exp)
    return Deferred(lambda: getattr(importlib.import_module(module), otlp_class)(**kwargs), metrics=signal == "metrics")


def _is_default(provider: Any, proxy_type_names: tuple[str, ...]) -> bool:
    return type(provider).__name__ in proxy_type_names


def setup(settings: Settings) -> Providers:
    """Install providers from ``settings`` unless the application installed its own."""
    providers = Providers()
    from instrument import _gevent

    _gevent.check()  # gevent must be patched before us: warn (once) if it was not, or is patched later
    _setup_propagators(settings)
    if settings.sdk_disabled:
        return providers
    _fork.prepare()  # before any provider registers its at-fork hook (see instrument/_fork.py)
    resource = build_resource(settings)

    current_tp = trace.get_tracer_provider()
    if _is_default(current_tp, ("ProxyTracerProvider", "NoOpTracerProvider")):
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tp = TracerProvider(resource=resource, sampler=_sampler(settings), shutdown_on_exit=False)
        if settings.traces.kind != "none":
            bsp = BatchSpanProcessor(_export.CountingExporter(_exporter("traces", settings.traces), "traces"),
                                     export_timeout_millis=settings.traces.timeout * 1000)
            _export.count_queue_drops(bsp, "traces")
            tp.add_span_processor(bsp)
        trace.set_tracer_provider(tp)
        providers.owned.append(tp)
        current_tp = tp
    providers.tracer_provider = current_tp

    current_mp = metrics.get_meter_provider()
    if _is_default(current_mp, ("_ProxyMeterProvider", "NoOpMeterProvider")):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from instrument import _aggregates

        class _Reader(_aggregates.MergingReader, PeriodicExportingMetricReader):
            """The periodic reader, exporting the toolkit's in-place histograms with the SDK's metrics."""

        readers = []
        if settings.metrics.kind != "none":
            _aggregates.enable(resource)
            readers.append(_Reader(
                _export.CountingExporter(_exporter("metrics", settings.metrics), "metrics"),
                export_interval_millis=settings.metric_export_interval * 1000,
                export_timeout_millis=settings.metrics.timeout * 1000))
        mp = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False,
                           exemplar_filter=_aggregates.use_exemplar_filter(settings.exemplar_filter))
        metrics.set_meter_provider(mp)
        providers.owned.append(mp)
        current_mp = mp
    providers.meter_provider = current_mp

    from opentelemetry import _logs

    current_lp = _logs.get_logger_provider()
    if _is_default(current_lp, ("ProxyLoggerProvider", "NoOpLoggerProvider")):
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        lp = LoggerProvider(resource=resource, shutdown_on_exit=False)
        if settings.logs.kind != "none":
            blrp = BatchLogRecordProcessor(_export.CountingExporter(_exporter("logs", settings.logs), "logs"),
                                           export_timeout_millis=settings.logs.timeout * 1000)
            _export.count_queue_drops(blrp, "logs")
            lp.add_log_record_processor(blrp)
        _logs.set_logger_provider(lp)
        providers.owned.append(lp)
        current_lp = lp
    providers.logger_provider = current_lp
    if providers.owned:
        _export.observe()
        _fork.install(providers)
    return providers


def _setup_propagators(settings: Settings) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    chosen: list[Any] = []
    for name in settings.propagators:
        if name == "tracecontext":
            chosen.append(TraceContextTextMapPropagator())
        elif name == "baggage":
            chosen.append(W3CBaggagePropagator())
        else:  # b3, jaeger: optional packages, loaded through OTel's own entry points
            try:
                from opentelemetry.propagate import _load_propagator  # type: ignore[attr-defined]
            except ImportError:
                _load_propagator = None
            if _load_propagator is None:
                continue
            chosen.append(_load_propagator(name))
    composite = CompositePropagator(chosen)
    propagate.set_global_textmap(composite)
    from instrument import _call

    plain_w3c = [type(p) for p in chosen] in ([TraceContextTextMapPropagator, W3CBaggagePropagator],
                                              [TraceContextTextMapPropagator])
    _call._w3c_textmap[0] = composite if plain_w3c else None  # enables _call._inject's direct write
    _call._w3c_baggage[0] = chosen[1] if plain_w3c and len(chosen) == 2 else None  # and its baggage header


def shutdown(providers: Providers, timeout: float) -> None:
    """Flush and shut down what we own, all signals at once, within ``timeout`` seconds in total.

    Each provider's shutdown (final flush, then exporter shutdown) runs in its own daemon thread, so a
    collector that is down or hanging costs at most ``timeout``: exporters can block past their own
    timeouts (gRPC reconnect backoff), and a thread left behind dies with the process.
    """
    import threading
    import time

    deadline = time.monotonic() + timeout

    def _close(provider: Any) -> None:
        try:
            if type(provider).__name__ == "MeterProvider":
                provider.shutdown(timeout_millis=max(1.0, (deadline - time.monotonic()) * 1000))
            else:
                provider.shutdown()
        except Exception:  # noqa: BLE001, S110 - a failing exporter must not break the exit
            pass

    workers = [threading.Thread(target=_close, args=(p,), name="instrument-shutdown", daemon=True)
               for p in providers.owned]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
