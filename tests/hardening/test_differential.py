"""Unchanged behaviour: with the toolkit active and no policy configured, each patched client behaves
exactly as without it. Each scenario (tests/hardening/_scenarios.py) runs in two fresh interpreters,
plain and with ``import instrument.auto`` (exporters off), and the JSON records must be equal:
return values, streamed bodies, redirects and history, cookies, connection reuse (server-side
connection counts), retries inside the library, exception types, causes and traceback tails, headers
the server saw minus the added trace context.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, need

SCRIPT = ROOT / "tests" / "hardening" / "_scenarios.py"
ENV_OFF = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
           "INSTRUMENT_LOG_LEVEL": "error"}


def _run(name: str, mode: str, args: dict) -> dict:
    return json.loads(_run_cached(name, mode, json.dumps(args, sort_keys=True)))


@functools.cache
def _run_cached(name: str, mode: str, args_json: str) -> str:
    """One run per (scenario, mode): the tests for known differences reuse the records."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(ENV_OFF)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(SCRIPT), name, mode, args_json], check=False, env=env,
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return line[len("RESULT "):]


def _differential(name: str, integration: str, args: dict | None = None, *, skip: tuple[str, ...] = (),
                  only: tuple[str, ...] | None = None) -> dict:
    """Compare the plain and instrumented records; ``skip`` keys are known differences with their own
    strict-xfail test (which passes ``only``)."""
    args = args or {}
    # One after the other: both runs use the same keys, tables and server state.
    plain = _run(name, "plain", args)
    instrumented = _run(name, "instrumented", args)
    patched = instrumented.pop("_patched")
    assert integration in patched, f"{integration} was not patched: {patched}"
    keys = set(only) if only is not None else (set(plain) | set(instrumented)) - set(skip)
    differing = {k: {"plain": plain.get(k), "instrumented": instrumented.get(k)}
                 for k in sorted(keys) if plain.get(k) != instrumented.get(k)}
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


def test_urllib3_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.urllib3")
    plain = _differential("urllib3", "urllib3")
    assert plain["reused_connections"] == 1
    assert plain["retry_503_hits"] == 3 and plain["retry_503_noraise_hits"] == 3
    assert plain["retry_503"]["raised"]["type"] == "urllib3.exceptions.MaxRetryError"
    assert plain["redirects"]["ok"][0] == 200 and len(plain["redirects"]["ok"][3]) == 3
    assert plain["too_many"]["raised"]["type"] == "urllib3.exceptions.MaxRetryError"
    assert plain["stream"]["ok"][2] and plain["read_chunked"]["ok"]
    assert plain["refused"]["raised"]["extra"] == "NewConnectionError"
    assert plain["read_timeout"]["raised"]["type"] == "urllib3.exceptions.ReadTimeoutError"


def test_urllib_request_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.urllib")
    plain = _differential("urllib", "urllib")
    assert plain["not_found"]["ok"][0] == 404 and plain["not_found"]["ok"][5]["headers"]["x-q"] == "1"
    assert plain["not_found_raised"]["raised"]["type"] == "urllib.error.HTTPError"
    assert plain["redirect"]["ok"][1] == "/final"
    assert plain["custom_opener"]["ok"][1]["headers"]["x-handler"] == "h"
    assert plain["custom_opener"]["ok"][1]["headers"]["cookie"] == "session=abc"
    assert plain["no_redirect_opener"]["raised"]["extra"][0] == 302
    assert plain["refused"]["raised"]["type"] == "urllib.error.URLError"


def test_aiohttp_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.aiohttp")
    pytest.importorskip("aiohttp")
    plain = _differential("aiohttp", "aiohttp")
    assert plain["reused_connections"] == 1
    assert plain["iter_chunked"]["ok"][1].count("chunk-") == 5
    assert plain["redirects"]["ok"][2] == [302, 302, 302]
    assert plain["too_many"]["raised"]["type"] == "aiohttp.client_exceptions.TooManyRedirects"
    assert plain["raise_for_status"]["raised"]["extra"][0] == 404
    assert plain["session_raise_for_status"]["raised"]["extra"] == 500
    assert plain["refused"]["raised"]["type"] == "aiohttp.client_exceptions.ClientConnectorError"


def _pg_dsn() -> str:
    host, port = need("postgresql")
    return f"host={host} port={port} dbname=test user=postgres"


# psycopg2 and sqlite3 connections become instances of a traced subclass and cursors wrapt proxies:
# isinstance holds, but type() and its name differ (own xfail tests below).
PSYCOPG2_IDENTITY = ("types", "cursor_types")
SQLITE3_IDENTITY = ("types", "cursor_types", "factory")


def test_psycopg2_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.psycopg2")
    pytest.importorskip("psycopg2")
    plain = _differential("psycopg2", "psycopg2", {"dsn": _pg_dsn()}, skip=PSYCOPG2_IDENTITY)
    assert plain["rowcount_executemany"] == 20 and len(plain["iterated"]) == 20
    assert plain["named_iter"] == list(range(20))
    assert plain["unique_violation"]["raised"]["extra"][0] == "23505"
    assert plain["syntax_error"]["raised"]["extra"][0] == "42601"


@pytest.mark.xfail(strict=True, reason="type(conn) is the traced subclass 'Tracedconnection' (integrations/"
                   "psycopg2.py _traced_class, via connection_factory) and cursors are wrapt 'CursorProxy' objects instead of psycopg2's own types")
def test_psycopg2_connection_and_cursor_types_are_unchanged():
    pytest.importorskip("instrument.integrations.psycopg2")
    pytest.importorskip("psycopg2")
    _differential("psycopg2", "psycopg2", {"dsn": _pg_dsn()}, only=PSYCOPG2_IDENTITY)


def test_pymysql_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.pymysql")
    pytest.importorskip("pymysql")
    host, port = need("mariadb")
    plain = _differential("pymysql", "pymysql", {"host": host, "port": port})
    assert plain["executemany"] == 20 and plain["sscursor_iter"] == list(range(20))
    assert plain["integrity"]["raised"]["type"] == "pymysql.err.IntegrityError"
    assert plain["integrity"]["raised"]["extra"][0] == 1062
    assert plain["programming"]["raised"]["extra"][0] == 1064


def test_sqlite3_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.sqlite3")
    plain = _differential("sqlite3", "sqlite3", skip=SQLITE3_IDENTITY)
    assert plain["iterdump"][0] == "BEGIN TRANSACTION;"
    assert plain["row_factory"][2] == "a" and plain["backup"]["ok"] == 14
    assert plain["integrity"]["raised"]["type"] == "sqlite3.IntegrityError"


@pytest.mark.xfail(strict=True, reason="sqlite3.connect passes factory= a generated 'Traced<Factory>' subclass "
                   "(integrations/sqlite3.py _traced_class), so type(conn) is not sqlite3.Connection / the "
                   "application's factory, and cursors are wrapt 'CursorProxy' objects")
def test_sqlite3_connection_and_cursor_types_are_unchanged():
    pytest.importorskip("instrument.integrations.sqlite3")
    _differential("sqlite3", "sqlite3", only=SQLITE3_IDENTITY)


def test_asyncpg_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.asyncpg")
    pytest.importorskip("asyncpg")
    host, port = need("postgresql")
    plain = _differential("asyncpg", "asyncpg", {"dsn": f"postgresql://postgres@{host}:{port}/test"})
    assert plain["executemany"] is None and plain["cursor_iter"] == list(range(20))
    assert plain["cursor_obj"] == [[0, 1, 2], 5, 8]
    assert plain["unique"]["raised"]["extra"][0] == "23505"
    assert plain["timeout"]["raised"]["type"].endswith("TimeoutError")


def test_pika_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.pika")
    pytest.importorskip("pika")
    host, port = need("rabbitmq")
    plain = _differential("pika", "pika", {"host": host, "port": port})
    assert plain["basic_get"]["ok"][5] == "one" and plain["consume"]["ok"][-1] is None
    assert [m[3] for m in plain["consume"]["ok"][:-1]] == ["two", "three", "c0", "c1", "c2"]
    assert plain["unroutable"]["raised"]["type"] == "pika.exceptions.UnroutableError"
    assert plain["passive_missing"]["raised"]["extra"][0] == 404


def test_nats_behaves_exactly_as_without_the_toolkit():
    pytest.importorskip("instrument.integrations.nats")
    pytest.importorskip("nats")
    _host, port = need("nats")
    plain = _differential("nats", "nats", {"port": port})
    assert plain["request"][0] == "re:ping"
    assert plain["no_responders"]["raised"]["type"] == "nats.errors.NoRespondersError"


def test_paho_mqtt_behaves_exactly_as_without_the_toolkit():
    """Including a Properties object reused across publishes: the trace context goes into a copy, so the
    caller's object is left as it was and each message carries exactly one traceparent."""
    pytest.importorskip("instrument.integrations.paho_mqtt")
    pytest.importorskip("paho.mqtt.client")
    _host, port = need("mosquitto")
    plain = _differential("paho", "paho_mqtt", {"port": port})
    assert plain["received_all"] is True and len(plain["messages"]) == 4
