"""psycopg 3 ``SELECT 1`` on one connection (PostgreSQL 127.0.0.1:5432, db ``test``, user postgres)."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def _contrib():
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    return PsycopgInstrumentor()


def _make(ctx: Ctx):
    import psycopg

    conn = psycopg.connect(DSN, autocommit=True)  # made while its variant is active (contrib wraps connect)
    ctx.on_close(conn.close)
    cursor = conn.cursor()
    execute = cursor.execute
    return lambda: execute("SELECT 1")


SPEC = OpSpec("psycopg", "psycopg SELECT 1", ("psycopg",), _contrib, _make, "postgresql://*",
              service=("127.0.0.1", 5432))
