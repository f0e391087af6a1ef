"""The toolkit's OpenTelemetry tracer and instruments, created once from the catalog.

They are made on the global (proxy) providers, so they work whether the toolkit installed the
providers or the application did, and whether that happened before or after first use.
"""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import metrics, trace

from instrument._catalog import BY_NAME

VERSION = "0.1.0"


@functools.cache
def tracer() -> trace.Tracer:
    return trace.get_tracer("instrument", VERSION)


@functools.cache
def meter() -> metrics.Meter:
    return metrics.get_meter("instrument", VERSION)


@functools.cache
def get(name: str) -> Any:
    """The instrument for catalog metric ``name`` (histograms carry the advisory bucket boundaries).

    Histograms, counters and up-down counters are aggregated in place (:mod:`instrument._aggregates`) when
    the toolkit's own reader exports them, else they are the SDK's; either way histograms offer
    ``record(value, attributes)`` and ``bind(attributes).record(value)``, sums ``add`` and ``bind().add``.
    """
    spec = BY_NAME[name]
    m = meter()
    if spec.instrument == "histogram":
        from instrument import _aggregates

        return _aggregates.histogram(spec, lambda: m.create_histogram(
            spec.name, unit=spec.unit, description=spec.description,
            explicit_bucket_boundaries_advisory=list(spec.buckets or ())))
    if spec.instrument == "counter":
        from instrument import _aggregates

        return _aggregates.counter(spec, lambda: m.create_counter(spec.name, unit=spec.unit,
                                                                  description=spec.description))
    if spec.instrument == "updowncounter":
        from instrument import _aggregates

        return _aggregates.counter(spec, lambda: m.create_up_down_counter(spec.name, unit=spec.unit,
                                                                          description=spec.description))
    raise ValueError(f"{name} is observable: use observe()")


def observe(name: str, callback: Any) -> Any:
    """Register an observable instrument for catalog metric ``name`` with ``callback``."""
    spec = BY_NAME[name]
    m = meter()
    if spec.instrument == "gauge":
        return m.create_observable_gauge(spec.name, callbacks=[callback], unit=spec.unit,
                                         description=spec.description)
    if spec.instrument == "updowncounter":
        return m.create_observable_up_down_counter(spec.name, callbacks=[callback], unit=spec.unit,
                                                   description=spec.description)
    if spec.instrument == "counter":
        return m.create_observable_counter(spec.name, callbacks=[callback], unit=spec.unit,
                                           description=spec.description)
    raise ValueError(f"{name} is a {spec.instrument}")


def reset() -> None:
    """Forget cached instruments (tests that swap providers)."""
    tracer.cache_clear()
    meter.cache_clear()
    get.cache_clear()
