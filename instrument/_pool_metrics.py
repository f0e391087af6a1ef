"""The nine ``db.client.connection.*`` metrics, shared by every pool (ours, psycopg_pool, SQLAlchemy, redis-py).

A pool registers a :class:`PoolMetrics` (kept on the pool, held here only weakly) with a ``snapshot``
function that reads its numbers. Five observable instruments (count by state, idle.max, idle.min, max,
pending_requests) are registered once, each with ONE callback that walks the live pools; the three
histograms (create/wait/use time) and the timeouts counter are recorded by the pool as things happen.
A number a pool cannot tell is None and is not reported.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from opentelemetry.metrics import CallbackOptions, Observation

from instrument import _instruments
from instrument._safety import report

__all__ = ["PoolMetrics", "Snapshot", "pool_name"]


class Snapshot(NamedTuple):
    idle: int | None = None
    used: int | None = None
    idle_max: int | None = None
    idle_min: int | None = None
    max: int | None = None
    pending: int | None = None


def pool_name(address: str | None, port: int | None, namespace: str | None) -> str:
    """The semconv default name of an unnamed pool: ``server.address:server.port/db.namespace``."""
    return f"{address or ''}:{'' if port is None else port}/{namespace or ''}"


_live: weakref.WeakSet[PoolMetrics] = weakref.WeakSet()
_lock = threading.Lock()
_registered: list[Any] = []


class PoolMetrics:
    """Metric handle of one pool: attribute sets computed once, instruments looked up once."""

    def __init__(self, name: str, owner: Any = None, snapshot: Callable[[Any], Snapshot | None] | None = None) -> None:
        self.name = name
        self.attributes = {"db.client.connection.pool.name": name}
        self._idle = {**self.attributes, "db.client.connection.state": "idle"}
        self._used = {**self.attributes, "db.client.connection.state": "used"}
        self._owner = weakref.ref(owner) if owner is not None else None
        self._snapshot = snapshot
        # Bound once: a checkout records its wait and use time without rebuilding attribute sets, and
        # created/waited/used(seconds) are the bound histograms' own record (no call of ours in between).
        self.created: Callable[[float], None] = _instruments.get("db.client.connection.create_time").bind(
            self.attributes).record
        self.waited: Callable[[float], None] = _instruments.get("db.client.connection.wait_time").bind(
            self.attributes).record
        self.used: Callable[[float], None] = _instruments.get("db.client.connection.use_time").bind(
            self.attributes).record
        self._timeouts = _instruments.get("db.client.connection.timeouts")
        _ensure_observers()
        _live.add(self)

    def timed_out(self) -> None:
        self._timeouts.add(1, self.attributes)

    def snapshot(self) -> Snapshot | None:
        if self._snapshot is None:
            return None
        owner = self._owner() if self._owner is not None else None
        if self._owner is not None and owner is None:
            _live.discard(self)
            return None
        return self._snapshot(owner)

    def forget(self) -> None:
        """Stop reporting this pool's gauges (the pool was closed)."""
        _live.discard(self)


def _snapshots() -> Iterator[tuple[PoolMetrics, Snapshot]]:
    for metrics in list(_live):
        try:
            snap = metrics.snapshot()
        except Exception as exc:  # noqa: BLE001 - one broken pool must not hide the others
            report("pool snapshot", exc)
            continue
        if snap is not None:
            yield metrics, snap


def _count(_options: CallbackOptions) -> Iterator[Observation]:
    for m, snap in _snapshots():
        if snap.idle is not None:
            yield Observation(snap.idle, m._idle)
        if snap.used is not None:
            yield Observation(snap.used, m._used)


def _field(index: int) -> Callable[[CallbackOptions], Iterator[Observation]]:
    def callback(_options: CallbackOptions) -> Iterator[Observation]:
        for m, snap in _snapshots():
            value = snap[index]
            if value is not None:
                yield Observation(value, m.attributes)

    return callback


def _ensure_observers() -> None:
    if _registered:
        return
    with _lock:
        if _registered:
            return
        _registered.append(_instruments.observe("db.client.connection.count", _count))
        for index, name in ((2, "idle.max"), (3, "idle.min"), (4, "max"), (5, "pending_requests")):
            _registered.append(_instruments.observe(f"db.client.connection.{name}", _field(index)))
