"""Bulkhead: at most ``max_concurrent`` calls at once, a bounded wait queue, fail fast when full.

One bulkhead serves threads and asyncio tasks together. A slot is handed over directly from the call
that finishes to the first waiter (FIFO), so a waiter never races a newcomer for it. Threads wait on
a one-shot lock, tasks on a future; the bulkhead's own lock is held only to count, never across a call.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from instrument.errors import BulkheadFull

from ._base import Policy, event, reject

__all__ = ["Bulkhead"]


class _Waiter:
    __slots__ = ("future", "granted", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = False
        self.loop = loop
        if loop is None:
            self.lock: threading.Lock | None = threading.Lock()
            self.lock.acquire()
            self.future: asyncio.Future[None] | None = None
        else:
            self.lock = None
            self.future = loop.create_future()

    def wake(self) -> None:
        if self.lock is not None:
            self.lock.release()
        else:
            self.loop.call_soon_threadsafe(_resolve, self.future)  # type: ignore[union-attr]


_FULL: Any = object.__new__(_Waiter)  # sentinel: "no slot and no room in the queue"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Bulkhead(Policy):
    """Limit concurrent calls to a target.

    Args:
        max_concurrent: calls allowed to run at once.
        max_queue: callers allowed to wait for a slot (0: fail fast when all slots are taken).
        max_wait: seconds a queued caller waits before it is rejected (None: as long as it takes).

    Raises:
        BulkheadFull: slots and queue are full, or the wait timed out (on a patched client also the
            client's own connection error class).

    .. versionadded:: 0.1
    """

    name = "bulkhead"

    def __init__(self, max_concurrent: int = 10, *, max_queue: int = 0, max_wait: float | None = 1.0,
                 target: str = "bulkhead") -> None:
        if int(max_concurrent) != max_concurrent or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a whole number >= 1, got {max_concurrent!r}")
        if int(max_queue) != max_queue or max_queue < 0:
            raise ValueError(f"max_queue must be a whole number >= 0, got {max_queue!r}")
        if max_wait is not None and not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.max_concurrent = int(max_concurrent)
        self.max_queue = int(max_queue)
        self.max_wait = max_wait
        self.target = target
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.rejected = 0

    @property
    def active(self) -> int:
        """Calls holding a slot now."""
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- the call --------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        lock = self._lock
        with lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                waiter = None
            else:
                waiter = self._enqueue(None) or _FULL
        if waiter is not None:
            self._wait(waiter)
        try:
            return fn(*args, **kwargs)
        finally:
            self._release()

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._active < self.max_concurrent and not self._waiters:
                self._active += 1
                waiter = None
            else:
                waiter = self._enqueue(asyncio.get_running_loop()) or _FULL
        if waiter is not None:
            await self._await(waiter)
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    def guard(self) -> _Guard:
        """``with bulkhead.guard():`` / ``async with bulkhead.guard():`` holds one slot for the block."""
        return _Guard(self)

    # -- decisions -------------------------------------------------------------------------------

    def _enqueue(self, loop: asyncio.AbstractEventLoop | None) -> _Waiter | None:
        """Under the lock: queue a waiter, or None when the queue is full (the caller raises, unlocked)."""
        if len(self._waiters) >= self.max_queue or self.max_wait == 0:
            self.rejected += 1
            return None
        waiter = _Waiter(loop)
        self._waiters.append(waiter)
        return waiter

    def _full(self, reason: str = "full") -> BaseException:
        event(self.target, self.name, "bulkhead.rejected",
              detail={"reason": reason, "max_concurrent": self.max_concurrent})
        return reject(BulkheadFull, self.target, self.name,
                      f"bulkhead for {self.target} is {reason} ({self.max_concurrent} concurrent calls)")

    def _wait(self, waiter: _Waiter) -> None:
        if waiter is _FULL:
            raise self._full()
        timeout = -1 if self.max_wait is None else self.max_wait
        if waiter.lock.acquire(timeout=timeout):  # type: ignore[union-attr]
            return
        if not self._abandon(waiter):  # granted just as we timed out: we own the slot
            return
        self.rejected += 1
        raise self._full("wait timed out")

    async def _await(self, waiter: _Waiter) -> None:
        if waiter is _FULL:
            raise self._full()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.max_wait)  # type: ignore[arg-type]
        except asyncio.TimeoutError:
            if self._abandon(waiter):
                self.rejected += 1
                raise self._full("wait timed out") from None
        except BaseException:
            if not self._abandon(waiter):
                self._release()  # cancelled after the slot was handed to us: give it on
            raise

    def _abandon(self, waiter: _Waiter) -> bool:
        """A waiter gives up; False if it had already been granted the slot."""
        with self._lock:
            if waiter.granted:
                return False
            self._waiters.remove(waiter)
            return True

    def _release(self) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot passes to it; _active stays the same
            else:
                self._active -= 1
                return
        waiter.wake()


class _Guard:
    __slots__ = ("_bulkhead",)

    def __init__(self, bulkhead: Bulkhead) -> None:
        self._bulkhead = bulkhead

    def __enter__(self) -> None:
        b = self._bulkhead
        with b._lock:
            if b._active < b.max_concurrent and not b._waiters:
                b._active += 1
                return
            waiter = b._enqueue(None) or _FULL
        b._wait(waiter)

    def __exit__(self, *exc: object) -> None:
        self._bulkhead._release()

    async def __aenter__(self) -> None:
        b = self._bulkhead
        with b._lock:
            if b._active < b.max_concurrent and not b._waiters:
                b._active += 1
                return
            waiter = b._enqueue(asyncio.get_running_loop()) or _FULL
        await b._await(waiter)

    async def __aexit__(self, *exc: object) -> None:
        self._bulkhead._release()
