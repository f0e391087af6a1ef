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
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    engine = sqlalchemy.create_engine(URL, pool_size=1)  # made while its variant is active
    if SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry:
        # contrib attaches listeners per engine and removes them all on uninstrument(): re-attach on every
        # activation by passing the engines of both contrib variants (see _contrib_kwargs)
        ctx.extra.setdefault("sqlalchemy.contrib_engines", []).append(engine)
    conn = engine.connect()
    ctx.on_close(lambda: (conn.close(), engine.dispose()))
    stmt = sqlalchemy.text("SELECT 1")
    execute = conn.execute
    return lambda: execute(stmt)


def _contrib_kwargs(ctx: Ctx) -> dict:
    engines = ctx.extra.get("sqlalchemy.contrib_engines")
    return {"skip_dep_check": True, **({"engines": list(engines)} if engines else {})}


SPEC = OpSpec("sqlalchemy", "SQLAlchemy SELECT 1", ("psycopg", "sqlalchemy"), _contrib, _make, "postgresql://*",
              service=("127.0.0.1", 5432), contrib_kwargs=_contrib_kwargs)
