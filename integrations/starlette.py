"""Starlette and FastAPI: a SERVER span per HTTP request, named ``{method} {route}`` (``GET /users/{id}``).

Target: ``Starlette.__call__`` (FastAPI's ``__call__`` ends in it) runs each request through
:func:`instrument.asgi.call`, outside the app's middleware stack, so responses made by
``ServerErrorMiddleware`` (500) and by user middleware are seen as sent. The route is Starlette's
``scope["route"].path`` (with the prefixes of enclosing ``Mount``\\ s); a request that matched no route
(404) is named ``{method}``. Mounted sub-applications and apps that also add
:class:`instrument.asgi.InstrumentMiddleware` still give one server span per request. WebSocket and
lifespan scopes pass through. Settings: those of :mod:`instrument.wsgi`; switch off with
INSTRUMENT_DISABLED_INTEGRATIONS=starlette.
"""

from __future__ import annotations

from typing import Any

import starlette.applications  # noqa: F401 - the registry imports us after starlette itself

from instrument import asgi
from instrument.patching import Target, apply, revert

TARGETS = (Target("starlette.applications", "Starlette.__call__", is_async=True),)


def _call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # A plain function returning the coroutine: a call with the wrong arguments must still raise
    # TypeError at once (uvicorn calls the app with none to tell an app from an app factory).
    if len(args) != 3 or kwargs:
        return wrapped(*args, **kwargs)
    return asgi.call(wrapped, args[0], args[1], args[2])


def patch() -> None:
    apply(TARGETS, _call, _call)


def unpatch() -> None:
    revert(TARGETS)
