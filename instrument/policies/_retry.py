"""Retry: exponential backoff with full jitter, attempts, an overall deadline, Retry-After, a retry budget.

Backoff before retry ``n`` (0 for the first retry) is ``U(0, min(cap, base * 2**n))`` ("full jitter",
AWS Architecture Blog, 2015). Only idempotent operations are retried unless ``unsafe=True``; a
cancellation (``CancelledError``, ``KeyboardInterrupt``: BaseException) and a rejection by another
policy (CircuitOpen, BulkheadFull ...) are never retried. Retry re-raises the last exception unchanged,
or returns the last response when a retryable status (429, 503 ...) persists.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random as _random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from instrument import _context

from ._base import Clock, Outcomes, Policy, current, error_name, event, monotonic, retry_after

__all__ = ["Retry", "RetryBudget", "backoff"]

_ctx_deadline = _context.deadline_var  # set/reset directly: no generator CM on the hot path


def backoff(retry: int, base: float, cap: float, random: Callable[[], float] = _random.random) -> float:
    """Full-jitter delay before retry number ``retry`` (0-based): ``U(0, min(cap, base * 2**retry))``."""
    return random() * min(cap, base * 2.0 ** min(retry, 64))


class RetryBudget:
    """Retries may be at most ``ratio`` of the requests of the last ``ttl`` seconds, plus a floor.

    The floor (``min_per_second * ttl`` retries per window) lets a quiet service still retry. A
    request costs one lock-free ``next()`` on a counter; every 64th request, and every retry, may
    take a checkpoint ``(time, requests, retries)`` (at most one per ``ttl / 10``). The window is
    measured from the newest checkpoint at least ``ttl`` old, so it counts requests of a little more
    than ``ttl`` seconds (at most 64 requests or ``ttl / 10`` more): slightly permissive, never
    stricter than configured. (Finagle's RetryBudget, with checkpoints instead of a token bucket so
    that the success path takes no lock and reads no clock.)
    """

    def __init__(self, ratio: float = 0.2, *, min_per_second: float = 10.0, ttl: float = 10.0,
                 clock: Clock = monotonic) -> None:
        if not 0 <= ratio <= 1000:
            raise ValueError(f"budget ratio must be in [0, 1000], got {ratio!r}")
        if not min_per_second >= 0:
            raise ValueError(f"min_per_second must be >= 0, got {min_per_second!r}")
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self._clock = clock
        self._requests = itertools.count(1)
        self._seen = 0
        self._retries = 0
        self._lock = threading.Lock()
        self._marks: collections.deque[tuple[float, int, int]] = collections.deque([(clock(), 0, 0)])

    def deposit(self) -> None:
        """Count one request (lock-free; a checkpoint every 64th)."""
        n = next(self._requests)
        if not n & 63:
            self._seen = n
            if self._lock.acquire(blocking=False):
                try:
                    self._mark(self._clock())
                finally:
                    self._lock.release()

    def _mark(self, now: float) -> tuple[float, int, int]:
        """Under the lock: maybe add a checkpoint, drop the stale ones, return the window's baseline."""
        marks = self._marks
        if now - marks[-1][0] >= self.ttl / 10:
            marks.append((now, self._seen, self._retries))
        cutoff = now - self.ttl
        while len(marks) > 1 and marks[1][0] <= cutoff:
            marks.popleft()
        return marks[0]

    def withdraw(self) -> bool:
        """Take one retry from the budget; False when the budget is spent."""
        now = self._clock()
        with self._lock:
            self._seen = max(self._seen, _peek(self._requests))
            _, requests0, retries0 = self._mark(now)
            requests = self._seen - requests0
            retries = self._retries - retries0
            if retries + 1 > self.ratio * requests + self.min_per_second * self.ttl:
                return False
            self._retries += 1
            return True

    def available(self) -> float:
        """Retries left in the current window (for tests and diagnostics)."""
        with self._lock:
            self._seen = max(self._seen, _peek(self._requests))
            _, requests0, retries0 = self._mark(self._clock())
            return self.ratio * (self._seen - requests0) + self.min_per_second * self.ttl - (self._retries - retries0)


def _peek(counter: itertools.count) -> int:
    return int(repr(counter)[6:-1]) - 1  # count(N) -> N - 1 values handed out; off the hot path


_RETRY_AFTER_CODES = frozenset({429, 503})


class Retry(Policy):
    """Call again after a failure, with full-jitter backoff, within attempts, deadline and budget.

    Args:
        attempts: total attempts including the first (3: one call and up to two retries).
        base: backoff base in seconds; cap: the largest backoff in seconds.
        deadline: seconds for all attempts and sleeps together; a retry whose sleep would end after it
            is not made. It is also set as the call's deadline, so patched clients shrink their own
            timeouts to fit (it does not cancel: put a Timeout before the Retry for that).
        on: retryable outcomes (see ``Outcomes``), default ``errors|429|502|503|504``.
        budget: a :class:`RetryBudget` (default: 20% of recent requests + 10/s), or None for no budget.
        unsafe: also retry operations the integration marks non-idempotent (HTTP POST/PATCH).
        max_retry_after: a Retry-After longer than this (seconds) is not waited for: give up.
        sleep, asleep, random, clock: injectable for tests.

    .. versionadded:: 0.1
    """

    name = "retry"

    def __init__(self, attempts: int = 3, *, base: float = 0.1, cap: float = 10.0, deadline: float | None = None,
                 on: str | Outcomes = "errors|429|502|503|504", budget: RetryBudget | None | bool = True,
                 unsafe: bool = False, max_retry_after: float = 60.0, target: str = "retry",
                 sleep: Callable[[float], Any] = time.sleep,
                 asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 random: Callable[[], float] = _random.random, clock: Clock = monotonic) -> None:
        if int(attempts) != attempts or attempts < 1:
            raise ValueError(f"attempts must be a whole number >= 1, got {attempts!r}")
        if not base >= 0 or not cap >= 0:
            raise ValueError(f"base and cap must be >= 0 seconds, got {base!r}, {cap!r}")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        self.attempts = int(attempts)
        self.base = base
        self.cap = cap
        self.deadline = deadline
        self.on = on if isinstance(on, Outcomes) else Outcomes(on)
        self.budget = RetryBudget(clock=clock) if budget is True else (budget or None)
        self.unsafe = unsafe
        self.max_retry_after = max_retry_after
        self.target = target
        self._sleep = sleep
        self._asleep = asleep
        self._random = random
        self._clock = clock
        self._check_results = bool(self.on.codes)

    # -- the call --------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self.budget is not None:
            self.budget.deposit()
        if self.deadline is None:
            start = 0.0
            token = None
        else:
            start = self._clock()
            token = _set_deadline(self.deadline)
        try:
            attempt = 1
            while True:
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    delay = self._on_error(exc, attempt, start)
                    if delay is None:
                        raise
                else:
                    if not self._check_results and attempt == 1:
                        return result
                    delay = self._on_result(result, attempt, start)
                    if delay is None:
                        return result
                self._sleep(delay)
                attempt += 1
        finally:
            if token is not None:
                _ctx_deadline.reset(token)

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self.budget is not None:
            self.budget.deposit()
        if self.deadline is None:
            start = 0.0
            token = None
        else:
            start = self._clock()
            token = _set_deadline(self.deadline)
        try:
            attempt = 1
            while True:
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    delay = self._on_error(exc, attempt, start)
                    if delay is None:
                        raise
                else:
                    if not self._check_results and attempt == 1:
                        return result
                    delay = self._on_result(result, attempt, start)
                    if delay is None:
                        return result
                await self._asleep(delay)
                attempt += 1
        finally:
            if token is not None:
                _ctx_deadline.reset(token)

    # -- decisions (no I/O) ----------------------------------------------------------------------

    def backoff(self, retry: int) -> float:
        """The delay before retry number ``retry`` (0-based)."""
        return backoff(retry, self.base, self.cap, self._random)

    def _on_error(self, exc: Exception, attempt: int, start: float) -> float | None:
        state = current.get()
        if not self.on.exception(exc, state) or (state is not None and not self.unsafe and not state.idempotent):
            if attempt > 1:
                event(self.target, self.name, "retry.gave_up", attempt=attempt, error_type=error_name(exc),
                      detail={"reason": "not_retryable"})
            return None
        return self._schedule(state, attempt, start, error_name(exc), None)

    def _on_result(self, result: Any, attempt: int, start: float) -> float | None:
        state = current.get()
        code = self.on.status(result, state)
        if code is None:
            if attempt > 1:
                event(self.target, self.name, "retry.succeeded", attempt=attempt)
            return None
        if state is not None and not self.unsafe and not state.idempotent:
            return None
        after = retry_after(result) if code in _RETRY_AFTER_CODES else None
        return self._schedule(state, attempt, start, str(code), after)

    def _schedule(self, state: Any, attempt: int, start: float, error: str, after: float | None) -> float | None:
        """Decide the retry after failed attempt number ``attempt``: a delay, or None to give up."""
        reason = None
        delay = 0.0
        if attempt >= self.attempts:
            reason = "attempts"
        elif after is not None and after > self.max_retry_after:
            reason = "retry_after"
        else:
            delay = after if after is not None else self.backoff(attempt - 1)
            at = _ctx_deadline.get()
            if self.deadline is not None and self._clock() + delay - start >= self.deadline:
                reason = "deadline"
            elif at is not None and time.monotonic() + delay >= at:
                reason = "deadline"
            elif self.budget is not None and not self.budget.withdraw():
                reason = "budget"
        if reason is not None:
            event(self.target, self.name, "retry.gave_up", attempt=attempt, error_type=error,
                  detail={"reason": reason})
            return None
        if state is not None:
            state.resend_count = attempt
        event(self.target, self.name, "retry.scheduled", attempt=attempt, error_type=error, delay=delay,
              detail={"retry_after": after} if after is not None else {})
        return delay


def _set_deadline(seconds: float) -> Any:
    at = time.monotonic() + seconds
    outer = _ctx_deadline.get()
    if outer is not None and outer < at:
        at = outer
    return _ctx_deadline.set(at)
