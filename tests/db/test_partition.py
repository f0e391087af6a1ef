"""Deadlines when the server cannot be reached: a FaultProxy in blackhole mode in front of the machine's real
PostgreSQL, MariaDB and Redis (connections stay open, nothing comes back, as behind a firewall that drops).

A sync SQL statement's server-side cancel goes through the same dead path, so the watchdog shuts the
connection's socket down CANCEL_GRACE after the deadline; async psycopg's own cancel is bounded the same
way; sync redis gets the time left as its socket timeout and no retry of its own. Every case must end
within its deadline + a small margin. And ``conn.execute`` on a psycopg connection that a restart closed
is a failed call that breakers see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from instrument import _context
from instrument._dbapi import CANCEL_GRACE
from instrument.testing._proxy import FaultProxy
from tests.conftest import need
from tests.db.conftest import MYSQL, PG

DEADLINE = 0.5
MARGIN = 0.4  # a loaded 2-core machine: thread wake-ups, the span and log line of the failed call


@pytest.fixture
def pg_proxy() -> Iterator[FaultProxy]:
    need("postgresql")
    with FaultProxy("127.0.0.1", 5432) as proxy:
        yield proxy


def _elapsed(start: float) -> float:
    return time.perf_counter() - start


# -- psycopg 3 ----------------------------------------------------------------------------------------


def test_psycopg_blackholed_policy_timeout(pg_proxy, tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("instrument.policies._config")
    patched("psycopg")
    settings_env({"INSTRUMENT_POLICIES": f"postgresql://127.0.0.1:{pg_proxy.port}/test=timeout(500ms)"})
    conn = psycopg.connect(**{**PG, "port": pg_proxy.port}, autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg_proxy.blackhole()
        start = time.perf_counter()
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT 1")
        took = _elapsed(start)
        assert DEADLINE <= took < DEADLINE + CANCEL_GRACE + MARGIN, took
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)  # the driver's "connection lost"
        assert conn.broken or conn.closed  # a pool discards it
    finally:
        conn.close()
    failed = [s for s in tel.spans() if s.attributes.get("error.type") == "psycopg.errors.QueryCanceled"]
    assert len(failed) == 1, [s.name for s in tel.spans()]
    assert any(e.name == "timeout" for e in failed[0].events)


def test_psycopg_blackholed_cursor_deadline(pg_proxy, tel, patched) -> None:  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    patched("psycopg")
    with psycopg.connect(**{**PG, "port": pg_proxy.port}, autocommit=True) as conn, conn.cursor() as cur:
        pg_proxy.blackhole()
        start = time.perf_counter()
        with _context.deadline_scope(DEADLINE), pytest.raises(psycopg.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(0)")
        assert _elapsed(start) < DEADLINE + CANCEL_GRACE + MARGIN


def test_psycopg_reachable_server_keeps_the_connection(tel, patched) -> None:  # type: ignore[no-untyped-def]
    """The server answers the cancel request: QueryCanceled, and the connection is NOT shut down."""
    psycopg = pytest.importorskip("psycopg")
    need("postgresql")
    patched("psycopg")
    with psycopg.connect(**PG, autocommit=True) as conn:
        with _context.deadline_scope(DEADLINE), pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(10)")
        assert caught.value.__cause__ is None  # the server's own 57014, not our shutdown
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_async_psycopg_blackholed_policy_timeout(pg_proxy, tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    """psycopg cancels the cancelled task's query itself: 5 s for the cancel request, then 5 s waiting for the
    server. Under the passed deadline the request gets CANCEL_GRACE, then the socket is shut down."""
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("instrument.policies._config")
    patched("psycopg")
    settings_env({"INSTRUMENT_POLICIES": f"postgresql://127.0.0.1:{pg_proxy.port}/test=timeout(500ms)"})
    conn = await psycopg.AsyncConnection.connect(**{**PG, "port": pg_proxy.port}, autocommit=True)
    try:
        await conn.execute("SELECT 1")
        pg_proxy.blackhole()
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await conn.execute("SELECT 1")
        took = _elapsed(start)
        assert DEADLINE <= took < DEADLINE + CANCEL_GRACE + MARGIN, took
        assert conn.closed or conn.broken
    finally:
        await conn.close()


async def test_async_psycopg_cancel_unchanged_without_deadline(patched) -> None:  # type: ignore[no-untyped-def]
    """The application's own cancel_safe() (no deadline) keeps psycopg's behaviour and the connection."""
    psycopg = pytest.importorskip("psycopg")
    need("postgresql")
    patched("psycopg")
    async with await psycopg.AsyncConnection.connect(**PG, autocommit=True) as conn:
        await conn.cancel_safe(timeout=2.0)
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


# -- a connection closed under the application (server restart) ----------------------------------------


def _closed_conn_calls(psycopg: Any, proxy: FaultProxy) -> Any:
    conn = psycopg.connect(**{**PG, "port": proxy.port}, autocommit=True)
    conn.execute("SELECT 1")
    proxy.reset_peer()  # the server went away: the connection is lost
    return conn


def test_psycopg_closed_connection_is_a_failed_call(pg_proxy, tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    """Each call on a lost connection is one failed span, and the breaker counts it (1 success before the loss
    + 3 failures in a window of 4: open, then it rejects at once).

    psycopg reports the loss in one of two ways, by when the RST reaches its poll: "consuming input failed"
    and then "the connection is closed" from ``cursor()``, or "connection socket closed" and then "another
    command is already in progress". Both are failures; the test holds to what is ours."""
    psycopg = pytest.importorskip("psycopg")
    pytest.importorskip("instrument.policies._config")
    import instrument

    patched("psycopg")
    settings_env({"INSTRUMENT_POLICIES":
                  f"postgresql://127.0.0.1:{pg_proxy.port}/test=breaker(window=4,min_calls=4,wait=30s)"})
    conn = _closed_conn_calls(psycopg, pg_proxy)
    tel.clear()
    outcomes = []
    for _ in range(6):
        try:
            conn.execute("SELECT 1")
        except instrument.CircuitOpen:
            outcomes.append("rejected")
        except psycopg.OperationalError as exc:
            outcomes.append(str(exc).split("\n")[0][:40])
    conn.close()
    assert "rejected" not in outcomes[:3], outcomes  # the call that finds the loss, then two on a dead connection
    assert outcomes[3:] == ["rejected"] * 3, outcomes
    spans = tel.spans()
    assert len(spans) == 6, [s.name for s in spans]  # one per call, never two
    assert all(s.attributes["error.type"] == "psycopg.OperationalError" for s in spans[:3])


def test_psycopg_execute_on_a_closed_connection_is_one_failed_span(tel, patched) -> None:  # type: ignore[no-untyped-def]
    """``conn.execute`` on a closed connection raises in ``cursor()``, before any cursor execute: still one span
    (the connection was used before, so its endpoint is known)."""
    psycopg = pytest.importorskip("psycopg")
    need("postgresql")
    patched("psycopg")
    conn = psycopg.connect(**PG, autocommit=True)
    conn.execute("SELECT 1")
    conn.close()
    tel.clear()
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        conn.execute("SELECT 1")
    spans = tel.spans()
    assert len(spans) == 1, [s.name for s in spans]
    assert spans[0].attributes["error.type"] == "psycopg.OperationalError"


def test_psycopg_connection_execute_one_span(tel, patched) -> None:  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    need("postgresql")
    patched("psycopg")
    with psycopg.connect(**PG, autocommit=True) as conn:
        tel.clear()
        conn.execute("SELECT %s::int", (1,))
        with conn.cursor() as cur:
            cur.execute("SELECT 2")
    assert [s.name for s in tel.spans()] == ["SELECT test", "SELECT test"]
    assert tel.spans()[0].attributes["db.query.text"] == "SELECT %s::int"


async def test_async_psycopg_closed_connection_is_a_failed_call(pg_proxy, tel, patched) -> None:  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    patched("psycopg")
    conn = await psycopg.AsyncConnection.connect(**{**PG, "port": pg_proxy.port}, autocommit=True)
    await conn.execute("SELECT 1")
    pg_proxy.reset_peer()
    tel.clear()
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
    await conn.close()
    spans = tel.spans()
    assert len(spans) == 2 and all(s.attributes["error.type"].startswith("psycopg.") for s in spans), spans


# -- psycopg2, PyMySQL --------------------------------------------------------------------------------


def test_psycopg2_blackholed_deadline(pg_proxy, tel, patched) -> None:  # type: ignore[no-untyped-def]
    psycopg2 = pytest.importorskip("psycopg2")
    ext = pytest.importorskip("psycopg2.extensions")
    patched("psycopg2")
    conn = psycopg2.connect(host="127.0.0.1", port=pg_proxy.port, user="postgres", dbname="test")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            pg_proxy.blackhole()
            start = time.perf_counter()
            with _context.deadline_scope(DEADLINE), pytest.raises(ext.QueryCanceledError):
                cur.execute("SELECT 1")
            took = _elapsed(start)
        assert DEADLINE <= took < DEADLINE + CANCEL_GRACE + MARGIN, took
    finally:
        conn.close()


def test_pymysql_blackholed_deadline(tel, patched) -> None:  # type: ignore[no-untyped-def]
    pymysql = pytest.importorskip("pymysql")
    need("mariadb")
    patched("pymysql")
    with FaultProxy("127.0.0.1", 3306) as proxy:
        conn = pymysql.connect(**{**MYSQL, "port": proxy.port})
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                proxy.blackhole()
                start = time.perf_counter()
                with _context.deadline_scope(DEADLINE), pytest.raises(pymysql.err.OperationalError) as caught:
                    cur.execute("SELECT 1")
                took = _elapsed(start)
            assert caught.value.args[0] == 1317, caught.value.args
            assert DEADLINE <= took < DEADLINE + CANCEL_GRACE + MARGIN, took
        finally:
            conn.close()


# -- redis (sync) -------------------------------------------------------------------------------------


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    need("redis")
    with FaultProxy("127.0.0.1", 6379) as proxy:
        yield proxy


@pytest.mark.parametrize("options", [{}, {"socket_timeout": None}, {"single_connection_client": True},
                                     {"socket_timeout": None, "single_connection_client": True}],
                         ids=["defaults", "no-socket-timeout", "single-connection", "single-no-timeout"])
def test_redis_blackholed_policy_timeout(redis_proxy, tel, patched, settings_env, options, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without the deadline on the connection, redis-py waits socket_timeout (5 s by default, or forever)
    per attempt and retries 3 times with backoff on a new connection: about 60 s here."""
    redis = pytest.importorskip("redis")
    pytest.importorskip("instrument.policies._config")
    patched("redis")
    settings_env({"INSTRUMENT_POLICIES": f"redis://127.0.0.1:{redis_proxy.port}/*=timeout(500ms)"})
    client = redis.Redis(host="127.0.0.1", port=redis_proxy.port, **options)
    try:
        client.set("instrument:partition", "v")
        conn = client.connection or client.connection_pool._available_connections[0]
        saved = conn.__dict__.get("_instrument_saved")  # bound by set()'s deadline until the next checkout
        before = (saved[0], saved[2]) if saved else (conn.socket_timeout, conn.retry)  # its own settings
        redis_proxy.blackhole()
        for call in (lambda: client.get("instrument:partition"),
                     lambda: client.pipeline().get("instrument:partition").get("x").execute()):
            start = time.perf_counter()
            with pytest.raises(redis.TimeoutError):
                call()
            took = _elapsed(start)
            assert DEADLINE * 0.9 <= took < DEADLINE + MARGIN, took
        redis_proxy.pass_through()
        assert client.get("instrument:partition") == b"v"  # reconnects (under the deadline again)
        settings_env({})  # no deadline: the next command runs with the connection's own settings
        seen = []
        real_send = redis.connection.AbstractConnection.send_packed_command

        def send(conn, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((conn.socket_timeout, conn._sock.gettimeout(), conn.retry))
            return real_send(conn, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        assert client.get("instrument:partition") == b"v"
        assert seen == [(before[0], before[0], before[1])]  # restored at checkout
    finally:
        client.close()
    assert any(e.name == "timeout" for s in tel.spans() for e in s.events)


def test_redis_deadline_leaves_other_commands_alone(redis_service, tel, patched) -> None:  # type: ignore[no-untyped-def]
    """A command without a deadline, after one with it, runs with the connection's own timeout and retry."""
    redis = pytest.importorskip("redis")
    patched("redis")
    from instrument.integrations import redis as redis_integration

    from instrument.patching import is_patched

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=7)
    try:
        client.ping()
        assert not is_patched(redis_integration.CONNECTIONS[0])  # no deadline yet: checkouts pay for no hook
        conn = client.connection_pool._available_connections[0]
        own_retry = conn.retry
        with _context.deadline_scope(2.0):
            client.set("instrument:partition", "v")
        assert is_patched(redis_integration.CONNECTIONS[0])
        seen = []
        real_send = conn.send_packed_command

        def send(*args, **kwargs):  # the settings the next command actually runs with
            seen.append((conn.socket_timeout, conn._sock.gettimeout(), conn.retry))
            return real_send(*args, **kwargs)

        conn.send_packed_command = send
        assert client.get("instrument:partition") == b"v"
        assert seen == [(7, 7, own_retry)]
        assert "_instrument_saved" not in conn.__dict__
    finally:
        client.close()


def test_redis_deadline_rebinds_only_when_the_time_left_changed(redis_service, tel, patched) -> None:  # type: ignore[no-untyped-def]
    """A Timeout on every command binds each to its own deadline; one with about the same time left as the
    last keeps the connection's setting (at most 1 % early), a shorter one lowers it."""
    redis = pytest.importorskip("redis")
    patched("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=7)
    try:
        with _context.deadline_scope(2.0):
            client.set("instrument:partition", "v")
        conn = client.connection_pool._available_connections[0]
        first = conn.socket_timeout
        assert 1.9 < first <= 2.0
        with _context.deadline_scope(2.0):
            assert client.get("instrument:partition") == b"v"
        assert conn.socket_timeout == first  # kept: within 1 % of the time left
        with _context.deadline_scope(0.3):
            assert client.get("instrument:partition") == b"v"
        assert 0.2 < conn.socket_timeout <= 0.3 and conn._sock.gettimeout() == pytest.approx(conn.socket_timeout)
        assert client.get("instrument:partition") == b"v"  # no deadline: its own 7 s again
        assert conn.socket_timeout == 7 and conn._sock.gettimeout() == 7
    finally:
        client.close()
