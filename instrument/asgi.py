"""ASGI middleware: one SERVER span and the ``http.server.*`` metrics per HTTP request.

    from instrument.asgi import InstrumentMiddleware
    app = InstrumentMiddleware(app)          # any ASGI 3 app

Starlette and FastAPI apps (and Django's ASGI handler) are covered without this line under
``import instrument.auto`` (the ``starlette`` and ``django`` integrations); adding it anyway is
harmless: a scope already carrying a server span passes straight through. The span continues the
caller's trace, is current while the application runs, and ends when the application returns (after
the last body chunk is sent). Name ``{method} {route}`` when the framework reports the route
(``scope["instrument.route"]``, or Starlette's ``scope["route"]``), else ``{method}``. Status: Error
only for 5xx or an exception. WebSocket and lifespan scopes pass through untouched. Server-side faults
(``instrument.faults.server_fault``) are applied before the application runs. Settings: as
:mod:`instrument.wsgi`.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from instrument import _server
from instrument._safety import report

__all__ = ["InstrumentMiddleware"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _DictGetter:
    @staticmethod
    def get(carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if value is not None else None

    @staticmethod
    def keys(carrier: dict[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _DictGetter()


def _route(scope: Scope) -> str | None:
    """The matched route: what an integration reported, else Starlette's ``scope["route"]`` (with mount prefixes)."""
    route = scope.get(_server.ROUTE_KEY)
    if route:
        return route  # type: ignore[no-any-return]
    matched = scope.get("route")
    path = getattr(matched, "path", None)
    if not isinstance(path, str):
        return None
    if "app_root_path" in scope:  # inside a Mount: root_path grew by the mount's (matched) prefix
        path = scope.get("root_path", "")[len(scope["app_root_path"]):] + path
    return path or "/"


async def call(app: ASGIApp, scope: Scope, receive: Any, send: Any) -> None:
    """Run one ASGI request through ``app`` with a SERVER span (the middleware's and the integrations' body)."""
    if scope.get("type") != "http" or _server.MARK_KEY in scope:
        await app(scope, receive, send)
        return
    try:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        scheme = scope.get("scheme", "http")
        method = scope.get("method", "GET")
        path = scope.get("path") or "/"  # ASGI: the full path, root_path included
        host = headers.get("host")
        if not host and scope.get("server"):
            host = "%s:%s" % tuple(scope["server"])  # noqa: UP031
        client = scope.get("client")
        query = scope.get("query_string", b"")
        request = _server.begin(method, scheme, path, query.decode("latin-1") if query else "", host,
                                client[0] if client else None, headers.get("user-agent"),
                                scope.get("http_version"), headers, _GETTER, headers)
        scope[_server.MARK_KEY] = request.span
    except Exception as exc:  # noqa: BLE001 - never let our code break the request
        report("asgi start", exc)
        await app(scope, receive, send)
        return
    response_headers: list[Any] = []

    async def _send(message: Any) -> None:
        if message.get("type") == "http.response.start":
            request.status = message.get("status")
            response_headers[:] = [message.get("headers") or ()]
        await send(message)

    def _headers() -> Any:
        if not response_headers:
            return {}
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response_headers[0]}

    try:
        injected = _server.fault(scheme, host, request.method, path, headers)
        if injected is not None:
            await injected.asleep()
            if injected.status is not None:
                await _send({"type": "http.response.start", "status": injected.status,
                             "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in injected.headers()]})
                await _send({"type": "http.response.body", "body": injected.body})
                request.detach()
                _server.finish(request, _route(scope), None, _headers)
                return
        await app(scope, receive, _send)
    except BaseException as exc:
        request.detach()
        if request.status is None and isinstance(exc, Exception):
            request.status = 500  # what the server answers for an escaped exception
        _server.finish(request, _route(scope), exc, _headers)
        raise
    request.detach()
    _server.finish(request, _route(scope), None, _headers)


class InstrumentMiddleware:
    """Wrap an ASGI 3 application: a SERVER span, ``http.server.*`` metrics and server faults per request.

    Args:
        app: the ASGI application.

    .. versionadded:: 0.1
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await call(self.app, scope, receive, send)
