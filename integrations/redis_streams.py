"""redis-py Streams as a message queue: ``send``/``receive``/``settle`` spans, and ``process`` for handlers.

Streams have no headers, so the context travels in the entry itself: ``XADD`` adds a ``traceparent``
field (and ``tracestate`` when set) next to the application's fields; readers see it as a field.

- ``XADD``: a PRODUCER span ``publish <stream>``; the entry id becomes ``messaging.message.id``.
- ``XREADGROUP``/``XREAD``: one ``receive <stream>`` span per read, linked to the producer of every
  entry returned, ``messaging.batch.message_count`` entries, consumed messages counted per entry;
  the group is ``messaging.consumer.group.name``.
- ``XACK``: a ``settle`` span (``ack``).
- :func:`process`: a decorator for a handler ``(stream, entry_id, fields)`` that runs it as the
  CONSUMER span ``process <stream>``, child of the entry's producer.

``XADD`` is described to the redis integration's command hook (``COMMAND_DESCRIBERS``), so a publish goes
through one wrapper, ``execute_command``, which also catches ``execute_command("XADD", ...)`` itself; the
reads and ``XACK`` are wrapped at the command methods (``StreamCommands``). Both for ``redis.Redis`` and
``redis.asyncio.Redis``; pipelines and cluster clients pass through. The span replaces the generic Redis
command span for these commands. Patched when ``redis`` is imported (registry entry ``redis_streams``);
switch off with INSTRUMENT_DISABLED_INTEGRATIONS=redis_streams (publishes are then plain ``XADD`` command
spans; with ``redis`` switched off they have none). Message bodies (field values) are never recorded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from redis import exceptions as rex

from instrument import _context, _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.integrations.redis import COMMAND_DESCRIBERS, Command
from instrument.patching import Target, apply, revert

_M = "redis.commands.core"
READ = (Target(_M, "StreamCommands.xreadgroup"), Target(_M, "StreamCommands.xread"))
SETTLE = (Target(_M, "StreamCommands.xack"),)
TARGETS = READ + SETTLE  # and XADD in COMMAND_DESCRIBERS

ERRORS = ClientErrors(
    catch=(rex.ConnectionError,),
    connect=lambda msg: rex.ConnectionError(msg),
    timeout=lambda msg: rex.TimeoutError(msg),
    reset=lambda msg: rex.ConnectionError(msg),
    is_failure=lambda exc: isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)),
    is_timeout=lambda exc: isinstance(exc, (rex.TimeoutError, TimeoutError)),
)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


_ENDPOINT = "_instrument_stream_endpoint"  # on a connection pool: its messaging endpoint
_NONE: dict[str, Any] = {}


def _endpoint(client: Any) -> Endpoint | None:
    pool = getattr(client, "connection_pool", None)
    found = getattr(pool, "__dict__", _NONE).get(_ENDPOINT)
    if found is not None:
        return found
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None or "path" in kwargs:
        host, port = (kwargs or {}).get("path") or "localhost", None
    else:
        host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    found = _messaging.client_endpoint("redis", host, port, ERRORS, scheme="redis")
    if pool is not None:
        try:
            setattr(pool, _ENDPOINT, found)  # a pool's address never changes: resolve it once
        except AttributeError:
            pass
    return found


_PASS, _SYNC, _ASYNC = 0, 1, 2
_kinds: dict[type, int] = {}


def _kind(instance: Any) -> int:
    """How a client class runs stream commands, decided once per class: pipelines queue commands (their
    result is the pipeline) and cluster clients route per key, so both pass through."""
    cls = type(instance)
    found = _kinds.get(cls)
    if found is None:
        if "Pipeline" in cls.__name__ or not hasattr(instance, "connection_pool"):
            found = _PASS
        else:
            found = _ASYNC if cls.__module__.startswith("redis.asyncio") else _SYNC
        _kinds[cls] = found
    return found


def _run(ep: Endpoint, kind: int, op: Any, fn: Callable[..., Any], args: tuple[Any, ...],
         kwargs: dict[str, Any], **options: Any) -> Any:
    if kind == _ASYNC:
        return ep.acall(op, fn, args, kwargs, **options)  # the caller awaits it
    return ep.call(op, fn, args, kwargs, **options)


# -- XADD ---------------------------------------------------------------------------------------------


_PUBLISHES = "_instrument_stream_publishes"  # on a connection pool: stream name -> its XADD Command


def _describe_xadd(client: Any, args: tuple[Any, ...]) -> Command | None:
    """``XADD key [options] id field value ...`` as ``publish <key>``; shorter is redis' own error to raise."""
    if len(args) < 5:
        return None
    stream = args[1]
    known = getattr(getattr(client, "connection_pool", None), "__dict__", _NONE).get(_PUBLISHES)
    found = known.get(stream) if known is not None and stream.__class__ in (str, bytes) else None
    if found is None:
        ep = _endpoint(client)
        found = Command(ep, _messaging.publish_op(ep, _text(stream)), None, _carry, _entry_id)
        pool = getattr(client, "connection_pool", None)
        if pool is not None and stream.__class__ in (str, bytes):
            known = pool.__dict__.setdefault(_PUBLISHES, {})
            if len(known) < 256:  # stream names come from code; bounded all the same
                known[stream] = found
    return found


def _carry(args: tuple[Any, ...], carrier: dict[str, str]) -> tuple[Any, ...]:
    """The entry's fields come last, so the context's fields are appended after the application's. As bytes:
    redis-py's encoder hands bytes on as they are, where a str takes four type checks and an encode."""
    for name, value in carrier.items():
        args += (name.encode(), value.encode())
    return args


def _entry_id(span: Any, result: Any) -> None:
    if result is not None and span.is_recording():
        span.set_attribute("messaging.message.id", _text(result))


# -- XREADGROUP / XREAD ---------------------------------------------------------------------------------


def _entries(result: Any) -> list[tuple[Any, Any]]:
    """(entry_id, fields) of every entry in an XREAD/XREADGROUP reply (RESP2 list or RESP3 dict)."""
    out: list[tuple[Any, Any]] = []
    if not result:
        return out
    groups = result.items() if isinstance(result, dict) else result
    for item in groups:
        _stream, entries = item[0], item[1]
        if isinstance(entries, list) and entries and isinstance(entries[0], list) and len(entries) == 1 \
                and entries[0] and isinstance(entries[0][0], (list, tuple)):
            entries = entries[0]  # RESP3 wraps the entries once more
        for entry in entries or ():
            if isinstance(entry, (list, tuple)) and len(entry) == 2:
                out.append((entry[0], entry[1]))
    return out


def _read(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    kind = _kind(instance)
    if kind == _PASS:
        return wrapped(*args, **kwargs)
    group = getattr(wrapped, "__name__", "") == "xreadgroup"
    bound = dict(zip(("groupname", "consumername", "streams") if group else ("streams",), args))
    bound.update(kwargs)
    names = [_text(s) for s in (bound.get("streams") or {})]
    destination = names[0] if len(names) == 1 else None
    ep = _endpoint(instance)
    attributes: dict[str, Any] = {}
    if group:
        attributes["messaging.consumer.group.name"] = _text(bound.get("groupname"))

    def count(result: Any) -> Any:
        entries = _entries(result)
        state = _context.current.get()
        if state is not None:
            state.count = len(entries)  # consumed.messages counts entries, not reads
        return result

    if kind == _ASYNC:
        async def fn(*a: Any, **k: Any) -> Any:
            return count(await wrapped(*a, **k))
    else:
        def fn(*a: Any, **k: Any) -> Any:
            return count(wrapped(*a, **k))

    return _run(ep, kind, _messaging.receive_op(ep, destination), fn, args, kwargs, attributes=attributes,
                on_result=_link_entries)


def _link_entries(span: Any, result: Any) -> None:
    if not span.is_recording():
        return
    entries = _entries(result)
    for link in _messaging.links(_fields_as_headers(fields) for _id, fields in entries):
        span.add_link(link.context)
    span.set_attribute("messaging.batch.message_count", len(entries))


def _fields_as_headers(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict):
        return {}
    return {_text(k): v for k, v in fields.items() if k in (b"traceparent", "traceparent", b"tracestate", "tracestate")}


# -- XACK -----------------------------------------------------------------------------------------------


def _xack(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    kind = _kind(instance)
    if kind == _PASS:
        return wrapped(*args, **kwargs)
    name = args[0] if args else kwargs.get("name")
    ep = _endpoint(instance)
    return _run(ep, kind, _messaging.settle_op(ep, "ack", _text(name) if name is not None else None),
                wrapped, args, kwargs)


# -- process --------------------------------------------------------------------------------------------


def process(client: Any, *, group: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a handler ``(stream, entry_id, fields)`` so that it runs as ``process <stream>``.

    Args:
        client: the Redis client the entries were read with (for ``server.address``/``server.port``).
        group: the consumer group, recorded as ``messaging.consumer.group.name``.

    .. versionadded:: 0.1
    """
    ep = _endpoint(client)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def prepare(stream: Any, entry_id: Any) -> tuple[str, dict[str, Any]]:
            attrs: dict[str, Any] = {"messaging.message.id": _text(entry_id)}
            if group:
                attrs["messaging.consumer.group.name"] = group
            return _text(stream), attrs

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def ahandler(stream: Any, entry_id: Any, fields: Any, *args: Any, **kwargs: Any) -> Any:
                name, attrs = prepare(stream, entry_id)
                return await _messaging.aprocess(ep, name, fn, (stream, entry_id, fields, *args), kwargs,
                                                 headers=_fields_as_headers(fields), attributes=attrs)

            return ahandler

        @functools.wraps(fn)
        def handler(stream: Any, entry_id: Any, fields: Any, *args: Any, **kwargs: Any) -> Any:
            name, attrs = prepare(stream, entry_id)
            return _messaging.process(ep, name, fn, (stream, entry_id, fields, *args), kwargs,
                                      headers=_fields_as_headers(fields), attributes=attrs)

        return handler

    return decorate


def patch() -> None:
    COMMAND_DESCRIBERS["XADD"] = _describe_xadd
    apply(READ, _read)
    apply(SETTLE, _xack)


def unpatch() -> None:
    if COMMAND_DESCRIBERS.get("XADD") is _describe_xadd:
        del COMMAND_DESCRIBERS["XADD"]
    revert(TARGETS)
