"""psycopg_pool: the nine ``db.client.connection.*`` metrics for ConnectionPool and AsyncConnectionPool.

``getconn`` (wait time, timeouts), ``putconn`` (use time) and ``_connect`` (create time) are wrapped at
class level; ``connection()`` goes through them. Counts (idle/used), idle.max/idle.min/max and
pending_requests are read from ``pool.get_stats()`` when metrics are collected. The pool name is the
pool's own ``name``. The statements themselves are traced by the psycopg integration; each connection a
pool lends gets its own wrapper of ``execute`` from it (``patching.own``: it lives as long as the pool, so
a statement need not bind the class-level wrapper to it each time).
Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=psycopg_pool.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg_pool

from instrument._pool_metrics import PoolMetrics, Snapshot
from instrument.patching import Target, apply, own, revert

TARGETS = (  # a checkout and its return: each pool gets its own wrappers (patching's per_instance)
    Target("psycopg_pool", "ConnectionPool.getconn", per_instance=True),
    Target("psycopg_pool", "ConnectionPool.putconn", per_instance=True),
    Target("psycopg_pool", "ConnectionPool._connect"),
    Target("psycopg_pool", "AsyncConnectionPool.getconn", is_async=True, per_instance=True),
    Target("psycopg_pool", "AsyncConnectionPool.putconn", is_async=True, per_instance=True),
    Target("psycopg_pool", "AsyncConnectionPool._connect", is_async=True),
)

_perf = time.perf_counter


def _snapshot(pool: Any) -> Snapshot | None:
    if getattr(pool, "closed", False):
        return None
    stats = pool.get_stats()
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return Snapshot(idle=available, used=max(0, size - available), idle_max=pool.max_size, idle_min=pool.min_size,
                    max=pool.max_size, pending=stats.get("requests_waiting", 0))


_METRICS = "_instrument_pool_metrics"  # a pool's PoolMetrics, kept on the pool


def metrics_for(pool: Any) -> PoolMetrics:
    found = pool.__dict__.get(_METRICS)
    if found is None:
        found = pool.__dict__[_METRICS] = PoolMetrics(pool.name, pool, _snapshot)
    return found


def _getconn(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _perf()
    try:
        conn = wrapped(*args, **kwargs)
    except psycopg_pool.PoolTimeout:
        metrics_for(instance).timed_out()
        raise
    now = _perf()
    metrics = instance.__dict__.get(_METRICS) or metrics_for(instance)
    metrics.waited(now - start)
    conn._instrument_checkout = (now, metrics.used)  # what putconn records the use time with
    if "execute" not in conn.__dict__:  # lives as long as the pool: its own execute wrapper (psycopg's, if on)
        own(conn, "execute")
    return conn


def _putconn(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _used(args[0] if args else kwargs.get("conn"))
    return wrapped(*args, **kwargs)


def _used(conn: Any) -> None:
    checkout = getattr(conn, "_instrument_checkout", None)
    if checkout is not None:
        conn._instrument_checkout = None
        checkout[1](_perf() - checkout[0])


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _perf()
    conn = wrapped(*args, **kwargs)
    metrics_for(instance).created(_perf() - start)
    return conn


async def _agetconn(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _perf()
    try:
        conn = await wrapped(*args, **kwargs)
    except psycopg_pool.PoolTimeout:
        metrics_for(instance).timed_out()
        raise
    now = _perf()
    metrics = instance.__dict__.get(_METRICS) or metrics_for(instance)
    metrics.waited(now - start)
    conn._instrument_checkout = (now, metrics.used)
    if "execute" not in conn.__dict__:
        own(conn, "execute")
    return conn


async def _aputconn(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _used(args[0] if args else kwargs.get("conn"))
    return await wrapped(*args, **kwargs)


async def _aconnect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _perf()
    conn = await wrapped(*args, **kwargs)
    metrics_for(instance).created(_perf() - start)
    return conn


def patch() -> None:
    for target, sync, asynchronous in zip(TARGETS[:3], (_getconn, _putconn, _connect),
                                          (_agetconn, _aputconn, _aconnect), strict=True):
        apply((target,), sync)
        apply((TARGETS[TARGETS.index(target) + 3],), asynchronous, asynchronous)


def unpatch() -> None:
    revert(TARGETS)
