"""SQLAlchemy Core ``SELECT 1`` on one Connection (psycopg 3 driver).

Ours: the statement span comes from the psycopg integration (see integrations/sqlalchemy.py: the SQLAlchemy
integration adds pool metrics only), so both are patched. Contrib's SQLAlchemyInstrumentor declares
``sqlalchemy < 2.1``; it is forced on (``skip_dep_check``) and does make its span on 2.1.
"""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _contrib():
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    return SQLAlchemyInstrumentor()


def _make(ctx: Ctx):
    import sqlalchemy

    engine = sqlalchemy.create_engine(URL, pool_size=1)  # made while its variant is active
    conn = engine.connect()
    ctx.on_close(lambda: (conn.close(), engine.dispose()))
    stmt = sqlalchemy.text("SELECT 1")
    execute = conn.execute
    return lambda: execute(stmt)


SPEC = OpSpec("sqlalchemy", "SQLAlchemy SELECT 1", ("psycopg", "sqlalchemy"), _contrib, _make, "postgresql://*",
              service=("127.0.0.1", 5432), contrib_kwargs={"skip_dep_check": True})
