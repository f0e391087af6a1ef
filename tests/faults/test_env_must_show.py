"""Must-show: a fault from INSTRUMENT_FAULTS alone (no code change) reaches the application as the client's
own exception at the configured rate, and the breaker configured for that target (INSTRUMENT_POLICIES) opens.

One subprocess per client kind (HTTP: requests, DB: psycopg, queue: pika), so the environment applies at
``instrument.init()``. The script makes real calls; it counts, per call, a success, an injected fault
(the client's own type, also ``InjectedFault``) or a rejection by the open breaker (``CircuitOpen``).
The injected rate is measured over the calls that reached the dependency (successes + injected), which
is what the rule's probability applies to; with a fixed seed the result is deterministic.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

SCRIPT = '''
import json, sys, time
import instrument
from instrument import events

instrument.init()
opened = []
events.subscribe(lambda e: opened.append(e.state) if e.name == "circuit.opened" else None)

{setup}

counts = {{"ok": 0, "injected": 0, "rejected": 0, "types": []}}
for i in range({calls}):
    try:
        call()
        counts["ok"] += 1
    except CLIENT_ERROR as exc:
        if isinstance(exc, instrument.CircuitOpen):
            counts["rejected"] += 1
        elif isinstance(exc, instrument.InjectedFault):
            counts["injected"] += 1
            name = type(exc).__module__ + "." + type(exc).__qualname__
            if name not in counts["types"]:
                counts["types"].append(name)
        else:
            raise
    time.sleep(0.002)
counts["opened"] = len(opened)
print("RESULT " + json.dumps(counts))
'''

HTTP_SETUP = '''
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import requests

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/"
session = requests.Session()
CLIENT_ERROR = requests.ConnectionError
def call():
    assert session.get(url, timeout=2).status_code == 200
'''

DB_SETUP = '''
import psycopg
conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True)
CLIENT_ERROR = psycopg.OperationalError
def call():
    assert conn.execute("SELECT 1").fetchone() == (1,)
'''

QUEUE_SETUP = '''
import pika
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672,
                                     credentials=pika.PlainCredentials("guest", "guest")))
channel = connection.channel()
channel.queue_declare("instrument-faults-must-show", auto_delete=True)
CLIENT_ERROR = pika.exceptions.AMQPConnectionError
def call():
    channel.basic_publish("", "instrument-faults-must-show", b"x")
'''

BREAKER = "breaker(failure_rate=20%,window=20,min_calls=10,wait=100ms)"
CASES = {
    "http": ("requests", None, HTTP_SETUP, "http://127.0.0.1:*: error 30%", "http://127.0.0.1:*",
             "requests.exceptions.ConnectionError"),
    "db": ("psycopg", ("PostgreSQL", 5432), DB_SETUP, "postgresql://* op=SELECT: error 30%", "postgresql://*",
           "psycopg.OperationalError"),
    "queue": ("pika", ("RabbitMQ", 5672), QUEUE_SETUP, "rabbitmq://* op=publish: error 30%", "rabbitmq://*",
              "pika.exceptions.AMQPConnectionError"),
}


def _integration(name: str) -> None:
    pytest.importorskip(name)
    for module in (f"instrument.integrations.{name}", f"integrations.{name}"):
        try:
            __import__(module)
            return
        except ImportError:
            continue
    pytest.skip(f"the {name} integration has not landed yet")


def run_case(faults: str, policies: str, setup: str, calls: int = 600, seed: int = 7) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTRUMENT_", "OTEL_"))}
    env.update({
        "INSTRUMENT_FAULTS": faults, "INSTRUMENT_FAULTS_SEED": str(seed), "INSTRUMENT_POLICIES": policies,
        "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
        "INSTRUMENT_LOG_LEVEL": "error",
    })
    code = SCRIPT.format(setup=textwrap.dedent(setup), calls=calls)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_env_fault_gives_the_clients_error_at_the_rate_and_opens_the_breaker(kind: str, need: Any) -> None:
    name, service, setup, faults, glob, error = CASES[kind]
    _integration(name)
    if service:
        need(*service)
    counts = run_case(faults, f"{glob}={BREAKER}", setup)
    reached = counts["ok"] + counts["injected"]
    assert reached >= 100, counts
    p = 0.3
    assert abs(counts["injected"] - reached * p) < 4 * math.sqrt(reached * p * (1 - p)), counts
    assert counts["types"] == [error], counts  # the client's own type, by the name error.type shows
    assert counts["opened"] >= 1 and counts["rejected"] >= 1, counts


@pytest.mark.parametrize("kind", sorted(CASES))
def test_same_seed_same_outcome(kind: str, need: Any) -> None:
    name, service, setup, faults, _, _ = CASES[kind]
    _integration(name)
    if service:
        need(*service)
    first = run_case(faults, "", setup, calls=200)
    again = run_case(faults, "", setup, calls=200)
    assert first == again
    assert first["rejected"] == 0 and 30 < first["injected"] < 90
