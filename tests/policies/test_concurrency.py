"""64 threads / 500 asyncio tasks on one breaker and one bulkhead: our locks never serialise the calls,
half-open admits exactly N probes, counters add up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from instrument.errors import BulkheadFull, CircuitOpen
from instrument.policies import Bulkhead, CircuitBreaker, Pipeline

THREADS = 64
TASKS = 500
SLOW = 0.2


def in_threads(n: int, fn: Callable[[], Any]) -> tuple[list[Any], float]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, time.monotonic() - start


class Gauge:
    """Counts calls running at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.calls = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_threads_breaker_and_bulkhead_do_not_serialise() -> None:
    gauge = Gauge()

    def slow() -> str:
        with gauge:
            time.sleep(SLOW)
        return "ok"

    pipeline = Pipeline("t", (CircuitBreaker("t", window=THREADS, min_calls=THREADS, slow_call=0.1), Bulkhead(THREADS)))
    results, wall = in_threads(THREADS, lambda: pipeline.call(slow))
    assert results == ["ok"] * THREADS
    assert wall < SLOW * 2.5  # ≈ one call, not 64
    assert gauge.peak > THREADS // 2


def test_threads_half_open_admits_exactly_n(clock) -> None:
    breaker = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=5, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    clock.advance(1)
    gauge = Gauge()

    def probe() -> str:
        with gauge:
            time.sleep(SLOW)
        return "ok"

    results, wall = in_threads(THREADS, lambda: breaker.call(probe))
    admitted = [r for r in results if r == "ok"]
    rejected = [r for r in results if isinstance(r, CircuitOpen)]
    assert len(admitted) == 5 and len(rejected) == THREADS - 5
    assert gauge.calls == 5 and breaker.rejected == THREADS - 5
    assert breaker.state == "closed"  # all five probes succeeded
    assert wall < SLOW * 2.5


def _fail() -> None:
    raise ConnectionError


def test_threads_bulkhead_fail_fast_exact_counts() -> None:
    bulkhead = Bulkhead(8)
    gauge = Gauge()

    def slow() -> str:
        with gauge:
            time.sleep(SLOW)
        return "ok"

    results, _ = in_threads(THREADS, lambda: bulkhead.call(slow))
    ok = results.count("ok")
    full = sum(isinstance(r, BulkheadFull) for r in results)
    assert ok + full == THREADS and ok >= 8 and gauge.peak == 8
    assert bulkhead.rejected == full and bulkhead.active == 0


def test_threads_bulkhead_queue_hands_over_slots() -> None:
    bulkhead = Bulkhead(8, max_queue=THREADS, max_wait=5)
    gauge = Gauge()

    def work() -> str:
        with gauge:
            time.sleep(0.02)
        return "ok"

    results, wall = in_threads(THREADS, lambda: bulkhead.call(work))
    assert results == ["ok"] * THREADS
    assert gauge.peak == 8 and bulkhead.active == 0 and bulkhead.waiting == 0
    assert wall < 3


def test_threads_hammer_counters_consistent() -> None:
    breaker = CircuitBreaker("t", window=100, min_calls=100, failure_rate=0.9)
    per_thread = 300
    counter = iter(range(10**9))

    def work() -> int:
        done = 0
        for _ in range(per_thread):
            n = next(counter)
            try:
                breaker.call(_fail if n % 10 == 0 else int)
            except ConnectionError:
                pass
            done += 1
        return done

    results, _ = in_threads(THREADS, work)
    assert results == [per_thread] * THREADS
    snap = breaker.snapshot()
    assert snap["state"] == "closed" and snap["calls"] == 100
    assert 0 < snap["failures"] < 40  # ~10% of the last 100


@pytest.mark.asyncio
async def test_tasks_breaker_and_bulkhead_do_not_serialise() -> None:
    running = 0
    peak = 0

    async def slow() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(SLOW)
        running -= 1
        return "ok"

    pipeline = Pipeline("t", (CircuitBreaker("t", window=TASKS, min_calls=TASKS), Bulkhead(TASKS)))
    start = time.monotonic()
    results = await asyncio.gather(*(pipeline.acall(slow) for _ in range(TASKS)))
    wall = time.monotonic() - start
    assert results == ["ok"] * TASKS and peak == TASKS
    assert wall < SLOW * 3


@pytest.mark.asyncio
async def test_tasks_half_open_admits_exactly_n(clock) -> None:
    breaker = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=7, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    clock.advance(1)
    calls = 0

    async def probe() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "ok"

    results = await asyncio.gather(*(breaker.acall(probe) for _ in range(TASKS)), return_exceptions=True)
    assert results.count("ok") == 7 and calls == 7
    assert sum(isinstance(r, CircuitOpen) for r in results) == TASKS - 7 == breaker.rejected
    assert breaker.state == "closed"


@pytest.mark.asyncio
async def test_tasks_bulkhead_queue_and_fail_fast() -> None:
    bulkhead = Bulkhead(20, max_queue=100, max_wait=5)
    running = 0
    peak = 0

    async def work() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return "ok"

    results = await asyncio.gather(*(bulkhead.acall(work) for _ in range(TASKS)), return_exceptions=True)
    ok = results.count("ok")
    full = sum(isinstance(r, BulkheadFull) for r in results)
    assert ok == 120 and full == TASKS - 120  # 20 running + 100 queued; the rest fail fast
    assert peak == 20 and bulkhead.active == 0 and bulkhead.waiting == 0
