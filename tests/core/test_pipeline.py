"""The call pipeline in-process: containment of our own failures, patch/unpatch, suppression, logs."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from instrument import _call, _context, events, patching
from instrument._call import ClientErrors, endpoint
from instrument.events import PolicyEvent


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code = 500 if self.path.startswith("/fail") else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_failing_status_hook_changes_nothing(tel, server):
    def broken_status(_result):
        raise RuntimeError("telemetry bug")

    ep = endpoint("http", "http", "http://broken-status:1", server_address="x", status_of=broken_status)
    response = ep.call(ep.op("GET"), requests.get, (server + "/",), {})
    assert response.status_code == 200 and response.text == "ok"


def test_failing_start_changes_nothing(tel, server, monkeypatch):
    from opentelemetry import propagate

    def broken_inject(*_a, **_k):
        raise RuntimeError("propagator bug")

    monkeypatch.setattr(propagate, "inject", broken_inject)
    ep = endpoint("http", "http", "http://broken-inject:1", server_address="x")
    response = ep.call(ep.op("GET"), requests.get, (server + "/",), {}, carrier={})
    assert response.status_code == 200


def test_failing_listener_and_hooks_leave_the_exception_unchanged(tel):
    def broken_listener(_event: PolicyEvent) -> None:
        raise RuntimeError("listener bug")

    def broken_describe(_exc):
        raise RuntimeError("describe bug")

    events.subscribe(broken_listener)
    try:
        ep = endpoint("db", "postgresql", "postgresql://broken:1/x", errors=ClientErrors(describe=broken_describe))
        original = ValueError("from the library")

        def library_call():
            events.emit(PolicyEvent("x", "retry", "retry.scheduled"))
            raise original

        with pytest.raises(ValueError) as info:
            ep.call(ep.op("SELECT"), library_call, (), {})
    finally:
        events.unsubscribe(broken_listener)
    assert info.value is original
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "library_call"  # the library's own frame is still where it was raised


def test_patch_unpatch_patch_leaves_exactly_one_wrapper():
    from instrument import integrations

    target = patching.Target("requests.sessions", "Session.send")
    original = requests.sessions.Session.__dict__["send"]
    while patching.is_ours(original):
        original = original.__wrapped__
    for _ in range(2):
        integrations.patch("requests")
        integrations.patch("requests")
        assert patching.is_patched(target)
        assert requests.sessions.Session.__dict__["send"].__wrapped__ is original
        integrations.unpatch("requests")
        integrations.unpatch("requests")
        assert requests.sessions.Session.__dict__["send"] is original
    integrations.patch("requests")
    wrapper = requests.sessions.Session.__dict__["send"]
    assert patching.is_ours(wrapper) and wrapper.__wrapped__ is original
    integrations.unpatch("requests")


def test_one_span_per_request_and_5xx_is_error(tel, server, patched):
    patched("requests")
    requests.get(server + "/fail")
    span = tel.span("GET")
    assert span.kind.name == "CLIENT"
    assert span.attributes["error.type"] == "500"
    assert span.status.status_code.name == "ERROR"
    points = tel.metric_points("http.client.request.duration", **{"error.type": "500"})
    assert points and points[0].value == 1


def test_nested_instrumented_layers_make_one_span(tel, server, patched):
    patched("requests")
    ep = endpoint("http", "http", "http://outer:1", server_address="outer")
    ep.call(ep.op("GET"), requests.get, (server + "/",), {})
    assert len(tel.spans()) == 1  # the inner requests call passed straight through


def test_otel_suppression_is_honoured(tel, server, patched):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    patched("requests")
    with suppress_instrumentation():
        requests.get(server + "/")
    assert tel.spans() == []


def test_policy_event_becomes_span_event_and_metric(tel):
    ep = endpoint("http", "http", "http://events:1", server_address="events")

    def call():
        events.emit(PolicyEvent("http://events:1", "timeout", "timeout.expired"))
        return "ok"

    ep._chain_generation = _context.generation.value
    ep._chain = _PassThrough()
    assert ep.call(ep.op("GET"), call, (), {}) == "ok"
    span = tel.span("GET")
    assert [e.name for e in span.events] == ["timeout"]
    assert tel.metric_total("instrument.timeout.expired", **{"instrument.policy.target": "http://events:1"}) == 1


class _PassThrough:
    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    async def acall(self, fn, *args, **kwargs):
        return await fn(*args, **kwargs)


async def test_async_twin_mirrors_sync(tel):
    ep = endpoint("db", "redis", "redis://async:1/0", server_address="async", server_port=1)

    async def ok():
        return 42

    async def fails():
        raise ConnectionError("down")

    assert await ep.acall(ep.op("GET"), ok, (), {}) == 42
    with pytest.raises(ConnectionError):
        await ep.acall(ep.op("SET"), fails, (), {})
    names = sorted(s.name for s in tel.spans())
    assert names == ["GET", "SET"]
    failed = tel.span("SET")
    assert failed.attributes["error.type"] == "ConnectionError"
    assert failed.attributes["db.system.name"] == "redis"


def test_error_type_is_fully_qualified():
    assert _call.error_type(ValueError()) == "ValueError"
    assert _call.error_type(requests.ConnectionError()) == "requests.exceptions.ConnectionError"


def test_stdlib_logs_get_trace_ids_and_secrets_redacted(capsys):
    from opentelemetry import trace

    from instrument import _logging
    from instrument._settings import Settings

    import structlog

    structlog.reset_defaults()  # another test may have configured structlog: start from scratch
    _logging._configured = False
    _logging.configure_logging(Settings.from_env({"INSTRUMENT_LOG_FORMAT": "json", "OTEL_LOGS_EXPORTER": "none"}))
    try:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("work") as span:
            logging.getLogger("app").warning("charging", extra={})
            import structlog

            structlog.get_logger("app").warning("charged", password="hunter2", api_key="k", amount=3)
        err = capsys.readouterr().err.strip().splitlines()
    finally:  # the handler holds capsys's stream: take it away again
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "instrument"]:
            root.removeHandler(handler)
        _logging._configured = False
        structlog.reset_defaults()
    records = [json.loads(line) for line in err if line.startswith("{")]
    trace_id = format(span.get_span_context().trace_id, "032x")
    charging = next(r for r in records if r["event"] == "charging")
    charged = next(r for r in records if r["event"] == "charged")
    assert charging["trace_id"] == trace_id and charged["trace_id"] == trace_id
    assert charged["password"] == "REDACTED" and charged["api_key"] == "REDACTED" and charged["amount"] == 3
