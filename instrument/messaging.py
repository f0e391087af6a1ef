"""Consumer-side helpers: idempotent consumers for at-least-once delivery, and backpressure.

::

    from instrument.messaging import MemoryStore, RedisStore, idempotent, limit

    guard = limit(channel, max_in_flight=8)          # basic_qos(prefetch_count=8) + a bulkhead

    @guard
    @idempotent(RedisStore(redis.Redis(), ttl=86400))  # drop what another delivery already processed
    def on_order(channel, method, properties, body):
        fulfil(body)                                   # the decorator marks it processed, then acks

**Idempotent consumers.** Brokers deliver at least once: a consumer that dies after its work but
before its ack gets the message again (on another consumer, after a restart). :func:`idempotent` keys
each message (its message id by default, or ``key=``), skips the handler when the store says the key
was processed, settles the duplicate (ack) so it is not redelivered forever, and counts it in
``instrument.messaging.duplicates``. A key is marked processed only *after* the handler returns, and
the message is acked only after that, so: a handler that fails or a process that crashes mid-way leaves
it unmarked and the redelivery runs it; a crash after the marker but before the ack makes the
redelivery a duplicate, dropped and acked. The remaining window, a crash between the handler's return
and the marker's write, is a few
microseconds (memory) or one Redis round trip; make the handler's effects idempotent where even that
matters. :class:`RedisStore` (``SET key 1 NX EX ttl``) shares markers between consumers and restarts;
:class:`MemoryStore` covers one process.

**Backpressure.** :func:`limit` bounds how many messages one consumer processes at once: it sets the
broker's own flow control to the same number where the client has one (RabbitMQ ``basic_qos``
prefetch), so the broker stops sending instead of the consumer buffering, and the returned decorator
is a bulkhead (a semaphore) around the handler whose occupancy is ``instrument.messaging.in_flight``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from instrument import _context, _instruments

__all__ = ["Limit", "MemoryStore", "RedisStore", "alimit", "idempotent", "limit", "message_id"]


# -- what a message is called, per client -------------------------------------------------------------


def message_id(*args: Any) -> str | None:
    """The message id in a handler's arguments, for the supported clients; None when it has none.

    pika ``(channel, method, properties, body)``: ``properties.message_id``; aio-pika ``message``:
    ``message.message_id``; kombu ``(body, message)``: ``message_id`` property or Celery's ``id`` header;
    nats ``msg``: the ``Nats-Msg-Id`` header; paho ``(client, userdata, msg)``: the MQTT 5 user property
    ``message-id``; Redis Streams ``(stream, entry_id, fields)``: the entry id.
    """
    for arg in args:
        found = _id_of(arg)
        if found is not None:
            return found
    if len(args) == 3 and isinstance(args[1], (str, bytes)) and isinstance(args[2], dict):  # redis streams
        entry = args[1]
        return entry.decode() if isinstance(entry, bytes) else entry
    return None


def _id_of(obj: Any) -> str | None:
    if obj is None or isinstance(obj, (str, bytes, int, float, dict, list, tuple)):
        return None
    mid = getattr(obj, "message_id", None)  # pika BasicProperties, aio-pika messages
    if isinstance(mid, (str, bytes)) and mid:
        return mid.decode() if isinstance(mid, bytes) else mid
    props = getattr(obj, "properties", None)  # kombu Message, paho MQTTMessage
    if isinstance(props, dict):
        mid = props.get("message_id")
        if mid:
            return str(mid)
        headers = getattr(obj, "headers", None) or {}
        if isinstance(headers, dict) and headers.get("id"):  # Celery task id
            return str(headers["id"])
    elif props is not None:
        for name, value in getattr(props, "UserProperty", None) or ():
            if name == "message-id":
                return str(value)
    headers = getattr(obj, "headers", None)  # nats Msg
    if isinstance(headers, dict) and type(obj).__module__.startswith("nats"):
        mid = headers.get("Nats-Msg-Id")
        if mid:
            return str(mid)
    return None


def _ack_duplicate(*args: Any) -> Any:
    """Settle a dropped duplicate so the broker stops redelivering it (returns an awaitable for async clients)."""
    if len(args) >= 2 and hasattr(args[0], "basic_ack") and hasattr(args[1], "delivery_tag"):  # pika
        return args[0].basic_ack(delivery_tag=args[1].delivery_tag)
    for arg in args:
        module = type(arg).__module__
        if module.startswith(("aio_pika", "kombu")) and hasattr(arg, "ack"):
            if module.startswith("kombu") and getattr(arg, "acknowledged", False):
                return None
            if module.startswith("aio_pika") and getattr(arg, "processed", False):
                return None
            return arg.ack()
        if module.startswith("nats") and getattr(arg, "reply", None) and hasattr(arg, "ack"):
            return arg.ack()  # JetStream; core NATS has nothing to settle
    return None


# -- stores -------------------------------------------------------------------------------------------


class MemoryStore:
    """Processed keys in this process, each kept ``ttl`` seconds, at most ``max_keys`` (oldest evicted).

    .. versionadded:: 0.1
    """

    def __init__(self, ttl: float = 3600.0, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        with self._lock:
            expires = self._keys.get(key)
            if expires is None:
                return False
            if expires <= self._clock():
                del self._keys[key]
                return False
            return True

    def mark(self, key: str) -> bool:
        """Record ``key`` as processed; False if it already was (set-if-absent)."""
        now = self._clock()
        with self._lock:
            expires = self._keys.get(key)
            if expires is not None and expires > now:
                return False
            self._keys[key] = now + self.ttl
            self._keys.move_to_end(key)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
            return True

    async def aseen(self, key: str) -> bool:
        return self.seen(key)

    async def amark(self, key: str) -> bool:
        return self.mark(key)


class RedisStore:
    """Processed keys in Redis, shared by every consumer: ``SET <prefix><key> 1 NX EX <ttl>``.

    Args:
        client: a ``redis.Redis`` (sync handlers) or ``redis.asyncio.Redis`` (``async def`` handlers).
        ttl: seconds a key is remembered; longer than the broker could take to redeliver.
        prefix: namespace for the keys.

    .. versionadded:: 0.1
    """

    def __init__(self, client: Any, *, ttl: int = 86_400, prefix: str = "instrument:idempotent:") -> None:
        self.client = client
        self.ttl = int(ttl)
        self.prefix = prefix

    def seen(self, key: str) -> bool:
        return bool(self.client.exists(self.prefix + key))

    def mark(self, key: str) -> bool:
        return bool(self.client.set(self.prefix + key, b"1", nx=True, ex=self.ttl))

    async def aseen(self, key: str) -> bool:
        return bool(await self.client.exists(self.prefix + key))

    async def amark(self, key: str) -> bool:
        return bool(await self.client.set(self.prefix + key, b"1", nx=True, ex=self.ttl))


# -- the decorator -------------------------------------------------------------------------------------


def _running_attributes() -> dict[str, Any]:
    """messaging.system and destination of the ``process`` call running this handler, if any."""
    state = _context.current.get()
    if state is None:
        return {}
    base = state.op.metric_base
    return {k: base[k] for k in ("messaging.system", "messaging.destination.name") if k in base}


def _count_duplicate(key: str) -> None:
    attrs = _running_attributes()
    _instruments.get("instrument.messaging.duplicates").add(1, attrs)
    state = _context.current.get()
    if state is not None and state.span.is_recording():
        state.span.set_attribute("instrument.messaging.duplicate", True)
        state.add_event("duplicate", {"messaging.message.id": key})


def idempotent(store: Any = None, *, key: Callable[..., str | None] | None = None, ack: bool = True,
               settle: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a message handler so that a message already processed is dropped, not processed again.

    Args:
        store: :class:`MemoryStore` (default, one per decorated handler) or :class:`RedisStore`.
        key: computes the message's key from the handler's arguments (default :func:`message_id`); a
            message without a key is processed normally.
        ack: settle the message here: after the marker is written for a processed message, and for a
            dropped duplicate. Then the handler must not ack itself (aio-pika's ``message.process()`` and
            kombu's ``message.ack()`` are detected and not repeated; pika's are not: pass ``ack=False`` if a
            pika handler acks, or its consumer uses ``auto_ack``). With ``ack=False`` only duplicates are
            settled here.
        settle: how to settle, called with the handler's arguments (default: ack for pika, aio-pika, kombu
            and JetStream; nothing for core NATS, MQTT and Redis Streams, whose handlers XACK themselves).

    Returns:
        The decorator; works on sync and ``async def`` handlers. The decorated handler returns None for a
        dropped duplicate.

    .. versionadded:: 0.1
    """
    store = store if store is not None else MemoryStore()
    key_of = key or message_id
    settle_fn = settle or _ack_duplicate

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def ahandler(*args: Any, **kwargs: Any) -> Any:
                k = key_of(*args)
                if k is None:
                    return await fn(*args, **kwargs)
                if await store.aseen(k):
                    _count_duplicate(k)
                    done = settle_fn(*args)
                    if inspect.isawaitable(done):
                        await done
                    return None
                result = await fn(*args, **kwargs)
                await store.amark(k)  # processed: from here a redelivery is dropped ...
                if ack:
                    done = settle_fn(*args)  # ... so a crash before this ack loses nothing
                    if inspect.isawaitable(done):
                        await done
                return result

            return ahandler

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            k = key_of(*args)
            if k is None:
                return fn(*args, **kwargs)
            if store.seen(k):
                _count_duplicate(k)
                settle_fn(*args)
                return None
            result = fn(*args, **kwargs)
            store.mark(k)  # processed: from here a redelivery is dropped ...
            if ack:
                settle_fn(*args)  # ... so a crash before this ack loses nothing
            return result

        return handler

    return decorate


# -- backpressure -------------------------------------------------------------------------------------


class Limit:
    """A bulkhead around a message handler: at most ``max_in_flight`` run at once; callers wait their turn.

    Decorate sync handlers (a thread semaphore) or ``async def`` ones (an asyncio semaphore). ``active``
    and ``peak`` say how many run now and at most so far; ``instrument.messaging.in_flight`` shows it.

    .. versionadded:: 0.1
    """

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._sem = threading.BoundedSemaphore(max_in_flight)
        self._asem: asyncio.Semaphore | None = None
        self._gauge = _instruments.get("instrument.messaging.in_flight")

    def _enter(self) -> dict[str, Any]:
        attrs = _running_attributes()
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        self._gauge.add(1, attrs)
        return attrs

    def _exit(self, attrs: dict[str, Any]) -> None:
        with self._lock:
            self.active -= 1
        self._gauge.add(-1, attrs)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def ahandler(*args: Any, **kwargs: Any) -> Any:
                if self._asem is None:
                    self._asem = asyncio.Semaphore(self.max_in_flight)
                async with self._asem:
                    attrs = self._enter()
                    try:
                        return await fn(*args, **kwargs)
                    finally:
                        self._exit(attrs)

            return ahandler

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            with self._sem:
                attrs = self._enter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._exit(attrs)

        return handler


def limit(channel: Any = None, max_in_flight: int = 8) -> Limit:
    """A :class:`Limit` of ``max_in_flight``, with the broker's prefetch set to match on ``channel``.

    ``channel``: a pika channel (``basic_qos(prefetch_count=...)``), a kombu ``Consumer`` or channel
    (``qos``/``basic_qos``), or None. For aio-pika use :func:`alimit`. NATS JetStream: pass
    ``max_ack_pending`` in the consumer config; core NATS and MQTT have no per-consumer credit, so the
    bulkhead alone bounds processing (and the client buffers: see its pending limits).

    .. versionadded:: 0.1
    """
    guard = Limit(max_in_flight)
    if channel is not None:
        if hasattr(channel, "basic_qos"):
            channel.basic_qos(prefetch_count=max_in_flight)
        elif hasattr(channel, "qos"):
            channel.qos(prefetch_count=max_in_flight)
    return guard


async def alimit(channel: Any = None, max_in_flight: int = 8) -> Limit:
    """:func:`limit` for asyncio clients: aio-pika ``await channel.set_qos(prefetch_count=...)``.

    .. versionadded:: 0.1
    """
    guard = Limit(max_in_flight)
    if channel is not None and hasattr(channel, "set_qos"):
        await channel.set_qos(prefetch_count=max_in_flight)
    return guard
