"""The integration registry: one entry per client library, patched when (and only when) it is imported.

``install(settings)`` registers a wrapt post-import hook per enabled integration. When the
application imports the library (before or after ``instrument.init()``, it does not matter), the
hook imports our module for it and calls its ``patch()``. We never import a client library ourselves.
A failed patch logs one error and leaves the library untouched.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import TYPE_CHECKING

import wrapt

if TYPE_CHECKING:
    from instrument._settings import Settings

__all__ = ["REGISTRY", "install", "installed", "patch", "uninstall", "unpatch"]

# name -> (module that triggers the patch, our integration module)
REGISTRY: dict[str, tuple[str, str]] = {
    "requests": ("requests", "instrument.integrations.requests"),
    "urllib3": ("urllib3", "instrument.integrations.urllib3"),
    "urllib": ("urllib.request", "instrument.integrations.urllib"),
    "httpx": ("httpx", "instrument.integrations.httpx"),
    "aiohttp": ("aiohttp", "instrument.integrations.aiohttp"),
    "psycopg": ("psycopg", "instrument.integrations.psycopg"),
    "psycopg_pool": ("psycopg_pool", "instrument.integrations.psycopg_pool"),
    "psycopg2": ("psycopg2", "instrument.integrations.psycopg2"),
    "asyncpg": ("asyncpg", "instrument.integrations.asyncpg"),
    "sqlalchemy": ("sqlalchemy", "instrument.integrations.sqlalchemy"),
    "sqlite3": ("sqlite3", "instrument.integrations.sqlite3"),
    "pymysql": ("pymysql", "instrument.integrations.pymysql"),
    "redis": ("redis", "instrument.integrations.redis"),
    "redis_streams": ("redis", "instrument.integrations.redis_streams"),
    "pika": ("pika", "instrument.integrations.pika"),
    "aio_pika": ("aio_pika", "instrument.integrations.aio_pika"),
    "kombu": ("kombu", "instrument.integrations.kombu"),
    "nats": ("nats", "instrument.integrations.nats"),
    "paho_mqtt": ("paho.mqtt.client", "instrument.integrations.paho_mqtt"),
    "flask": ("flask", "instrument.integrations.flask"),
    "django": ("django.core.handlers.wsgi", "instrument.integrations.django"),
    "starlette": ("starlette.applications", "instrument.integrations.starlette"),
    "threading": ("concurrent.futures.thread", "instrument.integrations.threading"),
}

_log = logging.getLogger("instrument")
_lock = threading.Lock()
_enabled: set[str] = set()
_patched: set[str] = set()
_hooked: set[str] = set()


def _exists(module: str) -> bool:
    """Is our integration module written (the registry may list ones still to come)?"""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def enabled_names(settings: Settings) -> list[str]:
    names = list(settings.integrations) if settings.integrations else list(REGISTRY)
    return [n for n in names if n not in settings.disabled_integrations and _exists(REGISTRY[n][1])]


def install(settings: Settings) -> list[str]:
    """Register post-import hooks for every enabled integration; returns their names."""
    names = enabled_names(settings)
    for name in names:
        with _lock:
            _enabled.add(name)
            if name in _hooked:
                continue
            _hooked.add(name)
        trigger = REGISTRY[name][0]
        wrapt.register_post_import_hook(lambda _module, name=name: _on_import(name), trigger)
    return names


def _on_import(name: str) -> None:
    if name in _enabled:
        patch(name)


def patch(name: str) -> bool:
    """Patch one integration now (its library must be importable). Idempotent; never raises."""
    with _lock:
        if name in _patched:
            return True
        try:
            module = importlib.import_module(REGISTRY[name][1])
            module.patch()
        except Exception:  # noqa: BLE001 - a broken integration must not break the application
            _log.exception("instrument: could not patch %s; it runs uninstrumented", name)
            return False
        _patched.add(name)
        return True


def unpatch(name: str) -> None:
    """Undo :func:`patch` for one integration. Idempotent."""
    with _lock:
        if name not in _patched:
            return
        _patched.discard(name)
        importlib.import_module(REGISTRY[name][1]).unpatch()


def uninstall() -> None:
    """Unpatch everything and stop patching on later imports (hooks stay registered but inert)."""
    for name in list(_patched):
        unpatch(name)
    _enabled.clear()


def installed() -> list[str]:
    """Names of the integrations patched right now."""
    return sorted(_patched)
