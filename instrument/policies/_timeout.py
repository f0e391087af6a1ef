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
import sys
import time
from collections.abc import Callable
from typing import Any

from instrument import _context

from ._base import Policy, current, event, monotonic, timeout_error

__all__ = ["Timeout", "remaining"]

_ctx_deadline = _context._deadline  # noqa: SLF001 - set/reset directly: a generator CM costs ~1 µs per call
_current_task = asyncio.current_task
_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError
_HAS_UNCANCEL = sys.version_info >= (3, 11)

remaining = _context.remaining


class _Timer:
    """Cancels the task when it fires; remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


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
        token, at, ours = self._enter()
        task = _current_task()
        timer = _Timer(task)  # type: ignore[arg-type]
        handle = _get_running_loop().call_later(at - monotonic(), timer)
        cancelling = task.cancelling() if _HAS_UNCANCEL else 0  # type: ignore[union-attr]
        try:
            result = await fn(*args, **kwargs)
        except _CancelledError:
            if timer.fired and (not _HAS_UNCANCEL or task.uncancel() <= cancelling):  # type: ignore[union-attr]
                self._expired(None)
                raise timeout_error(f"{self.target}: no result within {self.seconds:g}s") from None
            raise
        except Exception as exc:
            if ours and _is_timeout(exc):
                self._expired(exc)
            raise
        finally:
            handle.cancel()
            _ctx_deadline.reset(token)
        if timer.fired:  # the call swallowed our cancellation and returned: still a timeout
            if _HAS_UNCANCEL:
                task.uncancel()  # type: ignore[union-attr]
            self._expired(None)
            raise timeout_error(f"{self.target}: no result within {self.seconds:g}s")
        return result

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
        self._timer = _Timer(task)  # type: ignore[arg-type]
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
