"""instrument: one line at startup makes a service observable and resilient.

    import instrument.auto          # or: instrument.init()   or: instrument run -- python app.py

From then on every call made through a supported client library gets an OpenTelemetry span, RED
metrics and a correlated structlog event, and passes through the resilience policies and faults
configured for its target. See README.md for the configuration table.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping

from instrument._instruments import VERSION as __version__
from instrument._settings import Settings
from instrument.errors import (
    BulkheadFull,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    InjectedFault,
    InstrumentError,
    PoolExhausted,
    RateLimited,
    Rejected,
)

__all__ = [
    "BulkheadFull",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "InjectedFault",
    "InstrumentError",
    "PoolExhausted",
    "RateLimited",
    "Rejected",
    "Settings",
    "__version__",
    "init",
    "is_initialized",
    "shutdown",
]

_lock = threading.Lock()
_state: dict[str, object] = {}
_log = logging.getLogger("instrument")


def init(settings: Settings | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Start the toolkit: telemetry providers, logging, policies, faults and the integration hooks.

    Idempotent: a second call changes nothing and says so once (a warning log line).

    Args:
        settings: a ready :class:`Settings`; by default parsed from ``env`` (default ``os.environ``).

    Raises:
        ConfigError: a variable has a bad value (the message names it, the value and what is accepted).

    Returns:
        The settings in force.
    """
    with _lock:
        if "settings" in _state:
            if not _state.get("warned"):
                _state["warned"] = True
                _log.warning("instrument: init() was already called; this call changed nothing")
            return _state["settings"]  # type: ignore[return-value]
        settings = settings if settings is not None else Settings.from_env(env)
        from instrument import _call, _context, _settings

        _settings.set_active(settings)
        _call._slow_threshold[0] = settings.slow_call_threshold
        _context.generation.bump()
        if not settings.enabled:
            _state["settings"] = settings
            return settings
        from instrument import _logging, _otel, _policy_telemetry

        providers = _otel.setup(settings)
        _logging.configure_logging(settings)
        if not settings.sdk_disabled:
            _policy_telemetry.install()
        from instrument import integrations

        names = integrations.install(settings)
        _state.update(settings=settings, providers=providers, integrations=names)
        atexit.register(shutdown)
        return settings


def is_initialized() -> bool:
    return "settings" in _state


def shutdown(timeout: float | None = None) -> None:
    """Flush telemetry and stop the providers the toolkit installed, within a bounded time.

    Registered at exit by :func:`init`. Safe to call more than once.

    Args:
        timeout: seconds; default INSTRUMENT_SHUTDOWN_TIMEOUT (2 s).
    """
    with _lock:
        providers = _state.pop("providers", None)
        settings = _state.get("settings")
    if providers is None:
        return
    from instrument import _otel

    limit = timeout if timeout is not None else getattr(settings, "shutdown_timeout", 2.0)
    _otel.shutdown(providers, limit)  # type: ignore[arg-type]
