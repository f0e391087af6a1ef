"""psycopg_pool: check a connection out of a ``ConnectionPool``, ``SELECT 1``, give it back."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec
from benchmarks.ops.psycopg import DSN


def _contrib():
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    return PsycopgInstrumentor()


def _make(ctx: Ctx):
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(DSN, min_size=1, max_size=1, kwargs={"autocommit": True}, open=True)
    pool.wait()
    ctx.on_close(pool.close)
    connection = pool.connection

    def call():
        with connection() as conn:
            conn.execute("SELECT 1")

    return call


SPEC = OpSpec("psycopg_pool", "psycopg_pool SELECT 1", ("psycopg", "psycopg_pool"), _contrib, _make,
              "postgresql://*", service=("127.0.0.1", 5432))
