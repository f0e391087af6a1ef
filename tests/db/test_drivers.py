"""psycopg2, sqlite3, PyMySQL (MariaDB), asyncpg, redis-py, SQLAlchemy: one span per statement, SEMCONV
attributes, the duration point, a failing statement with its status code and error.type, no parameter values,
literals sanitised in non-parameterised SQL, deadlines cancelling server-side."""

from __future__ import annotations

import time
from typing import Any

import pytest

from instrument import _context
from tests.conftest import need
from tests.db.conftest import MYSQL, PG, SECRET, no_secret


def _duration_points(tel: Any, **attrs: Any) -> float:
    return tel.metric_total("db.client.operation.duration", **attrs)


def _check_sql(tel: Any, base: dict[str, Any], *, insert_text: str, select_text: str, failed: str,
               status: str, error_type: str) -> None:
    insert = tel.spans("INSERT items")[0]
    assert dict(insert.attributes) == {**base, "db.operation.name": "INSERT", "db.collection.name": "items",
                                       "db.query.text": insert_text}
    assert insert.kind.name == "CLIENT"
    assert tel.span("SELECT items").attributes["db.query.text"] == select_text
    bad = tel.span(failed)
    assert bad.attributes["db.response.status_code"] == status
    assert bad.attributes["error.type"] == error_type
    assert bad.status.status_code.name == "ERROR"
    assert tel.metric_points("db.client.operation.duration", **{**base, "db.operation.name": "INSERT"})
    assert tel.metric_points("db.client.operation.duration", **{"error.type": error_type})
    no_secret(tel)


# -- psycopg2 --------------------------------------------------------------------------------------------


def test_psycopg2(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    pytest.importorskip("psycopg2")
    import psycopg2
    import psycopg2.extras

    patched("psycopg2")
    conn = psycopg2.connect(**PG, application_name="instrument-test-psycopg2")
    try:
        psycopg2.extras.register_uuid(conn_or_curs=conn)  # C-level APIs still get a real connection
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE items (id int, name text)")
            tel.clear()
            cur.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
            cur.execute(f"SELECT name FROM items WHERE name = '{SECRET}'")
            assert cur.fetchone() == (SECRET,)
            with pytest.raises(psycopg2.errors.UndefinedTable):
                cur.execute("SELECT * FROM missing")
        assert len(tel.spans()) == 3
        _check_sql(tel, {"db.system.name": "postgresql", "db.namespace": "test", "server.address": "127.0.0.1",
                         "server.port": 5432},
                   insert_text="INSERT INTO items VALUES (%s, %s)",
                   select_text="SELECT name FROM items WHERE name = ?", failed="SELECT missing", status="42P01",
                   error_type="psycopg2.errors.UndefinedTable")
        # a deadline cancels the statement on the server
        start = time.monotonic()
        with _context.deadline_scope(0.4), pytest.raises(psycopg2.extensions.QueryCanceledError):
            conn.cursor().execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 1.5
    finally:
        conn.close()


# -- sqlite3 ---------------------------------------------------------------------------------------------


def test_sqlite3(tel, patched, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    patched("sqlite3")
    path = str(tmp_path / "test.db")
    conn = sqlite3.connect(path)
    assert isinstance(conn, sqlite3.Connection)
    conn.execute("CREATE TABLE items (id int, name text)")
    tel.clear()
    conn.execute("INSERT INTO items VALUES (?, ?)", (1, SECRET))
    cur = conn.cursor()
    cur.execute(f"SELECT name FROM items WHERE name = '{SECRET}' AND id = 1")
    assert cur.fetchone() == (SECRET,)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELECT * FROM missing")
    conn.executemany("INSERT INTO items VALUES (?, ?)", [(2, SECRET), (3, SECRET)])
    assert len(tel.spans()) == 4
    base = {"db.system.name": "sqlite", "db.namespace": path}
    insert = tel.spans("INSERT items")[0]
    assert dict(insert.attributes) == {**base, "db.operation.name": "INSERT", "db.collection.name": "items",
                                       "db.query.text": "INSERT INTO items VALUES (?, ?)"}
    assert tel.spans("INSERT items")[1].attributes["db.operation.batch.size"] == 2
    assert tel.span("SELECT items").attributes["db.query.text"] == "SELECT name FROM items WHERE name = ? AND id = ?"
    assert tel.span("SELECT missing").attributes["error.type"] == "sqlite3.OperationalError"
    assert tel.metric_points("db.client.operation.duration", **{**base, "db.operation.name": "SELECT"})
    no_secret(tel)
    conn.close()


# -- PyMySQL on MariaDB ----------------------------------------------------------------------------------


def test_pymysql_mariadb(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("mariadb")
    pymysql = pytest.importorskip("pymysql")
    patched("pymysql")
    conn = pymysql.connect(**MYSQL, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TEMPORARY TABLE items (id int, name text)")
        tel.clear()
        cur.execute("INSERT INTO items VALUES (%s, %s)", (1, SECRET))
        cur.execute(f"SELECT name FROM items WHERE name = '{SECRET}' AND id = \"1\"")
        assert cur.fetchone() == (SECRET,)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM missing")
        cur.executemany("INSERT INTO items VALUES (%s, %s)", [(2, SECRET), (3, SECRET)])
        assert len(tel.spans()) == 4  # executemany's internal execute is folded into its span
        base = {"db.system.name": "mariadb", "db.namespace": "test", "server.address": "127.0.0.1",
                "server.port": 3306}
        assert tel.spans("INSERT items")[1].attributes["db.operation.batch.size"] == 2
        assert tel.span("SELECT items").attributes["db.query.text"] == "SELECT name FROM items WHERE name = ? AND id = ?"
        bad = tel.span("SELECT missing")
        assert bad.attributes["error.type"] == "pymysql.err.ProgrammingError"
        assert bad.attributes["db.response.status_code"] in ("42S02", "1146")
        assert tel.metric_points("db.client.operation.duration", **{**base, "db.operation.name": "INSERT"})
        no_secret(tel)
        start = time.monotonic()
        with _context.deadline_scope(0.4), pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT SLEEP(10)")
            cur.fetchall()
            raise pymysql.err.OperationalError(0, "SLEEP returned early")  # MariaDB: a killed SLEEP returns 1
        assert time.monotonic() - start < 1.5
    finally:
        conn.close()


# -- asyncpg ---------------------------------------------------------------------------------------------


async def test_asyncpg(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    asyncpg = pytest.importorskip("asyncpg")
    patched("asyncpg")
    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
    try:
        await conn.execute("CREATE TEMP TABLE items (id int, name text)")
        tel.clear()
        await conn.execute("INSERT INTO items VALUES ($1, $2)", 1, SECRET)
        assert await conn.fetchval(f"SELECT name FROM items WHERE name = '{SECRET}'") == SECRET
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            await conn.fetch("SELECT * FROM missing")
        await conn.executemany("INSERT INTO items VALUES ($1, $2)", [(2, SECRET), (3, SECRET)])
        assert len(tel.spans()) == 4
        _check_sql(tel, {"db.system.name": "postgresql", "db.namespace": "test", "server.address": "127.0.0.1",
                         "server.port": 5432},
                   insert_text="INSERT INTO items VALUES ($1, $2)", select_text="SELECT name FROM items WHERE name = ?",
                   failed="SELECT missing", status="42P01", error_type="asyncpg.exceptions.UndefinedTableError")
        # the deadline becomes asyncpg's timeout=, which cancels server-side
        start = time.monotonic()
        with _context.deadline_scope(0.4), pytest.raises(TimeoutError):
            await conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 1.5
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


# -- redis -----------------------------------------------------------------------------------------------

REDIS_BASE = {"db.system.name": "redis", "db.namespace": "0", "server.address": "127.0.0.1", "server.port": 6379}


def _check_redis(tel: Any) -> None:
    assert dict(tel.span("SET 0").attributes) == {**REDIS_BASE, "db.operation.name": "SET"}
    multi = tel.span("MULTI 0")
    assert multi.attributes["db.operation.batch.size"] == 3
    assert tel.span("PIPELINE 0").attributes["db.operation.batch.size"] == 2
    bad = tel.span("LPUSH 0")
    assert bad.attributes["db.response.status_code"] == "WRONGTYPE"
    assert bad.attributes["error.type"] == "redis.exceptions.ResponseError"
    assert tel.metric_points("db.client.operation.duration", **{**REDIS_BASE, "db.operation.name": "GET"})
    assert len(tel.spans()) == 5  # SET, GET, MULTI, PIPELINE, LPUSH: the pipelines' commands are not separate
    no_secret(tel)


def test_redis_sync(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    redis = pytest.importorskip("redis")
    patched("redis")
    client = redis.Redis(host="127.0.0.1", port=6379)
    key = f"instrument-test:{time.monotonic_ns()}"
    client.set(key, SECRET)
    assert client.get(key) == SECRET.encode()
    with client.pipeline() as pipe:
        pipe.set(key + ":a", SECRET).get(key + ":a").delete(key + ":a").execute()
    with client.pipeline(transaction=False) as pipe:
        pipe.get(key).get(key).execute()
    with pytest.raises(redis.ResponseError):
        client.lpush(key, SECRET)
    _check_redis(tel)
    client.delete(key)
    client.close()


async def test_redis_async(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("redis")
    aredis = pytest.importorskip("redis.asyncio")
    import redis

    patched("redis")
    client = aredis.Redis(host="127.0.0.1", port=6379)
    key = f"instrument-test:{time.monotonic_ns()}"
    await client.set(key, SECRET)
    assert await client.get(key) == SECRET.encode()
    async with client.pipeline() as pipe:
        await pipe.set(key + ":a", SECRET).get(key + ":a").delete(key + ":a").execute()
    async with client.pipeline(transaction=False) as pipe:
        await pipe.get(key).get(key).execute()
    with pytest.raises(redis.ResponseError):
        await client.lpush(key, SECRET)
    _check_redis(tel)
    await client.delete(key)
    await client.aclose()


# -- SQLAlchemy: exactly one span per statement ----------------------------------------------------------


def test_sqlalchemy_engine_one_span_per_statement(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    sa = pytest.importorskip("sqlalchemy")
    patched("sqlalchemy")
    patched("psycopg")
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))  # first use runs dialect set-up queries
        tel.clear()
        conn.execute(sa.text("SELECT cast(:x as text)"), {"x": SECRET})
        conn.execute(sa.text("SELECT 2"))
    spans = tel.spans()
    texts = [s.attributes["db.query.text"] for s in spans]
    assert texts[:2] == ["SELECT cast(%(x)s as text)", "SELECT ?"]
    assert set(texts[2:]) <= {"ROLLBACK"}  # SQLAlchemy's own statements are spans too, once each
    no_secret(tel)
    engine.dispose()


async def test_sqlalchemy_async_engine_one_span_per_statement(tel, patched) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    pytest.importorskip("sqlalchemy")
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    patched("sqlalchemy")
    patched("asyncpg")
    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        tel.clear()
        await conn.execute(sa.text("SELECT cast(:x as text)"), {"x": SECRET})
        await conn.execute(sa.text("SELECT 2"))
    texts = [s.attributes["db.query.text"] for s in tel.spans()]
    assert texts[:2] == ["SELECT cast($1 as text)", "SELECT ?"]
    assert set(texts[2:]) <= {"ROLLBACK;"}
    no_secret(tel)
    await engine.dispose()
