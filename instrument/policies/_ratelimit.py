"""Rate limiters: a local token bucket, and a Redis-backed one shared by every instance of a service.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second; a call takes one. With no
token, the call waits up to ``max_wait`` seconds for one (0: fail fast with RateLimited).

The shared limiter runs the same bucket as one Lua script in Redis (EVALSHA, falling back to EVAL
once), so that concurrent instances cannot both take the last token; it reads Redis's own clock. redis-py
is imported only when a shared limiter is first used. When Redis cannot be reached the limiter fails
open (the call goes ahead) by default: a rate limiter must not turn a Redis outage into a full outage.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from instrument import _context
from instrument.errors import RateLimited

from ._base import Clock, Policy, event, monotonic, reject

__all__ = ["RateLimiter", "RedisRateLimiter", "TOKEN_BUCKET_LUA"]


class RateLimiter(Policy):
    """A local token bucket.

    Args:
        rate: tokens per second.
        burst: bucket size (default: ``max(1, rate)``: one second's worth).
        max_wait: seconds a call may wait for a token (0: reject at once).

    Raises:
        RateLimited: no token within ``max_wait`` (on a patched client, also the client's own error).

    ``acall`` takes the token when called and returns an awaitable: with a token at hand, the one ``fn``
    returned (for an ``async def`` function, its coroutine), else a coroutine that waits, then calls.

    .. versionadded:: 0.1
    """

    name = "rate_limit"

    def __init__(self, rate: float, *, burst: float | None = None, max_wait: float = 0.0, target: str = "rate_limit",
                 clock: Clock = monotonic, sleep: Callable[[float], Any] = time.sleep,
                 asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 per second, got {rate!r}")
        burst = max(1.0, float(rate)) if burst is None else float(burst)
        if not burst >= 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.rate = float(rate)
        self.burst = burst
        self.max_wait = float(max_wait)
        self.target = target
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self._lock = threading.Lock()
        self._tokens = burst
        self._stamp = clock()
        self.rejected = 0

    def acquire(self) -> float:
        """Take a token now, or reserve one: returns the seconds to wait for it (0.0 now), or -1.0 if
        that would exceed ``max_wait`` (nothing is taken)."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens + (now - self._stamp) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self._stamp = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0.0
            wait = (1.0 - tokens) / self.rate
            if wait > self.max_wait:
                self._tokens = tokens
                self.rejected += 1
                return -1.0
            self._tokens = tokens - 1.0  # reserved: the bucket goes negative, later callers wait longer
            return wait

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        wait = self.acquire()
        if wait:
            if wait < 0:
                raise self._limited()
            self._sleep(wait)
        return fn(*args, **kwargs)

    def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Awaitable[Any]:  # type: ignore[override]
        # A plain function that returns the call's own awaitable when a token is there (the common case):
        # no coroutine of ours to create and step through, one per layer of a policy stack.
        wait = self.acquire()
        if not wait:
            return fn(*args, **kwargs)  # type: ignore[no-any-return]
        return self._acall_later(wait, fn, args, kwargs)

    async def _acall_later(self, wait: float, fn: Callable[..., Any], args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
        if wait < 0:
            raise self._limited()
        await self._asleep(wait)
        return await fn(*args, **kwargs)

    def guard(self) -> _Guard:
        """``with limiter.guard():`` / ``async with limiter.guard():`` takes one token for the block."""
        return _Guard(self)

    def _limited(self) -> BaseException:
        event(self.target, self.name, "rate_limit.rejected", detail={"rate": self.rate})
        return reject(RateLimited, self.target, self.name, f"rate limit of {self.rate:g}/s for {self.target} reached")


TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil then tokens = burst; ts = now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
  if wait > max_wait then
    wait = -1
  else
    tokens = tokens - 1
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate) * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter(RateLimiter):
    """A token bucket in Redis, shared by every process that uses the same ``key``.

    Args:
        rate, burst, max_wait: as :class:`RateLimiter`.
        url: a redis URL (``redis://127.0.0.1:6379/0``), used when ``client`` is not given.
        client: a ``redis.Redis`` for sync calls; ``aclient``: a ``redis.asyncio.Redis`` for async calls
            (default: one made from ``url`` per event loop).
        key: the Redis key (default ``instrument:rate_limit:<target>``).
        fail_open: when Redis fails, let the call go ahead (True) or reject it (False).

    .. versionadded:: 0.1
    """

    def __init__(self, rate: float, *, url: str | None = None, client: Any = None, aclient: Any = None,
                 key: str | None = None, fail_open: bool = True, burst: float | None = None,
                 max_wait: float = 0.0, target: str = "rate_limit", sleep: Callable[[float], Any] = time.sleep,
                 asleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        super().__init__(rate, burst=burst, max_wait=max_wait, target=target, sleep=sleep, asleep=asleep)
        if client is None and aclient is None and url is None:
            raise ValueError("RedisRateLimiter needs url=, client= or aclient=")
        self.url = url
        self.key = key or f"instrument:rate_limit:{target}"
        self.fail_open = fail_open
        self._client = client
        self._aclient = aclient
        self._script: Any = None
        self._ascripts: dict[int, tuple[Any, Any]] = {}  # id(loop) -> (client, script)
        self._args = (repr(self.rate), repr(self.burst), repr(self.max_wait))

    def acquire(self) -> float:
        script = self._script
        if script is None:
            if self._client is None:
                import redis  # lazily: only when a shared limiter is used

                self._client = redis.Redis.from_url(self.url)  # type: ignore[arg-type]
            script = self._script = self._client.register_script(TOKEN_BUCKET_LUA)
        try:
            with _context.suppress():  # the limiter's own Redis traffic is not an instrumented call
                return float(script(keys=[self.key], args=self._args))
        except Exception as exc:  # noqa: BLE001 - Redis down: fail open or closed, as configured
            return self._unavailable(exc)

    async def aacquire(self) -> float:
        loop = asyncio.get_running_loop()
        found = self._ascripts.get(id(loop))
        if found is None:
            client = self._aclient
            if client is None:
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(self.url)  # type: ignore[arg-type]
            found = (client, client.register_script(TOKEN_BUCKET_LUA))
            if len(self._ascripts) > 16:
                self._ascripts.clear()
            self._ascripts[id(loop)] = found
        try:
            with _context.suppress():
                return float(await found[1](keys=[self.key], args=self._args))
        except Exception as exc:  # noqa: BLE001
            return self._unavailable(exc)

    def _unavailable(self, exc: Exception) -> float:
        from ._base import error_name

        event(self.target, self.name, "rate_limit.unavailable", error_type=error_name(exc),
              detail={"fail_open": self.fail_open})
        return 0.0 if self.fail_open else -1.0

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        wait = await self.aacquire()
        if wait:
            if wait < 0:
                raise self._limited()
            await self._asleep(wait)
        return await fn(*args, **kwargs)


class _Guard:
    __slots__ = ("_limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def __enter__(self) -> None:
        wait = self._limiter.acquire()
        if wait < 0:
            raise self._limiter._limited()
        if wait:
            self._limiter._sleep(wait)

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> None:
        limiter = self._limiter
        wait = await limiter.aacquire() if isinstance(limiter, RedisRateLimiter) else limiter.acquire()
        if wait < 0:
            raise limiter._limited()
        if wait:
            await limiter._asleep(wait)

    async def __aexit__(self, *exc: object) -> None:
        return None
