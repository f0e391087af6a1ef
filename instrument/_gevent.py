"""gevent: the supported order is gevent's monkey-patching first, then the toolkit.

    from gevent import monkey; monkey.patch_all()   # first line of the program
    import instrument.auto

The toolkit starts background export threads and creates locks, events and contextvars when it
initialises. Patched first, gevent turns those into greenlet-friendly versions and every greenlet gets
its own context (its own current span). Patched afterwards, the export threads and the SDK's locks are
real OS-level ones that greenlets then block on, which can stall the hub or deadlock. That order cannot
be repaired after the fact, so it is reported: :func:`check` (run by ``init()``) warns once if gevent is
partly patched already, and wraps ``gevent.monkey.patch_all``/``patch_thread``/``patch_socket`` so that
patching later than ``init()`` logs one clear warning naming the fix.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["MESSAGE", "check"]

MESSAGE = ("instrument: gevent.monkey.{what}() ran after instrument was initialised; the toolkit's export "
           "threads and locks are not gevent-aware and greenlets may block on them. Call "
           "gevent.monkey.patch_all() first, before `import instrument.auto` / instrument.init() "
           "(see README, Running in production).")
_log = logging.getLogger("instrument")
_warned = [False]
_hooked = [False]


def _warn_once(what: str) -> None:
    if _warned[0]:
        return
    _warned[0] = True
    _log.warning(MESSAGE.format(what=what))


def check() -> None:
    """Warn if gevent is already half-patched; warn if it gets patched after this point."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            socket_done = monkey.is_module_patched("socket")
            thread_done = monkey.is_module_patched("threading")
        except Exception:  # noqa: BLE001 - an unexpected gevent: do not guess
            return
        if socket_done and thread_done:
            return  # the supported order
        if socket_done or thread_done:
            _warn_once("patch_all" if not thread_done else "patch_socket")
            return
    if _hooked[0]:
        return
    _hooked[0] = True
    import wrapt

    wrapt.register_post_import_hook(_wrap, "gevent.monkey")


def _wrap(monkey: Any) -> None:
    import wrapt

    def warn_first(wrapped: Any, _instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from instrument import is_initialized

        if is_initialized():
            _warn_once(wrapped.__name__)
        return wrapped(*args, **kwargs)

    for name in ("patch_all", "patch_thread", "patch_socket"):
        if hasattr(monkey, name):
            wrapt.wrap_function_wrapper(monkey, name, warn_first)
