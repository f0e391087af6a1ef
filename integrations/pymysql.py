"""PyMySQL: one CLIENT span, ``db.client.operation.duration`` and policies per statement (MySQL and MariaDB).

``pymysql.cursors.Cursor.execute``/``executemany``/``callproc`` are Python methods, wrapped once at class level
(every cursor class inherits them; executemany's internal executes are folded into its one span). The
endpoint (``mysql://host:port/db``) is resolved once per connection; ``db.system.name`` is ``mariadb``
when the server says so, else ``mysql``. ``db.response.status_code`` is the MySQL error number.
Deadlines: a statement running under a Timeout policy is stopped server-side at the deadline with
``KILL QUERY`` (sent on a short-lived second connection), raising the driver's OperationalError 1317; when
that does not complete within ``instrument._dbapi.CANCEL_GRACE`` (a partition), the connection's socket is
shut down and the statement raises OperationalError 1317 at once (the connection is then broken).
Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=pymysql.
"""

from __future__ import annotations

from typing import Any

import pymysql
from pymysql import err

from instrument import _context
from instrument._call import Endpoint, endpoint
from instrument._dbapi import batch_size, execute, sql_errors
from instrument.patching import Target, apply, revert

TARGETS = (
    Target("pymysql.cursors", "Cursor.execute"),
    Target("pymysql.cursors", "Cursor.executemany"),
    Target("pymysql.cursors", "Cursor.callproc"),
)

ERRORS = sql_errors(err.OperationalError, err.InterfaceError, timeout=lambda msg: err.OperationalError(1317, msg))


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or None


def endpoint_for(conn: Any) -> Endpoint:
    ep = conn.__dict__.get("_instrument_endpoint")
    if ep is None:
        version = _text(getattr(conn, "server_version", "")) or ""
        system = "mariadb" if "mariadb" in version.lower() else "mysql"
        host, port, db = conn.host, conn.port, _text(conn.db)
        ep = endpoint("db", system, f"{system}://{host}:{port}/{db or ''}", server_address=host,
                      server_port=port, namespace=db, errors=ERRORS)
        conn.__dict__["_instrument_endpoint"] = ep
    return ep


def _kill_query(conn: Any) -> None:
    with _context.suppress():
        killer = pymysql.connect(host=conn.host, port=conn.port, user=conn.user, password=conn.password,
                                 connect_timeout=5, read_timeout=5, write_timeout=5,
                                 unix_socket=getattr(conn, "unix_socket", None))
        try:
            with killer.cursor() as cur:
                cur.execute(f"KILL QUERY {int(conn.thread_id())}")
        finally:
            killer.close()


def _abort(conn: Any) -> None:
    import socket

    sock = conn._sock  # the connection's own socket; a blocked read then sees EOF
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    conn = instance.connection
    query = args[0] if args else kwargs.get("query")
    params = args[1] if len(args) > 1 else kwargs.get("args")
    return execute(endpoint_for(conn), wrapped, args, kwargs, query, params, cancel=_kill_query, target=conn,
                   abort=_abort)


def _executemany(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    conn = instance.connection
    query = args[0] if args else kwargs.pop("query")
    seq, size = batch_size(args[1] if len(args) > 1 else kwargs.pop("args"))
    return execute(endpoint_for(conn), wrapped, (query, seq), kwargs, query, seq, cancel=_kill_query,
                   target=conn, batch=size, abort=_abort)


def _callproc(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ep = endpoint_for(instance.connection)
    name = args[0] if args else kwargs.get("procname")
    return ep.call(ep.op("CALL"), wrapped, args, kwargs, attributes={"db.stored_procedure.name": str(name)})


_pooled: list[Any] = []  # the pooled connect, when INSTRUMENT_DB_POOL selects pymysql
CONNECTS = (Target("pymysql", "connect"), Target("pymysql", "Connect", optional=True))


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _pooled and not kwargs.pop("_instrument_unpooled", False):
        return _pooled[0](*args, **kwargs, _instrument_unpooled=True)
    return wrapped(*args, **kwargs)


def patch() -> None:
    from instrument.pool import configured, pooled_connect

    options = configured("pymysql")
    if options is not None:
        apply(CONNECTS, _connect)
        _pooled[:] = [pooled_connect(pymysql.connect, name="pymysql", close_on_exit=True,
                                     check=lambda conn: conn.ping(False), **options)]
    apply(TARGETS[:1], _execute)
    apply(TARGETS[1:2], _executemany)
    apply(TARGETS[2:], _callproc)


def unpatch() -> None:
    for pool in getattr(_pooled[0], "pools", {}).values() if _pooled else ():
        pool.close()
    _pooled.clear()
    revert(CONNECTS)
    revert(TARGETS)
