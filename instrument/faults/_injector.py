"""The fault injector: a Policy placed innermost in an endpoint's chain by the core (``_chain.py``).

Per call it reads the running :class:`~instrument._call.CallState` (operation name, the client's
:class:`~instrument._call.ClientErrors`), lets each matching rule decide (latency rules add up; the
first error/timeout/status/reset that fires ends the decision), emits one ``fault.injected``
:class:`~instrument.events.PolicyEvent` per fault, then sleeps and raises, returns, or calls through.
The decision is written once (:meth:`FaultInjector._decide`); ``call``/``acall`` differ only in sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from instrument import _context
from instrument.errors import InjectedFault
from instrument.events import PolicyEvent, emit
from instrument.faults._registry import Armed

__all__ = ["FaultInjector", "mark_injected"]

T = TypeVar("T")


class _Generic:
    """The client errors used when a call runs outside the pipeline (no CallState)."""

    connect = ConnectionRefusedError
    timeout = TimeoutError
    reset = ConnectionResetError
    status = None


@functools.lru_cache(maxsize=256)
def _marked_class(cls: type[BaseException]) -> type[BaseException]:
    """``cls`` with the InjectedFault marker mixed in, keeping its name so error.type reads the same."""
    if issubclass(cls, InjectedFault):
        return cls
    try:
        return type(cls.__name__, (cls, InjectedFault), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    except TypeError:  # layout conflict or a final class: the plain client exception is still right to catch
        return cls


def mark_injected(exc: BaseException) -> BaseException:
    """A copy of ``exc`` whose class is also :class:`~instrument.errors.InjectedFault` (or ``exc`` itself)."""
    cls = _marked_class(type(exc))
    if cls is type(exc):
        return exc
    try:
        marked = cls.__new__(cls, *exc.args)
        marked.args = exc.args
        if hasattr(exc, "__dict__"):
            marked.__dict__.update(exc.__dict__)
    except Exception:  # noqa: BLE001 - an exotic constructor: fall back to the unmarked exception
        return exc
    return marked


class _Decision:
    __slots__ = ("delay", "fault", "rule_delay", "terminal")

    def __init__(self) -> None:
        self.delay = 0.0  # seconds to sleep before acting (sum of latency faults)
        self.terminal: str | None = None  # "error" | "timeout" | "status" | "reset"
        self.rule_delay = 0.0
        self.fault: Armed | None = None


class FaultInjector:
    """Injects the faults of ``rules`` into calls to ``target``.

    Args:
        target: the target identity, used as the event's pipeline name.
        rules: armed rules already known to match the target (see :func:`instrument.faults.faults_for`).

    .. versionadded:: 0.1
    """

    name = "fault"

    def __init__(self, target: str, rules: tuple[Armed, ...]) -> None:
        self.target = target
        self.rules = rules

    def __repr__(self) -> str:
        return f"FaultInjector({self.target!r}, {[a.rule.text for a in self.rules]!r})"

    # -- the decision, without I/O ---------------------------------------------------------------

    def _decide(self, errors: Any, op: str | None) -> _Decision | None:
        decision: _Decision | None = None
        for armed in self.rules:
            rule = armed.rule
            if rule.fault == "status" and getattr(errors, "status", None) is None:
                continue
            if not armed.matches_op(op):
                continue
            delay = armed.take()
            if delay is None:
                continue
            if decision is None:
                decision = _Decision()
            self._emit(rule.fault, delay if rule.fault in ("latency", "timeout") else None)
            if rule.fault == "latency":
                decision.delay += delay
                continue
            decision.terminal = rule.fault
            decision.rule_delay = delay
            decision.fault = armed
            break
        return decision

    def _emit(self, kind: str, delay: float | None) -> None:
        emit(PolicyEvent(pipeline=self.target, policy="fault", name="fault.injected", delay=delay,
                         detail={"kind": kind}))

    def _message(self, what: str) -> str:
        return f"injected fault: {what} ({self.target})"

    def _plan(self) -> tuple[_Decision | None, Any]:
        state = _context.current.get()
        if state is None:
            return self._decide(_Generic, None), _Generic
        errors = state.op.endpoint.errors
        return self._decide(errors, state.op.name), errors

    @staticmethod
    def _bounded(delay: float) -> tuple[float, bool]:
        """Sleep no longer than the deadline left; True if the deadline cut it short."""
        left = _context.remaining()
        if left is not None and delay > left:
            return left, True
        return delay, False

    def _outcome(self, decision: _Decision, errors: Any, cut: bool) -> Any:
        """After sleeping: raise the fault, or return a synthesized response, or None to call through."""
        if cut:
            raise mark_injected(_build(errors.timeout, _Generic.timeout, self._message("deadline reached while delayed")))
        kind = decision.terminal
        if kind == "error":
            raise mark_injected(_build(errors.connect, _Generic.connect, self._message("connection error")))
        if kind == "reset":
            raise mark_injected(_build(errors.reset, _Generic.reset, self._message("connection reset")))
        if kind == "timeout":
            raise mark_injected(_build(errors.timeout, _Generic.timeout, self._message("timed out")))
        rule = decision.fault.rule  # type: ignore[union-attr]
        return errors.status(rule.status, rule.retry_after)

    # -- the two drivers -------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        decision, errors = self._plan()
        if decision is None:
            return fn(*args, **kwargs)
        total = decision.delay + (decision.rule_delay if decision.terminal == "timeout" else 0.0)
        sleep, cut = self._bounded(total)
        if sleep > 0:
            time.sleep(sleep)
        if decision.terminal is None and not cut:
            return fn(*args, **kwargs)
        return self._outcome(decision, errors, cut and decision.terminal != "timeout")

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        decision, errors = self._plan()
        if decision is None:
            return await fn(*args, **kwargs)
        total = decision.delay + (decision.rule_delay if decision.terminal == "timeout" else 0.0)
        sleep, cut = self._bounded(total)
        if sleep > 0:
            await asyncio.sleep(sleep)
        if decision.terminal is None and not cut:
            return await fn(*args, **kwargs)
        return self._outcome(decision, errors, cut and decision.terminal != "timeout")


def _build(factory: Callable[[str], BaseException], fallback: Callable[[str], BaseException],
           message: str) -> BaseException:
    try:
        exc = factory(message)
    except Exception:  # noqa: BLE001 - a broken factory must still produce a fault
        exc = fallback(message)
    if not isinstance(exc, BaseException):
        exc = fallback(message)
    return exc
