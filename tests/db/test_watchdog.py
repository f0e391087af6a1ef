"""The SQL deadline watchdog (instrument._dbapi): cancel at the deadline, abort after the grace period or
when the statement outlives its cancel, never touch a statement that returned, and stay asleep for
statements under the same Timeout. Real threads and time; the cancel and abort are the test's own."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import pytest

from instrument import _dbapi


def soon(seconds: float) -> float:
    """A deadline ``seconds`` from now, as the watchdog takes it (``time.monotonic()``)."""
    return time.monotonic() + seconds


@pytest.fixture
def dog() -> _dbapi._Watchdog:
    return _dbapi._Watchdog()


class Statement:
    def __init__(self, *, cancel_hangs: bool = False) -> None:
        self.cancelled = threading.Event()
        self.aborted = threading.Event()
        self.cancel_hangs = cancel_hangs

    def cancel(self, _target: Any) -> None:
        if self.cancel_hangs:
            time.sleep(5)  # a dead network: the request never completes in time
        self.cancelled.set()

    def abort(self, _target: Any) -> None:
        self.aborted.set()


def test_a_statement_that_returns_in_time_is_left_alone(dog) -> None:  # type: ignore[no-untyped-def]
    s = Statement()
    handle = dog.arm(soon(0.05), s.cancel, None, s.abort)
    assert dog.disarm(handle) is False
    time.sleep(0.1 + _dbapi.CANCEL_GRACE)
    assert not s.cancelled.is_set() and not s.aborted.is_set()


def test_the_cancel_is_sent_at_the_deadline_and_a_hung_cancel_ends_in_an_abort(dog) -> None:  # type: ignore[no-untyped-def]
    s = Statement(cancel_hangs=True)
    start = time.monotonic()
    handle = dog.arm(soon(0.05), s.cancel, None, s.abort)
    assert s.aborted.wait(2)
    assert 0.05 + _dbapi.CANCEL_GRACE <= time.monotonic() - start < 0.05 + _dbapi.CANCEL_GRACE + 0.5
    assert dog.disarm(handle) is True and dog.disarm(handle) is False  # told once


def test_a_statement_that_outlives_its_completed_cancel_is_aborted_late(dog) -> None:  # type: ignore[no-untyped-def]
    s = Statement()
    start = time.monotonic()
    handle = dog.arm(soon(0.05), s.cancel, None, s.abort)
    assert s.cancelled.wait(1)
    assert s.aborted.wait(3)
    assert time.monotonic() - start >= 0.05 + _dbapi.CANCEL_LATE
    assert dog.disarm(handle) is True


def test_without_an_abort_only_the_cancel_is_sent(dog) -> None:  # type: ignore[no-untyped-def]
    s = Statement()
    handle = dog.arm(soon(0.02), s.cancel, None)
    assert s.cancelled.wait(1)
    time.sleep(_dbapi.CANCEL_GRACE + 0.1)
    assert dog.disarm(handle) is False


def test_an_abort_in_progress_holds_the_statements_return_until_it_is_done(dog) -> None:  # type: ignore[no-untyped-def]
    entered, release = threading.Event(), threading.Event()

    def slow_abort(_target: Any) -> None:
        entered.set()
        release.wait(5)

    s = Statement(cancel_hangs=True)
    handle = dog.arm(soon(0.01), s.cancel, None, slow_abort)
    assert entered.wait(2)
    result: list[bool] = []
    returning = threading.Thread(target=lambda: result.append(dog.disarm(handle)))
    returning.start()
    returning.join(0.2)
    assert returning.is_alive()  # the statement's return waits: its connection is still being shut down
    release.set()
    returning.join(2)
    assert result == [True]


def test_statements_under_the_same_timeout_do_not_wake_the_thread(dog) -> None:  # type: ignore[no-untyped-def]
    s = Statement()
    first = dog.arm(soon(5.0), s.cancel, None, s.abort)
    time.sleep(0.05)  # the thread now sleeps until the first deadline
    notified = []
    real_notify = dog._cond.notify
    dog._cond.notify = lambda *a: (notified.append(1), real_notify(*a))  # type: ignore[method-assign]
    handles = [dog.arm(soon(5.0), s.cancel, None, s.abort) for _ in range(100)]
    assert notified == []
    sooner = dog.arm(soon(0.05), s.cancel, None, s.abort)  # an earlier deadline wakes it
    assert notified == [1] and s.cancelled.wait(1)
    for handle in (first, *handles, sooner):
        dog.disarm(handle)


class Connection:  # the watchdog's target: anything weakly referenceable
    pass


@pytest.mark.parametrize("acted", [False, True], ids=["returned in time", "cancelled"])
def test_the_sleeping_thread_keeps_no_statement_s_connection(dog, acted) -> None:  # type: ignore[no-untyped-def]
    """The thread saw the statement (scanned, or cancelled it) and sleeps on: once the statement returned, its
    connection is the application's alone (dropped unclosed, it must close, not wait for the next wake-up)."""
    s = Statement()
    conn = Connection()
    gone = weakref.ref(conn)
    handle = dog.arm(soon(0.01 if acted else 5.0), s.cancel, conn)
    if acted:
        assert s.cancelled.wait(1)
    time.sleep(0.05)  # the thread scanned, saw this statement, and sleeps (a disarm does not wake it)
    dog.disarm(handle)
    del conn
    deadline = time.monotonic() + 2.0  # (well before the thread's next wake-up: the deadline, or 30 s idle)
    while gc.collect() is not None and gone() is not None and time.monotonic() < deadline:
        time.sleep(0.02)  # a cancel request's own short-lived thread may still be finishing
    assert gone() is None
