"""Timeout against a loopback server that accepts and never answers: back within the deadline plus a
small margin, sync (deadline handed to the socket's own timeout) and async (real cancellation)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from instrument import _context
from instrument._call import ClientErrors
from instrument.errors import DeadlineExceeded
from instrument.policies import Pipeline, Retry, Timeout, remaining

from .conftest import call_state

MARGIN = 0.15


def test_sync_timeout_hands_deadline_to_socket(silent_server, captured) -> None:
    def recv() -> bytes:
        with socket.create_connection(silent_server, timeout=remaining()) as sock:
            sock.settimeout(remaining())
            return sock.recv(1)

    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:  # socket.timeout: the client's own exception, unchanged
        Timeout(0.3).call(recv)
    elapsed = time.monotonic() - start
    assert 0.29 <= elapsed < 0.3 + MARGIN
    assert not isinstance(info.value, DeadlineExceeded)
    assert [e.name for e in captured] == ["timeout.expired"]
    assert _context.remaining() is None  # the deadline does not leak


@pytest.mark.asyncio
async def test_async_timeout_cancels(silent_server, captured) -> None:
    async def read() -> bytes:
        reader, writer = await asyncio.open_connection(*silent_server)
        try:
            return await reader.read(1)
        finally:
            writer.close()

    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await Timeout(0.3).acall(read)
    elapsed = time.monotonic() - start
    assert 0.29 <= elapsed < 0.3 + MARGIN
    assert isinstance(info.value, TimeoutError)
    assert [e.name for e in captured] == ["timeout.expired"]
    assert asyncio.current_task().cancelling() == 0  # our cancellation was consumed


@pytest.mark.asyncio
async def test_async_overall_vs_per_attempt(silent_server) -> None:
    attempts = 0

    async def read() -> bytes:
        nonlocal attempts
        attempts += 1
        reader, writer = await asyncio.open_connection(*silent_server)
        try:
            return await reader.read(1)
        finally:
            writer.close()

    pipeline = Pipeline("t", (Timeout(0.5), Retry(10, base=0.0, budget=None, on="errors|timeout"), Timeout(0.1)))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await pipeline.acall(read)
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 0.5 + MARGIN
    assert 3 <= attempts <= 6  # each attempt ~0.1 s, cut by the overall 0.5 s


def test_sync_overall_vs_per_attempt(silent_server) -> None:
    attempts = 0

    def recv() -> bytes:
        nonlocal attempts
        attempts += 1
        with socket.create_connection(silent_server, timeout=remaining()) as sock:
            sock.settimeout(remaining())
            return sock.recv(1)

    pipeline = Pipeline("t", (Timeout(0.5), Retry(10, base=0.0, budget=None), Timeout(0.1)))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pipeline.call(recv)
    assert time.monotonic() - start < 0.5 + MARGIN
    assert 4 <= attempts <= 6


def test_expired_outer_deadline_fails_before_calling() -> None:
    called = []
    with _context.deadline_scope(0.0), pytest.raises(DeadlineExceeded):
        time.sleep(0.001)
        Timeout(1).call(called.append, 1)
    assert called == []


def test_client_timeout_type_is_used_async() -> None:
    class ClientTimeout(Exception):
        pass

    errors = ClientErrors(catch=(Exception,), timeout=ClientTimeout,
                          is_timeout=lambda e: isinstance(e, ClientTimeout))

    async def main() -> None:
        token = _context.current.set(call_state(errors=errors))
        try:
            with pytest.raises(ClientTimeout) as info:
                await Timeout(0.05).acall(asyncio.sleep, 5)
            assert isinstance(info.value, DeadlineExceeded)
        finally:
            _context.current.reset(token)

    asyncio.run(main())


@pytest.mark.asyncio
async def test_success_inside_deadline_and_nested_scopes() -> None:
    t = Timeout(1)
    assert await t.acall(asyncio.sleep, 0, "x") == "x"

    async def inner() -> float | None:
        return _context.remaining()

    left = await Pipeline("p", (Timeout(0.2), Timeout(5))).acall(inner)
    assert left is not None and left <= 0.2  # the outer, earlier deadline wins


@pytest.mark.asyncio
async def test_outside_cancellation_is_not_a_timeout() -> None:
    task = asyncio.ensure_future(Timeout(5).acall(asyncio.sleep, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_many_concurrent_timeouts_fire_in_order() -> None:
    t = Timeout(0.05)
    results = await asyncio.gather(*(t.acall(asyncio.sleep, 0.01 if i % 2 else 1) for i in range(100)),
                                   return_exceptions=True)
    assert sum(isinstance(r, DeadlineExceeded) for r in results) == 50
    assert sum(r is None for r in results) == 50
    assert not t._wheel.timers  # nothing left behind


@pytest.mark.asyncio
async def test_the_running_task_is_read_from_asyncios_table_on_its_own_loop() -> None:
    t = Timeout(1)
    await t.acall(asyncio.sleep, 0)
    assert t._wheel is not None and t._wheel.task() is asyncio.current_task()

    async def running() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    other = asyncio.create_task(t.acall(running))
    assert await other is other  # another task: its own, on the same wheel


def test_a_timeout_last_used_on_a_loop_busy_in_another_thread_cancels_this_threads_task() -> None:
    """The Timeout remembers the wheel of loop A, whose task is in the middle of a step in another thread;
    a call on loop B must still be timed and cancelled on B (asyncio's table names A's task right then)."""
    t = Timeout(0.05)
    busy, release = threading.Event(), threading.Event()

    async def on_a() -> None:
        await t.acall(asyncio.sleep, 0)  # the wheel it remembers is A's now
        busy.set()
        release.wait(5)  # A's task stays mid-step, blocking its loop

    other = threading.Thread(target=asyncio.run, args=(on_a(),))
    other.start()
    try:
        assert busy.wait(5)

        async def on_b() -> float:
            began = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await t.acall(asyncio.sleep, 2)
            return time.monotonic() - began

        assert asyncio.run(on_b()) < 0.05 + MARGIN
        assert asyncio.run(on_b()) < 0.05 + MARGIN  # and on a new loop in this thread, B closed
    finally:
        release.set()
        other.join(5)


@pytest.mark.asyncio
async def test_async_guard(silent_server) -> None:
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        async with Timeout(0.1).guard():
            await asyncio.sleep(5)
    assert time.monotonic() - start < 0.1 + MARGIN


def test_decorator_sync() -> None:
    @Timeout(1)
    def f() -> float | None:
        return remaining()

    left = f()
    assert left is not None and 0.9 < left <= 1.0
