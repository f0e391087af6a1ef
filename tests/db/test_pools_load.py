"""Pool metrics under load on real servers: 32 threads (or tasks) on a pool of 4 show pending requests > 0 and
record wait time; with a tiny acquire timeout, timeouts are counted and the pool's own error is raised.

Covered: instrument.pool.Pool (psycopg2 and PyMySQL connections), instrument.pool.AsyncPool (asyncpg),
psycopg_pool ConnectionPool/AsyncConnectionPool, SQLAlchemy QueuePool/AsyncAdaptedQueuePool, redis-py
BlockingConnectionPool (sync and asyncio)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from instrument.errors import PoolExhausted
from instrument.pool import AsyncPool, Pool
from tests.conftest import need
from tests.db.conftest import MYSQL, PG, PG_DSN

N = 32


def _attrs(name: str) -> dict[str, Any]:
    return {"db.client.connection.pool.name": name}


def _pending(tel: Any, name: str) -> float:
    return tel.metric_total("db.client.connection.pending_requests", **_attrs(name))


def _waits(tel: Any, name: str) -> float:
    return sum(p.value for p in tel.metric_points("db.client.connection.wait_time", **_attrs(name)))


def _timeouts(tel: Any, name: str) -> float:
    return tel.metric_total("db.client.connection.timeouts", **_attrs(name))


def _used(tel: Any, name: str) -> float:
    return tel.metric_total("db.client.connection.count", **_attrs(name), **{"db.client.connection.state": "used"})


def _threads_on(tel: Any, name: str, once: Callable[[], None]) -> float:
    """Run ``once`` in N threads at the same time; return the largest pending_requests observed meanwhile."""
    waits_before = _waits(tel, name)
    barrier = threading.Barrier(N)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            once()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(N)]
    for t in threads:
        t.start()
    peak = 0.0
    while any(t.is_alive() for t in threads):
        peak = max(peak, _pending(tel, name))
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert _waits(tel, name) - waits_before >= N
    assert _used(tel, name) == 0
    return peak


async def _tasks_on(tel: Any, name: str, once: Callable[[], Any]) -> float:
    waits_before = _waits(tel, name)
    peak = 0.0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _pending(tel, name))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(once() for _ in range(N)))
    done.set()
    await watcher
    assert _waits(tel, name) - waits_before >= N
    return peak


# -- instrument.pool -----------------------------------------------------------------------------------------


def test_generic_pool_psycopg2(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    psycopg2 = pytest.importorskip("psycopg2")
    patched("psycopg2")
    pool = Pool(lambda: psycopg2.connect(**PG), max_size=4, name="load-psycopg2",
                reset=lambda c: c.rollback(), acquire_timeout=10)

    def once() -> None:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.02)")

    assert _threads_on(tel, "load-psycopg2", once) > 0
    held = [pool.acquire() for _ in range(4)]
    with pytest.raises(PoolExhausted):
        pool.acquire(timeout=0.01)
    assert _timeouts(tel, "load-psycopg2") == 1
    for c in held:
        pool.release(c)
    pool.close()


def test_generic_pool_pymysql(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("mariadb")
    pymysql = pytest.importorskip("pymysql")
    patched("pymysql")
    pool = Pool(lambda: pymysql.connect(**MYSQL), max_size=4, name="load-pymysql", check=lambda c: c.ping(False))

    def once() -> None:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT SLEEP(0.02)")

    assert _threads_on(tel, "load-pymysql", once) > 0
    pool.close()


async def test_generic_async_pool_asyncpg(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    asyncpg = pytest.importorskip("asyncpg")
    patched("asyncpg")
    pool = AsyncPool(lambda: asyncpg.connect(host="127.0.0.1", user="postgres", database="test"), max_size=4,
                     name="load-asyncpg", close=lambda c: c.close())

    async def once() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.02)")

    assert await _tasks_on(tel, "load-asyncpg", once) > 0
    assert pool.stats().used == 0
    held = [await pool.acquire() for _ in range(4)]
    with pytest.raises(PoolExhausted):
        await pool.acquire(timeout=0.01)
    assert _timeouts(tel, "load-asyncpg") == 1
    for c in held:
        await pool.release(c)
    await pool.close()


# -- psycopg_pool ------------------------------------------------------------------------------------------


def test_psycopg_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    psycopg_pool = pytest.importorskip("psycopg_pool")
    patched("psycopg_pool")
    patched("psycopg")
    with psycopg_pool.ConnectionPool(PG_DSN, min_size=4, max_size=4, name="load-psycopg-pool", open=True) as pool:
        pool.wait()

        def once() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(0.02)")

        assert _threads_on(tel, "load-psycopg-pool", once) > 0
        assert tel.metric_total("db.client.connection.max", **_attrs("load-psycopg-pool")) == 4
        assert tel.metric_points("db.client.connection.create_time", **_attrs("load-psycopg-pool"))
        assert tel.metric_points("db.client.connection.use_time", **_attrs("load-psycopg-pool"))
        held = [pool.getconn() for _ in range(4)]
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=0.01)
        assert _timeouts(tel, "load-psycopg-pool") == 1
        for c in held:
            pool.putconn(c)


async def test_psycopg_async_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    psycopg_pool = pytest.importorskip("psycopg_pool")
    patched("psycopg_pool")
    patched("psycopg")
    async with psycopg_pool.AsyncConnectionPool(PG_DSN, min_size=4, max_size=4, name="load-apsycopg-pool",
                                                open=False) as pool:
        await pool.wait()

        async def once() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.02)")

        assert await _tasks_on(tel, "load-apsycopg-pool", once) > 0
        assert _used(tel, "load-apsycopg-pool") == 0
        held = [await pool.getconn() for _ in range(4)]
        with pytest.raises(psycopg_pool.PoolTimeout):
            await pool.getconn(timeout=0.01)
        assert _timeouts(tel, "load-apsycopg-pool") == 1
        for c in held:
            await pool.putconn(c)


# -- SQLAlchemy --------------------------------------------------------------------------------------------


def test_sqlalchemy_queue_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    sa = pytest.importorskip("sqlalchemy")
    patched("sqlalchemy")
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=4, max_overflow=0,
                              pool_timeout=10, pool_logging_name="load-sqlalchemy")

    def once() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_sleep(0.02)"))

    assert _threads_on(tel, "load-sqlalchemy", once) > 0
    assert tel.metric_total("db.client.connection.max", **_attrs("load-sqlalchemy")) == 4
    held = [engine.connect() for _ in range(4)]
    short = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=1, max_overflow=0,
                             pool_timeout=0.01)
    name = "127.0.0.1:5432/test"
    before = _timeouts(tel, name)
    with short.connect(), pytest.raises(sa.exc.TimeoutError):
        short.connect()
    assert _timeouts(tel, name) - before == 1
    for c in held:
        c.close()
    engine.dispose()
    short.dispose()


async def test_sqlalchemy_async_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    pytest.importorskip("sqlalchemy")
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    patched("sqlalchemy")
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/test", pool_size=4, max_overflow=0,
                                 pool_logging_name="load-asqlalchemy")

    async def once() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(0.02)"))

    assert await _tasks_on(tel, "load-asqlalchemy", once) > 0
    assert _used(tel, "load-asqlalchemy") == 0
    await engine.dispose()


# -- redis ---------------------------------------------------------------------------------------------------


def test_redis_blocking_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    redis = pytest.importorskip("redis")
    patched("redis")
    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=6379, db=0, max_connections=4, timeout=10)
    client = redis.Redis(connection_pool=pool)
    name = "127.0.0.1:6379/0"

    def once() -> None:
        client.execute_command("CLIENT", "PAUSE", "0")  # cheap round trip
        client.blpop(["instrument-test:never"], timeout=0.05)

    assert _threads_on(tel, name, once) > 0
    tiny = redis.BlockingConnectionPool(host="127.0.0.1", port=6379, db=0, max_connections=1, timeout=0.01)
    held = tiny.get_connection()
    before = _timeouts(tel, name)
    with pytest.raises(redis.ConnectionError):
        tiny.get_connection()
    assert _timeouts(tel, name) - before == 1
    tiny.release(held)
    pool.disconnect()
    tiny.disconnect()


async def test_redis_async_blocking_pool(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    aredis = pytest.importorskip("redis.asyncio")
    patched("redis")
    pool = aredis.BlockingConnectionPool(host="127.0.0.1", port=6379, db=1, max_connections=4, timeout=10)
    client = aredis.Redis(connection_pool=pool)

    async def once() -> None:
        await client.blpop(["instrument-test:never"], timeout=0.05)

    assert await _tasks_on(tel, "127.0.0.1:6379/1", once) > 0
    assert _used(tel, "127.0.0.1:6379/1") == 0
    await client.aclose()
    await pool.disconnect()
