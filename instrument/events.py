"""Policy events: what a resilience policy or fault decided, for listeners such as telemetry.

A listener is any ``Callable[[PolicyEvent], None]``. Events are emitted only on decisions
(a retry scheduled, a breaker opening, a rejection, an injected fault), never on the plain success
path, so listening costs nothing while all is well. A listener that raises is reported once and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Listener", "PolicyEvent", "emit", "subscribe", "unsubscribe"]


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """One decision of one policy.

    ``name`` is one of: ``retry.scheduled``, ``retry.gave_up``, ``retry.succeeded``,
    ``circuit.opened``, ``circuit.half_opened``, ``circuit.closed``, ``circuit.rejected``,
    ``timeout.expired``, ``bulkhead.rejected``, ``rate_limit.rejected``, ``rate_limit.unavailable``
    (a shared limiter's Redis is unreachable), ``pool.timeout``, ``fault.injected``.
    """

    pipeline: str  # the target identity, e.g. "http://payments:8080", or a user-given name
    policy: str  # "circuit_breaker", "retry", "timeout", "bulkhead", "rate_limit", "fault"
    name: str
    attempt: int = 0
    error_type: str | None = None
    delay: float | None = None  # seconds: a retry's backoff, a fault's latency
    state: str | None = None  # breaker: the new state ("closed", "open", "half_open")
    previous_state: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # small, bounded extras (fault kind ...)


Listener = Callable[[PolicyEvent], None]

_listeners: tuple[Listener, ...] = ()
_reported: set[int] = set()


def subscribe(listener: Listener) -> None:
    """Call ``listener`` for every event from now on (idempotent)."""
    global _listeners
    if listener not in _listeners:
        _listeners = (*_listeners, listener)


def unsubscribe(listener: Listener) -> None:
    global _listeners
    _listeners = tuple(lst for lst in _listeners if lst != listener)


def emit(event: PolicyEvent) -> None:
    """Hand ``event`` to every listener; a failing listener never reaches the caller."""
    for listener in _listeners:
        try:
            listener(event)
        except Exception as exc:  # noqa: BLE001 - telemetry must never break the application
            from instrument._safety import report

            report(f"event listener {getattr(listener, '__qualname__', listener)!r}", exc)
