"""Telemetry faults are contained: a failure in any of the toolkit's hook points is caught, counted and
logged once per site, and the patched call's result, exception (same object, same type) and traceback
tail are exactly what they are without the toolkit. Extends tests/core/test_pipeline.py (which covers
status_of, propagator inject, describe and a listener once each) to every hook point, sync and async,
repeated calls and the reported-once rule.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from instrument import _call, _safety, events
from instrument._call import ClientErrors, endpoint
from instrument.events import PolicyEvent


def boom(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("telemetry bug")


class _RaisingHistogram:
    def record(self, *_a: Any, **_k: Any) -> None:
        raise RuntimeError("metric record bug")


class _BrokenTracer:
    def start_span(self, *_a: Any, **_k: Any) -> Any:
        raise RuntimeError("tracer bug")


# Each hook point: a context manager (generator) that breaks it, yielding call options for ep.call.
def _listener(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    events.subscribe(boom)
    try:
        yield {"emit": True}
    finally:
        events.unsubscribe(boom)


def _status_of(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    yield {"endpoint": {"status_of": boom}}


def _describe(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    yield {"endpoint": {"errors": ClientErrors(describe=boom)}}


def _on_result(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    yield {"call": {"on_result": boom}}


class _RaisingPropagator:
    """An application's propagator that fails (the pipeline's direct W3C write is for init()'s own only)."""

    fields: set[str] = set()

    def inject(self, *args: Any, **kwargs: Any) -> None:
        boom()

    def extract(self, *args: Any, **kwargs: Any) -> Any:
        boom()


def _break_inject(monkeypatch: Any) -> None:
    from opentelemetry import propagate

    monkeypatch.setattr(propagate, "get_global_textmap", _RaisingPropagator)
    monkeypatch.setattr(propagate, "inject", boom)


def _break_span_end(monkeypatch: Any) -> None:
    from opentelemetry.sdk.trace import Span

    from instrument._span import CallSpan

    monkeypatch.setattr(Span, "end", boom)
    monkeypatch.setattr(CallSpan, "end", boom)


def _inject(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    _break_inject(monkeypatch)
    yield {"call": {"carrier": {}}}


def _metric_record(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    yield {"histogram": _RaisingHistogram()}


def _span_end(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    _break_span_end(monkeypatch)
    yield {}


def _span_start(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    from instrument import _instruments

    monkeypatch.setattr(_instruments, "tracer", lambda: _BrokenTracer())
    yield {}


def _policy_chain(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    import instrument._chain

    monkeypatch.setattr(instrument._chain, "build_chain", boom)
    yield {"rebuild": True}


def _failure_log(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(_call, "_log_call", boom)
    yield {}


HOOKS: dict[str, Callable[[Any], Iterator[dict[str, Any]]]] = {
    "event listener": _listener, "status_of": _status_of, "describe": _describe, "on_result": _on_result,
    "propagator inject": _inject, "metric record": _metric_record, "span end": _span_end,
    "span start": _span_start, "policy chain": _policy_chain, "failure log": _failure_log,
}


@pytest.fixture(autouse=True)
def _fresh_reports(monkeypatch: Any) -> None:
    monkeypatch.setattr(_safety, "_seen", set())


def _library_ok() -> object:
    events.emit(PolicyEvent("x", "retry", "retry.scheduled"))
    return RESULT


def _library_fails() -> object:
    events.emit(PolicyEvent("x", "retry", "retry.scheduled"))
    raise LibraryError("from the library")


async def _alibrary_ok() -> object:
    return _library_ok()


async def _alibrary_fails() -> object:
    return _library_fails()


class LibraryError(ConnectionError):
    pass


RESULT = object()


def _endpoint(name: str, options: dict[str, Any]) -> Any:
    ep = endpoint("db", "postgresql", f"postgresql://contain-{name.replace(' ', '-')}:1/x",
                  **options.get("endpoint", {}))
    op = ep.op("SELECT", "t")
    if "histogram" in options:
        op.histogram = options["histogram"]
    if options.get("rebuild"):
        ep._chain_generation = -1
    return ep, op


def _tail(exc: BaseException, from_name: str) -> list[tuple[str, int | None]]:
    frames = traceback.extract_tb(exc.__traceback__)
    names = [f.name for f in frames]
    return [(f.name, f.lineno) for f in frames[names.index(from_name):]]


def _plain_failure(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except LibraryError as exc:
        return exc
    raise AssertionError("no exception")


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_sync_hook_failure_changes_nothing_and_is_reported_once(hook, tel, monkeypatch, caplog):
    breaker = HOOKS[hook](monkeypatch)
    options = next(breaker)
    try:
        ep, op = _endpoint(hook, options)
        call_kwargs = dict(options.get("call", {}))
        before = _safety.failures
        with caplog.at_level(logging.WARNING, logger="instrument"):
            for _ in range(3):
                if "carrier" in call_kwargs:
                    call_kwargs["carrier"] = {}
                assert ep.call(op, _library_ok, (), {}, **call_kwargs) is RESULT
                with pytest.raises(LibraryError) as info:
                    ep.call(op, _library_fails, (), {}, **call_kwargs)
                assert type(info.value) is LibraryError
                expected = _plain_failure(_library_fails)
                assert _tail(info.value, "_library_fails") == _tail(expected, "_library_fails")
                assert traceback.extract_tb(info.value.__traceback__)[-1].name == "_library_fails"
    finally:
        next(breaker, None)
    assert _safety.failures > before, "the failure was not counted"
    reports = [r for r in caplog.records if r.name == "instrument" and "internal error" in r.getMessage()]
    sites = [r.getMessage() for r in reports]
    assert reports, f"{hook}: nothing was reported"
    assert len(sites) == len(set(sites)), f"{hook}: reported more than once per site: {sites}"


@pytest.mark.parametrize("hook", sorted(HOOKS))
async def test_async_hook_failure_changes_nothing(hook, tel, monkeypatch, caplog):
    breaker = HOOKS[hook](monkeypatch)
    options = next(breaker)
    try:
        ep, op = _endpoint("async " + hook, options)
        call_kwargs = dict(options.get("call", {}))
        with caplog.at_level(logging.WARNING, logger="instrument"):
            for _ in range(2):
                if "carrier" in call_kwargs:
                    call_kwargs["carrier"] = {}
                assert await ep.acall(op, _alibrary_ok, (), {}, **call_kwargs) is RESULT
                with pytest.raises(LibraryError) as info:
                    await ep.acall(op, _alibrary_fails, (), {}, **call_kwargs)
                assert traceback.extract_tb(info.value.__traceback__)[-1].name == "_library_fails"
    finally:
        next(breaker, None)
    sites = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    assert sites and len(sites) == len(set(sites)), sites


def test_log_export_processor_failure_is_contained(monkeypatch, caplog):
    from instrument._logging import ExportToOtel

    processor = ExportToOtel()

    class _Broken:
        def emit(self, **_kwargs: Any) -> None:
            raise RuntimeError("log exporter bug")

    processor._logger = _Broken()
    event = {"event": "hello", "level": "warning", "k": 1}
    with caplog.at_level(logging.WARNING, logger="instrument"):
        for _ in range(3):
            assert processor(None, "warning", dict(event)) == event
    sites = [r.getMessage() for r in caplog.records if "internal error in log export" in r.getMessage()]
    assert len(sites) == 1


def test_patched_requests_call_with_every_hook_broken(tel, monkeypatch, patched, upstream):
    """All at once, through a real patched client: same response, same exception, same traceback tail."""
    import requests

    from instrument import _instruments

    patched("requests")
    _break_inject(monkeypatch)
    _break_span_end(monkeypatch)
    monkeypatch.setattr(_call, "_log_call", boom)
    real_get = _instruments.get
    monkeypatch.setattr(_instruments, "get", lambda name: _RaisingHistogram())
    try:
        response = requests.get(upstream.url + "/x?token=1")
        assert response.status_code == 200 and response.json()["path"] == "/x?token=1"
        assert "traceparent" not in response.json()["headers"]  # inject failed: nothing half-written
        dead = f"http://127.0.0.1:{_free_port()}/"
        with pytest.raises(requests.ConnectionError) as info:
            requests.get(dead, timeout=2)
    finally:
        monkeypatch.setattr(_instruments, "get", real_get)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "send"  # requests.adapters.HTTPAdapter.send raises it, as without us


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()
