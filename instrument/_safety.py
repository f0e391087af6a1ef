"""Containment: a failure inside the toolkit's own code is swallowed, counted and reported once."""

from __future__ import annotations

import logging
import threading

_log = logging.getLogger("instrument")
_lock = threading.Lock()
_seen: set[str] = set()
failures = 0  # how many internal failures were swallowed since start (all sites)


def report(where: str, exc: BaseException) -> None:
    """Log the first failure of each site once, with its traceback; count every one."""
    global failures
    failures += 1
    key = f"{where}:{type(exc).__name__}"
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    try:
        _log.warning("instrument: internal error in %s (reported once, the call was not affected)", where, exc_info=exc)
    except Exception:  # noqa: BLE001, S110 - logging itself may be broken; nothing more to do
        pass
