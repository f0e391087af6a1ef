"""No leaked connections: 1,000 calls with injected failures and cancellations; afterwards pg_stat_activity shows
no more connections than the pool's max and the pool's used count is back to 0 (also in the metric)."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from instrument import _context
from instrument.faults import inject
from instrument.pool import Pool
from tests.conftest import need
from tests.db.conftest import PG, PG_DSN

CALLS = 1000
MAX = 4
FAULTS = "postgresql://127.0.0.1:5432/test: error 10%"


def _backends(app: str) -> int:
    import psycopg

    with psycopg.connect(PG_DSN) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]


def _backends_gone(app: str, at_most: int = 0, timeout: float = 5.0) -> int:
    """Backends left (after the pool closed, or beside its open connections): a server process ends
    shortly after its client hangs up (a connection the pool replaced), so poll until no more than
    ``at_most`` are left (or the timeout says one leaked)."""
    import time

    deadline = time.monotonic() + timeout
    while (left := _backends(app)) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _used_metric(tel: Any, name: str) -> float:
    return tel.metric_total("db.client.connection.count", **{"db.client.connection.pool.name": name,
                                                             "db.client.connection.state": "used"})


async def test_async_psycopg_pool_no_leaks(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    pytest.importorskip("psycopg")
    psycopg_pool = pytest.importorskip("psycopg_pool")
    patched("psycopg")
    patched("psycopg_pool")
    app = "instrument-leak-async"
    outcomes: dict[str, int] = {}
    async with psycopg_pool.AsyncConnectionPool(PG_DSN, min_size=1, max_size=MAX, name="leak-async", open=False,
                                                kwargs={"application_name": app, "autocommit": True}) as pool:

        async def call(i: int) -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.01)" if i % 5 == 0 else "SELECT 1")

        with inject(FAULTS):
            for start in range(0, CALLS, 100):
                tasks = [asyncio.create_task(call(i)) for i in range(start, start + 100)]
                await asyncio.sleep(0.003)
                for task in tasks[::7]:
                    task.cancel()  # cancelled while waiting for the pool or mid-statement
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    key = type(result).__name__ if isinstance(result, BaseException) else "ok"
                    outcomes[key] = outcomes.get(key, 0) + 1
        assert outcomes.get("ok", 0) > 500
        assert outcomes.get("CancelledError", 0) > 0
        assert outcomes.get("OperationalError", 0) > 0, outcomes  # injected: psycopg.OperationalError
        assert _backends_gone(app, at_most=MAX) <= MAX
        stats = pool.get_stats()
        assert stats["pool_size"] - stats["pool_available"] == 0
        assert _used_metric(tel, "leak-async") == 0
        async with pool.connection() as conn:  # and the pool still works
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


def test_generic_pool_psycopg2_no_leaks(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    psycopg2 = pytest.importorskip("psycopg2")
    patched("psycopg2")
    app = "instrument-leak-sync"
    pool = Pool(lambda: psycopg2.connect(**PG, application_name=app), max_size=MAX, name="leak-sync",
                reset=lambda c: c.rollback(), acquire_timeout=30)
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(CALLS // 8):
            try:
                with pool.connection() as conn, conn.cursor() as cur:
                    if rng.random() < 0.1:  # cancelled server-side by a deadline
                        with _context.deadline_scope(0.005):
                            cur.execute("SELECT pg_sleep(1)")
                    else:
                        cur.execute("SELECT 1")
                key = "ok"
            except Exception as exc:  # noqa: BLE001 - counted
                key = type(exc).__name__
            with lock:
                outcomes[key] = outcomes.get(key, 0) + 1

    with inject(FAULTS):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(outcomes.values()) == CALLS
    assert outcomes.get("QueryCanceled", 0) > 0, outcomes
    assert len(outcomes) >= 3, outcomes  # ok, cancelled, injected failures
    assert _backends_gone(app, at_most=MAX) <= MAX
    assert pool.stats().used == 0
    assert _used_metric(tel, "leak-sync") == 0
    pool.close()
    assert _backends_gone(app) == 0
