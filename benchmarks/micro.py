"""Micro benchmarks around a function that does nothing: the success-path cost of each policy and of a
full stack, sync and async, next to pybreaker, circuitbreaker and tenacity; the SDK's own floor (one span,
one histogram record) and ``Endpoint.call`` itself, traced and sampled out."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Variant


def _fn() -> int:
    return 1


async def _afn() -> int:
    return 1


def _stack() -> Any:
    from instrument.policies import Bulkhead, CircuitBreaker, Pipeline, RateLimiter, Retry, Timeout

    return Pipeline("bench-stack", (Timeout(10), Retry(3), CircuitBreaker("bench-stack"), Bulkhead(100),
                                    RateLimiter(1e9), Timeout(2)))


def policy_variants(is_async: bool) -> tuple[list[Variant], dict[str, str]]:
    """Variants and notes (why a library is missing)."""
    notes: dict[str, str] = {}
    out: list[Variant] = []
    fn = _afn if is_async else _fn
    out.append(Variant("bare", lambda: fn, is_async=is_async))
    out.append(Variant("A/A", lambda: fn, is_async=is_async))
    try:
        from instrument.policies import Bulkhead, CircuitBreaker, RateLimiter, Retry, Timeout
    except ImportError as exc:  # being written
        notes["instrument.policies"] = f"not importable: {exc}"
    else:
        import functools

        def bound(policy: Any) -> Any:
            method = policy.acall if is_async else policy.call
            return functools.partial(method, fn)

        out += [
            Variant("CircuitBreaker", lambda: bound(CircuitBreaker("bench")), is_async=is_async),
            Variant("Retry", lambda: bound(Retry(3)), is_async=is_async),
            Variant("Timeout", lambda: bound(Timeout(2)), is_async=is_async),
            Variant("Bulkhead", lambda: bound(Bulkhead(100)), is_async=is_async),
            Variant("RateLimiter", lambda: bound(RateLimiter(1e9)), is_async=is_async),
            Variant("full stack", lambda: bound(_stack()), is_async=is_async),
        ]
    if not is_async:
        try:
            import pybreaker

            out.append(Variant("pybreaker", lambda: __import__("functools").partial(pybreaker.CircuitBreaker().call, fn)))
        except ImportError:
            notes["pybreaker"] = "not installed"
    else:
        notes["pybreaker"] = "async needs tornado (call_async); not measured"
    try:
        from circuitbreaker import CircuitBreaker as CB

        out.append(Variant("circuitbreaker", lambda: CB(name=f"bench-{is_async}")(fn), is_async=is_async))
    except ImportError:
        notes["circuitbreaker"] = "not installed"
    try:
        import tenacity

        out.append(Variant("tenacity", lambda: tenacity.retry(stop=tenacity.stop_after_attempt(3))(fn),
                           is_async=is_async))
    except ImportError:
        notes["tenacity"] = "not installed"
    return out, notes


# What the floor's span and histogram record carry, and the "bare + SDK record" variant of the operations
RECORD_ATTRIBUTES = {"http.request.method": "GET", "server.address": "bench.invalid", "server.port": 80,
                     "http.response.status_code": 200}


def floor_variants(tel: Any) -> list[Variant]:
    """The SDK floor and the toolkit's pipeline around a no-op, traced and sampled out."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    from instrument import _call, policies

    tracer = trace.get_tracer("benchmarks.floor")
    hist = metrics.get_meter("benchmarks.floor").create_histogram("bench.floor.duration", unit="s")
    attrs = RECORD_ATTRIBUTES

    def span() -> Any:
        start = tracer.start_span
        return lambda: start("GET", attributes=attrs).end()

    def record() -> Any:
        rec = hist.record
        return lambda: rec(0.001, attrs)

    ep = _call.endpoint("http", "http", "http://bench.invalid:80", server_address="bench.invalid", server_port=80)
    op = ep.op("GET")

    def endpoint_call() -> Any:
        call = ep.call
        args: tuple[Any, ...] = ()
        return lambda: call(op, _fn, args, {})

    def off() -> None:
        tel.sampler.sampled_out(True)

    def on() -> None:
        tel.sampler.sampled_out(False)

    def ratio_off() -> None:  # OTEL_TRACES_SAMPLER=parentbased_traceidratio, for a trace it does not keep
        tel.sampler.use(ParentBasedTraceIdRatio(0.0))

    def bt_on() -> None:
        policies.configure("http://bench.invalid:*=timeout(2s),breaker")

    def bt_off() -> None:
        policies.configure("")

    return [
        Variant("bare", lambda: _fn),
        Variant("A/A", lambda: _fn),
        Variant("SDK span start+end", span),
        Variant("SDK histogram.record", record),
        Variant("Endpoint.call", endpoint_call),
        Variant("Endpoint.call +breaker+timeout", endpoint_call, bt_on, bt_off),
        Variant("Endpoint.call sampled-out", endpoint_call, off, on),
        Variant("Endpoint.call sampled-out by ratio", endpoint_call, ratio_off, on),
    ]
