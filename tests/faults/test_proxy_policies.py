"""Through the fault proxy, with the toolkit's policies from INSTRUMENT_POLICIES: a slow HTTP server and a
blackholed PostgreSQL make the per-attempt timeout fire within its deadline; retry and breaker react.

Each case runs in a subprocess so the environment applies at ``instrument.init()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

POLICIES = "{glob}=retry(3,base=10ms,cap=10ms),breaker(failure_rate=50%,window=4,min_calls=4,wait=30s),timeout(300ms)"

SCRIPT = '''
import json, time
import instrument
from instrument import events
from instrument.testing._proxy import FaultProxy

instrument.init()
seen = []
events.subscribe(lambda e: seen.append(e.name))
{setup}
with FaultProxy("127.0.0.1", UPSTREAM_PORT) as proxy:
    prepare(proxy)
    FAULT(proxy)
    calls = []
    for i in range(3):
        start = time.perf_counter()
        try:
            call(proxy)
            outcome = "ok"
        except Exception as exc:
            outcome = "rejected" if isinstance(exc, instrument.CircuitOpen) else type(exc).__module__ + "." + type(exc).__qualname__
        calls.append([outcome, round(time.perf_counter() - start, 3)])
print("RESULT " + json.dumps({{"calls": calls, "events": seen}}))
'''

HTTP = '''
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import requests

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
UPSTREAM_PORT = server.server_address[1]
def prepare(proxy):
    assert requests.get(f"http://127.0.0.1:{proxy.port}/", timeout=2).text == "ok"
def FAULT(proxy):
    proxy.add_latency(2.0)  # a slow server: every response chunk held 2 s
def call(proxy):
    requests.get(f"http://127.0.0.1:{proxy.port}/")
'''

PG = '''
import psycopg
UPSTREAM_PORT = 5432
conn = None
def prepare(proxy):
    global conn
    conn = psycopg.connect(host="127.0.0.1", port=proxy.port, user="postgres", dbname="test", autocommit=True)
    conn.execute("SELECT 1")
def FAULT(proxy):
    proxy.blackhole()
def call(proxy):
    conn.execute("SELECT 1")
'''


def _run(setup: str, glob: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTRUMENT_", "OTEL_"))}
    env.update({"INSTRUMENT_POLICIES": POLICIES.format(glob=glob), "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "INSTRUMENT_LOG_LEVEL": "error"})
    code = SCRIPT.format(setup=textwrap.dedent(setup))
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the call hung: the per-attempt timeout did not bound it")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _check(out: dict[str, Any], timeout_type: str, first_call: tuple[float, float] = (0.85, 1.6)) -> None:
    (first, t1), (second, _), (third, t3) = out["calls"]
    # 1st call: 3 attempts of 300 ms each, every one cut at its deadline -> the client's own timeout
    assert first == timeout_type, out
    assert first_call[0] <= t1 < first_call[1], out
    assert out["events"].count("retry.scheduled") >= 1, out
    # the breaker (4 calls: 1 ok + 3 timeouts >= 50%) opened on those failures: later calls are rejected at once
    assert "circuit.opened" in out["events"], out
    assert third == "rejected" and t3 < 0.05, out


def test_slow_http_server_per_attempt_timeout_retry_and_breaker() -> None:
    pytest.importorskip("requests")
    pytest.importorskip("instrument.integrations.requests")
    pytest.importorskip("instrument.policies")
    _check(_run(HTTP, "http://127.0.0.1:*"), "requests.exceptions.ReadTimeout")


def test_blackholed_postgres_per_attempt_timeout_retry_and_breaker(need: Any) -> None:
    """The cancel request goes through the same dead path, so at CANCEL_GRACE after the deadline the
    connection's socket is shut down: the first attempt raises QueryCanceled (a timeout: timeout.expired)
    within deadline + grace. The connection is then broken, so the retries of this statement (on the same
    connection, as every per-statement retry is) fail at once with "the connection is lost": the whole
    first call takes about one deadline + grace, not three. The breaker counts the three failures."""
    need("PostgreSQL", 5432)
    pytest.importorskip("psycopg")
    pytest.importorskip("instrument.integrations.psycopg")
    pytest.importorskip("instrument.policies")
    from instrument._dbapi import CANCEL_GRACE

    out = _run(PG, "postgresql://*")
    assert out["calls"][0][0].startswith("psycopg."), out
    assert out["events"].count("timeout.expired") == 1, out  # the first attempt: QueryCanceled at the deadline
    _check(out, out["calls"][0][0], first_call=(0.3, 0.3 + CANCEL_GRACE + 0.4))
