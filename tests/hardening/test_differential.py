"""Unchanged behaviour: with the toolkit active and no policy configured, each patched client behaves
exactly as without it. Each scenario (tests/hardening/_scenarios.py) runs in two fresh interpreters,
plain and with ``import instrument.auto`` (exporters off), and the JSON records must be equal:
return values, streamed bodies, redirects and history, cookies, connection reuse (server-side
connection counts), retries inside the library, exception types, causes and traceback tails, headers
the server saw minus the added trace context.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, need

SCRIPT = ROOT / "tests" / "hardening" / "_scenarios.py"
ENV_OFF = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
           "INSTRUMENT_LOG_LEVEL": "error"}


def _run(name: str, mode: str, args: dict) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(ENV_OFF)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(SCRIPT), name, mode, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _differential(name: str, integration: str, args: dict | None = None) -> dict:
    args = args or {}
    # One after the other: both runs use the same keys, tables and server state.
    plain = _run(name, "plain", args)
    instrumented = _run(name, "instrumented", args)
    patched = instrumented.pop("_patched")
    assert integration in patched, f"{integration} was not patched: {patched}"
    differing = {k: {"plain": plain.get(k), "instrumented": instrumented.get(k)}
                 for k in sorted(set(plain) | set(instrumented)) if plain.get(k) != instrumented.get(k)}
    assert not differing, json.dumps(differing, indent=1)
    return plain


def test_requests_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.requests")
    plain = _differential("requests", "requests")
    # The scenario really exercised what it claims to.
    assert plain["reused_connections"] == 1
    assert plain["urllib3_retry_hits"] == 3
    assert plain["redirects"]["ok"][2] == [302, 302, 302]
    assert plain["refused"]["raised"]["type"] == "requests.exceptions.ConnectionError"
    assert plain["read_timeout"]["raised"]["type"] == "requests.exceptions.ReadTimeout"
    assert plain["urllib3_retries"]["raised"]["type"] == "requests.exceptions.RetryError"
    assert plain["too_many"]["raised"]["type"] == "requests.exceptions.TooManyRedirects"
    assert len(plain["stream_lines"]["ok"]) == 5


def test_httpx_sync_and_async_behave_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.httpx")
    plain = _differential("httpx", "httpx")
    assert plain["reused_connections"] == 1
    assert plain["refused"]["raised"]["type"] == "httpx.ConnectError"
    assert plain["async"]["ok"]["refused"]["type"] == "httpx.ConnectError"
    assert plain["too_many"]["raised"]["type"] == "httpx.TooManyRedirects"


def test_psycopg_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.psycopg")
    pytest.importorskip("psycopg")
    host, port = need("postgresql")
    plain = _differential("psycopg", "psycopg", {"dsn": f"host={host} port={port} dbname=test user=postgres"})
    assert plain["rowcount_executemany"] == 20 and len(plain["iterated"]) == 20
    assert plain["named_iter"] == list(range(20))
    assert plain["unique_violation"]["raised"]["type"] == "psycopg.errors.UniqueViolation"


def test_redis_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.redis")
    pytest.importorskip("redis")
    _host, port = need("redis")
    plain = _differential("redis", "redis", {"port": port})
    assert plain["pubsub"][1]["data"] == "hello"
    assert plain["response_error"]["raised"]["type"] == "redis.exceptions.ResponseError"
