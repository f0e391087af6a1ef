"""Per-call context shared by the pipeline, the policies and the faults.

- ``suppressed``: True while an instrumented call is running, so that a nested instrumented layer
  (requests over urllib3, SQLAlchemy over psycopg) passes straight through instead of making a
  second span. OpenTelemetry's own suppression key (set by the SDK around its exports) is honoured too.
- ``current``: the :class:`CallState` of the innermost running call, read by policies (is the call
  idempotent? which span gets the event?) and faults (which operation is it?).
- the deadline: the absolute ``time.monotonic()`` by which the call must finish, set by Timeout
  policies and read by integrations, which hand the remaining time to the client's own timeouts.
- ``generation``: bumped whenever policy or fault rules change, so endpoints rebuild their chains.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as _otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

suppressed: ContextVar[bool] = ContextVar("instrument.suppressed", default=False)
current: ContextVar[Any] = ContextVar("instrument.call", default=None)
_deadline: ContextVar[float | None] = ContextVar("instrument.deadline", default=None)
# Public for policies on the hot path: set/reset the variable directly (a generator CM costs ~1 us per call).
# Whoever sets it keeps an earlier outer deadline: min(at, deadline_var.get() or at).
deadline_var = _deadline


def _otel_context_var() -> ContextVar[Any] | None:
    """The ContextVar holding OpenTelemetry's current Context when the runtime context is the default
    contextvars one (None for another runtime context, which is then used through the API)."""
    runtime = getattr(_otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar):
        return var
    return None


_var = _otel_context_var()
# OpenTelemetry's get_current / attach / detach, as its runtime context does them, without the API's two or three
# Python calls around each. otel_detach raises where the API's detach would log (a token of another context).
otel_current = _var.get if _var is not None else _otel_context.get_current
otel_attach = _var.set if _var is not None else _otel_context.attach
otel_detach = _var.reset if _var is not None else _otel_context.detach


class _Generation:
    value = 0

    def bump(self) -> None:
        self.value += 1


generation = _Generation()


def is_suppressed() -> bool:
    """True inside an instrumented call or inside OpenTelemetry's ``suppress_instrumentation()``."""
    return suppressed.get() or bool(get_value(_SUPPRESS_INSTRUMENTATION_KEY))


@contextmanager
def suppress() -> Iterator[None]:
    """Run a block without the toolkit's instrumentation (used by the toolkit for its own traffic)."""
    token = suppressed.set(True)
    try:
        yield
    finally:
        suppressed.reset(token)


def deadline() -> float | None:
    """The absolute monotonic deadline of the running call, or None."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the running call's deadline (never negative), or None if it has none."""
    at = _deadline.get()
    if at is None:
        return None
    return max(0.0, at - time.monotonic())


@contextmanager
def deadline_scope(seconds: float) -> Iterator[float]:
    """Set a deadline ``seconds`` from now, or keep an earlier one already set (the outer one wins)."""
    at = time.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and outer < at:
        at = outer
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)
