"""Counting what telemetry is lost, so that a collector outage is visible rather than silent.

The SDK's batch processors keep bounded queues (2048 spans, 2048 log records): when the collector is
down or hanging, exports fail or time out in the processors' own threads, the queues fill, and new
items are dropped. The application never waits. This module counts both kinds of loss:

- ``queue_full``: an item dropped because its processor's queue was full (counted as it is enqueued);
- ``export_failed``: an item in a batch the exporter reported as failed (after the exporter's own retries).

The counts are exposed as the observable counter ``instrument.telemetry.dropped`` (attributes
``signal`` = traces | metrics | logs, ``reason``), returned by :func:`dropped`, and the first loss of each
kind is logged once by the ``instrument`` logger.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["CountingExporter", "count_queue_drops", "dropped", "observe", "reset"]

METRIC = "instrument.telemetry.dropped"
_log = logging.getLogger("instrument")
_lock = threading.Lock()
_counts: dict[tuple[str, str], int] = {}
_logged: set[tuple[str, str]] = set()


def _count(signal: str, reason: str, n: int) -> None:
    if n <= 0:
        return
    key = (signal, reason)
    with _lock:
        _counts[key] = _counts.get(key, 0) + n
        first = key not in _logged
        _logged.add(key)
    if first:
        try:
            _log.warning("instrument: dropping %s telemetry (%s); the application is not affected. "
                         "Counted in %s; logged once.", signal, reason.replace("_", " "), METRIC)
        except Exception:  # noqa: BLE001, S110 - logging may itself be what is failing
            pass


def dropped() -> dict[tuple[str, str], int]:
    """``{(signal, reason): count}`` since start (or since fork, in a forked child)."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Forget the counts (a forked child starts its own)."""
    global _lock
    _lock = threading.Lock()
    _counts.clear()
    _logged.clear()


def _size(signal: str, batch: Any) -> int:
    if signal != "metrics":
        try:
            return len(batch)
        except TypeError:
            return 1
    total = 0
    for rm in getattr(batch, "resource_metrics", ()):
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                total += len(getattr(metric.data, "data_points", ()))
    return total


class CountingExporter:
    """Wraps an SDK exporter; counts the items of every batch whose export failed or raised.

    Everything but ``export`` is the wrapped exporter's own (attribute access is forwarded), so the
    SDK sees the same shutdown signature, preferred temporality and so on.
    """

    def __init__(self, wrapped: Any, signal: str) -> None:
        self.wrapped = wrapped
        self.signal = signal

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self.wrapped.export(batch, *args, **kwargs)
        except Exception:
            _count(self.signal, "export_failed", _size(self.signal, batch))
            raise
        if getattr(result, "name", "SUCCESS") != "SUCCESS":
            _count(self.signal, "export_failed", _size(self.signal, batch))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def count_queue_drops(processor: Any, signal: str) -> bool:
    """Count items a Batch{Span,LogRecord}Processor drops because its queue is full.

    Wraps the instance's inner ``BatchProcessor.emit`` (SDK 1.45 shape: ``processor._batch_processor``
    with ``_queue`` and ``_max_queue_size``). Returns False, counting nothing, if the SDK changed shape.
    """
    inner = getattr(processor, "_batch_processor", None)
    emit = getattr(inner, "emit", None)
    if emit is None or not hasattr(inner, "_queue") or not hasattr(inner, "_max_queue_size"):
        return False

    def counting_emit(data: Any) -> None:
        try:
            if len(inner._queue) >= inner._max_queue_size and not inner._shutdown:
                _count(signal, "queue_full", 1)
        except Exception:  # noqa: BLE001, S110 - counting must never stop the item
            pass
        emit(data)

    inner.emit = counting_emit
    return True


_observed = [False]


def observe() -> None:
    """Register ``instrument.telemetry.dropped`` on the global meter provider (once)."""
    if _observed[0]:
        return
    _observed[0] = True
    from opentelemetry.metrics import Observation

    from instrument import _instruments

    def callback(_options: Any) -> list[Any]:
        return [Observation(n, {"signal": s, "reason": r}) for (s, r), n in dropped().items()]

    _instruments.observe(METRIC, callback)
