"""Pre-fork servers: what a forked worker must redo so that it is a process of its own.

gunicorn ``--preload``, uWSGI and ``multiprocessing`` (fork) start the toolkit once in the parent and
then fork workers. OpenTelemetry SDK 1.45 already handles, in each child, its batch processors' and
metric reader's threads and queues, the providers' locks, and ``service.instance.id`` (its
process-dependent resource detector runs again). What it does not cover is redone here, in one
``os.register_at_fork(after_in_child=...)`` hook:

- ``process.pid`` (and ``process.parent_pid``) in the providers' resource, and ``service.instance.id``
  too should the SDK not have renewed it;
- gRPC exporter channels: a channel made in the parent must not be used in the child (gRPC's fork
  support is off by default), so each owned OTLP gRPC exporter gets a new channel;
- the toolkit's own state: locks that another parent thread may have held at fork time, the breaker
  and policy registry (breakers are per worker), the calls in flight, the reported-once set.

One ordering hazard is fixed at :func:`prepare` time, before the providers exist: the SDK's child hook
runs resource detectors in a ``ThreadPoolExecutor``, and ``concurrent.futures.thread`` holds a global
lock across ``fork()`` that its own child hook re-creates. If that module is first imported *after*
the providers were made, its hook runs after theirs and every forked child deadlocks. Importing it
first keeps the order right.

The resource is private state of each provider; the one SDK method used (``_update_resource``) is the
one the SDK's own fork handler calls. ``tests/hardening/test_fork.py`` fails if that shape changes.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from typing import Any

__all__ = ["after_in_child", "install", "prepare"]

_providers: list[Any] = []  # the toolkit's Providers object(s), set by install()
_installed = [False]
_parent_instance: dict[str, Any] = {}


def prepare() -> None:
    """Call before creating SDK providers: makes the SDK's own at-fork handler safe (see the docstring)."""
    import concurrent.futures.thread  # noqa: F401 - imported for its at-fork hook's registration order


def install(providers: Any) -> None:
    """Register the child hook once; ``providers`` is what :func:`instrument._otel.setup` returned."""
    _providers[:] = [providers]
    tp = getattr(providers, "tracer_provider", None)
    resource = getattr(tp, "resource", None)
    if resource is not None:
        _parent_instance["service.instance.id"] = resource.attributes.get("service.instance.id")
    if _installed[0] or not hasattr(os, "register_at_fork"):
        return
    _installed[0] = True
    os.register_at_fork(before=_hold_export_locks, after_in_parent=_release_export_locks, after_in_child=_hook)


def _export_locks() -> list[Any]:
    """Locks an export thread holds while it collects or exports, in the order it takes them: each owned
    meter provider's collection lock, each owned metric reader's export lock, then each deferred exporter's
    build lock (see :class:`instrument._otel.Deferred`). A fork in the middle of a collection or an export
    would leave the child with them held by a thread it does not have: the child's metric reader would
    then wait for the collection lock forever and the worker would never report a metric."""
    from instrument._otel import Deferred

    locks = []
    for providers in _providers:
        for provider in _owned(providers):
            consumer = getattr(provider, "_measurement_consumer", None)
            lock = getattr(consumer, "_lock", None)
            if lock is not None:
                locks.append(lock)
    for providers in _providers:
        for provider in _owned(providers):
            for reader in getattr(provider, "_metric_readers", ()) or ():
                lock = getattr(reader, "_export_lock", None)
                if lock is not None:
                    locks.append(lock)
    locks.extend(d._lock for d in list(Deferred._instances or ()))
    return locks


_held: list[Any] = []


def _hold_export_locks() -> None:
    try:
        for lock in _export_locks():
            lock.acquire()
            _held.append(lock)
    except Exception:  # noqa: BLE001, S110 - never stop a fork; the child hook still runs
        pass


def _release_export_locks() -> None:
    while _held:
        _held.pop().release()


def _hook() -> None:
    try:
        after_in_child()
    except Exception as exc:  # noqa: BLE001 - a failing hook must never take the worker down
        from instrument import _safety

        _safety.report("fork", exc)


def after_in_child() -> None:
    """Everything a forked child redoes (run by the at-fork hook; callable by tests)."""
    _release_export_locks()  # held by this thread across fork(): it is this child's own copy
    _reset_locks()
    _reset_toolkit_state()
    _rebuild_deferred_exporters()
    if _providers:
        _renew_resource(_providers[0])
        _renew_grpc_channels(_providers[0])


_abandoned: list[Any] = []  # the parent's exporters, kept from garbage collection in the child


def _rebuild_deferred_exporters() -> None:
    """The child builds its own OTLP exporters on first export, as the parent did.

    An exporter the parent built holds a session or channel whose locks and sockets may have been in use by
    the parent's export thread at the moment of the fork (a thread the child does not have): clearing or
    renewing them in the child can block forever on such a lock. The child forgets them instead (kept
    referenced, never closed: closing could touch state the parent owns) and builds fresh ones.
    """
    from instrument._otel import Deferred

    for deferred in list(Deferred._instances or ()):
        deferred._lock = threading.Lock()
        if deferred._real is not None:
            _abandoned.append(deferred._real)
            deferred._real = None


# Module locks another thread of the parent may hold at fork time (a reader copying the aggregates'
# registry, a request drawing a fault, a pool registering its observers, a first deadline hooking redis
# connections): the child gets its own.
_MODULE_LOCKS = (
    ("instrument", "_lock"), ("instrument._aggregates", "_lock"), ("instrument._safety", "_lock"),
    ("instrument._pool_metrics", "_lock"), ("instrument.integrations", "_lock"),
    ("instrument.policies._config", "_lock"), ("instrument.faults._registry", "_lock"),
    ("instrument.faults._server", "_rng_lock"), ("instrument.integrations.redis", "_hook_lock"),
)


def _reset_locks() -> None:
    for name, attribute in _MODULE_LOCKS:
        module = sys.modules.get(name)  # one the parent never imported has no lock to renew
        if module is not None:
            setattr(module, attribute, threading.Lock())


def _reset_toolkit_state() -> None:
    from instrument import _call, _context, _safety

    _safety._seen.clear()
    _safety.failures = 0
    for ep in _call.endpoints():
        ep._in_flight = set()  # the parent's calls run in threads the child does not have
    try:
        from instrument.policies import _config

        _config._registry.clear()  # breakers, bulkheads, limiters: fresh per worker
    except ImportError:  # pragma: no cover
        pass
    _context.generation.bump()  # every endpoint rebuilds its chain (new policy objects) on next call
    from instrument import _export, _aggregates

    _export.reset()
    _aggregates.forget_recorded()  # the parent's calls are the parent's to report


def _owned(providers: Any) -> list[Any]:
    return list(getattr(providers, "owned", ()) or ())


def _renew_resource(providers: Any) -> None:
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = {"process.pid": os.getpid(), "process.parent_pid": os.getppid()}
    for provider in _owned(providers):
        current = _resource_of(provider)
        if current is None:
            continue
        old = current.attributes.get("service.instance.id")
        if old is None or old == _parent_instance.get("service.instance.id"):
            # The SDK did not renew it (older SDK): a worker must not share the parent's identity.
            attrs.setdefault("service.instance.id", str(uuid.uuid4()))
        update = getattr(provider, "_update_resource", None)
        if update is not None:
            update(Resource(attrs))
        if provider is providers.meter_provider:
            from instrument import _aggregates

            # Our aggregates go out under this resource when the SDK itself has nothing to report.
            _aggregates.use_resource(_resource_of(provider))


def _resource_of(provider: Any) -> Any:
    resource = getattr(provider, "resource", None)
    if resource is None:  # MeterProvider keeps it in its SDK config
        resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    return resource


def exporters(providers: Any) -> list[Any]:
    """The exporters behind the processors and readers of the providers we own (unwrapped)."""
    found: list[Any] = []
    for provider in _owned(providers):
        multi = getattr(provider, "_active_span_processor", None)
        if multi is None:  # LoggerProvider
            multi = getattr(provider, "_multi_log_record_processor", None)
        for processor in getattr(multi, "_span_processors", ()) or getattr(multi, "_log_record_processors", ()) or ():
            inner = getattr(processor, "_batch_processor", None)
            exporter = getattr(inner, "_exporter", None) or getattr(processor, "span_exporter", None)
            if exporter is not None:
                found.append(exporter)
        for reader in getattr(provider, "_metric_readers", ()) or ():
            exporter = getattr(reader, "_exporter", None)
            if exporter is not None:
                found.append(exporter)
    return [getattr(e, "wrapped", e) for e in found]


def _renew_grpc_channels(providers: Any) -> None:
    for exporter in exporters(providers):
        reinit = getattr(exporter, "_initialize_channel_and_stub", None)
        if reinit is not None and getattr(exporter, "_channel", None) is not None:
            # The parent's channel is abandoned, not closed: closing it could touch state the parent owns.
            reinit()
        else:
            _drop_http_connections(exporter)


def _drop_http_connections(exporter: Any) -> None:
    """OTLP/HTTP: forget keep-alive sockets inherited from the parent (both would read the same socket)."""
    for session in _sessions(exporter, depth=3):
        for adapter in list(getattr(session, "adapters", {}).values()):
            manager = getattr(adapter, "poolmanager", None)
            if manager is not None:
                manager.clear()  # closes the child's copies only; the parent keeps its own descriptors


def _sessions(obj: Any, depth: int) -> list[Any]:
    found: list[Any] = []
    for value in list(getattr(obj, "__dict__", {}).values()) + [getattr(obj, n, None) for n in getattr(type(obj), "__slots__", ())]:
        if type(value).__name__ == "Session" and hasattr(value, "adapters"):
            found.append(value)
        elif depth > 1 and hasattr(value, "__dict__") and type(value).__module__.startswith("opentelemetry"):
            found.extend(_sessions(value, depth - 1))
    return found
