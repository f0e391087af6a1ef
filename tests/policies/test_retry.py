"""Retry: backoff sequence, attempts, deadline, Retry-After, budget, idempotency, cancellation."""

from __future__ import annotations

import asyncio
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from instrument import _context
from instrument.errors import CircuitOpen
from instrument.policies import Retry, RetryBudget, backoff, retry_after

from .conftest import call_state


class Flaky:
    def __init__(self, failures: int, exc: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"fail {self.calls}")
        return "ok"


def make(clock, **kwargs):  # type: ignore[no-untyped-def]
    sleeps: list[float] = []

    def sleep(d: float) -> None:
        sleeps.append(d)
        clock.advance(d)

    kwargs.setdefault("random", lambda: 1.0)
    kwargs.setdefault("budget", None)
    return Retry(sleep=sleep, clock=clock, **kwargs), sleeps


def test_backoff_full_jitter_bounds() -> None:
    assert [backoff(n, 0.1, 10.0, lambda: 1.0) for n in range(9)] == \
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert backoff(3, 0.1, 10.0, lambda: 0.5) == pytest.approx(0.4)
    assert backoff(5000, 0.1, 10.0, lambda: 1.0) == 10.0  # no overflow


def test_backoff_sequence_and_events(clock, captured) -> None:
    retry, sleeps = make(clock, attempts=4, base=0.1, cap=0.3)
    fn = Flaky(3)
    assert retry.call(fn) == "ok"
    assert fn.calls == 4 and sleeps == pytest.approx([0.1, 0.2, 0.3])
    names = [e.name for e in captured]
    assert names == ["retry.scheduled"] * 3 + ["retry.succeeded"]
    assert [e.attempt for e in captured] == [1, 2, 3, 4]
    assert captured[0].error_type == "ConnectionError" and captured[0].delay == pytest.approx(0.1)


def test_gives_up_after_attempts_and_reraises_last(clock, captured) -> None:
    retry, sleeps = make(clock, attempts=3)
    fn = Flaky(10)
    with pytest.raises(ConnectionError, match="fail 3"):
        retry.call(fn)
    assert fn.calls == 3 and len(sleeps) == 2
    assert captured[-1].name == "retry.gave_up" and captured[-1].detail["reason"] == "attempts"


def test_no_retry_on_success_no_events(clock, captured) -> None:
    retry, sleeps = make(clock)
    assert retry.call(lambda: 5) == 5
    assert sleeps == [] and captured == []


def test_deadline_includes_sleeps(clock, captured) -> None:
    retry, sleeps = make(clock, attempts=10, base=1.0, cap=100.0, deadline=5.0)
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        retry.call(fn)
    assert sleeps == [1.0, 2.0]  # the next, 4 s, would end at t=7 > 5
    assert captured[-1].detail["reason"] == "deadline"


def test_deadline_is_set_for_the_client() -> None:
    seen = []
    Retry(3, deadline=2.0, budget=None).call(lambda: seen.append(_context.remaining()))
    assert 1.9 < seen[0] <= 2.0
    assert _context.remaining() is None


def test_outer_deadline_stops_retries(clock) -> None:
    retry, sleeps = make(clock, attempts=5, base=1.0)
    with _context.deadline_scope(0.5), pytest.raises(ConnectionError):
        retry.call(Flaky(10))
    assert sleeps == []


def test_never_retries_cancellation_or_rejection(clock) -> None:
    retry, sleeps = make(clock, attempts=5)
    fn = Flaky(1, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        retry.call(fn)
    fn2 = Flaky(1, asyncio.CancelledError)
    with pytest.raises(asyncio.CancelledError):
        retry.call(fn2)

    def rejected() -> None:
        raise CircuitOpen("open", pipeline="t", policy="circuit_breaker")

    with pytest.raises(CircuitOpen):
        retry.call(rejected)
    assert fn.calls == 1 and fn2.calls == 1 and sleeps == []


def test_only_idempotent_unless_unsafe(clock) -> None:
    token = _context.current.set(call_state(idempotent=False, method="POST"))
    try:
        retry, _ = make(clock, attempts=3)
        fn = Flaky(1)
        with pytest.raises(ConnectionError):
            retry.call(fn)
        assert fn.calls == 1
        unsafe, _ = make(clock, attempts=3, unsafe=True)
        assert unsafe.call(Flaky(1)) == "ok"
    finally:
        _context.current.reset(token)


def test_sets_resend_count(clock) -> None:
    state = call_state()
    token = _context.current.set(state)
    try:
        retry, _ = make(clock, attempts=3)
        retry.call(Flaky(2))
        assert state.resend_count == 2
    finally:
        _context.current.reset(token)


def response(status: int, **headers: str) -> SimpleNamespace:
    return SimpleNamespace(status=status, headers=headers)


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after(response(429, **{"Retry-After": "7"})) == 7.0
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after(response(503, **{"Retry-After": later}), now=now.timestamp) == pytest.approx(30)
    assert retry_after(response(503)) is None
    assert retry_after(response(503, **{"Retry-After": "soon"})) is None
    assert retry_after(SimpleNamespace(getheader=lambda name: "3")) == 3.0


def test_http_status_retry_honours_retry_after(clock, captured) -> None:
    token = _context.current.set(call_state(status_of=lambda r: r.status))
    try:
        retry, sleeps = make(clock, attempts=3)
        results = iter([response(429, **{"Retry-After": "2"}), response(503), response(200)])
        assert retry.call(lambda: next(results)).status == 200
        assert sleeps == [2.0, 0.2]  # Retry-After, then backoff for retry 2
        assert captured[0].error_type == "429" and captured[0].detail == {"retry_after": 2.0}
        # 4xx other than 429 is not retried; a persisting 503 returns the last response
        retry2, sleeps2 = make(clock, attempts=2)
        assert retry2.call(lambda: response(404)).status == 404 and sleeps2 == []
        assert retry2.call(lambda: response(503)).status == 503 and len(sleeps2) == 1
        # a Retry-After longer than max_retry_after is not waited for
        retry3, sleeps3 = make(clock, attempts=3, max_retry_after=10)
        assert retry3.call(lambda: response(429, **{"Retry-After": "120"})).status == 429 and sleeps3 == []
    finally:
        _context.current.reset(token)


def test_budget_limits_retries_to_share_of_traffic(clock) -> None:
    budget = RetryBudget(0.1, min_per_second=0, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    assert budget.available() == pytest.approx(10)
    assert [budget.withdraw() for _ in range(11)] == [True] * 10 + [False]
    clock.advance(10.5)  # the window moves on: old requests and retries expire together
    for _ in range(20):
        budget.deposit()
    assert budget.withdraw() is True
    assert budget.withdraw() is True
    assert budget.withdraw() is False


def test_budget_floor(clock) -> None:
    budget = RetryBudget(0.0, min_per_second=0.5, ttl=10, clock=clock)
    assert sum(budget.withdraw() for _ in range(10)) == 5


def test_budget_stops_a_retry_storm(clock, captured) -> None:
    budget = RetryBudget(0.2, min_per_second=0, ttl=10, clock=clock)
    retry, sleeps = make(clock, attempts=3, base=0.0, budget=budget)
    failures = 0
    for _ in range(100):
        try:
            retry.call(Flaky(10))
        except ConnectionError:
            failures += 1
    assert failures == 100
    assert len(sleeps) <= 0.2 * 100 + 1
    assert any(e.detail.get("reason") == "budget" for e in captured)


@pytest.mark.asyncio
async def test_async_retry(clock) -> None:
    sleeps: list[float] = []

    async def asleep(d: float) -> None:
        sleeps.append(d)

    retry = Retry(3, base=0.5, asleep=asleep, random=lambda: 1.0, budget=None, clock=clock)
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    assert await retry.acall(fn) == "ok"
    assert sleeps == [0.5, 1.0]


@pytest.mark.asyncio
async def test_async_never_retries_cancellation() -> None:
    retry = Retry(5, base=0, budget=None)
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    task = asyncio.ensure_future(retry.acall(hang))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_decorator() -> None:
    calls = []

    @Retry(3, base=0, budget=None)
    def f() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError
        return 7

    assert f() == 7 and len(calls) == 2
