"""asyncpg: one CLIENT span, ``db.client.operation.duration`` and policies per statement.

The public query methods of ``asyncpg.connection.Connection`` (execute, executemany, fetch, fetchrow,
fetchval, fetchmany) and of ``PreparedStatement`` (fetch, fetchrow, fetchval, fetchmany, executemany: what
SQLAlchemy's asyncpg dialect uses) are wrapped at class level; pool connections
(``PoolConnectionProxy``) forward to them. They do not call each other, so each statement is one span.
The endpoint is resolved once per connection (cached in a WeakKeyDictionary: connections have slots).
A Timeout policy's remaining deadline becomes the call's ``timeout=``; on expiry or cancellation asyncpg
cancels the query server-side. Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=asyncpg.
"""

from __future__ import annotations

import weakref
from typing import Any

import asyncpg
from asyncpg import exceptions as aex

from instrument._call import ClientErrors, Endpoint, endpoint
from instrument._context import remaining
from instrument._dbapi import _describe, aexecute, error_message
from instrument.patching import Target, apply, revert

CONNECTION_METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany")
STATEMENT_METHODS = ("fetch", "fetchrow", "fetchval", "fetchmany", "executemany")


TARGETS = (
    *(Target("asyncpg.connection", f"Connection.{m}", is_async=True, optional=True) for m in CONNECTION_METHODS),
    *(Target("asyncpg.prepared_stmt", f"PreparedStatement.{m}", is_async=True, optional=True)
      for m in STATEMENT_METHODS),
)


async def _deadlined(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Innermost step: the remaining deadline (Timeout policy, deadline_scope) becomes asyncpg's timeout=."""
    left = remaining()
    if left is not None:
        current = kwargs.get("timeout")
        kwargs["timeout"] = left if current is None else min(current, left)
    return await fn(*args, **kwargs)


ERRORS = ClientErrors(
    catch=(aex.PostgresConnectionError,),
    connect=aex.PostgresConnectionError,
    timeout=aex.QueryCanceledError,
    reset=aex.ConnectionDoesNotExistError,
    is_failure=lambda exc: isinstance(exc, (aex.PostgresConnectionError, aex.InterfaceError, aex.QueryCanceledError,
                                            OSError, TimeoutError)),
    is_timeout=lambda exc: isinstance(exc, (TimeoutError, aex.QueryCanceledError)),
    describe=_describe,
    message=error_message,
)

_endpoints: weakref.WeakKeyDictionary[Any, Endpoint] = weakref.WeakKeyDictionary()


def endpoint_for(conn: Any) -> Endpoint:
    ep = _endpoints.get(conn)
    if ep is None:
        addr = getattr(conn, "_addr", None)
        params = getattr(conn, "_params", None)
        dbname = getattr(params, "database", None)
        if isinstance(addr, tuple):
            host, port = str(addr[0]), int(addr[1])
        else:
            host, port = (str(addr) if addr else None), None
        ep = endpoint("db", "postgresql", f"postgresql://{host}:{port}/{dbname}", server_address=host,
                      server_port=port, namespace=dbname, errors=ERRORS)
        _endpoints[conn] = ep
    return ep


async def _connection_method(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    query = args[0] if args else kwargs.get("query", kwargs.get("command", ""))
    name = wrapped.__name__
    batch = None
    if name in ("executemany", "fetchmany"):
        seq = args[1] if len(args) > 1 else kwargs.get("args", ())
        if not hasattr(seq, "__len__"):
            seq = list(seq)
            args = (query, seq, *args[2:])
        params: Any = seq
        batch = len(seq)
    else:
        params = args[1:] if len(args) > 1 else None
    return await aexecute(endpoint_for(instance), _deadlined, (wrapped, *args), kwargs, query, params, batch=batch)


async def _statement_method(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    query = instance.get_query()
    batch = None
    params: Any = args
    if wrapped.__name__ in ("executemany", "fetchmany"):
        seq = args[0] if args else kwargs.get("args", ())
        if not hasattr(seq, "__len__"):
            seq = list(seq)
            args = (seq, *args[1:])
        params, batch = seq, len(seq)
    # a prepared statement is parameterised by construction only if it has parameters; text as is either way
    conn = instance._connection
    return await aexecute(endpoint_for(conn), _deadlined, (wrapped, *args), kwargs, query, params if params else None,
                          batch=batch)


def patch() -> None:
    apply(TARGETS[:len(CONNECTION_METHODS)], _connection_method, _connection_method)
    apply(TARGETS[len(CONNECTION_METHODS):], _statement_method, _statement_method)


def unpatch() -> None:
    revert(TARGETS)


_ = asyncpg
