"""concurrent.futures: a task submitted to a ThreadPoolExecutor runs in the submitter's trace context.

Threads do not inherit ``contextvars``, so without this a span started inside an executor task would
begin a new trace instead of being a child of the span that submitted it (asyncio tasks copy the
context already and need nothing). ``ThreadPoolExecutor.submit`` is wrapped: the current OpenTelemetry
context is captured at submit time and attached around the task in the worker thread (the same as
OpenTelemetry contrib's threading instrumentation). Only the OpenTelemetry context travels; the
toolkit's per-call state (suppression, deadlines) does not, so a task is never silently uninstrumented
because it was submitted from inside an instrumented call. ``Executor.map`` goes through ``submit``.
Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=threading.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context

from instrument.patching import Target, apply, revert

TARGETS = (Target("concurrent.futures.thread", "ThreadPoolExecutor.submit"),)


def _in_context(ctx: Any, fn: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        token = otel_context.attach(ctx)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return run


def _submit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not args:  # submit(fn=...) is not accepted by the stdlib either: let it raise its own error
        return wrapped(*args, **kwargs)
    ctx = otel_context.get_current()
    if not ctx:  # nothing to carry: no span or baggage is active
        return wrapped(*args, **kwargs)
    return wrapped(_in_context(ctx, args[0]), *args[1:], **kwargs)


def patch() -> None:
    apply(TARGETS, _submit)


def unpatch() -> None:
    revert(TARGETS)
