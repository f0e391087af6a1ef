"""Turn policy events into telemetry: span events on the call's span, instrument.* metrics, log lines.

Subscribed once by init(). Runs only when a policy decides something, never on the success path.
"""

from __future__ import annotations

import sys
from typing import Any

from instrument import _context, _instruments
from instrument.events import PolicyEvent

# event name -> (span event name, counter metric or None, extra metric attributes)
_SPAN_EVENT = {
    "retry.scheduled": "retry",
    "retry.gave_up": "retry",
    "circuit.rejected": "circuit_breaker.rejected",
    "circuit.opened": "circuit_breaker.state_change",
    "circuit.half_opened": "circuit_breaker.state_change",
    "circuit.closed": "circuit_breaker.state_change",
    "timeout.expired": "timeout",
    "bulkhead.rejected": "bulkhead.rejected",
    "rate_limit.rejected": "rate_limit.rejected",
    "pool.timeout": "pool.timeout",
    "fault.injected": "fault.injected",
}
_COUNTER = {
    "circuit.rejected": "instrument.circuit_breaker.rejected",
    "timeout.expired": "instrument.timeout.expired",
    "bulkhead.rejected": "instrument.bulkhead.rejected",
    "rate_limit.rejected": "instrument.rate_limit.rejected",
}
_RETRY_OUTCOME = {"retry.scheduled": "retried", "retry.gave_up": "gave_up", "retry.succeeded": "succeeded"}
_TRANSITIONS = frozenset({"circuit.opened", "circuit.half_opened", "circuit.closed"})


def on_event(event: PolicyEvent) -> None:
    target = {"instrument.policy.target": event.pipeline}
    state = _context.current.get()
    span_event = _SPAN_EVENT.get(event.name)
    span = state.span if state is not None else _server_span()
    if span is not None and span_event is not None:
        attrs: dict[str, Any] = {"instrument.policy": event.policy, "instrument.policy.target": event.pipeline}
        if event.attempt:
            attrs["instrument.retry.attempt"] = event.attempt
        if event.error_type:
            attrs["error.type"] = event.error_type
        if event.delay is not None:
            attrs["instrument.delay_s"] = event.delay
        if event.state:
            attrs["instrument.circuit_breaker.state"] = event.state
        if event.previous_state:
            attrs["instrument.circuit_breaker.previous_state"] = event.previous_state
        kind = event.detail.get("kind")
        if kind:
            attrs["instrument.fault.kind"] = str(kind)
        span.add_event(span_event, attrs)
    counter = _COUNTER.get(event.name)
    if counter is not None:
        _instruments.get(counter).add(1, target)
    elif event.name in _RETRY_OUTCOME:
        _instruments.get("instrument.retry.attempts").add(1, {**target, "outcome": _RETRY_OUTCOME[event.name]})
    elif event.name in _TRANSITIONS:
        _instruments.get("instrument.circuit_breaker.transitions").add(1, {**target, "state": event.state or ""})
        _log("circuit_breaker.state_change", event, state, "warning" if event.name == "circuit.opened" else "info")
    elif event.name == "fault.injected":
        kind = str(event.detail.get("kind", "error"))
        _instruments.get("instrument.fault.injected").add(1, {**target, "instrument.fault.kind": kind})
        _log("fault.injected", event, state, "info")


def _server_span() -> Any:
    """Outside a client call (a server-side fault), the current span: the request's SERVER span."""
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.is_recording() else None


def _log(name: str, event: PolicyEvent, state: Any, level: str) -> None:
    import structlog

    fields: dict[str, Any] = {"target": event.pipeline, "policy": event.policy}
    if event.state:
        fields["state"] = event.state
    if event.previous_state:
        fields["previous_state"] = event.previous_state
    if event.error_type:
        fields["error_type"] = event.error_type
    if event.detail:
        fields.update({k: v for k, v in event.detail.items() if isinstance(v, (str, int, float, bool))})
    if state is not None:
        ctx = state.span.get_span_context()
        if ctx.is_valid:
            fields["trace_id"] = format(ctx.trace_id, "032x")
            fields["span_id"] = format(ctx.span_id, "016x")
    getattr(structlog.get_logger("instrument"), level)(name, **fields)


_STATES = ("closed", "open", "half_open")


def observe_breakers(_options: Any) -> Any:
    """Callback of the ``instrument.circuit_breaker.state`` gauge: 1 for each breaker's state, 0 otherwise."""
    from opentelemetry.metrics import Observation

    if "instrument.policies" not in sys.modules:  # no policy module loaded: no breaker exists
        return []
    from instrument.policies import breakers

    out = []
    for breaker in breakers():
        current = breaker.state
        for state in _STATES:
            out.append(Observation(1 if state == current else 0,
                                   {"instrument.policy.target": breaker.target, "state": state}))
    return out


def observe_bulkheads(_options: Any) -> Any:
    """Callback of ``instrument.bulkhead.active``: calls holding a slot, per configured bulkhead."""
    from opentelemetry.metrics import Observation

    if "instrument.policies" not in sys.modules:
        return []
    from instrument.policies import bulkheads

    return [Observation(b.active, {"instrument.policy.target": b.target}) for b in bulkheads()]


def observe_active_requests(_options: Any) -> Any:
    from opentelemetry.metrics import Observation

    from instrument._call import endpoints

    totals: dict[tuple[str, int], int] = {}  # one origin may have an endpoint per client library
    for ep in endpoints():
        if ep.kind == "http":
            key = (ep.server_address or "", ep.server_port or 0)
            totals[key] = totals.get(key, 0) + ep.active_requests
    return [Observation(n, {"server.address": a, "server.port": p}) for (a, p), n in totals.items()]


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from instrument import events

    events.subscribe(on_event)
    _instruments.observe("instrument.circuit_breaker.state", observe_breakers)
    _instruments.observe("instrument.bulkhead.active", observe_bulkheads)
    _instruments.observe("http.client.active_requests", observe_active_requests)
