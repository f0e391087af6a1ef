"""sqlite3: one CLIENT span, ``db.client.operation.duration`` and policies per statement.

``sqlite3.connect`` is wrapped to pass ``factory=`` a traced subclass of the connection class asked for
(the documented extension point: the connection stays a real ``sqlite3.Connection``, so ``backup()``,
``isinstance`` and C-level APIs keep working). Its ``cursor()`` returns a traced cursor proxy (cursors are C
types) and ``execute``/``executemany``/``executescript`` go through one. ``db.namespace`` is the database
path as given. Deadlines interrupt the running statement (``Connection.interrupt()``).
Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=sqlite3.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import Any

from instrument._call import Endpoint, endpoint
from instrument._dbapi import CursorProxy, execute, sql_errors
from instrument.patching import Target, apply, revert

TARGETS = (Target("sqlite3", "connect"), Target("sqlite3.dbapi2", "connect"))

ERRORS = sql_errors(sqlite3.OperationalError, sqlite3.InterfaceError)


def _interrupt(conn: Any) -> None:
    conn.interrupt()


class _TracedConnection:
    """Mixed in before the application's connection class (see :func:`_traced_class`)."""

    _instrument_endpoint: Endpoint

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return CursorProxy(super().cursor(*args, **kwargs), self._instrument_endpoint, self, _interrupt)  # type: ignore[misc]

    def execute(self, sql: str, *args: Any) -> Any:
        return self.cursor().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self.cursor().executemany(sql, *args)

    def executescript(self, script: str) -> Any:
        cur = self.cursor()
        ep = self._instrument_endpoint
        return execute(ep, cur.__wrapped__.executescript, (script,), {}, script, None, cancel=_interrupt, target=self)


@functools.lru_cache(maxsize=64)
def _traced_class(factory: type) -> type:
    if issubclass(factory, _TracedConnection):
        return factory
    return type(f"Traced{factory.__name__}", (_TracedConnection, factory), {"__module__": __name__})


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    database = args[0] if args else kwargs.get("database", "")
    if len(args) > 5:  # connect(database, timeout, detect_types, isolation_level, check_same_thread, factory, ...)
        args = (*args[:5], _traced_class(args[5] or sqlite3.Connection), *args[6:])
    else:
        kwargs = {**kwargs, "factory": _traced_class(kwargs.get("factory") or sqlite3.Connection)}
    conn = wrapped(*args, **kwargs)
    if isinstance(database, bytes):
        database = database.decode("utf-8", "replace")
    name = os.fspath(database) if not isinstance(database, str) else database
    conn._instrument_endpoint = endpoint("db", "sqlite", f"sqlite:///{name}", namespace=name or None, errors=ERRORS)
    return conn


def patch() -> None:
    apply(TARGETS, _connect)


def unpatch() -> None:
    revert(TARGETS)
