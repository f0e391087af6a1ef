"""Context: spans started in a thread pool (concurrent.futures) and in asyncio tasks keep their parent,
and nothing prints "Failed to detach context" (cancelled tasks, timeouts, streams closed elsewhere)."""

from __future__ import annotations

import asyncio
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import trace

from instrument._call import endpoint
from tests.conftest import run_python

threading_integration = pytest.importorskip("instrument.integrations.threading")


@pytest.fixture
def thread_context():
    threading_integration.patch()
    yield
    threading_integration.unpatch()


def _parent_of(tel, name: str) -> int | None:
    span = tel.span(name)
    return span.parent.span_id if span.parent else None


def test_executor_tasks_keep_their_parent(tel, thread_context):
    tracer = trace.get_tracer("test")
    ep = endpoint("db", "postgresql", "postgresql://ctx-threads:1/x")

    def task(i: int) -> int:
        with tracer.start_as_current_span(f"task-{i}"):
            return ep.call(ep.op("SELECT", f"t{i}"), lambda: i * 2, (), {})

    with ThreadPoolExecutor(4) as pool, tracer.start_as_current_span("request") as request:
        assert list(pool.map(task, range(3))) == [0, 2, 4]
        assert pool.submit(task, 3).result() == 6
    request_id = request.get_span_context().span_id
    for i in range(4):
        assert _parent_of(tel, f"task-{i}") == request_id
        client = tel.span(f"SELECT t{i}")
        assert client.parent.span_id == tel.span(f"task-{i}").context.span_id
        assert client.context.trace_id == request.get_span_context().trace_id


def test_executor_without_a_current_span_starts_new_traces(tel, thread_context):
    tracer = trace.get_tracer("test")
    with ThreadPoolExecutor(2) as pool:
        pool.submit(lambda: tracer.start_span("orphan").end()).result()
    assert tel.span("orphan").parent is None


def test_executor_task_exception_is_unchanged(thread_context):
    def fails() -> None:
        raise KeyError("k")

    with ThreadPoolExecutor(1) as pool, trace.get_tracer("t").start_as_current_span("s"):
        future = pool.submit(fails)
        with pytest.raises(KeyError) as info:
            future.result()
    import traceback

    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "fails"


async def test_asyncio_tasks_keep_their_parent(tel):
    tracer = trace.get_tracer("test")
    ep = endpoint("db", "redis", "redis://ctx-async:1/0")

    async def op(i: int) -> int:
        await asyncio.sleep(0)
        with tracer.start_as_current_span(f"atask-{i}"):

            async def call() -> int:
                await asyncio.sleep(0.001)
                return i

            return await ep.acall(ep.op("GET", f"k{i}"), call, (), {})

    with tracer.start_as_current_span("arequest") as request:
        results = await asyncio.gather(*(asyncio.create_task(op(i)) for i in range(5)))
    assert results == list(range(5))
    for i in range(5):
        assert _parent_of(tel, f"atask-{i}") == request.get_span_context().span_id
        assert tel.span(f"GET k{i}").parent.span_id == tel.span(f"atask-{i}").context.span_id


def test_no_failed_to_detach_noise_with_cancellation_timeouts_and_threads():
    """A subprocess with the real one-line start: cancelled and timed-out httpx calls, tasks that end in
    other tasks, executor tasks; stderr must stay free of context errors."""
    pytest.importorskip("httpx")
    code = textwrap.dedent("""
        import instrument.auto
        import asyncio, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import httpx, requests
        from opentelemetry import trace

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            def do_GET(self):
                if self.path == "/slow":
                    time.sleep(0.5)
                self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
                self.wfile.write(b"ok")
            def log_message(self, *a): pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), H); srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        tracer = trace.get_tracer("app")

        async def main():
            async with httpx.AsyncClient() as client:
                with tracer.start_as_current_span("outer"):
                    slow = [asyncio.create_task(client.get(base + "/slow")) for _ in range(3)]
                    await asyncio.sleep(0.05)
                    for t in slow:
                        t.cancel()
                    await asyncio.gather(*slow, return_exceptions=True)
                    try:
                        await asyncio.wait_for(client.get(base + "/slow"), 0.05)
                    except asyncio.TimeoutError:
                        pass
                    async with client.stream("GET", base + "/") as r:
                        it = r.aiter_bytes()
                        await it.__anext__()
                    await asyncio.gather(*(client.get(base + "/") for _ in range(10)))

        asyncio.run(main())
        with ThreadPoolExecutor(4) as pool, tracer.start_as_current_span("threads"):
            list(pool.map(lambda _: requests.get(base + "/").status_code, range(8)))
        print("done")
    """)
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert "Failed to detach context" not in result.stderr, result.stderr
    assert "was created in a different Context" not in result.stderr, result.stderr
