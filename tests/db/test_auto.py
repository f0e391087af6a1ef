"""``import instrument.auto`` in a fresh interpreter: psycopg statements and pool metrics reach an OTLP receiver."""

from __future__ import annotations

import textwrap

from tests.conftest import need, run_python

CODE = textwrap.dedent("""
    import instrument.auto  # noqa: F401  - before the driver: patched by the import hook
    import time
    import psycopg, psycopg_pool
    with psycopg_pool.ConnectionPool("host=127.0.0.1 user=postgres dbname=test", min_size=1, max_size=2,
                                     name="auto-pool") as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 'secret-literal' AS x, %s::int AS y", (987654,))
            try:
                conn.execute("SELECT * FROM missing_table")
            except psycopg.errors.UndefinedTable:
                pass
        time.sleep(0.6)
    import instrument
    instrument.shutdown()
""")


def test_import_auto_exports_db_spans_and_pool_metrics(receiver) -> None:  # type: ignore[no-untyped-def]
    need("postgresql")
    result = run_python(CODE, env={**receiver.env(), "OTEL_SERVICE_NAME": "db-auto"}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    ok = receiver.wait_for_span(lambda s: s.name == "SELECT test")
    assert ok.kind == "CLIENT" or "CLIENT" in ok.kind
    assert ok.attributes["db.query.text"] == "SELECT 'secret-literal' AS x, %s::int AS y"  # parameterised: as is
    assert ok.attributes["db.system.name"] == "postgresql"
    failed = receiver.wait_for_span(lambda s: s.name == "SELECT missing_table")
    assert failed.attributes["db.response.status_code"] == "42P01"
    assert failed.is_error
    receiver.wait_for(lambda: receiver.metric_points("db.client.operation.duration"))
    wait = receiver.wait_for(lambda: [p for p in receiver.metric_points("db.client.connection.wait_time")
                                      if p.attributes.get("db.client.connection.pool.name") == "auto-pool"])
    assert wait[0].value >= 1
    assert receiver.wait_for(lambda: receiver.metric_points("db.client.connection.count"))
    assert "987654" not in repr([s.attributes for s in receiver.spans()])
