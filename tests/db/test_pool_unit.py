"""instrument.pool without a database: sizing, lifetime with jitter, idle expiry, check, reset, bounded waiters,
timeouts raising PoolExhausted, pooled_connect, and the metrics each emits."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from instrument.errors import PoolExhausted, Rejected
from instrument.pool import AsyncPool, Pool, pooled_connect


class Conn:
    made = 0

    def __init__(self) -> None:
        Conn.made += 1
        self.id = Conn.made
        self.closed = False
        self.resets = 0

    def close(self) -> None:
        self.closed = True

    def rollback(self) -> None:
        self.resets += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reuse_and_counts(tel) -> None:  # type: ignore[no-untyped-def]
    pool = Pool(Conn, min_size=1, max_size=2, name="unit-reuse")
    first = pool.acquire()
    pool.release(first)
    assert pool.acquire() is first  # reused, not recreated
    assert pool.stats()[:2] == (0, 1)
    second = pool.acquire()
    assert pool.stats()[:2] == (0, 2)
    pool.release(first)
    pool.release(second)
    assert pool.stats()[:2] == (2, 0)
    attrs = {"db.client.connection.pool.name": "unit-reuse"}
    assert tel.metric_total("db.client.connection.count", **attrs, **{"db.client.connection.state": "idle"}) == 2
    assert tel.metric_total("db.client.connection.max", **attrs) == 2
    assert tel.metric_total("db.client.connection.idle.min", **attrs) == 1
    assert tel.metric_points("db.client.connection.create_time", **attrs)[0].value == 2
    assert tel.metric_points("db.client.connection.use_time", **attrs)[0].value == 3
    assert tel.metric_points("db.client.connection.wait_time", **attrs)[0].value == 3
    pool.close()
    assert first.closed and second.closed


def test_lifetime_has_per_connection_jitter() -> None:
    clock = Clock()
    rolls = iter([0.0, 1.0])
    pool = Pool(Conn, max_size=2, max_lifetime=100.0, lifetime_jitter=0.2, clock=clock, rng=lambda: next(rolls))
    a, b = pool.acquire(), pool.acquire()  # a lives 100 s, b lives 80 s
    pool.release(a)
    pool.release(b)
    clock.now += 90
    got = pool.acquire()
    assert got is a and b.closed and not a.closed
    clock.now += 20
    pool.release(got)  # past its lifetime: closed on return
    assert a.closed
    assert pool.stats()[:2] == (0, 0)


def test_idle_connections_above_min_size_expire() -> None:
    clock = Clock()
    pool = Pool(Conn, min_size=1, max_size=3, max_idle=10.0, clock=clock)
    conns = [pool.acquire() for _ in range(3)]
    for c in conns:
        pool.release(c)
    clock.now += 11
    pool.release(pool.acquire())
    assert sum(c.closed for c in conns) == 2  # min_size=1 is kept
    assert pool.stats().idle == 1


def test_check_on_checkout_replaces_dead_connections_and_reset_on_return() -> None:
    def check(conn: Conn) -> None:
        if conn.id % 2:
            raise ConnectionError("dead")

    def reset(conn: Conn) -> None:
        conn.resets += 1
        if conn.resets > 1:
            raise RuntimeError("cannot reset")

    Conn.made = 0
    pool = Pool(Conn, max_size=2, check=check, reset=reset)
    first = pool.acquire()  # new connections are not checked
    pool.release(first)
    second = pool.acquire()  # first fails its check: closed, a new one made
    assert first.closed and second is not first
    pool.release(second)
    pool.release(pool.acquire())  # second passes (even id), reset #2 fails -> closed
    assert second.closed


def test_timeout_raises_pool_exhausted_and_counts(tel) -> None:  # type: ignore[no-untyped-def]
    pool = Pool(Conn, max_size=1, acquire_timeout=0.05, name="unit-timeout")
    held = pool.acquire()
    start = time.monotonic()
    with pytest.raises(PoolExhausted) as info:
        pool.acquire()
    assert 0.04 < time.monotonic() - start < 1.0
    assert isinstance(info.value, Rejected)
    assert tel.metric_total("db.client.connection.timeouts", **{"db.client.connection.pool.name": "unit-timeout"}) == 1
    pool.release(held)


def test_bounded_waiters_reject_at_once() -> None:
    pool = Pool(Conn, max_size=1, max_waiting=1, acquire_timeout=2.0)
    held = pool.acquire()
    waiter = threading.Thread(target=lambda: pool.release(pool.acquire()))
    waiter.start()
    while pool.stats().pending != 1:
        time.sleep(0.001)
    start = time.monotonic()
    with pytest.raises(PoolExhausted, match="already waiting"):
        pool.acquire()
    assert time.monotonic() - start < 0.5
    pool.release(held)
    waiter.join()


def test_factory_failure_frees_the_slot() -> None:
    calls = []

    def flaky() -> Conn:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionRefusedError("down")
        return Conn()

    pool = Pool(flaky, max_size=1, acquire_timeout=0.1)
    with pytest.raises(ConnectionRefusedError):
        pool.acquire()
    assert isinstance(pool.acquire(), Conn)


def test_pooled_connect_close_gives_back() -> None:
    connect = pooled_connect(lambda dsn: Conn(), max_size=2)
    c1 = connect("db")
    raw = c1.__wrapped__
    c1.close()
    c1.close()  # idempotent
    assert raw.resets == 1 and not raw.closed  # rolled back, kept
    c2 = connect("db")
    assert c2.__wrapped__ is raw
    c2.close()
    (pool,) = connect.pools.values()  # type: ignore[attr-defined]
    assert pool.stats().used == 0


async def test_async_pool_waits_times_out_and_discards_cancelled() -> None:
    async def factory() -> Conn:
        await asyncio.sleep(0)
        return Conn()

    pool = AsyncPool(factory, max_size=1, acquire_timeout=0.05, name="unit-async")
    async with pool.connection() as conn:
        with pytest.raises(PoolExhausted):
            await pool.acquire()
    assert pool.stats()[:2] == (1, 0)

    async def hold() -> None:
        async with pool.connection():
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.closed  # a connection cancelled mid-use is not reused
    assert pool.stats()[:2] == (0, 0)
    await pool.close()


async def test_async_pool_fair_under_load(tel) -> None:  # type: ignore[no-untyped-def]
    pool = AsyncPool(Conn, max_size=4, name="unit-async-load")
    seen: list[Any] = []

    async def work() -> None:
        async with pool.connection():
            seen.append(pool.stats().pending)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(work() for _ in range(32)))
    assert max(seen) > 0
    assert pool.stats()[:2] == (4, 0)
    assert tel.metric_points("db.client.connection.wait_time", **{"db.client.connection.pool.name": "unit-async-load"})
