"""Flask: a SERVER span per request, named ``{method} {rule}`` (``GET /users/<int:id>``).

Targets: ``Flask.wsgi_app`` runs each request through :func:`instrument.wsgi.call` (the class
method, so apps created before the patch are covered too), and ``Flask.dispatch_request`` reports
the matched URL rule (``request.url_rule.rule``) to it. A request that matched no rule (404) is named
``{method}``. An app that also wraps itself in :class:`instrument.wsgi.InstrumentMiddleware` still gets
one server span. Settings: those of :mod:`instrument.wsgi`; switch off with
INSTRUMENT_DISABLED_INTEGRATIONS=flask.
"""

from __future__ import annotations

from typing import Any

import flask

from instrument import _server, wsgi
from instrument.patching import Target, apply, revert

# An app lives as long as the process: each gets wrappers of its own (patching's per_instance), so a request
# does not pay for binding a class-level wrapper to the app, twice.
_APP = (Target("flask.app", "Flask.wsgi_app", per_instance=True),)
_ROUTE = (Target("flask.app", "Flask.dispatch_request", per_instance=True),)
TARGETS = _APP + _ROUTE


def _wsgi_app(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) != 2 or kwargs:
        return wrapped(*args, **kwargs)
    return wsgi.call(wrapped, args[0], args[1])


def _dispatch_request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        request = flask.request._get_current_object()  # the request itself: each read through the proxy costs µs
        rule = request.url_rule
        if rule is not None:
            request.environ[_server.ROUTE_KEY] = rule.rule
    except Exception:  # noqa: BLE001, S110 - outside a request context: nothing to report
        pass
    return wrapped(*args, **kwargs)


def patch() -> None:
    apply(_APP, _wsgi_app)
    apply(_ROUTE, _dispatch_request)


def unpatch() -> None:
    revert(TARGETS)
