"""SQLAlchemy (Engine and AsyncEngine): pool metrics; statements are traced by the driver underneath.

Why no SQLAlchemy statement spans: every statement SQLAlchemy runs goes through its DB-API driver
(psycopg, psycopg2, asyncpg, pymysql, sqlite3), whose integration already makes the one span per statement
with the exact SQL sent, the driver's errors and SQLSTATE, and the server-side cancel at a deadline. A
second span at the SQLAlchemy layer would double every span and histogram point; suppressing the driver's
instead would lose what only the driver knows. So this module adds only what SQLAlchemy alone knows: its
pools (QueuePool, AsyncAdaptedQueuePool, and partially the others).

- ``Pool.connect`` (checkout): wait time, pending requests, ``sqlalchemy.exc.TimeoutError`` as a timeout;
  ``Pool._create_connection``: create time; ``checkout``/``checkin`` pool events: use time.
- Counts from ``checkedin()``/``checkedout()``, idle.max = ``size()``, max = ``size() + max_overflow``.
- Pool name: ``pool_logging_name`` when set, else ``server.address:server.port/db.namespace`` from the
  engine's URL (learned in ``Engine.__init__``).

Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=sqlalchemy.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from sqlalchemy import event, exc
from sqlalchemy.pool import Pool, QueuePool

from instrument._pool_metrics import PoolMetrics, Snapshot, pool_name
from instrument.patching import Target, apply, revert

TARGETS = (
    Target("sqlalchemy.engine.base", "Engine.__init__"),
    Target("sqlalchemy.pool.base", "Pool.connect", per_instance=True),  # each engine's pool its own wrapper
    Target("sqlalchemy.pool.base", "Pool._create_connection"),
)

_perf = time.perf_counter


def _snapshot(pool: Any) -> Snapshot | None:
    pending = pool.__dict__.get("_instrument_pending", 0)
    if isinstance(pool, QueuePool):
        size = pool.size()
        overflow = pool._max_overflow
        return Snapshot(idle=pool.checkedin(), used=pool.checkedout(), idle_max=size, idle_min=0,
                        max=size + overflow if overflow >= 0 else None, pending=pending)
    return Snapshot(pending=pending)


def metrics_for(pool: Any) -> PoolMetrics:
    found = pool.__dict__.get("_instrument_pool_metrics")
    if found is None:
        name = pool.__dict__.get("_instrument_pool_name") or getattr(pool, "_orig_logging_name", None) \
            or f"sqlalchemy-pool-{id(pool):x}"
        found = pool.__dict__["_instrument_pool_metrics"] = PoolMetrics(name, pool, _snapshot)
    return found


def _engine_init(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        pool, url = instance.pool, instance.url
        if not getattr(pool, "_orig_logging_name", None):
            port = url.port
            if port is None and url.host:
                port = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(url.get_backend_name())
            pool.__dict__["_instrument_pool_name"] = pool_name(url.host, port, url.database)
    except Exception:  # noqa: BLE001,S110 - naming is best effort; the pool still gets a generated name
        pass
    return result


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    metrics = metrics_for(instance)
    state = instance.__dict__
    state["_instrument_pending"] = state.get("_instrument_pending", 0) + 1
    start = _perf()
    try:
        conn = wrapped(*args, **kwargs)
    except exc.TimeoutError:
        metrics.timed_out()
        raise
    finally:
        state["_instrument_pending"] -= 1
    metrics.waited(_perf() - start)
    return conn


def _create(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    start = _perf()
    record = wrapped(*args, **kwargs)
    metrics_for(instance).created(_perf() - start)
    return record


def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    record.info["_instrument_checkout"] = _perf()


def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
    start = record.info.pop("_instrument_checkout", None) if record is not None else None
    if start is not None:
        pool = getattr(record, "_ConnectionRecord__pool", None)
        if pool is not None:
            metrics_for(pool).used(_perf() - start)


def patch() -> None:
    apply(TARGETS[:1], _engine_init)
    apply(TARGETS[1:2], _connect)
    apply(TARGETS[2:], _create)
    if not event.contains(Pool, "checkout", _on_checkout):
        event.listen(Pool, "checkout", _on_checkout)
        event.listen(Pool, "checkin", _on_checkin)


def unpatch() -> None:
    revert(TARGETS)
    if event.contains(Pool, "checkout", _on_checkout):
        event.remove(Pool, "checkout", _on_checkout)
        event.remove(Pool, "checkin", _on_checkin)


_ = sqlalchemy
