"""SQL parsing and sanitising (instrument._sql): operation, collection, literals -> ?."""

from __future__ import annotations

import pytest

from instrument._sql import describe, sanitize


@pytest.mark.parametrize(("sql", "operation", "collection"), [
    ("SELECT * FROM users WHERE id = 1", "SELECT", "users"),
    ("  /* hi */ select a from public.orders", "SELECT", "public.orders"),
    ('INSERT INTO "My Table" (a) VALUES (%s)', "INSERT", "My Table"),
    ("insert into `db`.`t` values (1)", "INSERT", "db.t"),
    ("UPDATE accounts SET x = 1", "UPDATE", "accounts"),
    ("DELETE FROM t WHERE a = 1", "DELETE", "t"),
    ("WITH x AS (SELECT 1 FROM a) DELETE FROM b USING x", "DELETE", "b"),
    ("WITH x AS (SELECT 1 FROM a) SELECT * FROM x", "SELECT", "x"),
    ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
    ("SELECT * FROM a, b", "SELECT", None),
    ("SELECT * FROM (SELECT 1) q", "SELECT", None),
    ("SELECT pg_sleep(1)", "SELECT", None),
    ("CREATE TABLE IF NOT EXISTS foo (id int)", "CREATE", "foo"),
    ("DROP TABLE IF EXISTS foo", "DROP", "foo"),
    ("TRUNCATE TABLE foo", "TRUNCATE", "foo"),
    ("BEGIN", "BEGIN", None),
    ("(SELECT 1 FROM t)", "SELECT", "t"),
    ("", "", None),
])
def test_operation_and_collection(sql: str, operation: str, collection: str | None) -> None:
    assert describe(sql)[:2] == (operation, collection)


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE a = 'x' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("SELECT 'it''s', E'a\\'b', $$dollar 'x'$$, $tag$ 1 $tag$", "SELECT ?, ?, ?, ?"),
    ("SELECT 0xFF, X'AB', B'0101', N'n', 1.5e-3, .5", "SELECT ?, ?, ?, ?, ?, ?"),
    ("SELECT -1, a - 2, a-3, f(-4), x = -5", "SELECT ?, a - ?, a-?, f(?), x = ?"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3) AND s IN ('a','b')", "SELECT * FROM t WHERE id IN (?) AND s IN (?)"),
    ("SELECT t1.c2, col_3 FROM t1", "SELECT t1.c2, col_3 FROM t1"),
    ("SELECT $1, %s, %(name)s, ?, :name", "SELECT $1, %s, %(name)s, ?, :name"),
    ("SELECT TRUE, NULL, \"quoted id\"", "SELECT TRUE, NULL, \"quoted id\""),
    ("SELECT 'unterminated secret", "SELECT ?"),
])
def test_sanitize(sql: str, expected: str) -> None:
    assert sanitize(sql) == expected


def test_mysql_strings() -> None:
    assert sanitize("SELECT \"dq\", 'a\\'b', `id` FROM t WHERE x = 1", "mysql") == "SELECT ?, ?, `id` FROM t WHERE x = ?"


def test_parameterized_text_kept_as_is() -> None:
    assert describe("SELECT * FROM t WHERE a = %s AND b = 'lit'", "postgresql", True)[2] == \
        "SELECT * FROM t WHERE a = %s AND b = 'lit'"
    assert describe("SELECT * FROM t WHERE b = 'lit'", "postgresql", False)[2] == "SELECT * FROM t WHERE b = ?"


def test_error_message_drops_quoted_values() -> None:
    from instrument._dbapi import error_message

    class Diag:
        message_primary = 'duplicate key value violates unique constraint "u_pkey"'

    class PgError(Exception):
        diag = Diag()

    assert error_message(PgError("x\nDETAIL:  Key (id)=(secret) already exists.")) == \
        'duplicate key value violates unique constraint "u_pkey"'
    mysql = Exception(1062, "Duplicate entry 'secret' for key 'PRIMARY'")
    assert error_message(mysql) == "Duplicate entry ? for key ?"
    assert "secret" not in error_message(Exception("dup\nDETAIL:  Key (id)=(secret) already exists."))


def test_a_statement_is_described_once_per_endpoint_and_its_attributes_are_never_changed(settings_env) -> None:  # type: ignore[no-untyped-def]
    from instrument import _dbapi
    from instrument._call import endpoint

    ep = endpoint("db", "postgresql", "postgresql://statements:1/x", server_address="statements", server_port=1)
    literal = "SELECT * FROM t WHERE id = 1"
    op, attributes = _dbapi.prepare(ep, literal, None)
    again = _dbapi.prepare(ep, literal, None)
    assert again[0] is op and again[1] is attributes and attributes == {}
    # the statement's text is the Op's own span attribute (merged once); its metrics are the operation's
    assert op.name == "SELECT" and op.subject == "t"
    assert op.span_attributes["db.query.text"] == "SELECT * FROM t WHERE id = ?"
    plain = ep.op("SELECT", "t")
    assert "db.query.text" not in plain.span_attributes
    assert op.outcome(None, None)[1] is plain.outcome(None, None)[1] and op.histogram is plain.histogram
    batch = _dbapi.prepare(ep, literal, None, batch=3)
    assert batch[0] is op and batch[1] == {"db.operation.batch.size": 3}
    # parameterised text is kept as is; the parameters only while the setting says so (read per call)
    with_params = "SELECT * FROM t WHERE id = %s"
    settings_env({"INSTRUMENT_CAPTURE_SQL_PARAMETERS": "true"})
    captured = _dbapi.prepare(ep, with_params, (5,))
    assert captured[0].span_attributes["db.query.text"] == with_params and captured[1] == {"db.query.parameter.0": 5}
    settings_env({})
    assert _dbapi.prepare(ep, with_params, (5,))[1] == {}
    assert _dbapi.prepare(ep, b"SELECT 2", None)[0].span_attributes["db.query.text"] == "SELECT ?"  # bytes: described
    assert attributes == {} and "db.query.text" not in plain.span_attributes  # no call changed a shared dict
    for i in range(_dbapi._STATEMENTS_MAX + 100):
        _dbapi.prepare(ep, f"SELECT {i}", None)
    assert len(ep.statements) == _dbapi._STATEMENTS_MAX
