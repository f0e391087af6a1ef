"""psycopg2: one CLIENT span, ``db.client.operation.duration`` and policies per statement.

``psycopg2.connect`` is wrapped to pass ``connection_factory=`` a traced subclass of the connection class
asked for (psycopg2's documented extension point: the connection stays a real C connection, so
``register_type``, ``extras.register_uuid(conn)`` and ``isinstance`` keep working). Its ``cursor()`` returns
a traced cursor proxy (cursors are C types; ``with conn.cursor() as cur`` and iteration work). The endpoint
is resolved once per connection. Deadlines: a statement running under a Timeout policy is cancelled
server-side at the deadline (``pg_cancel_backend`` on a short-lived second connection: QueryCanceledError,
SQLSTATE 57014; not ``connection.cancel()``, which holds the GIL while it waits for the server, so that
an unreachable server froze every thread of the process); when the server
does not answer the cancel within ``instrument._dbapi.CANCEL_GRACE`` (a partition), the connection's socket
is shut down and the statement raises QueryCanceledError at once (the connection is then broken). A connect
under a deadline gets ``connect_timeout``. With INSTRUMENT_DB_POOL naming psycopg2, ``connect`` hands out pooled
connections (see :mod:`instrument.pool`). Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=psycopg2.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import psycopg2
import psycopg2.extensions as ext

from instrument import _context
from instrument._call import Endpoint, endpoint
from instrument._dbapi import CursorProxy, shutdown_fd, sql_errors
from instrument.patching import Target, apply, revert

TARGETS = (Target("psycopg2", "connect"),)

ERRORS = sql_errors(psycopg2.OperationalError, psycopg2.InterfaceError, timeout=ext.QueryCanceledError,
                    timeouts=(ext.QueryCanceledError,))


def _cancel(conn: Any) -> None:
    """Cancel the running statement from a second connection (it releases the GIL while it waits)."""
    params = {k: v for k, v in conn.get_dsn_parameters().items() if v}
    password = getattr(conn.info, "password", None)
    if password:
        params["password"] = password
    params.update(connect_timeout="2", options="-c statement_timeout=2000", application_name="instrument-cancel")
    canceller = ext.connection(ext.make_dsn(**params))  # the C class itself: not traced, not pooled
    try:
        canceller.autocommit = True
        with canceller.cursor() as cur:
            cur.execute("SELECT pg_cancel_backend(%s)", (conn.info.backend_pid,))
    finally:
        canceller.close()


def _abort(conn: Any) -> None:
    shutdown_fd(conn.fileno())  # PQsocket: no connection lock, safe while a statement runs


class _TracedConnection:
    """Mixed in before the application's connection class (see :func:`_traced_class`)."""

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return CursorProxy(super().cursor(*args, **kwargs), endpoint_for(self), self, _cancel,  # type: ignore[misc]
                           _abort)


def endpoint_for(conn: Any) -> Endpoint:
    ep = conn.__dict__.get("_instrument_endpoint")
    if ep is None:
        params = conn.get_dsn_parameters()
        host, port, dbname = params.get("host"), params.get("port"), params.get("dbname")
        ep = endpoint("db", "postgresql", f"postgresql://{host}:{port}/{dbname}", server_address=host,
                      server_port=int(port) if port else None, namespace=dbname, errors=ERRORS)
        conn.__dict__["_instrument_endpoint"] = ep
    return ep


@functools.lru_cache(maxsize=64)
def _traced_class(factory: type) -> type:
    if issubclass(factory, _TracedConnection):
        return factory
    return type(f"Traced{factory.__name__}", (_TracedConnection, factory), {"__module__": __name__})


_pooled: list[Any] = []  # the pooled connect, when INSTRUMENT_DB_POOL selects psycopg2


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _pooled and not kwargs.pop("_instrument_unpooled", False):
        return _pooled[0](*args, **kwargs, _instrument_unpooled=True)
    kwargs = {**kwargs, "connection_factory": _traced_class(kwargs.get("connection_factory") or ext.connection)}
    left = _context.remaining()
    if left is not None and "connect_timeout" not in kwargs:
        kwargs["connect_timeout"] = max(2, math.ceil(left))  # libpq: whole seconds, 2 at least
    return wrapped(*args, **kwargs)


def patch() -> None:
    from instrument.pool import configured, pooled_connect

    apply(TARGETS, _connect)
    options = configured("psycopg2")
    if options is not None:
        _pooled[:] = [pooled_connect(psycopg2.connect, name="psycopg2", **options)]


def unpatch() -> None:
    for pool in getattr(_pooled[0], "pools", {}).values() if _pooled else ():
        pool.close()
    _pooled.clear()
    revert(TARGETS)
