"""What every policy shares: reading the running call, classifying outcomes, emitting events.

Standalone use (no running instrumented call, ``_context.current.get() is None``): every ``Exception``
is a failure, every call is idempotent, results carry no status, and events still go to listeners
(there is just no span to attach them to).
"""

from __future__ import annotations

import email.utils
import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

from instrument import _context
from instrument.errors import DeadlineExceeded, Rejected, for_client
from instrument.events import PolicyEvent, emit

__all__ = ["Outcomes", "Policy", "decorate", "event", "reject", "retry_after"]

current = _context.current  # the running CallState or None
monotonic = time.monotonic

Clock = Callable[[], float]


class Policy:
    """Base of the policies: ``name``, ``call``, ``acall``, and use as a decorator."""

    name = "policy"
    target = ""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a function (sync or ``async def``) so that each call goes through this policy."""
        return decorate(self, fn)


def decorate(policy: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        acall = policy.acall

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await acall(fn, *args, **kwargs)

        return async_wrapper
    call = policy.call

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    return wrapper


def endpoint_of(state: Any) -> Any:
    return state.op.endpoint if state is not None else None


def event(target: str, policy: str, name: str, **fields: Any) -> None:
    """Emit one PolicyEvent. Only ever called on a decision, never on the plain success path."""
    emit(PolicyEvent(pipeline=target, policy=policy, name=name, **fields))


def reject(cls: type[Rejected], target: str, policy: str, message: str) -> BaseException:
    """A rejection that is also the client's own error (``except requests.ConnectionError`` catches it)."""
    ep = endpoint_of(current.get())
    if ep is not None and ep.errors.catch:
        try:
            return for_client(cls, *ep.errors.catch)(message, pipeline=target, policy=policy)
        except TypeError:  # a client base whose __new__ rejects our arguments: the plain class is still right
            pass
    return cls(message, pipeline=target, policy=policy)


def timeout_error(message: str) -> BaseException:
    """A DeadlineExceeded that is also the running client's own timeout type where possible."""
    ep = endpoint_of(current.get())
    if ep is not None:
        try:
            native = ep.errors.timeout(message)
            cls = for_client(DeadlineExceeded, type(native))
            return cls(message)
        except Exception:  # noqa: BLE001, S110 - an odd client type: the plain DeadlineExceeded is correct
            pass
    return DeadlineExceeded(message)


def error_name(exc: BaseException) -> str:
    from instrument._call import error_type

    return error_type(exc)


class Outcomes:
    """Which outcomes count: a small set of tokens, written ``errors|5xx|429`` in rules.

    - ``errors``: exceptions the client says are failures (``ClientErrors.is_failure``: connection
      errors, 5xx errors, operational errors, broker errors; every Exception when standalone);
    - ``timeout``: timeouts only (``ClientErrors.is_timeout``, and DeadlineExceeded);
    - ``any``: every Exception;
    - ``5xx``, ``4xx``, or a status code such as ``429``: HTTP results with that status.

    Rejections by another policy (CircuitOpen, BulkheadFull ...) and cancellations never count.
    """

    __slots__ = ("any", "codes", "errors", "spec", "timeout")

    TOKENS = ("errors", "timeout", "any", "4xx", "5xx", "NNN")

    def __init__(self, spec: str | Iterable[str]) -> None:
        tokens = [t.strip() for t in (spec.split("|") if isinstance(spec, str) else spec)]
        self.spec = "|".join(tokens)
        self.errors = self.timeout = self.any = False
        codes: set[int] = set()
        for token in tokens:
            low = token.lower()
            if low in ("errors", "error"):
                self.errors = True
            elif low in ("timeout", "timeouts"):
                self.timeout = True
            elif low == "any":
                self.any = True
            elif len(low) == 3 and low.endswith("xx") and low[0] in "12345":
                base = int(low[0]) * 100
                codes.update(range(base, base + 100))
            elif low.isdigit() and 100 <= int(low) <= 599:
                codes.add(int(low))
            else:
                raise ValueError(f"unknown outcome {token!r}")
        self.codes = frozenset(codes)

    def exception(self, exc: BaseException, state: Any) -> bool:
        """Does ``exc`` count? ``state`` is the running CallState or None."""
        if not isinstance(exc, Exception) or isinstance(exc, Rejected):
            return False
        if self.any:
            return True
        if state is None:
            return self.errors or (self.timeout and isinstance(exc, TimeoutError))
        errors = state.op.endpoint.errors
        if self.errors and errors.is_failure(exc):
            return True
        return self.timeout and (isinstance(exc, DeadlineExceeded) or errors.is_timeout(exc))

    def status(self, result: Any, state: Any) -> int | None:
        """The result's status code if it counts, else None (only HTTP results have one)."""
        if state is None or not self.codes:
            return None
        status_of = state.op.endpoint.status_of
        if status_of is None:
            return None
        code = status_of(result)
        return code if code in self.codes else None


def retry_after(result: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a response's ``Retry-After`` header (seconds or an HTTP-date), or None."""
    headers = getattr(result, "headers", None)
    value = None
    if headers is not None:
        get = getattr(headers, "get", None)
        if get is not None:
            value = get("Retry-After") or get("retry-after")
    if value is None:
        getheader = getattr(result, "getheader", None)
        if getheader is not None:
            value = getheader("Retry-After")
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
