"""Circuit breaker: every state transition and threshold, with an injected clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from instrument import _context
from instrument._call import ClientErrors
from instrument.errors import CircuitOpen, Rejected
from instrument.policies import CircuitBreaker

from .conftest import call_state


def ok() -> str:
    return "ok"


def boom() -> None:
    raise ConnectionError("down")


def run(breaker: CircuitBreaker, outcomes: str) -> None:
    """Feed outcomes: 'o' success, 'f' failure."""
    for o in outcomes:
        if o == "o":
            breaker.call(ok)
        else:
            with pytest.raises(ConnectionError):
                breaker.call(boom)


def test_opens_on_failure_rate_only_after_min_calls(clock, captured) -> None:
    b = CircuitBreaker("t", failure_rate=0.5, window=10, min_calls=4, wait=5, clock=clock)
    run(b, "fff")  # 3 calls < min_calls: no decision
    assert b.state == "closed"
    run(b, "f")
    assert b.state == "open"
    opened = [e for e in captured if e.name == "circuit.opened"]
    assert len(opened) == 1 and opened[0].previous_state == "closed" and opened[0].pipeline == "t"
    assert opened[0].detail["failure_rate"] == 1.0


def test_below_threshold_stays_closed(clock) -> None:
    b = CircuitBreaker("t", failure_rate=0.5, window=10, min_calls=10, clock=clock)
    run(b, "ooooooffff")  # 40% of 10
    assert b.state == "closed"
    run(b, "f")  # window slides: oldest 'o' drops out -> 5/10 = 50%
    assert b.state == "open"


def test_count_window_slides(clock) -> None:
    b = CircuitBreaker("t", failure_rate=0.5, window=4, min_calls=4, clock=clock)
    run(b, "ffoo")  # 50%? 2/4 -> opens at the 'f'? no: decided only on failures, at 2 calls < min
    assert b.state == "closed"
    run(b, "oo")  # the two failures slide out
    run(b, "f")  # window o,o,o,f: 25%
    assert b.state == "closed"
    run(b, "f")  # o,o,f,f: 50%
    assert b.state == "open"


def test_open_rejects_fast_then_half_open_after_wait(clock, captured) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, wait=30, probes=2, clock=clock)
    run(b, "ff")
    assert b.state == "open"
    calls = []
    with pytest.raises(CircuitOpen) as info:
        b.call(calls.append, 1)
    assert calls == [] and isinstance(info.value, Rejected)
    assert info.value.pipeline == "t" and info.value.policy == "circuit_breaker"
    clock.advance(29.999)
    with pytest.raises(CircuitOpen):
        b.call(ok)
    clock.advance(0.001)
    assert b.call(ok) == "ok"  # the first caller after the wait is a probe
    assert b.state == "half_open"
    names = [e.name for e in captured]
    assert names.count("circuit.rejected") == 2 and "circuit.half_opened" in names


def test_half_open_admits_exactly_n_probes_then_closes(clock, captured) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=3, clock=clock)
    run(b, "ff")
    clock.advance(1)
    admitted = [b._admit() for _ in range(3)]  # three probes in flight
    with pytest.raises(CircuitOpen):
        b.call(ok)  # the fourth is rejected
    for epoch in admitted[:2]:
        b._record(epoch, 0, 0.0)
    assert b.state == "half_open"
    b._record(admitted[2], 0, 0.0)
    assert b.state == "closed"
    assert captured[-1].name == "circuit.closed" and captured[-1].previous_state == "half_open"
    assert b.snapshot()["calls"] == 0  # a fresh window


def test_half_open_failed_probes_reopen(clock) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=2, failure_rate=0.5, clock=clock)
    run(b, "ff")
    clock.advance(1)
    run(b, "of")  # 1 of 2 probes failed: 50% >= 50%
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        b.call(ok)  # the wait starts again
    clock.advance(1)
    run(b, "oo")
    assert b.state == "closed"


def test_probe_cancelled_gives_its_slot_back(clock) -> None:
    b = CircuitBreaker("t", window=1, min_calls=1, wait=1, probes=1, clock=clock)
    run(b, "f")
    clock.advance(1)

    def cancelled() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.call(cancelled)
    assert b.state == "half_open"
    assert b.call(ok) == "ok"  # the slot came back
    assert b.state == "closed"


def test_stale_outcome_from_before_opening_is_not_a_probe(clock) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=1, clock=clock)
    old_epoch = b._admit()  # admitted while closed, still running
    run(b, "ff")
    clock.advance(1)
    probe = b._admit()
    b._record(old_epoch, 0, 0.0)  # the straggler finishes: ignored
    assert b.state == "half_open"
    b._record(probe, 0, 0.0)
    assert b.state == "closed"


def test_slow_calls_open_the_breaker(clock) -> None:
    b = CircuitBreaker("t", window=4, min_calls=4, slow_call=1.0, slow_rate=0.5, clock=clock)

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    b.call(ok)
    b.call(ok)
    b.call(slow)
    assert b.state == "closed"
    b.call(slow)  # 2 of 4 slow: 50%
    assert b.state == "open"
    assert b.snapshot()["state"] == "open"


def test_time_window_forgets_old_seconds(clock) -> None:
    b = CircuitBreaker("t", window=10, window_type="time", min_calls=3, failure_rate=0.5, clock=clock)
    run(b, "ff")
    clock.advance(11)  # both failures age out
    run(b, "oo")
    run(b, "f")  # 1 of 3
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 3
    clock.advance(5)
    run(b, "f")  # 2 of 4 within 10 s
    assert b.state == "open"


def test_time_window_partial_expiry(clock) -> None:
    b = CircuitBreaker("t", window=3, window_type="time", min_calls=2, failure_rate=0.6, clock=clock)
    run(b, "f")
    clock.advance(1)
    run(b, "oo")
    clock.advance(2)  # the failure's second (t=1000) leaves the 3 s window
    run(b, "o")
    run(b, "f")  # o,o,o,f: 25%
    assert b.state == "closed"
    assert b.snapshot()["calls"] == 4


def test_force_open_disable_reset(clock, captured) -> None:
    b = CircuitBreaker("t", wait=0, clock=clock)
    b.force_open()
    assert b.state == "open" and b.forced_open
    clock.advance(100)
    with pytest.raises(CircuitOpen):
        b.call(ok)  # forced: no half-open however long we wait
    b.disable()
    assert b.state == "closed" and b.disabled
    run(b, "f" * 50)  # nothing recorded
    assert b.state == "closed"
    b.reset()
    assert not b.disabled and not b.forced_open
    assert [e.detail["reason"] for e in captured if e.name.startswith("circuit.") and e.name != "circuit.rejected"] \
        == ["forced", "disabled"]


def test_min_calls_capped_at_count_window() -> None:
    assert CircuitBreaker("t", window=5, min_calls=100).min_calls == 5


@pytest.mark.parametrize("kwargs", [{"failure_rate": 0}, {"failure_rate": 1.5}, {"window": 0}, {"probes": 0},
                                    {"wait": -1}, {"slow_call": 0}, {"window_type": "size"}, {"on": "nope"}])
def test_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("t", **kwargs)


def test_http_outcomes_5xx_counts_4xx_never(clock) -> None:
    state = call_state(status_of=lambda r: r.status)
    token = _context.current.set(state)
    try:
        b = CircuitBreaker("t", window=4, min_calls=4, clock=clock)
        for _ in range(8):
            b.call(lambda: SimpleNamespace(status=404))
        assert b.state == "closed"
        b.call(lambda: SimpleNamespace(status=503))
        assert b.state == "closed"
        b.call(lambda: SimpleNamespace(status=500))  # 2 of the last 4: 50%
        assert b.state == "open"
    finally:
        _context.current.reset(token)


def test_client_decides_which_errors_count_and_rejection_is_client_error(clock) -> None:
    class ClientError(Exception):
        pass

    class Operational(ClientError):
        pass

    class Programming(ClientError):
        pass

    errors = ClientErrors(catch=(ClientError,), is_failure=lambda e: isinstance(e, Operational))
    state = call_state("db", target="postgresql://db:5432/x", errors=errors)
    token = _context.current.set(state)
    try:
        b = CircuitBreaker("postgresql://db:5432/x", window=2, min_calls=2, failure_rate=1.0, clock=clock)
        for _ in range(5):
            with pytest.raises(Programming):
                b.call(_raiser(Programming("syntax")))
        assert b.state == "closed"  # a bad query is not the database failing
        for _ in range(2):
            with pytest.raises(Operational):
                b.call(_raiser(Operational("gone")))
        assert b.state == "open"
        with pytest.raises(ClientError) as info:  # existing `except` clauses catch the rejection
            b.call(ok)
        assert isinstance(info.value, CircuitOpen)
    finally:
        _context.current.reset(token)


def test_on_timeout_only(clock) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, failure_rate=1.0, on="timeout", clock=clock)
    for _ in range(3):
        with pytest.raises(ValueError):
            b.call(_raiser(ValueError()))
    assert b.state == "closed"
    for _ in range(2):
        with pytest.raises(TimeoutError):
            b.call(_raiser(TimeoutError()))
    assert b.state == "open"


def _raiser(exc: BaseException):  # type: ignore[no-untyped-def]
    def fn() -> None:
        raise exc

    return fn


@pytest.mark.asyncio
async def test_async_same_transitions(clock) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, wait=1, probes=1, clock=clock)

    async def afail() -> None:
        raise ConnectionError

    async def aok() -> int:
        return 1

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await b.acall(afail)
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        await b.acall(aok)
    clock.advance(1)
    assert await b.acall(aok) == 1
    assert b.state == "closed"


@pytest.mark.asyncio
async def test_async_cancelled_probe_returns_slot(clock) -> None:
    b = CircuitBreaker("t", window=1, min_calls=1, wait=1, probes=1, clock=clock)
    with pytest.raises(ConnectionError):
        b.call(boom)
    clock.advance(1)

    async def hang() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(b.acall(hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half_open"

    async def aok() -> int:
        return 2

    assert await b.acall(aok) == 2 and b.state == "closed"


def test_guard_context_manager(clock) -> None:
    b = CircuitBreaker("t", window=2, min_calls=2, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError), b.guard():
            raise ConnectionError
    assert b.state == "open"
    with pytest.raises(CircuitOpen), b.guard():
        pytest.fail("must not run")


def test_decorator(clock) -> None:
    b = CircuitBreaker("t", window=1, min_calls=1, clock=clock)

    @b
    def f(x: int) -> int:
        if x < 0:
            raise ConnectionError
        return x * 2

    assert f(2) == 4
    with pytest.raises(ConnectionError):
        f(-1)
    with pytest.raises(CircuitOpen):
        f(1)
