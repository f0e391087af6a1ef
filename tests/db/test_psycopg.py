"""psycopg 3, sync and async: one span per statement, SEMCONV attributes, errors, no parameter values, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from instrument import _context
from tests.conftest import need
from tests.db.conftest import PG_DSN, SECRET, no_secret

psycopg = pytest.importorskip("psycopg")

BASE = {"db.system.name": "postgresql", "db.namespace": "test", "server.address": "127.0.0.1", "server.port": 5432}


@pytest.fixture
def pg(tel, patched):  # type: ignore[no-untyped-def]
    need("postgresql")
    patched("psycopg")
    with psycopg.connect(PG_DSN, autocommit=True, application_name="instrument-test-psycopg") as conn:
        conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, name text)")
        tel.clear()
        yield conn


def _selects(tel) -> float:  # type: ignore[no-untyped-def]
    return tel.metric_total("db.client.operation.duration", **{**BASE, "db.operation.name": "SELECT"})


def _check_statement_spans(tel, selects_before: float) -> None:  # type: ignore[no-untyped-def]
    insert = tel.span("INSERT items")
    assert dict(insert.attributes) == {**BASE, "db.operation.name": "INSERT", "db.collection.name": "items",
                                       "db.query.text": "INSERT INTO items VALUES (%s, %s)"}
    select = tel.span("SELECT items")
    assert select.attributes["db.query.text"] == "SELECT name FROM items WHERE name = ? AND id > ?"
    failed = tel.span("SELECT missing")
    assert failed.attributes["db.response.status_code"] == "42P01"
    assert failed.attributes["error.type"] == "psycopg.errors.UndefinedTable"
    assert failed.status.status_code.name == "ERROR"
    many = tel.span("UPDATE items")
    assert many.attributes["db.operation.batch.size"] == 3
    assert _selects(tel) - selects_before == 2  # metrics are cumulative across tests
    assert tel.metric_points("db.client.operation.duration", **{"error.type": "psycopg.errors.UndefinedTable"})
    assert tel.metric_points("db.client.operation.duration", **{"db.operation.name": "INSERT"})[0].attributes == \
        {**BASE, "db.operation.name": "INSERT"}
    no_secret(tel)


def test_sync_statements(pg, tel) -> None:  # type: ignore[no-untyped-def]
    before = _selects(tel)
    with pg.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
        cur.execute(f"SELECT name FROM items WHERE name = '{SECRET}' AND id > 0")
        assert cur.fetchone() == (SECRET,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            cur.execute("SELECT * FROM missing")
        cur.executemany("UPDATE items SET name = %s WHERE id = %s", iter([(SECRET, 1)] * 3))
    assert len(tel.spans()) == 4  # one span per statement, nothing else
    _check_statement_spans(tel, before)


async def test_async_statements(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    patched("psycopg")
    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
        await conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, name text)")
        tel.clear()
        before = _selects(tel)
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
            await cur.execute(f"SELECT name FROM items WHERE name = '{SECRET}' AND id > 0")
            assert await cur.fetchone() == (SECRET,)
            with pytest.raises(psycopg.errors.UndefinedTable):
                await cur.execute("SELECT * FROM missing")
            await cur.executemany("UPDATE items SET name = %s WHERE id = %s", [(SECRET, 1)] * 3)
    assert len(tel.spans()) == 4
    _check_statement_spans(tel, before)


def test_parameters_only_when_opted_in(pg, tel, settings_env) -> None:  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_CAPTURE_SQL_PARAMETERS": "true"})
    pg.execute("SELECT %s::text", (SECRET,))
    assert tel.span("SELECT test").attributes["db.query.parameter.0"] == SECRET


def _running_sleeps(app: str) -> int:
    with psycopg.connect(PG_DSN) as other:  # not instrumented: patched only for the test's connection
        return other.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                             "AND query LIKE 'SELECT pg_sleep%%' AND state = 'active'", (app,)).fetchone()[0]


def test_deadline_cancels_server_side(pg, tel) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    with _context.deadline_scope(0.5), pytest.raises(psycopg.errors.QueryCanceled):
        pg.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - start < 1.5
    assert _running_sleeps("instrument-test-psycopg") == 0
    span = tel.span("SELECT test", **{"db.query.text": "SELECT pg_sleep(?)"})
    assert span.attributes["db.response.status_code"] == "57014"
    assert pg.execute("SELECT 1").fetchone() == (1,)  # the connection is still usable


def test_policy_timeout_from_settings(pg, tel, settings_env) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("instrument.policies._config")
    settings_env({"INSTRUMENT_POLICIES": "postgresql://127.0.0.1:5432/test=timeout(500ms)"})
    start = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        pg.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - start < 1.5
    assert _running_sleeps("instrument-test-psycopg") == 0


async def test_async_cancel_reaches_server(tel, patched) -> None:  # type: ignore[no-untyped-def]
    """What an async Timeout does (cancel the task): psycopg sends the cancel request, the server stops."""
    need("postgresql")
    patched("psycopg")
    app = "instrument-test-apsycopg-cancel"
    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True, application_name=app) as conn:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0.5)
        assert time.monotonic() - start < 1.5
        await asyncio.sleep(0.1)
        assert _running_sleeps(app) == 0
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    span = tel.span("SELECT test", **{"db.query.text": "SELECT pg_sleep(?)"})
    assert "error.type" not in span.attributes  # a cancelled call is not an error


async def test_async_policy_timeout_cancels_server_side(tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    pytest.importorskip("instrument.policies._config")
    patched("psycopg")
    settings_env({"INSTRUMENT_POLICIES": "postgresql://127.0.0.1:5432/test=timeout(500ms)"})
    app = "instrument-test-apsycopg"
    async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True, application_name=app) as conn:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 1.5
        await asyncio.sleep(0.1)
        assert _running_sleeps(app) == 0
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


def test_connection_execute_runs_the_cursor_it_would_have_run(pg, tel) -> None:  # type: ignore[no-untyped-def]
    """``conn.execute`` starts the span and runs psycopg's own Cursor.execute without passing through our
    wrapper of it again; a connection's cursor class with an execute of its own, binary results, parameters,
    ``prepare=`` and composed SQL still behave as psycopg's own ``Connection.execute``, with one span each."""
    from psycopg import sql

    from instrument.integrations import psycopg as integration

    assert integration._cursor_execute, "psycopg's Connection.execute changed: the direct path is off"  # noqa: SLF001
    seen: list[str] = []

    class Counting(psycopg.Cursor):  # type: ignore[misc,type-arg]
        def execute(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(query)
            return super().execute(query, params, **kwargs)

    assert pg.execute("SELECT %s::int", (7,), prepare=True).fetchone() == (7,)
    assert pg.execute(b"SELECT 2", binary=True).pgresult.fformat(0) == 1  # a binary column
    assert pg.execute(sql.SQL("SELECT {}").format(sql.Literal(3))).fetchone() == (3,)
    pg.cursor_factory = Counting
    try:
        assert pg.execute("SELECT 4").fetchone() == (4,)
    finally:
        pg.cursor_factory = psycopg.Cursor
    assert seen == ["SELECT 4"]  # the application's cursor class is still the one that runs it
    spans = [s for s in tel.spans() if s.attributes.get("db.system.name") == "postgresql"]
    assert [s.attributes["db.query.text"] for s in spans] == ["SELECT %s::int", "SELECT ?", "SELECT ?", "SELECT ?"]


def test_a_pool_s_connections_get_their_own_execute_wrapper(tel, patched) -> None:  # type: ignore[no-untyped-def]
    """psycopg_pool lends the same connections over and over: each gets a wrapper of its own for ``execute``
    (no binding of the class-level wrapper per statement); a connection made outside a pool does not (an
    application may drop it unclosed); each statement is still one span; unpatching takes them away."""
    need("postgresql")
    psycopg_pool = pytest.importorskip("psycopg_pool")
    patched("psycopg")
    patched("psycopg_pool")
    with psycopg_pool.ConnectionPool(PG_DSN, min_size=1, max_size=1, kwargs={"autocommit": True}, open=True) as pool:
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert "execute" in vars(conn) and vars(conn)["execute"].__self__ is conn
        assert [s.name for s in tel.spans()] == ["SELECT test"] * 3
        with psycopg.connect(PG_DSN, autocommit=True) as alone:
            alone.execute("SELECT 1")
            assert "execute" not in vars(alone) and len(tel.spans()) == 4
        from instrument import integrations

        integrations.unpatch("psycopg")
        assert "execute" not in vars(conn)
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        assert len(tel.spans()) == 4
