"""gevent: patching first is supported (greenlets get their own span context, telemetry exports);
patching after the toolkit started logs one clear warning."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import run_python

pytest.importorskip("gevent")

SUPPORTED = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import instrument.auto
    import threading
    import gevent, requests
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from opentelemetry import trace

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            gevent.sleep(0.01)
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *a): pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H); srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    tracer = trace.get_tracer("app")

    def work(i):
        with tracer.start_as_current_span(f"greenlet-{i}"):
            return requests.get(f"{base}/{i}").status_code

    jobs = [gevent.spawn(work, i) for i in range(10)]
    gevent.joinall(jobs, timeout=20)
    print("statuses", sorted(j.value for j in jobs))
""")


def test_gevent_patched_first_is_supported(receiver):
    result = run_python(SUPPORTED, env={**receiver.env("http/protobuf"), "OTEL_SERVICE_NAME": "gevented"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "statuses [200, 200, 200, 200, 200, 200, 200, 200, 200, 200]" in result.stdout
    assert "gevent.monkey" not in result.stderr  # no order warning
    receiver.wait_for(lambda: len([s for s in receiver.spans() if s.kind == "CLIENT"]) == 10, timeout=15)
    parents = {s.span_id: s.name for s in receiver.spans() if s.name.startswith("greenlet-")}
    for client in (s for s in receiver.spans() if s.kind == "CLIENT"):
        # Each greenlet's request is the child of that greenlet's own span.
        assert parents[client.parent_span_id] == "greenlet-" + client.attributes["url.full"].rsplit("/", 1)[1]


def test_gevent_patched_after_init_warns_once():
    code = textwrap.dedent("""
        import instrument.auto
        from gevent import monkey
        monkey.patch_all()
        monkey.patch_socket()
        print("patched")
    """)
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ran after instrument was initialised") == 1, result.stderr
    assert "gevent.monkey.patch_all()" in result.stderr


def test_gevent_half_patched_before_init_warns():
    code = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_socket()
        import instrument.auto
        print("started")
    """)
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "before `import instrument.auto`" in result.stderr, result.stderr
