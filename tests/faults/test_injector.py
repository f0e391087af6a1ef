"""The injector inside the call pipeline: each fault kind, matching, counts, seeds, deadlines, telemetry."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from instrument import _context
from instrument._call import ClientErrors, endpoint
from instrument.errors import InjectedFault
from instrument.faults import FaultInjector, faults_for, inject
from instrument.faults import _registry


class DbError(Exception):
    """Stands in for a client's base exception (psycopg.Error ...)."""


class DbConnectError(DbError):
    pass


class DbTimeout(DbError):
    pass


class DbReset(DbError):
    pass


class Response:
    def __init__(self, code: int, retry_after: float | None) -> None:
        self.status_code = code
        self.headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}


ERRORS = ClientErrors(catch=(DbError,), connect=DbConnectError, timeout=DbTimeout, reset=DbReset)
HTTP_ERRORS = ClientErrors(catch=(DbError,), connect=DbConnectError, timeout=DbTimeout, reset=DbReset,
                           status=Response)

_n = [0]


def _ep(kind: str = "db", system: str = "postgresql", target: str | None = None, errors: ClientErrors = ERRORS) -> Any:
    _n[0] += 1  # a fresh endpoint per test: endpoints are cached process-wide
    target = target or f"postgresql://db{_n[0]}:5432/orders"
    return endpoint(kind, system, target, errors=errors,
                    status_of=(lambda r: getattr(r, "status_code", None)) if kind == "http" else None)


def _call(ep: Any, op: str = "SELECT", fn: Any = None) -> Any:
    calls: list[int] = []

    def real() -> str:
        calls.append(1)
        return "real"

    result = ep.call(ep.op(op), fn or real, (), {})
    return result, calls


def test_no_rules_means_no_injector_and_no_chain() -> None:
    ep = _ep()
    assert faults_for(ep) is None
    assert _call(ep) == ("real", [1])
    assert ep._chain is None  # noqa: SLF001 - the fast path: nothing between the span and the call


def test_rules_for_other_targets_leave_the_endpoint_alone() -> None:
    ep = _ep()
    with inject("redis://*: error", "* kind=http: error", "* system=mysql: error", "postgresql://*: status 503"):
        assert faults_for(ep) is None  # status needs an HTTP client: it never applies to a DB endpoint
        assert _call(ep) == ("real", [1])


def test_error_raises_the_clients_own_exception_marked_as_injected(policy_events: list[Any]) -> None:
    ep = _ep()
    with inject("postgresql://*/orders: error"):
        with pytest.raises(DbConnectError) as info:
            _call(ep)
    assert isinstance(info.value, InjectedFault)
    assert isinstance(info.value, DbError)
    assert type(info.value).__name__ == "DbConnectError"  # error.type reads like the real failure
    assert "injected fault" in str(info.value)
    (event,) = policy_events
    assert (event.name, event.policy, event.pipeline, event.detail) == (
        "fault.injected", "fault", ep.target, {"kind": "error"})


@pytest.mark.parametrize(("fault", "exc"), [("reset", DbReset), ("timeout", DbTimeout)])
def test_reset_and_timeout(fault: str, exc: type[Exception]) -> None:
    ep = _ep()
    with inject(f"postgresql://*: {fault}"):
        with pytest.raises(exc) as info:
            _call(ep)
    assert isinstance(info.value, InjectedFault)


def test_timeout_waits_its_delay_but_not_beyond_the_deadline() -> None:
    ep = _ep()
    with inject("postgresql://*: timeout 100ms"):
        start = time.perf_counter()
        with pytest.raises(DbTimeout):
            _call(ep)
        assert 0.09 <= time.perf_counter() - start < 0.5
        start = time.perf_counter()
        with _context.deadline_scope(0.03), pytest.raises(DbTimeout):
            _call(ep)
        assert time.perf_counter() - start < 0.09


def test_latency_delays_then_calls_through(policy_events: list[Any]) -> None:
    ep = _ep()
    with inject("postgresql://* op=SELECT: latency 50ms-60ms", seed=1):
        start = time.perf_counter()
        assert _call(ep) == ("real", [1])
        assert 0.05 <= time.perf_counter() - start < 0.5
        assert _call(ep, "INSERT") == ("real", [1])  # op filter
    (event,) = policy_events
    assert event.detail == {"kind": "latency"} and 0.05 <= event.delay <= 0.06


def test_latency_beyond_the_deadline_becomes_the_clients_timeout() -> None:
    ep = _ep()
    with inject("postgresql://*: latency 2s"), _context.deadline_scope(0.05):
        start = time.perf_counter()
        with pytest.raises(DbTimeout) as info:
            _call(ep)
    assert time.perf_counter() - start < 0.5
    assert isinstance(info.value, InjectedFault)


def test_latency_adds_up_and_the_first_terminal_fault_wins(policy_events: list[Any]) -> None:
    ep = _ep()
    with inject("*: latency 10ms; *: latency 10ms; *: reset; *: error"):
        start = time.perf_counter()
        with pytest.raises(DbReset):
            _call(ep)
    assert time.perf_counter() - start >= 0.02
    assert [e.detail["kind"] for e in policy_events] == ["latency", "latency", "reset"]


def test_status_synthesizes_a_response_without_calling() -> None:
    ep = _ep("http", "http", "http://payments:8080", HTTP_ERRORS)
    with inject("http://payments:*: status 503 retry-after=2s"):
        result, calls = _call(ep, "GET")
    assert calls == []
    assert result.status_code == 503 and result.headers == {"Retry-After": "2"}


def test_probability_is_reproducible_and_within_bounds() -> None:
    def run(seed: int) -> list[bool]:
        ep = _ep()
        outcome = []
        with inject("postgresql://*: error 30%", seed=seed):
            for _ in range(2000):
                try:
                    _call(ep)
                    outcome.append(False)
                except DbConnectError:
                    outcome.append(True)
        return outcome

    first, again, other = run(42), run(42), run(43)
    assert first == again
    assert first != other
    n, p = len(first), 0.3
    bound = 4 * math.sqrt(n * p * (1 - p))  # 4 sigma: a fixed seed makes this deterministic anyway
    assert abs(sum(first) - n * p) < bound


def test_first_and_limit() -> None:
    ep = _ep()
    with inject("postgresql://*: error first=3"):
        results = []
        for _ in range(6):
            try:
                _call(ep)
                results.append("ok")
            except DbConnectError:
                results.append("fault")
    assert results == ["fault"] * 3 + ["ok"] * 3
    with inject("postgresql://*: error 50% limit=4", seed=5) as scope:
        faults = 0
        for _ in range(200):
            try:
                _call(ep)
            except DbConnectError:
                faults += 1
    assert faults == 4 == scope.injected


def test_counts_are_exact_across_threads() -> None:
    ep = _ep()
    faulted: list[int] = []
    with inject("postgresql://*: error first=50") as scope:
        def worker() -> None:
            for _ in range(20):
                try:
                    _call(ep)
                except DbConnectError:
                    faulted.append(1)

        threads = [threading.Thread(target=worker) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(faulted) == 50 == scope.injected


def test_scopes_bump_the_generation_and_rebuild_the_chain() -> None:
    ep = _ep()
    before = _context.generation.value
    scope = inject("postgresql://*: error")
    with scope:
        assert _context.generation.value == before + 1
        with pytest.raises(DbConnectError):
            _call(ep)
    assert _context.generation.value == before + 2
    assert _call(ep) == ("real", [1])
    assert ep._chain is None  # noqa: SLF001 - back on the fast path


def test_newest_scope_decides_first() -> None:
    ep = _ep()
    with inject("postgresql://*: reset"), inject("postgresql://*: error"), pytest.raises(DbConnectError):
        _call(ep)


def test_decorator_sync_and_counts() -> None:
    ep = _ep()
    rule = inject("postgresql://*: error")

    @rule
    def job() -> None:
        _call(ep)

    with pytest.raises(DbConnectError):
        job()
    assert rule.injected == 1 and rule.counts == {"postgresql://*: error": 1}
    assert _registry.active() == ()


@pytest.mark.asyncio
async def test_async_call_through_the_pipeline() -> None:
    ep = _ep()

    async def real() -> str:
        return "real"

    @inject("postgresql://*: latency 20ms; postgresql://*: timeout 10ms first=1")
    async def job() -> list[str]:
        out = []
        for _ in range(2):
            try:
                out.append(await ep.acall(ep.op("SELECT"), real, (), {}))
            except DbTimeout:
                out.append("timeout")
        return out

    start = time.perf_counter()
    assert await job() == ["timeout", "real"]
    assert time.perf_counter() - start >= 0.05


@pytest.mark.asyncio
async def test_async_context_manager_and_deadline() -> None:
    ep = _ep()

    async def real() -> str:
        await asyncio.sleep(0)
        return "real"

    async with inject("postgresql://*: latency 5s"):
        with _context.deadline_scope(0.05):
            start = time.perf_counter()
            with pytest.raises(DbTimeout):
                await ep.acall(ep.op("SELECT"), real, (), {})
    assert time.perf_counter() - start < 0.5


def test_standalone_without_a_call_uses_generic_exceptions() -> None:
    armed = _registry.arm(__import__("instrument.faults").faults.parse_rules(
        "*: error; *: timeout; *: reset; *: status 503 "), None, "t")
    for rule, exc in zip(armed[:3], (ConnectionRefusedError, TimeoutError, ConnectionResetError)):
        injector = FaultInjector("standalone", (rule,))
        with pytest.raises(exc) as info:
            injector.call(lambda: "real")
        assert isinstance(info.value, InjectedFault)
    assert FaultInjector("standalone", (armed[3],)).call(lambda: "real") == "real"  # no HTTP response to fake


def test_injected_faults_are_visible_in_telemetry(telemetry: Any) -> None:
    ep = _ep()
    with inject("postgresql://*: error; postgresql://*: latency 1ms"):
        with pytest.raises(DbConnectError):
            _call(ep)
    span = telemetry.span("SELECT", {"db.system.name": "postgresql"})
    assert span.attributes["error.type"].endswith("DbConnectError")
    (event,) = telemetry.events("fault.injected", {"instrument.fault.kind": "error"})
    assert event.attributes["instrument.policy.target"] == ep.target
    assert telemetry.metric_value("instrument.fault.injected",
                                  {"instrument.fault.kind": "error", "instrument.policy.target": ep.target}) == 1
    assert telemetry.log_events("fault.injected", kind="error", target=ep.target)
