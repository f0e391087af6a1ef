"""Timeout: a deadline for the call. Before a Retry it bounds everything; after it, each attempt.

Sync code cannot be interrupted. The sync path sets the call's deadline (``instrument._context``),
the integration hands the remaining time to the client's own timeout (requests/httpx/urllib3
``timeout=``, psycopg ``statement_timeout``, redis ``socket_timeout`` ...), and the client raises its
own timeout exception, which passes through unchanged. Standalone, read :func:`remaining` in the
wrapped function (``sock.settimeout(remaining())``). A deadline that has already passed fails the call
before it starts, with DeadlineExceeded.

The async path cancels for real (like ``asyncio.timeout``) and raises ``DeadlineExceeded``, which on a
patched client is also the client's own timeout class (``for_client(DeadlineExceeded, httpx.ReadTimeout)``),
so ``except httpx.TimeoutException`` and ``except TimeoutError`` both catch it.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
from collections.abc import Callable
from typing import Any

from instrument import _context

from ._base import Policy, current, event, monotonic, timeout_error

__all__ = ["Timeout", "remaining"]

_ctx_deadline = _context.deadline_var  # set/reset directly: a generator CM costs ~1 µs per call
_current_task = asyncio.current_task
_get_ident = threading.get_ident
# asyncio's own table of the task each running loop is stepping. asyncio.current_task() reads it too, after
# get_running_loop(), whose fork check is a getpid() system call per call on 3.10-3.11 (a fifth of an async
# Timeout's cost). A wheel whose loop runs in this thread now (BaseEventLoop._thread_id) reads it directly.
_tasks_by_loop: dict[Any, Any] | None = getattr(asyncio.tasks, "_current_tasks", None)
if not isinstance(_tasks_by_loop, dict):  # (an implementation without the table: the public path only)
    _tasks_by_loop = None
_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError
_HAS_UNCANCEL = sys.version_info >= (3, 11)

remaining = _context.remaining


class _Timer:
    """One call's cancellation: fires by cancelling the task, remembers that it did."""

    __slots__ = ("at", "done", "fired", "task")

    def __init__(self, task: asyncio.Task[Any], at: float) -> None:
        self.task = task
        self.at = at
        self.fired = False
        self.done = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


class _Wheel:
    """The pending timers of one Timeout policy on one event loop, in deadline order.

    A policy's own deadlines grow with time (now + the same seconds), so a FIFO replaces the loop's
    timer heap: one ``call_at`` per wheel instead of a TimerHandle pushed and cancelled per call.
    Finished timers are dropped from the front as calls finish; the single loop timer wakes at the
    front deadline, cancels what expired and re-arms itself.
    """

    __slots__ = ("armed", "direct", "loop", "timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers: collections.deque[_Timer] = collections.deque()
        self.armed: float | None = None
        # the running task can be read from asyncio's table (see _tasks_by_loop): the loop says which thread
        # runs it (asyncio's own loops do; others, such as uvloop's, take the public path)
        self.direct = _tasks_by_loop is not None and hasattr(loop, "_thread_id")

    def task(self) -> asyncio.Task[Any] | None:
        """The task running now, if it runs on this wheel's loop in this thread (else None: ask asyncio)."""
        if self.direct and self.loop._thread_id == _get_ident():  # type: ignore[attr-defined]
            return _tasks_by_loop.get(self.loop)  # type: ignore[union-attr,no-any-return]
        return None

    def arm(self, at: float) -> None:
        self.armed = at
        self.loop.call_at(self.loop.time() + (at - monotonic()), self.tick)

    def trim(self) -> None:
        timers = self.timers
        while timers and timers[0].done:
            timers.popleft().task = None  # type: ignore[assignment]

    def tick(self) -> None:
        self.armed = None
        timers = self.timers
        now = monotonic()
        while timers and (timers[0].done or timers[0].at <= now):
            timer = timers.popleft()
            if not timer.done:
                timer.done = True
                timer()
        if timers:
            self.arm(timers[0].at)


class Timeout(Policy):
    """A deadline of ``seconds`` for what it wraps (an outer, earlier deadline still wins).

    Raises:
        the client's own timeout exception (sync, unchanged), or DeadlineExceeded (async, and when the
        deadline passed before the call started), which is a TimeoutError.

    .. versionadded:: 0.1
    """

    name = "timeout"

    def __init__(self, seconds: float, *, target: str = "timeout") -> None:
        if not seconds > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.target = target
        self._wheel: _Wheel | None = None  # the last loop's wheel (the common case: one loop)
        self._wheels: dict[asyncio.AbstractEventLoop, _Wheel] = {}

    def _enter(self) -> tuple[Any, float, bool]:
        """Set the deadline; returns (token, deadline, ours: this timeout is the binding one)."""
        now = monotonic()
        at = now + self.seconds
        outer = _ctx_deadline.get()
        ours = True
        if outer is not None and outer < at:
            at = outer
            ours = False
            if at <= now:
                self._expired(None)
                raise timeout_error(f"deadline of {self.target} passed before the call started")
        return _ctx_deadline.set(at), at, ours

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        at = monotonic() + self.seconds
        outer = _ctx_deadline.get()
        if outer is None or outer >= at:
            ours = True
            token = _ctx_deadline.set(at)
        else:
            token, _, ours = self._enter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if ours and _is_timeout(exc):
                self._expired(exc)
            raise
        finally:
            _ctx_deadline.reset(token)

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        at = monotonic() + self.seconds
        outer = _ctx_deadline.get()
        if outer is not None and outer < at:
            return await self._acall_outer(outer, fn, args, kwargs)
        token = _ctx_deadline.set(at)
        wheel = self._wheel
        task = wheel.task() if wheel is not None else None
        if task is None:
            task = _current_task()
            if wheel is None or wheel.loop is not task.get_loop():  # type: ignore[union-attr]
                wheel = self._wheel_for(task.get_loop())  # type: ignore[union-attr]
        timer = _Timer(task, at)  # type: ignore[arg-type]
        timers = wheel.timers
        timers.append(timer)
        if wheel.armed is None:
            wheel.arm(at)
        try:
            result = await fn(*args, **kwargs)
        except _CancelledError:
            # uncancel() == 0: only our cancellation is pending (asyncio.timeout's rule, for a task that
            # was not already being cancelled on entry; if it was, that outer cancellation wins).
            if timer.fired and (not _HAS_UNCANCEL or task.uncancel() == 0):  # type: ignore[union-attr]
                self._expired(None)
                raise timeout_error(f"{self.target}: no result within {self.seconds:g}s") from None
            raise
        except Exception as exc:
            if _is_timeout(exc):
                self._expired(exc)
            raise
        finally:
            timer.done = True
            if timers and timers[0] is timer:  # the common case: calls finish in the order they started
                timers.popleft()
                timer.task = None  # type: ignore[assignment]
                if timers and timers[0].done:
                    wheel.trim()
            _ctx_deadline.reset(token)
        if timer.fired:  # the call swallowed our cancellation and returned: still a timeout
            if _HAS_UNCANCEL:
                task.uncancel()  # type: ignore[union-attr]
            self._expired(None)
            raise timeout_error(f"{self.target}: no result within {self.seconds:g}s")
        return result

    async def _acall_outer(self, at: float, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """An outer deadline is earlier than ours: cancel at it (a plain loop timer, out of wheel order)."""
        now = monotonic()
        if at <= now:
            self._expired(None)
            raise timeout_error(f"deadline of {self.target} passed before the call started")
        token = _ctx_deadline.set(at)
        task = _current_task()
        timer = _Timer(task, at)  # type: ignore[arg-type]
        loop = task.get_loop()  # type: ignore[union-attr]
        handle = loop.call_at(loop.time() + (at - now), timer)
        try:
            result = await fn(*args, **kwargs)
        except _CancelledError:
            if timer.fired and (not _HAS_UNCANCEL or task.uncancel() == 0):  # type: ignore[union-attr]
                self._expired(None)
                raise timeout_error(f"{self.target}: no result within the outer deadline") from None
            raise
        finally:
            handle.cancel()
            _ctx_deadline.reset(token)
        if timer.fired:
            if _HAS_UNCANCEL:
                task.uncancel()  # type: ignore[union-attr]
            self._expired(None)
            raise timeout_error(f"{self.target}: no result within the outer deadline")
        return result

    def _wheel_for(self, loop: asyncio.AbstractEventLoop) -> _Wheel:
        wheel = self._wheels.get(loop)
        if wheel is None:
            if len(self._wheels) >= 16:  # loops come and go (tests, threads); keep the map small
                self._wheels.clear()
            wheel = self._wheels[loop] = _Wheel(loop)
        self._wheel = wheel
        return wheel

    def guard(self) -> _Guard:
        """``with timeout.guard():`` sets the deadline (advisory); ``async with`` also cancels."""
        return _Guard(self)

    def _expired(self, exc: BaseException | None) -> None:
        from ._base import error_name

        event(self.target, self.name, "timeout.expired", delay=self.seconds,
              error_type=error_name(exc) if exc is not None else "DeadlineExceeded")


def _is_timeout(exc: BaseException) -> bool:
    state = current.get()
    if state is None:
        return isinstance(exc, TimeoutError)
    return state.op.endpoint.errors.is_timeout(exc)


class _Guard:
    __slots__ = ("_handle", "_ours", "_policy", "_timer", "_token")

    def __init__(self, policy: Timeout) -> None:
        self._policy = policy
        self._token: Any = None
        self._ours = False
        self._timer: _Timer | None = None
        self._handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> float:
        self._token, at, self._ours = self._policy._enter()
        return at

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        _ctx_deadline.reset(self._token)
        if exc is not None and self._ours and isinstance(exc, Exception) and _is_timeout(exc):
            self._policy._expired(exc)

    async def __aenter__(self) -> float:
        self._token, at, self._ours = self._policy._enter()
        task = _current_task()
        self._timer = _Timer(task, at)  # type: ignore[arg-type]
        self._handle = _get_running_loop().call_later(at - monotonic(), self._timer)
        return at

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._handle.cancel()  # type: ignore[union-attr]
        _ctx_deadline.reset(self._token)
        timer = self._timer
        if timer is not None and timer.fired and (exc is None or isinstance(exc, _CancelledError)):
            if _HAS_UNCANCEL:
                timer.task.uncancel()  # type: ignore[union-attr]
            self._policy._expired(None)
            raise timeout_error(f"{self._policy.target}: no result within {self._policy.seconds:g}s") from None
        if exc is not None and self._ours and isinstance(exc, Exception) and _is_timeout(exc):
            self._policy._expired(exc)
