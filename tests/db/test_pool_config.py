"""Pooling selected by configuration: INSTRUMENT_DB_POOL makes psycopg2.connect / pymysql.connect hand out pooled
connections (close() gives back), with the pool's metrics; a bad value is a ConfigError naming the variable."""

from __future__ import annotations

import pytest

from instrument.errors import ConfigError
from instrument.pool import parse_config
from tests.conftest import need
from tests.db.conftest import MYSQL, PG


def test_parse_config() -> None:
    assert parse_config("psycopg2(max_size=10, acquire_timeout=5s, max_lifetime=600);pymysql") == {
        "psycopg2": {"max_size": 10, "acquire_timeout": 5.0, "max_lifetime": 600.0}, "pymysql": {}}
    with pytest.raises(ConfigError, match="INSTRUMENT_DB_POOL"):
        parse_config("psycopg2(size=1)")
    with pytest.raises(ConfigError, match="INSTRUMENT_DB_POOL"):
        parse_config("psycopg2(max_size=x)")


def test_psycopg2_pooled_by_configuration(tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    psycopg2 = pytest.importorskip("psycopg2")
    settings_env({"INSTRUMENT_DB_POOL": "psycopg2(max_size=2,acquire_timeout=0.05)"})
    patched("psycopg2")
    first = psycopg2.connect(**PG)
    pid = first.get_backend_pid()
    first.close()
    second = psycopg2.connect(**PG)
    assert second.get_backend_pid() == pid  # the same server connection, reused
    with second, second.cursor() as cur:  # psycopg2's `with conn` ends the transaction only
        cur.execute("SELECT 1")
    third = psycopg2.connect(**PG)
    from instrument.errors import PoolExhausted

    with pytest.raises(PoolExhausted):
        psycopg2.connect(**PG)
    second.close()
    third.close()
    assert tel.metric_total("db.client.connection.count", **{"db.client.connection.pool.name": "psycopg2",
                                                             "db.client.connection.state": "used"}) == 0
    assert tel.span("SELECT test")


def test_pymysql_pooled_by_configuration(tel, patched, settings_env) -> None:  # type: ignore[no-untyped-def]
    need("mariadb")
    pymysql = pytest.importorskip("pymysql")
    settings_env({"INSTRUMENT_DB_POOL": "pymysql(max_size=1)"})
    patched("pymysql")
    with pymysql.connect(**MYSQL) as conn:  # PyMySQL's `with` closes: here it gives back
        thread = conn.thread_id()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    with pymysql.connect(**MYSQL) as again:
        assert again.thread_id() == thread
    assert tel.metric_total("db.client.connection.count", **{"db.client.connection.pool.name": "pymysql",
                                                             "db.client.connection.state": "idle"}) == 1
