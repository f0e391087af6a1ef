"""A connection pool around any connection factory, for clients that have none (psycopg2, PyMySQL, pika ...).

    pool = Pool(lambda: psycopg2.connect(dsn), max_size=10)        # one line
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")

    apool = AsyncPool(lambda: asyncpg.connect(dsn), max_size=10)   # async twin: async factory/check/reset/close
    async with apool.connection() as conn: ...

- ``min_size``/``max_size``: connections kept open / allowed open (idle + used + being created).
- ``acquire_timeout``: how long a checkout waits; then :class:`~instrument.errors.PoolExhausted` (counted in
  ``db.client.connection.timeouts``). ``max_waiting``: at most this many waiters (0: unbounded); one more is
  rejected at once with PoolExhausted.
- ``max_lifetime`` with per-connection ``lifetime_jitter`` (a fraction: 0.1 = each connection lives 90-100%
  of it, so connections opened together do not all expire together); ``max_idle``: idle connections above
  ``min_size`` are closed after this long.
- ``check(conn)`` runs on checkout of an idle connection; if it raises, the connection is closed and another
  one is taken. ``reset(conn)`` runs on return (roll back, reset session); if it raises, the connection is
  closed. ``close(conn)`` defaults to ``conn.close()``. A ``connection()`` block that raises returns the
  connection through ``reset`` like any other, unless ``discard_on`` matches the exception (default: none).
- Emits the nine ``db.client.connection.*`` metrics under ``name`` (default ``pool-<n>``).

The decision logic (take an idle connection, create one, or wait; give back, or close) lives in
:class:`_Core` and has no I/O; :class:`Pool` and :class:`AsyncPool` differ only in how they wait and await.
:func:`pooled_connect` turns a driver's ``connect`` into a pooled one (``close()`` returns the connection),
which is how INSTRUMENT_DB_POOL selects pooling for psycopg2 and PyMySQL by configuration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import wrapt

from instrument._pool_metrics import PoolMetrics, Snapshot
from instrument.errors import PoolExhausted

__all__ = ["AsyncPool", "Pool", "PoolExhausted", "pooled_connect"]

T = TypeVar("T")
_names = itertools.count(1)


class _Entry:
    __slots__ = ("checked_out", "conn", "created", "expires", "idle_since")

    def __init__(self, conn: Any, now: float, lifetime: float) -> None:
        self.conn = conn
        self.created = now
        self.expires = now + lifetime
        self.idle_since = now
        self.checked_out = now


class _Core:
    """Pool bookkeeping without I/O: every method is called with the pool's lock held."""

    def __init__(self, *, min_size: int, max_size: int, acquire_timeout: float, max_waiting: int,
                 max_lifetime: float, lifetime_jitter: float, max_idle: float, name: str | None,
                 clock: Callable[[], float], rng: Callable[[], float]) -> None:
        if max_size < 1 or min_size < 0 or min_size > max_size:
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}")
        if not 0.0 <= lifetime_jitter < 1.0:
            raise ValueError(f"lifetime_jitter must be in [0, 1), got {lifetime_jitter}")
        self.min_size = min_size
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.jitter = lifetime_jitter
        self.max_idle = max_idle
        self.clock = clock
        self.rng = rng
        self.idle: collections.deque[_Entry] = collections.deque()
        self.used: dict[int, _Entry] = {}
        self.size = 0  # idle + used + being created
        self.waiting = 0
        self.closed = False
        self.metrics = PoolMetrics(name or f"pool-{next(_names)}", self, _Core.snapshot)

    def snapshot(self) -> Snapshot:
        if self.closed:
            return Snapshot(0, 0, self.max_size, self.min_size, self.max_size, 0)
        return Snapshot(len(self.idle), len(self.used), self.max_size, self.min_size, self.max_size, self.waiting)

    def lifetime(self) -> float:
        return self.max_lifetime * (1.0 - self.jitter * self.rng())

    def take(self, expired: list[_Entry]) -> _Entry | bool | None:
        """An idle entry, True (the caller may create one: a slot is reserved) or None (wait)."""
        if self.closed:
            raise PoolExhausted("the pool is closed", pipeline=self.metrics.name, policy="pool")
        now = self.clock()
        self._sweep(now, expired)
        while self.idle:
            entry = self.idle.pop()  # most recently used first: keeps the hot set small
            if entry.expires <= now:
                self.size -= 1
                expired.append(entry)
                continue
            return entry
        if self.size < self.max_size:
            self.size += 1
            return True
        return None

    def _sweep(self, now: float, expired: list[_Entry]) -> None:
        # the oldest idle connections sit on the left: close those idle too long, above min_size
        while self.idle and self.size > self.min_size and now - self.idle[0].idle_since >= self.max_idle:
            expired.append(self.idle.popleft())
            self.size -= 1

    def may_wait(self) -> bool:
        return not self.max_waiting or self.waiting < self.max_waiting

    def checked_out(self, entry: _Entry) -> None:
        entry.checked_out = self.clock()
        self.used[id(entry.conn)] = entry

    def give_back(self, conn: Any, keep: bool) -> tuple[_Entry | None, bool]:
        """Returns (entry, keep it): an entry not to keep must be closed by the caller."""
        entry = self.used.pop(id(conn), None)
        if entry is None:
            return None, False
        now = self.clock()
        self.metrics.used(now - entry.checked_out)
        if keep and not self.closed and entry.expires > now:
            entry.idle_since = now
            self.idle.append(entry)
            return entry, True
        self.size -= 1
        return entry, False

    def lost(self) -> None:
        """A reserved slot whose connection could not be created (or was closed unchecked)."""
        self.size -= 1


def _default_close(conn: Any) -> None:
    close = getattr(conn, "close", None)
    if close is not None:
        close()


def _exhausted(core: _Core, why: str) -> PoolExhausted:
    return PoolExhausted(f"pool {core.metrics.name!r}: {why}", pipeline=core.metrics.name, policy="pool")


class Pool(Generic[T]):
    """A thread-safe pool of connections made by ``factory`` (see the module docstring).

    .. versionadded:: 0.1
    """

    def __init__(self, factory: Callable[[], T], *, min_size: int = 0, max_size: int = 10,
                 acquire_timeout: float = 30.0, max_waiting: int = 0, max_lifetime: float = 3600.0,
                 lifetime_jitter: float = 0.1, max_idle: float = 600.0, check: Callable[[T], Any] | None = None,
                 reset: Callable[[T], Any] | None = None, close: Callable[[T], Any] | None = None,
                 discard_on: tuple[type[BaseException], ...] = (), name: str | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self._factory = factory
        self._check = check
        self._reset = reset
        self._close = close or _default_close
        self._discard_on = discard_on
        self._core = _Core(min_size=min_size, max_size=max_size, acquire_timeout=acquire_timeout,
                           max_waiting=max_waiting, max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter,
                           max_idle=max_idle, name=name, clock=clock, rng=rng)
        self._cond = threading.Condition()
        for _ in range(min_size):
            with self._cond:
                self._core.size += 1
            entry = self._create()
            with self._cond:
                self._core.idle.append(entry)

    @property
    def name(self) -> str:
        return self._core.metrics.name

    def stats(self) -> Snapshot:
        with self._cond:
            return self._core.snapshot()

    def _create(self) -> _Entry:
        core = self._core
        start = core.clock()
        try:
            conn = self._factory()
        except BaseException:
            with self._cond:
                core.lost()
                self._cond.notify()
            raise
        now = core.clock()
        core.metrics.created(now - start)
        return _Entry(conn, now, core.lifetime())

    def _dispose(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                self._close(entry.conn)
            except Exception:  # noqa: BLE001,S110 - a connection that fails to close is gone anyway
                pass

    def acquire(self, timeout: float | None = None) -> T:
        """Check out a connection; raises PoolExhausted after ``timeout`` (default: acquire_timeout)."""
        core = self._core
        start = core.clock()
        deadline = start + (core.acquire_timeout if timeout is None else timeout)
        while True:
            expired: list[_Entry] = []
            with self._cond:
                got = core.take(expired)
                if got is None:
                    if not core.may_wait():
                        self._dispose_later(expired)
                        raise _exhausted(core, f"{core.waiting} requests already waiting")
                    core.waiting += 1
                    try:
                        while got is None:
                            left = deadline - core.clock()
                            if left <= 0:
                                core.metrics.timed_out()
                                self._dispose_later(expired)
                                raise _exhausted(core, f"no connection within {deadline - start:.3g}s")
                            self._cond.wait(left)
                            got = core.take(expired)
                    finally:
                        core.waiting -= 1
            self._dispose(expired)
            if got is True:
                entry = self._create()
            else:
                entry = got  # type: ignore[assignment]
                if self._check is not None:
                    try:
                        self._check(entry.conn)
                    except Exception:  # noqa: BLE001 - a failed check means: a dead connection, take another
                        with self._cond:
                            core.lost()
                            self._cond.notify()
                        self._dispose([entry])
                        continue
            with self._cond:
                core.checked_out(entry)
            core.metrics.waited(core.clock() - start)
            return entry.conn

    def _dispose_later(self, expired: list[_Entry]) -> None:
        if expired:  # closing is I/O: never under the lock
            threading.Thread(target=self._dispose, args=(expired,), daemon=True).start()

    def release(self, conn: T, *, discard: bool = False) -> None:
        """Return a connection: ``reset`` runs, then it is idle again (or closed if broken/expired/discarded)."""
        keep = not discard
        if keep and self._reset is not None:
            try:
                self._reset(conn)
            except Exception:  # noqa: BLE001 - a connection that cannot be reset is not reused
                keep = False
        with self._cond:
            entry, kept = self._core.give_back(conn, keep)
            self._cond.notify()
        if entry is not None and not kept:
            self._dispose([entry])

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[T]:
        """``with pool.connection() as conn:`` checks out and always gives back."""
        conn = self.acquire(timeout)
        try:
            yield conn
        except BaseException as exc:
            self.release(conn, discard=isinstance(exc, self._discard_on))
            raise
        self.release(conn)

    def close(self) -> None:
        """Close idle connections now; used ones are closed when given back."""
        with self._cond:
            self._core.closed = True
            idle = list(self._core.idle)
            self._core.idle.clear()
            self._core.size -= len(idle)
            self._cond.notify_all()
        self._dispose(idle)
        self._core.metrics.forget()

    def __enter__(self) -> Pool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
        return await value
    return value


class AsyncPool(Generic[T]):
    """The asyncio twin of :class:`Pool`: ``factory``, ``check``, ``reset`` and ``close`` may be async.

    .. versionadded:: 0.1
    """

    def __init__(self, factory: Callable[[], Awaitable[T] | T], *, min_size: int = 0, max_size: int = 10,
                 acquire_timeout: float = 30.0, max_waiting: int = 0, max_lifetime: float = 3600.0,
                 lifetime_jitter: float = 0.1, max_idle: float = 600.0, check: Callable[[T], Any] | None = None,
                 reset: Callable[[T], Any] | None = None, close: Callable[[T], Any] | None = None,
                 discard_on: tuple[type[BaseException], ...] = (), name: str | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self._factory = factory
        self._check = check
        self._reset = reset
        self._close = close or _default_close
        self._discard_on = discard_on
        self._core = _Core(min_size=min_size, max_size=max_size, acquire_timeout=acquire_timeout,
                           max_waiting=max_waiting, max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter,
                           max_idle=max_idle, name=name, clock=clock, rng=rng)
        self._cond: asyncio.Condition | None = None  # made on first use, inside the running loop

    @property
    def name(self) -> str:
        return self._core.metrics.name

    def stats(self) -> Snapshot:
        return self._core.snapshot()

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def open(self) -> AsyncPool[T]:
        """Open ``min_size`` connections now (otherwise they are made on demand)."""
        while self._core.size < self._core.min_size:
            self._core.size += 1
            entry = await self._create()
            self._core.idle.append(entry)
        return self

    async def _create(self) -> _Entry:
        core = self._core
        start = core.clock()
        try:
            conn = await _maybe_await(self._factory())
        except BaseException:
            core.lost()
            cond = self._condition()
            async with cond:
                cond.notify()
            raise
        now = core.clock()
        core.metrics.created(now - start)
        return _Entry(conn, now, core.lifetime())

    async def _dispose(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                await _maybe_await(self._close(entry.conn))
            except Exception:  # noqa: BLE001,S110 - a connection that fails to close is gone anyway
                pass

    async def acquire(self, timeout: float | None = None) -> T:
        """Check out a connection; raises PoolExhausted after ``timeout`` (default: acquire_timeout)."""
        core = self._core
        cond = self._condition()
        start = core.clock()
        deadline = start + (core.acquire_timeout if timeout is None else timeout)
        while True:
            expired: list[_Entry] = []
            got = core.take(expired)  # single-threaded: no lock needed for the bookkeeping
            if got is None:
                if not core.may_wait():
                    await self._dispose(expired)
                    raise _exhausted(core, f"{core.waiting} requests already waiting")
                core.waiting += 1
                try:
                    async with cond:
                        while got is None:
                            left = deadline - core.clock()
                            if left <= 0:
                                core.metrics.timed_out()
                                raise _exhausted(core, f"no connection within {deadline - start:.3g}s")
                            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                                await asyncio.wait_for(cond.wait(), left)
                            got = core.take(expired)
                finally:
                    core.waiting -= 1
            await self._dispose(expired)
            if got is True:
                entry = await self._create()
            else:
                entry = got  # type: ignore[assignment]
                if self._check is not None:
                    try:
                        await _maybe_await(self._check(entry.conn))
                    except Exception:  # noqa: BLE001 - a dead connection: take another
                        core.lost()
                        await self._dispose([entry])
                        continue
            core.checked_out(entry)
            core.metrics.waited(core.clock() - start)
            return entry.conn

    async def release(self, conn: T, *, discard: bool = False) -> None:
        """Return a connection (``reset`` runs; broken, expired or discarded ones are closed)."""
        keep = not discard
        if keep and self._reset is not None:
            try:
                await _maybe_await(self._reset(conn))
            except Exception:  # noqa: BLE001 - a connection that cannot be reset is not reused
                keep = False
        entry, kept = self._core.give_back(conn, keep)
        cond = self._condition()
        async with cond:
            cond.notify()
        if entry is not None and not kept:
            await self._dispose([entry])

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[T]:
        """``async with pool.connection() as conn:`` checks out and always gives back (also when cancelled)."""
        conn = await self.acquire(timeout)
        try:
            yield conn
        except BaseException as exc:
            # cancelled mid-statement: the connection's state is unknown, so it is not reused
            discard = isinstance(exc, (asyncio.CancelledError, *self._discard_on))
            await asyncio.shield(self.release(conn, discard=discard))
            raise
        await self.release(conn)

    async def close(self) -> None:
        core = self._core
        core.closed = True
        idle = list(core.idle)
        core.idle.clear()
        core.size -= len(idle)
        await self._dispose(idle)
        core.metrics.forget()

    async def __aenter__(self) -> AsyncPool[T]:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- pooled connect: a driver's connect() returning pooled connections --------------------------------


class PooledConnection(wrapt.ObjectProxy):  # type: ignore[misc]
    """A checked-out connection whose ``close()`` gives it back to its pool (once)."""

    def __init__(self, conn: Any, pool: Pool[Any]) -> None:
        super().__init__(conn)
        self._self_pool: Pool[Any] | None = pool

    def close(self) -> None:
        pool, self._self_pool = self._self_pool, None
        if pool is not None:
            pool.release(self.__wrapped__)

    _self_close_on_exit = False

    def __enter__(self) -> PooledConnection:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # the driver's own `with conn:` ends the transaction; drivers whose `with` also closes (PyMySQL)
        # give the connection back instead of closing it
        try:
            if exc_type is None:
                self.__wrapped__.commit()
            else:
                self.__wrapped__.rollback()
        finally:
            if self._self_close_on_exit:
                self.close()

    def __del__(self) -> None:  # a connection dropped without close() still goes back
        with contextlib.suppress(Exception):
            self.close()


def _rollback(conn: Any) -> None:
    rollback = getattr(conn, "rollback", None)
    if rollback is not None:
        rollback()


def pooled_connect(connect: Callable[..., T], *, name: str | None = None, close_on_exit: bool = False,
                   **options: Any) -> Callable[..., Any]:
    """``connect`` made pooled: one :class:`Pool` per distinct set of connect arguments.

    ``close()`` on what it returns gives the connection back (after a rollback); so does leaving a
    ``with conn:`` block when ``close_on_exit`` (drivers whose ``with`` closes, like PyMySQL).
    ``options`` are :class:`Pool` keyword arguments.
    """
    pools: dict[Any, Pool[Any]] = {}
    lock = threading.Lock()
    options.setdefault("reset", _rollback)

    def pooled(*args: Any, **kwargs: Any) -> PooledConnection:
        key = (args, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        pool = pools.get(key)
        if pool is None:
            with lock:
                pool = pools.get(key)
                if pool is None:
                    pool = pools[key] = Pool(lambda: connect(*args, **kwargs),
                                             name=name if len(pools) == 0 else None, **options)
        conn = PooledConnection(pool.acquire(), pool)
        conn._self_close_on_exit = close_on_exit
        return conn

    pooled.pools = pools  # type: ignore[attr-defined]
    return pooled


# -- selecting pooling by configuration ----------------------------------------------------------------------

VARIABLE = "INSTRUMENT_DB_POOL"
_OPTION_TYPES: dict[str, Callable[[str], Any]] = {
    "min_size": int, "max_size": int, "max_waiting": int, "acquire_timeout": float, "max_lifetime": float,
    "lifetime_jitter": float, "max_idle": float,
}


def parse_config(text: str) -> dict[str, dict[str, Any]]:
    """``"psycopg2(max_size=10,acquire_timeout=5);pymysql"`` -> ``{"psycopg2": {...}, "pymysql": {}}``.

    Raises:
        ConfigError: naming INSTRUMENT_DB_POOL, on an unknown option or a bad value.
    """
    from instrument.errors import ConfigError

    accepted = f"'driver(option=value,...);driver' with options {', '.join(_OPTION_TYPES)}"
    out: dict[str, dict[str, Any]] = {}
    for part in (p.strip() for p in text.replace("\n", ";").split(";")):
        if not part:
            continue
        driver, _, rest = part.partition("(")
        options: dict[str, Any] = {}
        if rest:
            if not rest.endswith(")"):
                raise ConfigError(VARIABLE, text, accepted, detail=f"missing ')' in {part!r}")
            for item in filter(None, (i.strip() for i in rest[:-1].split(","))):
                key, sep, value = (x.strip() for x in item.partition("="))
                if not sep or key not in _OPTION_TYPES:
                    raise ConfigError(VARIABLE, text, accepted, detail=f"bad option {item!r}")
                try:
                    options[key] = _OPTION_TYPES[key](value.removesuffix("s") if key != "max_size" else value)
                except ValueError:
                    raise ConfigError(VARIABLE, text, accepted, detail=f"bad value {item!r}") from None
        out[driver.strip()] = options
    return out


def configured(driver: str) -> dict[str, Any] | None:
    """Pool options for ``driver`` when INSTRUMENT_DB_POOL selects it, else None."""
    from instrument import _settings

    text = _settings.active().db_pool
    if not text:
        return None
    return parse_config(text).get(driver)


def validate_settings(settings: Any) -> None:
    """Check INSTRUMENT_DB_POOL at init (for ``instrument._settings.VALIDATORS``); raises ConfigError."""
    parse_config(settings.db_pool)
