"""Server-side faults for the WSGI/ASGI middleware: latency and error responses for incoming requests.

Two sources, the same shape of result (:class:`ServerFault`):

- rules with a ``server:`` selector (``server:/api/orders/* op=POST: status 503 10%``), from
  ``INSTRUMENT_FAULTS`` or :func:`~instrument.faults.inject`;
- request headers, modelled on Envoy's ``x-envoy-fault-*``, honoured **only** when
  ``INSTRUMENT_FAULTS_HEADER_ENABLED`` is true (off by default: otherwise any caller could degrade
  the service):

  ==========================================  =======================================================
  ``x-instrument-fault-delay``                milliseconds to delay the request (capped at 30 s)
  ``x-instrument-fault-delay-percentage``     0..100, chance of the delay (default 100)
  ``x-instrument-fault-abort``                HTTP status to answer with instead of the application
  ``x-instrument-fault-abort-percentage``     0..100, chance of the abort (default 100)
  ``x-instrument-fault-retry-after``          seconds for the ``Retry-After`` header of the abort
  ==========================================  =======================================================

  Invalid header values are ignored, as Envoy does.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from instrument.events import PolicyEvent, emit
from instrument.faults import _registry

__all__ = ["HEADER_PREFIX", "MAX_HEADER_DELAY", "ServerFault", "server_fault"]

HEADER_PREFIX = "x-instrument-fault-"
MAX_HEADER_DELAY = 30.0  # seconds
_rng = random.Random()  # noqa: S311 - sampling, not crypto; reseeded by validate_settings
_rng_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ServerFault:
    """What the middleware should do to one incoming request.

    Sleep ``delay`` seconds first (:meth:`sleep` / :meth:`asleep`); then, if ``status`` is set, answer
    with it (:meth:`headers`, :attr:`body`) instead of calling the application.

    .. versionadded:: 0.1
    """

    delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    source: str = "rule"  # "rule" or "header"

    @property
    def body(self) -> bytes:
        return f"fault injected: status {self.status}\n".encode()

    def headers(self) -> list[tuple[str, str]]:
        """Response headers for the synthesized status (content type, length, Retry-After)."""
        out = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(self.body)))]
        if self.retry_after is not None:
            out.append(("retry-after", str(max(0, round(self.retry_after)))))
        return out

    def sleep(self) -> None:
        if self.delay > 0:
            time.sleep(self.delay)

    async def asleep(self) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)


def server_fault(target: str, method: str, path: str, headers: Mapping[str, str] | None = None, *,
                 header_enabled: bool | None = None) -> ServerFault | None:
    """The fault to apply to one incoming request, or None (the usual answer, and a cheap one).

    Args:
        target: the service's identity, e.g. ``http://orders:8000`` (event pipeline name; rules whose
            pattern contains ``://`` match ``target + path``).
        method: the request method, matched by a rule's ``op=``.
        path: the request path, matched by a rule's glob.
        headers: request headers (any case); read only when header faults are enabled.
        header_enabled: override ``INSTRUMENT_FAULTS_HEADER_ENABLED`` (default: the configured value).

    Returns:
        A :class:`ServerFault`, or None. Each fault chosen emits a ``fault.injected`` event.

    .. versionadded:: 0.1
    """
    rules = _registry.server_rules()
    enabled = _registry.header_enabled[0] if header_enabled is None else header_enabled
    if not rules and not (enabled and headers):
        return None
    delay = 0.0
    status: int | None = None
    retry_after: float | None = None
    source = "rule"
    for armed in rules:
        pattern = armed.rule.target
        subject = target + path if "://" in pattern else path
        if not fnmatchcase(subject, pattern) or not armed.matches_op(method):
            continue
        taken = armed.take()
        if taken is None:
            continue
        _emit(target, armed.rule.fault, taken if armed.rule.fault == "latency" else None, "rule")
        if armed.rule.fault == "latency":
            delay += taken
        else:
            status, retry_after = armed.rule.status, armed.rule.retry_after
            break
    if enabled and headers:
        found = _from_headers(headers)
        if found is not None:
            extra, code, after = found
            if extra:
                delay += extra
                source = "header"
                _emit(target, "latency", extra, "header")
            if code is not None and status is None:
                status, retry_after, source = code, after, "header"
                _emit(target, "status", None, "header")
    if delay <= 0 and status is None:
        return None
    return ServerFault(delay, status, retry_after, source)


def _emit(target: str, kind: str, delay: float | None, source: str) -> None:
    emit(PolicyEvent(pipeline=target, policy="fault", name="fault.injected", delay=delay,
                     detail={"kind": kind, "side": "server", "source": source}))


def _from_headers(headers: Mapping[str, str]) -> tuple[float, int | None, float | None] | None:
    ours = {k.lower(): v for k, v in headers.items() if k.lower().startswith(HEADER_PREFIX)}
    if not ours:
        return None
    delay = 0.0
    raw = ours.get(HEADER_PREFIX + "delay")
    if raw is not None:
        ms = _number(raw)
        if ms is not None and ms > 0 and _chance(ours.get(HEADER_PREFIX + "delay-percentage")):
            delay = min(ms / 1000.0, MAX_HEADER_DELAY)
    code: int | None = None
    after: float | None = None
    raw = ours.get(HEADER_PREFIX + "abort")
    if raw is not None and raw.strip().isdigit() and 100 <= int(raw) <= 599 \
            and _chance(ours.get(HEADER_PREFIX + "abort-percentage")):
        code = int(raw)
        after = _number(ours.get(HEADER_PREFIX + "retry-after", ""))
    if not delay and code is None:
        return None
    return delay, code, after


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except (ValueError, AttributeError):
        return None
    if value != value or value < 0 or value == float("inf"):
        return None
    return value


def _chance(raw: str | None) -> bool:
    if raw is None:
        return True
    pct = _number(raw)
    if pct is None or pct > 100:
        return False
    with _rng_lock:
        return _rng.random() * 100.0 < pct


def reseed(seed: int | None) -> None:
    with _rng_lock:
        _rng.seed(f"{seed}:server-headers" if seed is not None else None)
