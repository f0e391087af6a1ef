"""The one-line start, end to end over OTLP: import instrument.auto, and instrument run, with requests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT, run_python

APP = textwrap.dedent("""
    import sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    {prelude}
    import requests

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("traceparent"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    response = requests.get(f"http://127.0.0.1:{{port}}/orders?id=7")
    print("status", response.status_code, "port", port, "traceparent", seen[0])
""")


def _assert_one_request(receiver, stdout: str) -> None:
    words = stdout.split()
    port = int(words[words.index("port") + 1])
    traceparent = words[words.index("traceparent") + 1]
    span = receiver.wait_for_span(lambda s: s.kind == "CLIENT" and s.attributes.get("server.port") == port)
    clients = [s for s in receiver.spans() if s.kind == "CLIENT"]
    assert len(clients) == 1, clients
    assert span.name == "GET"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.full"] == f"http://127.0.0.1:{port}/orders?id=7"
    assert span.status_code == 0
    # The context the server received is the client span's.
    assert traceparent.split("-")[1] == span.trace_id
    assert traceparent.split("-")[2] == span.span_id
    assert span.resource["service.name"] == "shop"
    points = receiver.wait_for(lambda: [p for p in receiver.metric_points("http.client.request.duration")
                                        if p.attributes.get("server.port") == port])
    assert points[-1].value == 1  # one request recorded (cumulative count)
    assert points[-1].unit == "s"
    assert points[-1].bounds[:3] == [0.005, 0.01, 0.025]
    logs = receiver.wait_for(lambda: [r for r in receiver.logs() if r.body == "call.slow"])
    assert logs[0].trace_id == span.trace_id
    assert logs[0].span_id == span.span_id


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_import_auto_exports_span_metric_and_log(receiver, protocol):
    env = {**receiver.env(protocol), "OTEL_SERVICE_NAME": "shop", "INSTRUMENT_SLOW_CALL_THRESHOLD": "0"}
    result = run_python(APP.format(prelude="import instrument.auto"), env=env)
    assert result.returncode == 0, result.stderr
    _assert_one_request(receiver, result.stdout)


def test_instrument_run_needs_no_code_change(receiver, tmp_path):
    script = tmp_path / "app.py"
    script.write_text(APP.format(prelude=""))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(receiver.env("grpc"), OTEL_SERVICE_NAME="shop", INSTRUMENT_SLOW_CALL_THRESHOLD="0")
    instrument = os.path.join(os.path.dirname(sys.executable), "instrument")
    result = subprocess.run([instrument, "run", "--", sys.executable, str(script)], env=env,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    _assert_one_request(receiver, result.stdout)


def test_import_order_does_not_matter(receiver):
    """requests imported before init gives the same span as requests imported after."""
    before = "import requests\nimport instrument\ninstrument.init()"
    env = {**receiver.env("grpc"), "OTEL_SERVICE_NAME": "shop", "INSTRUMENT_SLOW_CALL_THRESHOLD": "0"}
    result = run_python(APP.format(prelude=before), env=env)
    assert result.returncode == 0, result.stderr
    _assert_one_request(receiver, result.stdout)


@pytest.mark.parametrize("collector", ["closed", "blackhole"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_missing_collector_costs_the_app_nothing(collector, protocol):
    """Collector refusing connections, or accepting and never answering: work done, exit within 5 s."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if collector == "blackhole":
        listener.listen(128)  # the kernel completes handshakes; nobody ever reads or answers
    else:
        listener.close()  # nothing listens: connection refused
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_BSP_SCHEDULE_DELAY": "50"}
        # The app prints when its work starts (after the interpreter and imports are up, which on a loaded
        # 2-core machine alone can take a second or two); the clock stops when the process has exited.
        result = run_python("import time\nimport instrument.auto\nprint('started', time.time())\n"
                            + APP.format(prelude="") + "\ntime.sleep(0.5)\nprint('done')", env=env, timeout=30)
        ended = time.time()
        started = float(result.stdout.split()[result.stdout.split().index("started") + 1])
        elapsed = ended - started
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    assert "status 200" in result.stdout and "done" in result.stdout
    assert elapsed < 5.0, f"took {elapsed:.1f}s to exit"
    assert "Traceback" not in result.stderr


def test_init_is_idempotent_and_says_so_once():
    code = ("import instrument, logging\n"
            "first = instrument.init()\n"
            "assert instrument.init() is first and instrument.init() is first\n"
            "print('ok')")
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr.count("already called") == 1, result.stderr


def test_app_installed_providers_are_used_not_replaced():
    code = ("from opentelemetry import trace\n"
            "from opentelemetry.sdk.trace import TracerProvider\n"
            "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
            "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
            "mine = TracerProvider(); exporter = InMemorySpanExporter()\n"
            "mine.add_span_processor(SimpleSpanProcessor(exporter)); trace.set_tracer_provider(mine)\n"
            "import instrument; instrument.init()\n"
            "assert trace.get_tracer_provider() is mine\n"
            "import requests\n"
            "try:\n    requests.get('http://127.0.0.1:9/', timeout=1)\nexcept requests.ConnectionError:\n    pass\n"
            "spans = exporter.get_finished_spans()\n"
            "print(len(spans), spans[0].attributes['error.type'])")
    result = run_python(code, env={"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "requests.exceptions.ConnectionError"]
