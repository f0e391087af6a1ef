"""redis-py (sync and asyncio): one CLIENT span per command, one per pipeline/transaction, and pool metrics.

- ``Redis.execute_command``: span ``{COMMAND} {db}``, ``db.operation.name`` = the command; arguments are
  never recorded. ``Pipeline.execute``: ONE span, ``db.operation.name`` ``MULTI`` (transaction) or
  ``PIPELINE``, with ``db.operation.batch.size``.
- The endpoint (``redis://host:port/db``) is resolved once per connection pool and cached on it.
- ``ConnectionPool``/``BlockingConnectionPool`` (sync and asyncio): ``get_connection`` (wait time,
  pending requests, timeouts of a BlockingConnectionPool), ``release`` (use time), ``make_connection``
  (create time); idle/used counts and max from the pool. Pool name ``host:port/db``.
- Errors: rejections and injected faults are ``redis.ConnectionError``; a timeout fault is
  ``redis.TimeoutError``; only those two count as failures. ``db.response.status_code`` is the error
  prefix of a server error (``WRONGTYPE``, ``ERR`` ...).
- Deadlines (a Timeout policy): an async command is cancelled. A sync one cannot be, and redis-py retries
  a timed-out command on a new connection with its configured timeouts (5 s or none, times its retries):
  so while a command runs under a deadline, every connection it uses (checked out, connected or written
  to) gets the time left as its socket (and connect) timeout and no retry of its own (the pipeline's Retry
  policy is the one that retries), and raises ``redis.TimeoutError`` at the deadline. The connection's
  settings are restored when it goes back to the pool, or when the command ends (a single-connection
  client, a pipeline holding its connection).

Hook for other modules (redis Streams messaging spans live in ``integrations/redis_streams.py``):
``COMMAND_DESCRIBERS`` maps an upper-case command name (``"XADD"``) to
``describer(client, args) -> Command | None``. A :class:`Command` (or a plain ``(endpoint, op, attributes)``
triple) makes the command run as ``endpoint.call(op, ..., attributes=attributes)`` (e.g. a messaging
``publish`` span) instead of the default db span; its ``carry(args, carrier)`` adds the injected trace
context to the command's arguments (a stream entry's fields) and ``on_result(span, result)`` notes the
reply. None falls back to the default. Describers must be cheap and must not raise (an exception is
reported and the default span is used).

Switch off with INSTRUMENT_DISABLED_INTEGRATIONS=redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, NamedTuple

import redis
from redis import exceptions as rex

from instrument import _context
from instrument._call import ClientErrors, Endpoint, Op, endpoint
from instrument._pool_metrics import PoolMetrics, Snapshot, pool_name
from instrument._safety import report
from instrument.patching import Target, apply, revert

__all__ = ["COMMAND_DESCRIBERS", "ERRORS", "Command", "endpoint_for", "patch", "unpatch"]


class Command(NamedTuple):
    """What one command runs as: its endpoint and op, per-call span attributes, and for a command that
    carries the trace context in its own arguments, how they get it and what the reply adds to the span."""

    endpoint: Endpoint
    op: Op
    attributes: Mapping[str, Any] | None = None
    carry: Callable[[tuple[Any, ...], dict[str, str]], tuple[Any, ...]] | None = None
    on_result: Callable[[Any, Any], None] | None = None


Describer = Callable[[Any, tuple[Any, ...]], "Command | tuple[Endpoint, Op, Mapping[str, Any] | None] | None"]
COMMAND_DESCRIBERS: dict[str, Describer] = {}

COMMANDS = (
    Target("redis.client", "Redis.execute_command"),
    Target("redis.asyncio.client", "Redis.execute_command", is_async=True, optional=True),
)
PIPELINES = (
    Target("redis.client", "Pipeline.execute"),
    Target("redis.asyncio.client", "Pipeline.execute", is_async=True, optional=True),
)
# Wait and use time are timed for the blocking pools only. The plain ConnectionPool checks a connection
# out for every command and never waits (it fails at max_connections): its wait time is nil and its use
# time is the command's own duration, already db.client.operation.duration; timing it cost two histogram
# records and a wrapper per command.
GETS = (
    Target("redis.connection", "BlockingConnectionPool.get_connection"),
    Target("redis.asyncio.connection", "BlockingConnectionPool.get_connection", is_async=True, optional=True),
)
RELEASES = (
    Target("redis.connection", "BlockingConnectionPool.release"),
    Target("redis.asyncio.connection", "BlockingConnectionPool.release", is_async=True, optional=True),
)
MAKES = (
    Target("redis.connection", "ConnectionPool.make_connection"),
    Target("redis.connection", "BlockingConnectionPool.make_connection", optional=True),
    Target("redis.asyncio.connection", "ConnectionPool.make_connection", optional=True),
)
# Where a command under a deadline bounds the connection it uses (sync only): get_connection() calls
# connect() at every checkout, before the command reads the connection's retry policy. The next checkout
# without a deadline restores the connection's own settings (so the plain pool's release needs no hook);
# a connection the client holds (single-connection client, a watching pipeline) is bound and restored by
# _bounded itself. Hooked on the first command that runs under a deadline: until then no connection is
# bound, and every checkout would pay for a wrapper with nothing to do.
CONNECTIONS = (
    Target("redis.connection", "AbstractConnection.connect", optional=True),
)
TARGETS = COMMANDS + PIPELINES + GETS + RELEASES + MAKES  # patched by patch(); CONNECTIONS when first needed


def _status(exc: BaseException) -> Mapping[str, Any] | None:
    if isinstance(exc, rex.ResponseError) and exc.args:
        prefix = str(exc.args[0]).split(" ", 1)[0]
        if prefix.isupper() and len(prefix) <= 32:
            return {"db.response.status_code": prefix}
    return None


ERRORS = ClientErrors(
    catch=(rex.ConnectionError,),
    connect=rex.ConnectionError,
    timeout=rex.TimeoutError,
    reset=rex.ConnectionError,
    is_failure=lambda exc: isinstance(exc, (rex.ConnectionError, rex.TimeoutError)),
    is_timeout=lambda exc: isinstance(exc, (rex.TimeoutError, TimeoutError)),
    describe=_status,
)


def _where(pool: Any) -> tuple[str | None, int | None, str]:
    kwargs = getattr(pool, "connection_kwargs", None) or getattr(pool, "_connection_kwargs", {}) or {}
    path = kwargs.get("path")
    host = path or kwargs.get("host", "localhost")
    port = None if path else int(kwargs.get("port", 6379))
    return host, port, str(kwargs.get("db", 0))


def endpoint_for(client: Any) -> Endpoint:
    """The endpoint of a client, resolved once per connection pool and cached on the pool."""
    pool = getattr(client, "connection_pool", None)
    ep = getattr(pool, "_instrument_endpoint", None)
    if ep is None:
        host, port, db = _where(pool)
        target = f"redis://{host}:{port}/{db}" if port is not None else f"redis://{host}/{db}"
        ep = endpoint("db", "redis", target, server_address=host, server_port=port, namespace=db, errors=ERRORS)
        if pool is not None:
            try:
                pool._instrument_endpoint = ep
            except AttributeError:
                pass
    return ep


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).split(" ", 1)[0].upper()[:64]


_names: dict[Any, str] = {}  # args[0] (str or bytes) -> its command name
_OPS = "_instrument_ops"  # on a pool: args[0] -> its Command, for commands without a describer
_NONE: dict[str, Any] = {}
_deadline = _context.deadline_var


def _resolve(instance: Any, args: tuple[Any, ...]) -> Command:
    first = args[0] if args else None
    pool = getattr(instance, "connection_pool", None)
    ops = getattr(pool, "__dict__", _NONE).get(_OPS)
    if ops is not None:
        found = ops.get(first) if first.__class__ is str or first.__class__ is bytes else None
        if found is not None and (not COMMAND_DESCRIBERS or _names.get(first) not in COMMAND_DESCRIBERS):
            return found  # (a describer registered since the command was cached takes over)
    name = _names.get(first) if first.__class__ is str or first.__class__ is bytes else None
    if name is None:
        name = _command_name(args)
        if first.__class__ is str or first.__class__ is bytes:
            if len(_names) >= 1024:
                _names.clear()
            _names[first] = name
    describer = COMMAND_DESCRIBERS.get(name)
    if describer is not None:
        try:
            found = describer(instance, args)
        except Exception as exc:  # noqa: BLE001 - a broken describer must not break the command
            report("redis command describer", exc)
            found = None
        if found is not None:
            return found if found.__class__ is Command else Command(*found)
    ep = endpoint_for(instance)
    found = Command(ep, ep.op(name))
    if pool is not None and (first.__class__ is str or first.__class__ is bytes):
        if ops is None:
            ops = pool.__dict__.setdefault(_OPS, {})
        if len(ops) < 1024:
            ops[first] = found
    return found


def _execute_command(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _suppressed.get():  # inside another span (a stream's XADD): only the deadline applies
        return _bounded(wrapped, instance, args, kwargs)
    ep, op, attributes, carry, on_result = _resolve(instance, args)
    if carry is None:
        return ep.call(op, _bounded, (wrapped, instance, args, kwargs), {}, attributes=attributes)
    carrier: dict[str, str] = {}
    return ep.call(op, _carried, (wrapped, instance, args, kwargs, carry, carrier), {}, attributes=attributes,
                   carrier=carrier, on_result=on_result)


def _carried(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any], carry: Any,
             carrier: dict[str, str]) -> Any:
    # The pipeline has injected into `carrier` by now (the same context on a retry)
    return _bounded(wrapped, instance, carry(args, carrier), kwargs)


async def _aexecute_command(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ep, op, attributes, carry, on_result = _resolve(instance, args)
    if carry is None:
        return await ep.acall(op, wrapped, args, kwargs, attributes=attributes)
    carrier: dict[str, str] = {}
    return await ep.acall(op, _acarried, (wrapped, args, kwargs, carry, carrier), {}, attributes=attributes,
                          carrier=carrier, on_result=on_result)


async def _acarried(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], carry: Any,
                    carrier: dict[str, str]) -> Any:
    return await wrapped(*carry(args, carrier), **kwargs)


def _pipeline_op(instance: Any) -> tuple[Endpoint, Op, dict[str, Any]]:
    ep = endpoint_for(instance)
    state = instance.__dict__  # redis.asyncio's Pipeline says is_transaction; .transaction is a client method there
    transaction = state.get("transaction", state.get("is_transaction")) or state.get("explicit_transaction")
    name = "MULTI" if transaction else "PIPELINE"
    return ep, ep.op(name), {"db.operation.batch.size": len(getattr(instance, "command_stack", ()))}


def _pipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not getattr(instance, "command_stack", None):
        return wrapped(*args, **kwargs)  # an empty pipeline sends nothing
    ep, op, attributes = _pipeline_op(instance)
    return ep.call(op, _bounded, (wrapped, instance, args, kwargs), {}, attributes=attributes)


async def _apipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not getattr(instance, "command_stack", None):
        return await wrapped(*args, **kwargs)
    ep, op, attributes = _pipeline_op(instance)
    return await ep.acall(op, wrapped, args, kwargs, attributes=attributes)


# -- deadlines (sync) --------------------------------------------------------------------------------

_hook_lock = threading.Lock()
# The command that bounds the connections it uses: the running call's state (the command's, or the stream call
# it runs in), or, for a command outside any call (the toolkit's own traffic), a mark set here
_owner: ContextVar[object | None] = ContextVar("instrument.redis.deadline_owner", default=None)
_running = _context.current
_SAVED = "_instrument_saved"  # on a bounded connection: its own (socket_timeout, socket_connect_timeout, retry)
_OWNER = "_instrument_owner"  # on a bounded connection: the command that bound it last
_no_retry: list[Any] = []
_monotonic = time.monotonic


def _bounded(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The innermost step of a sync command: under a deadline, the connections it uses are bounded by it."""
    if _deadline.get() is None:
        return wrapped(*args, **kwargs)
    if not _hooked:
        _hook_connections()
    owner = _running.get()
    held = getattr(instance, "connection", None)  # a single-connection client, a pipeline that holds one
    if owner is not None and held is None:
        return wrapped(*args, **kwargs)  # the common case: the connection hook bounds a pooled connection
    token = _owner.set(object()) if owner is None else None
    owner = owner or _owner.get()
    try:
        if held is not None:
            _bound(held, owner)
        return wrapped(*args, **kwargs)
    finally:
        if token is not None:
            _owner.reset(token)
        if held is not None:
            _unbound(held, owner)


_hooked: list[bool] = []  # [True] while the connect hook is installed


def _hook_connections() -> None:
    with _hook_lock:
        if not _hooked:
            apply(CONNECTIONS, _connection_hook)
            _hooked.append(True)


def _bound(conn: Any, owner: object, at: float | None = None) -> None:
    """Socket and connect timeouts = the time left, no retry of the connection's own, until restored."""
    if at is None:
        at = _deadline.get()
        if at is None:
            return
    left = at - _monotonic()
    if left < 0.001:
        left = 0.001
    state = conn.__dict__
    saved = state.get(_SAVED)
    if saved is not None:
        if state[_OWNER] is owner:
            return  # bound by this command already (at checkout): once per command is enough
        state[_OWNER] = owner  # this command's now: its end (or release) restores it
        # Bound by an earlier command with about the same time left (a Timeout policy on every command):
        # keep it, at most 1% (5 ms) early or 0.1% (1 ms) late, and spare the socket and parser updates.
        current = conn.socket_timeout
        if current is not None and (left * 0.99 if left < 0.5 else left - 0.005) <= current \
                <= (left * 1.001 if left < 1.0 else left + 0.001):
            return
    else:
        if not _no_retry:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            _no_retry.append(Retry(NoBackoff(), 0))
        saved = state[_SAVED] = (conn.socket_timeout, conn.socket_connect_timeout, conn.retry)
        state[_OWNER] = owner
        conn.retry = _no_retry[0]
    connect = saved[1]
    conn.socket_connect_timeout = left if connect is None else min(connect, left)
    _socket_timeout(conn, left)


def _unbound(conn: Any, owner: object | None = None) -> None:
    """Restore a bounded connection (only the bounding command's, unless ``owner`` is None: a release)."""
    state = getattr(conn, "__dict__", {})
    saved = state.get(_SAVED)
    if saved is None or (owner is not None and state[_OWNER] is not owner):
        return
    del state[_SAVED], state[_OWNER]
    timeout, conn.socket_connect_timeout, conn.retry = saved
    _socket_timeout(conn, timeout)


def _socket_timeout(conn: Any, value: float | None) -> None:
    """Set a connection's read timeout everywhere redis-py keeps it: the connection, its socket, and the
    parser's copy (taken at connect), which redis-py re-applies to the socket after every ``can_read()``
    (at each checkout): a connection that reconnected under a deadline would otherwise keep it."""
    conn.socket_timeout = value
    sock = getattr(conn, "_sock", None)
    if sock is not None:
        sock.settimeout(value)
    parser = getattr(conn, "_parser", None)
    buffer = getattr(parser, "_buffer", None)
    if buffer is not None and hasattr(buffer, "socket_timeout"):
        buffer.socket_timeout = value
    if hasattr(parser, "_socket_timeout"):  # hiredis
        parser._socket_timeout = value


def _connection_hook(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        at = _deadline.get()
        owner = (_running.get() or _owner.get()) if at is not None else None  # as _bounded prefers them
        if owner is not None:
            _bound(instance, owner, at)
        elif _SAVED in instance.__dict__:
            _unbound(instance)  # bound by an earlier command's deadline: its own settings again
    except Exception as exc:  # noqa: BLE001 - never let our code break the command
        report("redis deadline", exc)
    return wrapped(*args, **kwargs)


# -- pools -------------------------------------------------------------------------------------------

_perf = time.perf_counter
_suppressed = _context.suppressed


def _snapshot(pool: Any) -> Snapshot | None:
    queue = getattr(pool, "pool", None)  # sync BlockingConnectionPool: a LifoQueue of connections or None
    maximum = getattr(pool, "max_connections", None)
    maximum = maximum if isinstance(maximum, int) and maximum < 2**31 - 1 else None
    if queue is not None and hasattr(pool, "_connections"):
        idle = sum(1 for c in list(queue.queue) if c is not None)
        used = max(0, len(pool._connections) - idle)
    else:
        idle = len(getattr(pool, "_available_connections", ()))
        used = len(getattr(pool, "_in_use_connections", ()))
    pending = pool.__dict__.get("_instrument_pending", 0)
    return Snapshot(idle=idle, used=used, idle_max=maximum, idle_min=0, max=maximum, pending=pending)


def metrics_for(pool: Any) -> PoolMetrics:
    found = pool.__dict__.get("_instrument_pool_metrics")
    if found is None:
        found = pool.__dict__["_instrument_pool_metrics"] = PoolMetrics(pool_name(*_where(pool)), pool, _snapshot)
    return found


def _is_timeout(pool: Any, exc: BaseException) -> bool:
    # a BlockingConnectionPool that waited `timeout` raises ConnectionError("No connection available.")
    return hasattr(pool, "timeout") and isinstance(exc, rex.ConnectionError) and "available" in str(exc)


def _get(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    metrics = metrics_for(instance)
    state = instance.__dict__
    state["_instrument_pending"] = state.get("_instrument_pending", 0) + 1
    start = _perf()
    try:
        conn = wrapped(*args, **kwargs)
    except BaseException as exc:
        if _is_timeout(instance, exc):
            metrics.timed_out()
        raise
    finally:
        state["_instrument_pending"] -= 1
    now = _perf()
    metrics.waited(now - start)
    conn._instrument_checkout = now
    return conn


async def _aget(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    metrics = metrics_for(instance)
    state = instance.__dict__
    state["_instrument_pending"] = state.get("_instrument_pending", 0) + 1
    start = _perf()
    try:
        conn = await wrapped(*args, **kwargs)
    except BaseException as exc:
        if _is_timeout(instance, exc):
            metrics.timed_out()
        raise
    finally:
        state["_instrument_pending"] -= 1
    now = _perf()
    metrics.waited(now - start)
    conn._instrument_checkout = now
    return conn


def _used(pool: Any, conn: Any) -> None:
    start = getattr(conn, "_instrument_checkout", None)
    if start is not None:
        conn._instrument_checkout = None
        metrics_for(pool).used(_perf() - start)


def _release(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    conn = args[0] if args else kwargs.get("connection")
    _used(instance, conn)
    if conn is not None and _SAVED in getattr(conn, "__dict__", ()):
        _unbound(conn)  # back to the pool with its own settings
    return wrapped(*args, **kwargs)


async def _arelease(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    _used(instance, args[0] if args else kwargs.get("connection"))
    return await wrapped(*args, **kwargs)


def _make(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # make_connection only builds the object; the socket opens on first use (counted in wait/use time)
    start = _perf()
    conn = wrapped(*args, **kwargs)
    metrics_for(instance).created(_perf() - start)
    return conn


def patch() -> None:
    apply(COMMANDS, _execute_command, _aexecute_command)
    apply(PIPELINES, _pipeline, _apipeline)
    apply(GETS, _get, _aget)
    apply(RELEASES, _release, _arelease)
    apply(MAKES, _make)


def unpatch() -> None:
    with _hook_lock:
        revert(TARGETS + CONNECTIONS)
        _hooked.clear()


_ = redis  # the library is imported first (this module is loaded by its post-import hook)
