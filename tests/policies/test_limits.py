"""Token bucket (deterministic clock), bulkhead queueing, and the Redis-backed shared limiter."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid

import pytest

from instrument.errors import BulkheadFull, RateLimited
from instrument.policies import Bulkhead, RateLimiter, RedisRateLimiter

from .conftest import missing


def test_token_bucket_burst_then_rate(clock, captured) -> None:
    rl = RateLimiter(10, burst=3, clock=clock)
    assert [rl.acquire() for _ in range(4)] == [0.0, 0.0, 0.0, -1.0]
    clock.advance(0.1)  # one token
    assert rl.acquire() == 0.0
    assert rl.acquire() == -1.0
    clock.advance(10)  # refills to burst, not beyond
    assert [rl.acquire() for _ in range(4)] == [0.0, 0.0, 0.0, -1.0]
    with pytest.raises(RateLimited):
        rl.call(lambda: None)
    assert captured[-1].name == "rate_limit.rejected"


def test_token_bucket_wait_reserves(clock) -> None:
    slept: list[float] = []
    rl = RateLimiter(10, burst=1, max_wait=0.25, clock=clock, sleep=slept.append)
    rl.call(lambda: None)
    rl.call(lambda: None)  # waits 0.1 s for the next token
    rl.call(lambda: None)  # the bucket is at -1 now: waits 0.2 s
    assert slept == pytest.approx([0.1, 0.2])
    with pytest.raises(RateLimited):
        rl.call(lambda: None)  # would wait 0.3 s > 0.25


@pytest.mark.asyncio
async def test_token_bucket_async(clock) -> None:
    rl = RateLimiter(1, burst=1, clock=clock)

    async def f() -> int:
        return 1

    assert await rl.acall(f) == 1
    with pytest.raises(RateLimited):
        await rl.acall(f)


@pytest.mark.asyncio
async def test_token_bucket_async_waits_for_a_reserved_token(clock) -> None:
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    rl = RateLimiter(10, burst=1, max_wait=0.25, clock=clock, asleep=asleep)
    calls: list[int] = []

    async def f(n: int) -> int:
        calls.append(n)
        return n

    assert await rl.acall(f, 1) == 1 and slept == []  # a token at hand: f's own coroutine, nothing around it
    waiting = rl.acall(f, 2)  # the token is reserved now; the wait and the call happen when awaited
    assert calls == [1]
    assert await waiting == 2 and slept == pytest.approx([0.1]) and calls == [1, 2]


def test_bulkhead_fail_fast_and_queue() -> None:
    bh = Bulkhead(2, max_queue=1, max_wait=2)
    release = threading.Event()
    started = threading.Barrier(3)
    results: list[str] = []

    def hold() -> None:
        started.wait()
        release.wait(5)

    threads = [threading.Thread(target=bh.call, args=(hold,)) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    queued = threading.Thread(target=lambda: results.append(bh.call(lambda: "queued")))
    queued.start()
    deadline = time.monotonic() + 2
    while bh.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(BulkheadFull):
        bh.call(lambda: None)  # 2 running + 1 waiting: full
    release.set()
    for t in (*threads, queued):
        t.join(5)
    assert results == ["queued"]
    assert bh.active == 0 and bh.waiting == 0 and bh.rejected == 1


def test_bulkhead_wait_times_out(captured) -> None:
    bh = Bulkhead(1, max_queue=5, max_wait=0.05)
    release = threading.Event()
    t = threading.Thread(target=bh.call, args=(release.wait, 5))
    t.start()
    while bh.active < 1:
        time.sleep(0.001)
    start = time.monotonic()
    with pytest.raises(BulkheadFull, match="wait timed out"):
        bh.call(lambda: None)
    assert time.monotonic() - start < 0.5
    release.set()
    t.join(5)
    assert bh.active == 0 and bh.waiting == 0
    assert captured[-1].name == "bulkhead.rejected"


@pytest.mark.asyncio
async def test_bulkhead_async_queue_and_cancel() -> None:
    bh = Bulkhead(1, max_queue=2, max_wait=None)
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return "held"

    first = asyncio.ensure_future(bh.acall(hold))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(bh.acall(hold))
    third = asyncio.ensure_future(bh.acall(hold))
    await asyncio.sleep(0.01)
    assert bh.active == 1 and bh.waiting == 2
    second.cancel()  # a cancelled waiter leaves the queue
    await asyncio.sleep(0.01)
    assert bh.waiting == 1
    gate.set()
    assert await first == "held" and await third == "held"
    assert bh.active == 0 and bh.waiting == 0


def test_bulkhead_guard() -> None:
    bh = Bulkhead(1)
    with bh.guard():
        assert bh.active == 1
        with pytest.raises(BulkheadFull), bh.guard():
            pass
    assert bh.active == 0


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    pytest.importorskip("redis")
    if not _redis_up():
        missing("redis is not reachable at 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


def test_redis_limiter_is_shared_between_instances(redis_url) -> None:
    key = f"instrument:test:{uuid.uuid4().hex}"
    a = RedisRateLimiter(5, burst=5, url=redis_url, key=key)
    b = RedisRateLimiter(5, burst=5, url=redis_url, key=key)  # another "instance" of the service
    taken = sum(lim.acquire() == 0.0 for lim in (a, b) * 5)
    assert taken == 5  # one shared bucket of 5, not 5 each
    with pytest.raises(RateLimited):
        a.call(lambda: None)
    time.sleep(0.25)  # 5/s: one token back
    assert b.call(lambda: "ok") == "ok"
    import redis

    assert redis.Redis.from_url(redis_url).ttl(key) > 0  # the key expires by itself


@pytest.mark.asyncio
async def test_redis_limiter_async(redis_url) -> None:
    key = f"instrument:test:{uuid.uuid4().hex}"
    lim = RedisRateLimiter(2, burst=2, url=redis_url, key=key)

    async def f() -> int:
        return 1

    assert await lim.acall(f) == 1
    assert await lim.acall(f) == 1
    with pytest.raises(RateLimited):
        await lim.acall(f)


def test_redis_limiter_fails_open_when_redis_is_down(captured) -> None:
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lim = RedisRateLimiter(1, url=f"redis://127.0.0.1:{port}/0")
    assert lim.call(lambda: "ok") == "ok"
    assert captured[-1].name == "rate_limit.unavailable"
    closed = RedisRateLimiter(1, url=f"redis://127.0.0.1:{port}/0", fail_open=False)
    with pytest.raises(RateLimited):
        closed.call(lambda: "ok")
