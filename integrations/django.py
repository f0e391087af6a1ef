"""Django: a SERVER span per request, WSGI or ASGI, named ``{method} {route}`` (``GET /users/<int:id>/``).

Targets: ``WSGIHandler.__call__`` and ``ASGIHandler.__call__`` run each request through
:func:`instrument.wsgi.call` / :func:`instrument.asgi.call`, and ``BaseHandler.resolve_request`` reports
the matched route (``ResolverMatch.route``, given a leading ``/`` like the other frameworks' routes).
A request that resolved to no URL pattern (404) is named ``{method}``. Django's own exception
handling turns a view's exception into a 500 response, which marks the span as an error.
Settings: those of :mod:`instrument.wsgi`; switch off with INSTRUMENT_DISABLED_INTEGRATIONS=django.
"""

from __future__ import annotations

from typing import Any

import django.core.handlers.base  # noqa: F401 - the registry imports us after django itself

from instrument import _server, asgi, wsgi
from instrument.patching import Target, apply, revert

_WSGI = (Target("django.core.handlers.wsgi", "WSGIHandler.__call__"),)
_ASGI = (Target("django.core.handlers.asgi", "ASGIHandler.__call__", is_async=True, optional=True),)
_ROUTE = (Target("django.core.handlers.base", "BaseHandler.resolve_request"),)
TARGETS = _WSGI + _ASGI + _ROUTE


def _wsgi_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    return wsgi.call(wrapped, args[0], args[1])


def _asgi_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Returns the coroutine (see integrations/starlette.py: wrong arguments raise TypeError at once).
    if len(args) != 3 or kwargs:
        return wrapped(*args, **kwargs)
    return asgi.call(wrapped, args[0], args[1], args[2])


def _resolve_request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    match = wrapped(*args, **kwargs)
    try:
        route = getattr(match, "route", None)
        if route:
            request = args[0] if args else kwargs["request"]
            store = getattr(request, "scope", None)  # ASGIRequest keeps the scope; WSGIRequest the environ
            if store is None:
                store = request.environ
            store[_server.ROUTE_KEY] = route if route.startswith("/") else "/" + route
    except Exception:  # noqa: BLE001, S110 - naming is best effort; the request goes on
        pass
    return match


def patch() -> None:
    apply(_WSGI, _wsgi_call)
    apply(_ASGI, _wsgi_call, _asgi_call)
    apply(_ROUTE, _resolve_request)


def unpatch() -> None:
    revert(TARGETS)
