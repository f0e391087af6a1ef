"""psycopg 3: one CLIENT span, ``db.client.operation.duration`` and policies per statement.

``Cursor.execute``/``executemany`` and their ``AsyncCursor``/``ServerCursor`` twins are Python methods, so
they are wrapped once at class level (no proxies): ``ClientCursor``, ``RawCursor`` and row factories all pass
through them. ``Connection.execute``/``AsyncConnection.execute`` are wrapped too, because they fail before
any cursor runs when the connection is closed or lost (a server restart): that failure is then a failed
call too, seen by breakers and retries, and recorded (the cursor's execute inside is psycopg's own, called directly when the cursor class does not override it: not traced twice, and no second wrapper layer). The endpoint (``postgresql://host:port/dbname``) is resolved once per
connection and cached on it. ``db.query.text`` is the statement as is when it has parameters, otherwise
with its literals replaced by ``?``; parameter values only with INSTRUMENT_CAPTURE_SQL_PARAMETERS=true.

Errors: policies' rejections and injected faults are ``psycopg.OperationalError``; a timeout fault is
``psycopg.errors.QueryCanceled``. Breakers and retries count only operational/interface errors.
Deadlines: sync statements are cancelled server-side when a Timeout policy's deadline passes (the
PostgreSQL cancel request, raising ``QueryCanceled``); when the server does not answer the cancel within
``instrument._dbapi.CANCEL_GRACE`` (a partition), the connection's socket is shut down and the statement
raises ``QueryCanceled`` at once (from the driver's OperationalError; the connection is then broken). Async
ones are cancelled by the policy and psycopg sends the cancel request itself; under an expired deadline that
request may take ``CANCEL_GRACE`` only, after which the socket is shut down too, so the task ends at once
instead of psycopg's own 2 x 5 s (cancel, then wait for the server). A connect under a deadline gets
``connect_timeout``. Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=psycopg.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
from psycopg import errors as pe
from psycopg.pq import Format

from instrument import _context
from instrument._call import Endpoint, endpoint
from instrument._context import remaining
from instrument._dbapi import CANCEL_GRACE, aexecute, batch_size, execute, shutdown_fd, sql_errors
from instrument.patching import Target, apply, revert, static_attribute

TARGETS = (
    Target("psycopg", "Cursor.execute"),
    Target("psycopg", "Cursor.executemany"),
    Target("psycopg", "ServerCursor.execute", optional=True),
    Target("psycopg", "AsyncCursor.execute", is_async=True),
    Target("psycopg", "AsyncCursor.executemany", is_async=True),
    Target("psycopg", "AsyncServerCursor.execute", is_async=True, optional=True),
    # a pool's connections get wrappers of their own (psycopg_pool's integration asks): see patching's on_request
    Target("psycopg", "Connection.execute", per_instance=True, on_request=True),
    Target("psycopg", "AsyncConnection.execute", is_async=True, per_instance=True, on_request=True),
    Target("psycopg", "AsyncConnection.cancel_safe", is_async=True),
)

_suppressed = _context.suppressed
BINARY = Format.BINARY
_CACHED = "_instrument_endpoint"  # a connection's endpoint, set by endpoint_for

ERRORS = sql_errors(psycopg.OperationalError, psycopg.InterfaceError, timeout=pe.QueryCanceled,
                    timeouts=(pe.QueryCanceled, getattr(pe, "ConnectionTimeout", pe.QueryCanceled)))


def endpoint_for(conn: Any) -> Endpoint:
    """The endpoint of a psycopg connection, resolved once and cached on it."""
    ep = getattr(conn, _CACHED, None)
    if ep is None:
        info = conn.info
        host, port, dbname = info.host, info.port, info.dbname
        ep = endpoint("db", "postgresql", f"postgresql://{host}:{port}/{dbname}", server_address=host,
                      server_port=int(port) if port else None, namespace=dbname or None, errors=ERRORS)
        try:
            setattr(conn, _CACHED, ep)
        except AttributeError:
            pass
    return ep


def _cancel(conn: Any) -> None:
    cancel = getattr(conn, "cancel_safe", None)
    if cancel is not None:
        cancel(timeout=2.0)  # on the watchdog's cancel thread; the statement is aborted after CANCEL_GRACE
    else:
        conn.cancel()


def _abort(conn: Any) -> None:
    """Shut the connection's socket down: a statement blocked on it fails at once (connection lost)."""
    shutdown_fd(conn.pgconn.socket)


async def _acancel_safe(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """psycopg cancels a task's query itself (``cancel_safe(timeout=5.0)``, then waits 5 s for the server).
    Under a passed deadline (a Timeout policy cancelled the task) the request gets ``CANCEL_GRACE``; when it
    does not complete, the socket is shut down so that psycopg's wait ends at once and it closes the
    connection. Any other cancel (the application's own) is unchanged."""
    left = remaining()
    if left is None or left > 0:
        return await wrapped(*args, **kwargs)
    try:
        return await wrapped(timeout=CANCEL_GRACE)
    except BaseException:
        try:
            _abort(instance)
        except Exception:  # noqa: BLE001,S110 - best effort: the connection may already be gone
            pass
        raise


def _query(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    query = args[0] if args else kwargs.get("query")
    params = args[1] if len(args) > 1 else kwargs.get("params")
    return query, params


def _execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _suppressed.get():  # inside Connection.execute (or another traced layer)
        return wrapped(*args, **kwargs)
    conn = instance.connection
    # (query, params) and the connection's cached endpoint read inline: this runs for every statement
    query = args[0] if args else kwargs.get("query")
    if query.__class__ is not str:
        query = _render(query, conn)
    return execute(getattr(conn, _CACHED, None) or endpoint_for(conn), wrapped, args, kwargs, query,
                   args[1] if len(args) > 1 else kwargs.get("params"), cancel=_cancel, target=conn, abort=_abort)


def _conn_endpoint(conn: Any) -> Endpoint | None:
    """The endpoint of a connection that may be closed already (None when it was never resolved and cannot be)."""
    try:
        return endpoint_for(conn)
    except Exception:  # noqa: BLE001 - a closed, never used connection: psycopg raises its own error
        return None


def _conn_execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``Connection.execute``: the statement's span and policies start here, so that a closed connection's
    error (raised by ``cursor()``, before the cursor's execute) is a failed call too."""
    if _suppressed.get():
        return wrapped(*args, **kwargs)
    ep = getattr(instance, _CACHED, None) or _conn_endpoint(instance)  # (inline, as in _execute)
    if ep is None:
        return wrapped(*args, **kwargs)
    query = args[0] if args else kwargs.get("query")
    params = args[1] if len(args) > 1 else kwargs.get("params")
    if query.__class__ is str or query.__class__ is bytes:
        if _cursor_execute:  # the same statement, without passing through our Cursor.execute (see below)
            wrapped, args = _execute_directly, (instance, *args)
    else:
        query = _render(query, instance)
    return execute(ep, wrapped, args, kwargs, query, params, cancel=_cancel, target=instance, abort=_abort)


# Connection.execute is cursor() and then the cursor's execute, which, under the span Connection.execute
# started, passes through our Cursor.execute wrapper only to find that span (a wrapt layer: about 1.4 µs a
# statement here). When psycopg's Connection.execute is the one mirrored below (its names are checked when
# patching) and the cursor's class runs psycopg's own Cursor.execute, the unwrapped function is called.
_MIRRORED = (("cursor", "BINARY", "format", "isinstance", "Template", "TypeError", "execute", "e", "_NO_TRACEBACK",
              "with_traceback"),
             ("cursor", "BINARY", "format", "execute", "e", "_NO_TRACEBACK", "with_traceback"))  # psycopg < 3.3
_cursor_execute: list[Any] = []  # [our Cursor.execute wrapper, psycopg's own function] while patched
_plain_cursors: dict[type, bool] = {}  # cursor class -> its execute is psycopg's Cursor.execute


def _execute_directly(conn: Any, query: Any, params: Any = None, *, prepare: Any = None, binary: bool = False) -> Any:
    """psycopg's ``Connection.execute`` for a str or bytes query, calling the cursor's execute unwrapped."""
    cur = conn.cursor()
    if binary:
        cur.format = BINARY
    cls = cur.__class__
    plain = _plain_cursors.get(cls)
    if plain is None:
        plain = _plain_cursors[cls] = static_attribute(cls, "execute") is _cursor_execute[0]
    if plain:
        return _cursor_execute[1](cur, query, params, prepare=prepare)
    return cur.execute(query, params, prepare=prepare)  # a cursor class with an execute of its own


async def _aconn_execute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ep = None if _context.suppressed.get() else _conn_endpoint(instance)
    if ep is None:
        return await wrapped(*args, **kwargs)
    query, params = _query(args, kwargs)
    return await aexecute(ep, wrapped, args, kwargs, _render(query, instance), params)


def _executemany(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _suppressed.get():
        return wrapped(*args, **kwargs)
    conn = instance.connection
    query = args[0] if args else kwargs.pop("query")
    seq = args[1] if len(args) > 1 else kwargs.pop("params_seq")
    seq, size = batch_size(seq)
    return execute(endpoint_for(conn), wrapped, (query, seq, *args[2:]), kwargs, _render(query, conn), seq,
                   cancel=_cancel, target=conn, batch=size, abort=_abort)


async def _aexecute(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _context.suppressed.get():  # inside AsyncConnection.execute (or another traced layer)
        return await wrapped(*args, **kwargs)
    conn = instance.connection
    query, params = _query(args, kwargs)
    if getattr(wrapped, "__name__", "") == "executemany":
        query = args[0] if args else kwargs.pop("query")
        seq = args[1] if len(args) > 1 else kwargs.pop("params_seq")
        seq, size = batch_size(seq)
        return await aexecute(endpoint_for(conn), wrapped, (query, seq, *args[2:]), kwargs, _render(query, conn),
                              seq, batch=size)
    return await aexecute(endpoint_for(conn), wrapped, args, kwargs, _render(query, conn), params)


def _render(query: Any, conn: Any) -> Any:
    """psycopg.sql.Composable objects become their text (identifiers quoted by the connection)."""
    if isinstance(query, (str, bytes)):
        return query
    try:
        return query.as_string(conn)
    except Exception:  # noqa: BLE001 - an unrenderable query still runs; it just has no text
        return ""


CONNECTS = (
    Target("psycopg", "connect"),
    Target("psycopg", "Connection.connect"),
    Target("psycopg", "AsyncConnection.connect", is_async=True),
)


def _with_connect_timeout(kwargs: dict[str, Any]) -> dict[str, Any]:
    left = remaining()
    if left is not None and "connect_timeout" not in kwargs:
        kwargs = {**kwargs, "connect_timeout": max(2, math.ceil(left))}  # libpq: whole seconds, 2 at least
    return kwargs


def _connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return wrapped(*args, **_with_connect_timeout(kwargs))


async def _aconnect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return await wrapped(*args, **_with_connect_timeout(kwargs))


def patch() -> None:
    apply((TARGETS[0], TARGETS[2]), _execute)
    apply(TARGETS[1:2], _executemany)
    wrapper = psycopg.Cursor.__dict__["execute"]
    if psycopg.Connection.execute.__code__.co_names in _MIRRORED and hasattr(wrapper, "__wrapped__"):
        _cursor_execute[:] = [wrapper, wrapper.__wrapped__]
        _plain_cursors.clear()
    apply(TARGETS[3:6], _aexecute, _aexecute)
    apply(TARGETS[6:7], _conn_execute)
    apply(TARGETS[7:8], _aconn_execute, _aconn_execute)
    apply(TARGETS[8:], _acancel_safe, _acancel_safe)
    apply(CONNECTS, _connect, _aconnect)


def unpatch() -> None:
    _cursor_execute.clear()
    revert(CONNECTS)
    revert(TARGETS)
