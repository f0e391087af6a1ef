"""The toolkit's exceptions, one tree.

InstrumentError
  ConfigError         # a bad INSTRUMENT_* / OTEL_* value; names the variable, the value and what is accepted
  Rejected            # a policy refused the call; carries .pipeline and .policy
    CircuitOpen
    BulkheadFull
    RateLimited
    PoolExhausted
  DeadlineExceeded    # also a TimeoutError
  InjectedFault       # marker mixed into every exception a fault rule raises

Library exceptions pass through unchanged. Where a client has an exception its users already catch
(``requests.ConnectionError``, ``redis.ConnectionError``, ``psycopg.OperationalError`` ...), a rejection
raised on that client's calls is an instance of a subclass of both (see :func:`for_client`), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

import functools

__all__ = [
    "BulkheadFull",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "InjectedFault",
    "InstrumentError",
    "PoolExhausted",
    "RateLimited",
    "Rejected",
    "for_client",
]


class InstrumentError(Exception):
    """Base of every exception the toolkit raises itself."""


class ConfigError(InstrumentError, ValueError):
    """A configuration value is wrong.

    The message always names the variable, the value and what is accepted, on one line.
    """

    def __init__(self, variable: str, value: object, accepted: str, *, detail: str = "") -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        message = f"{variable}={value!r} is invalid: {detail + '; ' if detail else ''}accepted: {accepted}"
        super().__init__(message)


class Rejected(InstrumentError):
    """A resilience policy refused the call without running it."""

    def __init__(self, message: str = "", *, pipeline: str = "", policy: str = "") -> None:
        self.pipeline = pipeline
        self.policy = policy
        super().__init__(message or f"{policy} rejected the call to {pipeline}")


class CircuitOpen(Rejected):
    """The circuit breaker for the target is open (or half-open with all probes taken)."""


class BulkheadFull(Rejected):
    """The bulkhead's concurrent slots and wait queue are full, or the wait timed out."""


class RateLimited(Rejected):
    """The rate limiter had no token for the call."""


class PoolExhausted(Rejected):
    """No pooled connection could be acquired within the acquire timeout."""


class DeadlineExceeded(InstrumentError, TimeoutError):
    """The deadline of a Timeout policy passed before the call finished."""


class InjectedFault(InstrumentError):
    """Marker base mixed into exceptions raised by fault injection (see :func:`for_client`)."""


@functools.lru_cache(maxsize=256)
def for_client(cls: type[BaseException], *bases: type[BaseException]) -> type[BaseException]:
    """Return a subclass of ``cls`` that is also each of ``bases`` (a client's own exception types).

    ``for_client(CircuitOpen, requests.ConnectionError)`` is caught by ``except CircuitOpen`` and by
    ``except requests.ConnectionError``. Classes are cached, so the same pair gives the same class.
    """
    bases = tuple(b for b in bases if b is not None and not issubclass(cls, b))
    if not bases:
        return cls
    name = cls.__name__
    try:
        return type(name, (cls, *bases), {"__module__": cls.__module__})
    except TypeError:
        # Layout conflicts between C-level bases (rare); the plain class is still correct to catch.
        return cls
