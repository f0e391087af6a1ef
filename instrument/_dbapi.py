"""What every SQL integration shares: the per-statement call, driver errors, cursor proxies, server-side cancel.

- :func:`execute` / :func:`aexecute`: one statement through the call pipeline. The SQL is parsed once per
  text (:mod:`instrument._sql`), the :class:`~instrument._call.Op` is cached on the endpoint, and the span
  gets ``db.query.text`` (as is when parameterised, literals replaced by ``?`` otherwise). Parameter values
  are recorded only with INSTRUMENT_CAPTURE_SQL_PARAMETERS=true.
- :func:`sql_errors`: a :class:`~instrument._call.ClientErrors` for a DB-API driver: rejections and injected
  faults are the driver's ``OperationalError``; only operational/interface errors (connection lost,
  timeouts) count as failures for breakers and retries, never bad SQL or constraint violations;
  ``describe`` adds ``db.response.status_code`` (SQLSTATE).
- Deadlines (a Timeout policy, ``instrument._context.deadline_scope``): a sync driver call cannot be
  interrupted from Python, so a statement that runs under a deadline is armed on one shared watchdog
  thread, which asks the *server* to cancel it when the deadline passes (PostgreSQL's cancel request,
  the same mechanism ``statement_timeout`` uses, raising the driver's own ``QueryCanceled``/57014;
  ``KILL QUERY`` on MySQL/MariaDB; ``interrupt()`` on sqlite). The request runs on a thread of its own:
  when the server is unreachable (a partition, a blackholed connection) it goes through the same dead
  path and never completes. So a driver that gives an ``abort`` (shut the connection's socket down) is
  aborted when the cancel request has not completed within :data:`CANCEL_GRACE` of the deadline, or the
  statement still runs :data:`CANCEL_LATE` after it: the blocked call then fails at once, the connection
  is broken (a pool discards it) and the driver's error becomes its timeout error (``QueryCanceled``,
  OperationalError 1317), raised from it. Without a deadline nothing is armed.
- :class:`CursorProxy`: a ``wrapt.ObjectProxy`` for drivers whose cursors are C types (psycopg2, sqlite3),
  with its state in ``_self_*`` attributes (OpenTelemetry dbapi style).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

from instrument import _context, _settings
from instrument._call import ClientErrors, Endpoint
from instrument._sql import describe

__all__ = ["CANCEL_GRACE", "CANCEL_LATE", "CursorProxy", "aexecute", "error_message", "execute", "shutdown_fd",
           "sql_errors", "watchdog"]

CANCEL_GRACE = 0.2  # s after the deadline: a cancel request still not completed -> abort the connection
CANCEL_LATE = 1.0  # s after the deadline: the statement still runs although the cancel completed -> abort


# -- errors ------------------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        code = getattr(exc, attr, None)
        if isinstance(code, str) and code:
            return code
    diag = getattr(exc, "diag", None)
    code = getattr(diag, "sqlstate", None)
    if isinstance(code, str) and code:
        return code
    args = getattr(exc, "args", ())  # PyMySQL: (errno, message)
    if args and isinstance(args[0], int):
        return str(args[0])
    return None


def _describe(exc: BaseException) -> Mapping[str, Any] | None:
    code = _sqlstate(exc)
    return {"db.response.status_code": code} if code else None


_QUOTED = None


def error_message(exc: BaseException) -> str:
    """A driver error's message without the values it may quote (for span status, exception event and log).

    PostgreSQL drivers put values in DETAIL (``Key (id)=(42) already exists``): only the primary message is
    kept. MySQL quotes them in the message itself (``Duplicate entry 'x' for key ...``): quoted parts become ?.
    """
    global _QUOTED
    if _QUOTED is None:
        import re

        _QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|\((?:[^()]|\([^()]*\))*\)=\((?:[^()]|\([^()]*\))*\)")
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not isinstance(primary, str) or not primary:
        args = getattr(exc, "args", ())
        primary = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(exc)
        primary = primary.split("\nDETAIL:", 1)[0]
    return _QUOTED.sub("?", primary)


def sql_errors(operational: type[BaseException], interface: type[BaseException] | None = None, *,
               timeout: Callable[[str], BaseException] | None = None,
               timeouts: tuple[type[BaseException], ...] = ()) -> ClientErrors:
    """ClientErrors for a DB-API driver (see the module docstring)."""
    failures = (operational,) if interface is None else (operational, interface)
    timeouts = (*timeouts, TimeoutError)
    return ClientErrors(
        catch=(operational,),
        connect=operational,
        timeout=timeout or operational,
        reset=operational,
        is_failure=lambda exc: isinstance(exc, failures),
        is_timeout=lambda exc: isinstance(exc, timeouts),
        describe=_describe,
        message=error_message,
    )


# -- the statement call ------------------------------------------------------------------------------

Canceller = Callable[[Any], None]
_deadline = _context.deadline_var


def _text(query: Any) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", "replace")
    return str(query)


def _parameter_attributes(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(params, Mapping):
        items: Any = params.items()
    elif isinstance(params, (list, tuple)):
        items = enumerate(params)
    else:
        return out
    for key, value in itertools.islice(items, 64):
        out[f"db.query.parameter.{key}"] = value if isinstance(value, (bool, int, float)) else str(value)[:256]
    return out


_NO_ATTRIBUTES: dict[str, Any] = {}  # shared: never mutated
_STATEMENTS_MAX = 512  # per endpoint: services run the same few hundred statements over and over


def prepare(ep: Endpoint, query: Any, params: Any, *, batch: int | None = None,
            dialect: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The Op for one statement (its text among its span attributes) and the per-call span attributes on
    top (shared: never mutate them)."""
    # an empty parameter set (SQLAlchemy passes {}) means the literals are in the text: sanitise it
    parameterized = params is not None and (not hasattr(params, "__len__") or len(params) > 0)
    key = (query, parameterized, dialect) if query.__class__ is str else None
    found = ep.statements.get(key) if key is not None else None
    if found is None:
        operation, collection, text = describe(_text(query), dialect or ep.system, parameterized)
        found = ep.op(operation, collection).with_span_attributes({"db.query.text": text})
        if key is not None and len(ep.statements) < _STATEMENTS_MAX:
            ep.statements[key] = found
    if batch is not None:
        return found, {"db.operation.batch.size": batch}
    if parameterized and _settings.active().capture_sql_parameters:
        return found, _parameter_attributes(params)
    return found, _NO_ATTRIBUTES


def _guarded(fn: Callable[..., Any], cancel: Canceller | None, target: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any], abort: Canceller | None = None) -> Any:
    """Innermost step: arm the server-side cancel (and the abort) when the call runs under a deadline."""
    at = _deadline.get() if cancel is not None else None
    if at is None:
        return fn(*args, **kwargs)
    handle = _arm(at, cancel, target, abort)  # type: ignore[arg-type]
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        if _disarm(handle) and isinstance(exc, Exception):
            _raise_timeout(exc)
        raise
    _disarm(handle)
    return result


def _raise_timeout(exc: Exception) -> None:
    """The watchdog shut the connection down: the driver's error is the client's own timeout error."""
    state = _context.current.get()
    errors = state.op.endpoint.errors if state is not None else None
    if errors is None or errors.is_timeout(exc) or not isinstance(exc, errors.catch):
        return  # already a timeout (the cancel won the race), or not the driver's error: unchanged
    raise errors.timeout("statement timeout: the server did not answer the cancel request, "
                         "the connection was closed at the deadline") from exc


def execute(ep: Endpoint, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], query: Any,
            params: Any, *, cancel: Canceller | None = None, target: Any = None, batch: int | None = None,
            abort: Canceller | None = None) -> Any:
    """Run one sync statement ``fn(*args, **kwargs)`` as a span on ``ep``."""
    if _context.suppressed.get():
        return fn(*args, **kwargs)
    op, attributes = prepare(ep, query, params, batch=batch)
    return ep.call(op, _guarded, (fn, cancel, target, args, kwargs, abort), {}, attributes=attributes)


async def aexecute(ep: Endpoint, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   query: Any, params: Any, *, batch: int | None = None) -> Any:
    """The async twin: a Timeout policy cancels the task, and the driver cancels the query server-side."""
    if _context.suppressed.get():
        return await fn(*args, **kwargs)
    op, attributes = prepare(ep, query, params, batch=batch)
    return await ep.acall(op, fn, args, kwargs, attributes=attributes)


def batch_size(seq: Any) -> tuple[Any, int | None]:
    """``(seq, len)`` for executemany; an iterator is materialised so that it can be counted and still run."""
    if not hasattr(seq, "__len__"):
        seq = list(seq)
    return seq, len(seq)


# -- server-side cancel at the deadline ---------------------------------------------------------------


class _Armed:
    """One statement under a deadline, while it runs."""

    __slots__ = ("abort", "at", "cancel", "cancelled", "step", "target")

    def __init__(self, at: float, cancel: Canceller, target: Any, abort: Canceller | None) -> None:
        self.at = at  # when the watchdog acts on it next (inf: never again)
        self.step = "cancel"  # then "grace" (abort unless the cancel completed), then "late" (abort)
        self.cancel = cancel
        self.target = target
        self.abort = abort
        self.cancelled = False  # the cancel request completed (successfully or not); set by its thread


class _Watchdog:
    """One daemon thread that cancels (then aborts) statements whose deadline passed.

    At the deadline the cancel request is started on a short-lived thread (it may hang on a dead network);
    at ``CANCEL_GRACE`` after it, a statement whose cancel has not completed is aborted; at ``CANCEL_LATE``,
    one that still runs. Arming and disarming a statement take no lock: a dict entry each (atomic), and
    the thread is woken only for a deadline earlier than the one it sleeps until, so statements under the
    same Timeout never wake it. Whoever removes a statement's entry owns it: :meth:`disarm` (the statement
    returned) or the abort, which runs under a lock that :meth:`disarm` then waits for, so an abort never
    touches a connection whose statement has returned (its socket may since have been closed and its fd
    reused).
    """

    def __init__(self) -> None:
        self._reset()
        # A forked child has no watchdog thread, and the parent's statements are not the child's to cancel
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())  # guards the thread's sleep and start
        self._abort_lock = threading.Lock()  # held while aborting; disarm of an aborted statement waits for it
        self._armed: dict[int, _Armed] = {}
        self._aborted: set[int] = set()
        self._ids = itertools.count()
        self._wake_at = math.inf  # when the thread wakes next on its own (inf: only when notified)
        self._thread: threading.Thread | None = None  # reset by the thread itself when it ends

    def arm(self, at: float, cancel: Canceller, target: Any, abort: Canceller | None = None) -> int:
        """Watch a statement from now until :meth:`disarm`: at ``at`` (``time.monotonic()``), cancel it."""
        handle = next(self._ids)
        self._armed[handle] = _Armed(at, cancel, target, abort)
        if at < self._wake_at or self._thread is None:
            with self._cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="instrument-sql-watchdog", daemon=True)
                    self._thread.start()
                self._cond.notify()
        return handle

    def disarm(self, handle: int) -> bool:
        """Forget a finished statement; True when the watchdog aborted its connection."""
        if self._armed.pop(handle, None) is not None:
            return False
        with self._abort_lock:  # the abort that took it is over once this is free
            if handle in self._aborted:
                self._aborted.discard(handle)
                return True
        return False

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                self._wake_at = math.inf  # before the scan: an arm after it sees inf (or less) and notifies
                now = time.monotonic()
                due, soonest = self._scan(now)
                if not due:
                    if soonest == math.inf:
                        if not cond.wait(30.0) and not self._armed:
                            self._thread = None  # idle: an arm starts it again
                            return
                        continue
                    self._wake_at = soonest
                    cond.wait(soonest - now)
                    continue
            self._act_on(due)  # (the next scan replaces ``due`` before the thread sleeps again)

    def _scan(self, now: float) -> tuple[list[tuple[int, _Armed]], float]:
        """The statements due at ``now``, and the soonest deadline of the others. This and :meth:`_act_on` are
        methods of their own so that no statement (and its connection) stays referenced from the loop's locals
        while the thread sleeps: an application's connection dropped unclosed would keep its socket."""
        due: list[tuple[int, _Armed]] = []
        soonest = math.inf
        for handle, armed in list(self._armed.items()):  # a copy: statements come and go meanwhile
            if armed.at <= now:
                due.append((handle, armed))
            elif armed.at < soonest:
                soonest = armed.at
        return due, soonest

    def _act_on(self, due: list[tuple[int, _Armed]]) -> None:
        for handle, armed in due:
            self._act(handle, armed)

    def _act(self, handle: int, armed: _Armed) -> None:
        if armed.step == "cancel":
            if handle not in self._armed:
                return  # returned since the scan
            armed.step, armed.at = "grace", (armed.at + CANCEL_GRACE if armed.abort is not None else math.inf)
            threading.Thread(target=_request_cancel, args=(armed,), name="instrument-sql-cancel",
                             daemon=True).start()
        elif armed.step == "grace" and armed.cancelled:
            armed.step, armed.at = "late", armed.at - CANCEL_GRACE + CANCEL_LATE
        else:  # the cancel did not complete in time, or the statement outlived it: shut the socket
            with self._abort_lock:
                if self._armed.pop(handle, None) is None:
                    return  # returned meanwhile: its connection is not ours to touch
                self._aborted.add(handle)
                try:
                    armed.abort(armed.target)  # type: ignore[misc]
                except Exception:  # noqa: BLE001,S110 - best effort (the connection may be gone)
                    pass


def _request_cancel(armed: _Armed) -> None:
    try:
        armed.cancel(armed.target)
    except Exception:  # noqa: BLE001,S110 - cancelling is best effort (the connection may be gone)
        pass
    finally:
        armed.cancelled = True


def shutdown_fd(fd: int) -> None:
    """Shut down (both ways) the socket behind a driver's file descriptor, without closing the driver's fd:
    a call blocked on it returns at once (EOF), and the driver reports the connection as lost."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


watchdog = _Watchdog()
_arm, _disarm = watchdog.arm, watchdog.disarm  # (the watchdog lives as long as the process; fork resets it in place)


# -- cursor proxy for C cursors ----------------------------------------------------------------------


class CursorProxy(wrapt.ObjectProxy):  # type: ignore[misc]
    """A traced cursor: ``execute``/``executemany`` (and ``callproc``) go through the pipeline."""

    _self_endpoint: Endpoint
    _self_cancel: Canceller | None
    _self_abort: Canceller | None
    _self_conn: Any

    def __init__(self, cursor: Any, endpoint: Endpoint, conn: Any, cancel: Canceller | None,
                 abort: Canceller | None = None) -> None:
        super().__init__(cursor)
        self._self_endpoint = endpoint
        self._self_conn = conn
        self._self_cancel = cancel
        self._self_abort = abort

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        params = args[0] if args else next(iter(kwargs.values()), None)
        return execute(self._self_endpoint, self.__wrapped__.execute, (query, *args), kwargs, query, params,
                       cancel=self._self_cancel, target=self._self_conn, abort=self._self_abort)

    def executemany(self, query: Any, seq: Any, *args: Any, **kwargs: Any) -> Any:
        seq, size = batch_size(seq)
        return execute(self._self_endpoint, self.__wrapped__.executemany, (query, seq, *args), kwargs, query, seq,
                       cancel=self._self_cancel, target=self._self_conn, batch=size, abort=self._self_abort)

    def callproc(self, name: str, *args: Any, **kwargs: Any) -> Any:
        ep = self._self_endpoint
        op = ep.op("CALL")
        return ep.call(op, _guarded, (self.__wrapped__.callproc, self._self_cancel, self._self_conn,
                                      (name, *args), kwargs, self._self_abort), {},
                       attributes={"db.stored_procedure.name": name})

    def __enter__(self) -> CursorProxy:  # noqa: PYI034 - py3.10 has no typing.Self
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self.__wrapped__.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self.__wrapped__)
