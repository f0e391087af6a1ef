"""Circuit breaker with resilience4j semantics: sliding window, failure and slow-call rates, half-open probes.

    closed --(window has >= min_calls and failure rate or slow-call rate >= threshold)--> open
    open   --(wait elapsed; the next caller becomes a probe)--------------------------> half_open
    half_open --(all `probes` probes finished; their failure/slow rate below threshold)--> closed
    half_open --(... at or above threshold)---------------------------------------------> open

Half-open admits exactly ``probes`` calls; every other caller is rejected fast with CircuitOpen.
``force_open()`` holds it open (no probes), ``disable()`` lets everything through and records nothing,
``reset()`` closes it with an empty window.

Locking: the lock is never held across the wrapped call. On the hot path of the default breaker
(closed, count-based window, no slow-call threshold) a success takes no lock at all: it writes one
byte into a ring buffer at an index drawn from ``itertools.count`` (whose ``next`` is one C call, atomic
under the GIL). Failures, slow calls, time-based windows and half-open bookkeeping take the lock for a
few bytecodes. Each state change bumps an epoch; an outcome is recorded only if the breaker is still
in the epoch in which the call was admitted, so a straggler from before an opening never counts as a probe.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from instrument.errors import CircuitOpen

from ._base import Clock, Outcomes, Policy, current, event, monotonic, reject

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

_OK, _FAIL, _SLOW = 0, 1, 2  # outcome codes; _FAIL | _SLOW == 3 is a slow failure
_EVENT = {OPEN: "circuit.opened", HALF_OPEN: "circuit.half_opened", CLOSED: "circuit.closed"}


class _CountWindow:
    """The last ``size`` outcomes as bytes; rates are counted (in C) only when a failure asks for them."""

    __slots__ = ("ring", "seq", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = bytearray(size)
        self.seq = itertools.count(1)

    def record(self, code: int, now: float) -> int:
        i = next(self.seq)
        self.ring[i % self.size] = code
        return i

    def stats(self, seen: int, now: float) -> tuple[int, int, int]:
        ring = self.ring
        both = ring.count(3)
        return min(seen, self.size), ring.count(1) + both, ring.count(2) + both


class _TimeWindow:
    """Outcomes of the last ``size`` seconds in one-second buckets with running totals (under the lock)."""

    __slots__ = ("calls", "fails", "last", "size", "slows", "total")

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = [0] * size
        self.fails = [0] * size
        self.slows = [0] * size
        self.total = [0, 0, 0]
        self.last: int | None = None

    def _advance(self, sec: int) -> int:
        last = self.last
        n = self.size
        if last is None or sec - last >= n:
            self.calls = [0] * n
            self.fails = [0] * n
            self.slows = [0] * n
            self.total = [0, 0, 0]
        elif sec > last:
            total = self.total
            for s in range(last + 1, sec + 1):
                i = s % n
                total[0] -= self.calls[i]
                total[1] -= self.fails[i]
                total[2] -= self.slows[i]
                self.calls[i] = self.fails[i] = self.slows[i] = 0
        else:
            return last
        self.last = sec
        return sec

    def record(self, code: int, now: float) -> int:
        i = self._advance(int(now)) % self.size
        total = self.total
        self.calls[i] += 1
        total[0] += 1
        if code & _FAIL:
            self.fails[i] += 1
            total[1] += 1
        if code & _SLOW:
            self.slows[i] += 1
            total[2] += 1
        return total[0]

    def stats(self, seen: int, now: float) -> tuple[int, int, int]:
        self._advance(int(now))
        calls, fails, slows = self.total
        return calls, fails, slows


class CircuitBreaker(Policy):
    """Stops calling a dependency that keeps failing, then lets a few probes test whether it is back.

    Args:
        target: the identity this breaker protects (``http://payments:8080``); events carry it.
        failure_rate: open when this share of the window's calls failed (0 < x <= 1).
        slow_call: seconds; a call taking at least this long is slow. None: slow calls are not tracked.
        slow_rate: open when this share of the window's calls was slow (0 < x <= 1).
        window: size of the sliding window: a number of calls (``window_type="count"``) or of seconds
            (``"time"``).
        min_calls: no decision before the window holds this many calls (capped at a count window's size).
        wait: seconds to stay open before admitting probes.
        probes: calls admitted in half-open; the rest are rejected.
        on: which outcomes are failures (see :class:`~instrument.policies._base.Outcomes`), default
            ``errors|5xx``: the client's own failure errors and HTTP 5xx responses, never 4xx.
        clock: monotonic seconds, injectable for tests.

    Raises:
        CircuitOpen: from ``call``/``acall`` when open (or half-open with every probe taken); on a
            patched client it is also the client's own connection error class.

    .. versionadded:: 0.1
    """

    name = "circuit_breaker"

    def __init__(self, target: str = "circuit_breaker", *, failure_rate: float = 0.5, slow_call: float | None = None,
                 slow_rate: float = 1.0, window: int = 20, window_type: str = "count", min_calls: int = 10,
                 wait: float = 30.0, probes: int = 3, on: str | Outcomes = "errors|5xx",
                 clock: Clock = monotonic) -> None:
        if not 0 < failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {failure_rate!r}")
        if not 0 < slow_rate <= 1:
            raise ValueError(f"slow_rate must be in (0, 1], got {slow_rate!r}")
        if slow_call is not None and not slow_call > 0:
            raise ValueError(f"slow_call must be > 0 seconds, got {slow_call!r}")
        if window_type not in ("count", "time"):
            raise ValueError(f"window_type must be 'count' or 'time', got {window_type!r}")
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a whole number >= 1, got {window!r}")
        if int(min_calls) != min_calls or min_calls < 1:
            raise ValueError(f"min_calls must be a whole number >= 1, got {min_calls!r}")
        if not wait >= 0:
            raise ValueError(f"wait must be >= 0 seconds, got {wait!r}")
        if int(probes) != probes or probes < 1:
            raise ValueError(f"probes must be a whole number >= 1, got {probes!r}")
        self.target = target
        self.failure_rate = failure_rate
        self.slow_call = slow_call
        self.slow_rate = slow_rate
        self.window = int(window)
        self.window_type = window_type
        self.min_calls = min(int(min_calls), self.window) if window_type == "count" else int(min_calls)
        self.wait = float(wait)
        self.probes = int(probes)
        self.on = on if isinstance(on, Outcomes) else Outcomes(on)
        self._clock = clock
        self._timed = slow_call is not None
        self._needs_now = self._timed or window_type == "time"
        self._check_results = bool(self.on.codes)
        self._lock = threading.Lock()
        self._state = CLOSED
        self._epoch = 0
        self._forced = False
        self._disabled = False
        self._opened_at = 0.0
        self._probes_left = 0
        self._probe_stats = [0, 0, 0]
        self._window: _CountWindow | _TimeWindow = self._new_window()
        self._simple = not self._needs_now  # closed, count window, untimed, enabled: the lock-free success path
        self.rejected = 0  # calls rejected so far (approximate under threads; for tests and doctor)

    # -- public state ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (forced open reads ``open``, disabled reads ``closed``)."""
        return self._state

    @property
    def forced_open(self) -> bool:
        return self._forced

    @property
    def disabled(self) -> bool:
        return self._disabled

    def force_open(self) -> None:
        """Hold the breaker open: every call is rejected, no probes, until :meth:`reset`."""
        with self._lock:
            self._forced = True
            self._disabled = False
            changed = self._transition(OPEN)
        self._announce(changed, "forced")

    def disable(self) -> None:
        """Let every call through and record nothing, until :meth:`reset`."""
        with self._lock:
            self._disabled = True
            self._forced = False
            changed = self._transition(CLOSED)
            self._simple = False
        self._announce(changed, "disabled")

    def reset(self) -> None:
        """Close the breaker with an empty window and clear force-open/disable."""
        with self._lock:
            self._forced = False
            self._disabled = False
            changed = self._transition(CLOSED)
        self._announce(changed, "reset")

    def snapshot(self) -> dict[str, Any]:
        """Current window counts and state, for tests and diagnostics."""
        with self._lock:
            w = self._window
            now = self._clock() if self.window_type == "time" else 0.0
            seen = w.total[0] if isinstance(w, _TimeWindow) else _seen(w)
            calls, fails, slows = w.stats(seen, now)
            return {"state": self._state, "calls": calls, "failures": fails, "slow": slows,
                    "probes_left": self._probes_left, "rejected": self.rejected}

    # -- the call --------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        epoch = self._epoch
        if self._state is not CLOSED:
            epoch = self._admit()
        start = self._clock() if self._timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(exc, epoch, start)
            raise
        if self._check_results and self.on.status(result, current.get()) is not None:
            self._record(epoch, _FAIL, start)
        elif self._simple and epoch == self._epoch:
            w = self._window
            w.ring[next(w.seq) % w.size] = 0  # type: ignore[union-attr]
        else:
            self._record(epoch, _OK, start)
        return result

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        epoch = self._epoch
        if self._state is not CLOSED:
            epoch = self._admit()
        start = self._clock() if self._timed else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(exc, epoch, start)
            raise
        if self._check_results and self.on.status(result, current.get()) is not None:
            self._record(epoch, _FAIL, start)
        elif self._simple and epoch == self._epoch:
            w = self._window
            w.ring[next(w.seq) % w.size] = 0  # type: ignore[union-attr]
        else:
            self._record(epoch, _OK, start)
        return result

    def guard(self) -> _Guard:
        """``with breaker.guard():`` / ``async with breaker.guard():`` around any block."""
        return _Guard(self)

    # -- decisions (no I/O) ----------------------------------------------------------------------

    def _admit(self) -> int:
        """Admit a call outside the closed state (returns its epoch) or raise CircuitOpen."""
        changed = None
        with self._lock:
            state = self._state
            if state is CLOSED:
                return self._epoch
            if state is OPEN and not self._forced and self._clock() >= self._opened_at + self.wait:
                changed = self._transition(HALF_OPEN)
                state = HALF_OPEN
            admitted = state is HALF_OPEN and self._probes_left > 0
            if admitted:
                self._probes_left -= 1
            else:
                self.rejected += 1
            epoch = self._epoch
        if changed:
            self._announce(changed, "wait elapsed")
        if admitted:
            return epoch
        event(self.target, self.name, "circuit.rejected", state=state)
        raise reject(CircuitOpen, self.target, self.name, f"circuit breaker for {self.target} is {state}")

    def _failed(self, exc: BaseException, epoch: int, start: float) -> None:
        if self.on.exception(exc, current.get()):
            self._record(epoch, _FAIL, start)
        elif isinstance(exc, Exception) and not _is_rejection(exc):
            self._record(epoch, _OK, start)  # an error that is not a failure (a 404, a bad query) is a success
        elif epoch == self._epoch and self._state is HALF_OPEN:
            with self._lock:  # cancelled or rejected further in: not an outcome, the probe slot goes back
                if epoch == self._epoch and self._state is HALF_OPEN:
                    self._probes_left += 1

    def _record(self, epoch: int, code: int, start: float) -> None:
        if self._disabled or epoch != self._epoch:
            return
        now = self._clock() if self._needs_now else 0.0
        if self._timed and now - start >= self.slow_call:  # type: ignore[operator]
            code |= _SLOW
        changed = None
        state = self._state
        if state is CLOSED:
            w = self._window
            if isinstance(w, _CountWindow):
                seen = w.record(code, now)  # lock-free, see the module docstring
                if code == _OK:
                    return
                with self._lock:
                    if epoch != self._epoch:
                        return
                    changed = self._evaluate(*w.stats(seen, now))
            else:
                with self._lock:
                    if epoch != self._epoch:
                        return
                    w.record(code, now)
                    if code != _OK:
                        changed = self._evaluate(*w.stats(0, now))
        elif state is HALF_OPEN:
            with self._lock:
                if epoch != self._epoch:
                    return
                stats = self._probe_stats
                stats[0] += 1
                stats[1] += code & _FAIL
                stats[2] += (code & _SLOW) >> 1
                if stats[0] >= self.probes:
                    changed = self._evaluate(*stats, probes=True)
        if changed:
            self._announce(changed, "probes finished" if state is HALF_OPEN else "threshold reached")

    def _evaluate(self, calls: int, fails: int, slows: int, *, probes: bool = False) -> tuple[str, str, dict] | None:
        """Under the lock: open if a rate reaches its threshold (closed needs ``min_calls``)."""
        if not probes and calls < self.min_calls:
            return None
        failure_rate = fails / calls if calls else 0.0
        slow_rate = slows / calls if calls else 0.0
        detail = {"failure_rate": round(failure_rate, 4), "slow_call_rate": round(slow_rate, 4), "calls": calls}
        if failure_rate >= self.failure_rate or (self._timed and slow_rate >= self.slow_rate):
            changed = self._transition(OPEN)
        elif probes:
            changed = self._transition(CLOSED)
        else:
            return None
        return (changed[0], changed[1], detail) if changed else None

    def _transition(self, new: str) -> tuple[str, str, dict] | None:
        """Under the lock: enter ``new`` (a fresh epoch); returns (previous, new, detail) if it changed."""
        previous = self._state
        self._state = new
        self._epoch += 1
        if new is OPEN:
            self._opened_at = self._clock()
            self._probes_left = 0
        elif new is HALF_OPEN:
            self._probes_left = self.probes
            self._probe_stats = [0, 0, 0]
        else:
            self._window = self._new_window()
        self._simple = new is CLOSED and not self._needs_now and not self._disabled
        return None if previous is new else (previous, new, {})

    def _announce(self, changed: tuple[str, str, dict] | None, reason: str) -> None:
        if changed is None:
            return
        previous, new, detail = changed
        event(self.target, self.name, _EVENT[new], state=new, previous_state=previous,
              detail={"reason": reason, **detail})

    def _new_window(self) -> _CountWindow | _TimeWindow:
        return _CountWindow(self.window) if self.window_type == "count" else _TimeWindow(self.window)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.target!r}, state={self._state!r})"


def _seen(w: _CountWindow) -> int:
    # itertools.count's repr holds its next value; used only by snapshot(), never on the call path.
    return int(repr(w.seq)[6:-1]) - 1


def _is_rejection(exc: BaseException) -> bool:
    from instrument.errors import Rejected

    return isinstance(exc, Rejected)


class _Guard:
    """One use of a breaker as a (sync or async) context manager."""

    __slots__ = ("_breaker", "_epoch", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._epoch = 0
        self._start = 0.0

    def __enter__(self) -> None:
        b = self._breaker
        self._epoch = b._epoch if b._state is CLOSED else b._admit()
        self._start = b._clock() if b._timed else 0.0

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        b = self._breaker
        if exc is None:
            b._record(self._epoch, _OK, self._start)
        else:
            b._failed(exc, self._epoch, self._start)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)
