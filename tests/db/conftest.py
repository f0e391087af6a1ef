"""Database test helpers: connection settings of the machine's services and a span/metric checker."""

from __future__ import annotations

from typing import Any

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}

SECRET = "s3cr3t-value-42"


def no_secret(tel: Any, secret: str = SECRET) -> None:
    """The secret appears in no span attribute, event or status, and in no metric attribute."""
    for span in tel.spans():
        blob = repr(dict(span.attributes or {})) + repr(span.status.description) + span.name
        for event in span.events:
            blob += repr(dict(event.attributes or {}))
        assert secret not in blob, (span.name, blob)


def one_statement_span(tel: Any, name: str, **attrs: Any) -> Any:
    span = tel.span(name, **attrs)
    assert span.kind.name == "CLIENT"
    return span
