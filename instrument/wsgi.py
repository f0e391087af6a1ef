"""WSGI middleware: one SERVER span and the ``http.server.*`` metrics per request.

    from instrument.wsgi import InstrumentMiddleware
    app = InstrumentMiddleware(app)          # any WSGI app; Flask: app.wsgi_app = InstrumentMiddleware(app.wsgi_app)

Flask and Django apps are covered without this line under ``import instrument.auto`` (the ``flask``
and ``django`` integrations); adding it anyway is harmless: a request already carrying a server span
passes straight through. The span continues the caller's trace (W3C ``traceparent``/``baggage``), is
current while the application runs (client calls it makes become its children) and ends when the
server closes the response iterable, so streamed bodies are counted. Name: ``{method} {route}`` when a
framework integration reports the route (``environ["instrument.route"]``), else ``{method}``. Status:
Error only for 5xx or an exception. Server-side faults (``instrument.faults.server_fault``) are applied
before the application runs. Settings: INSTRUMENT_CAPTURE_REQUEST_HEADERS,
INSTRUMENT_CAPTURE_RESPONSE_HEADERS, INSTRUMENT_REDACT_QUERY_KEYS, INSTRUMENT_FAULTS.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from instrument import _server
from instrument._safety import report

__all__ = ["InstrumentMiddleware"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


_ENVIRON_KEYS = {k: "HTTP_" + k.upper() for k in ("traceparent", "tracestate", "baggage")}


class _EnvironGetter:
    """OpenTelemetry getter reading ``traceparent`` as ``HTTP_TRACEPARENT`` from a WSGI environ."""

    @staticmethod
    def get(carrier: Mapping[str, Any], key: str) -> list[str] | None:
        name = _ENVIRON_KEYS.get(key) or "HTTP_" + key.upper().replace("-", "_")
        value = carrier.get(name)
        return [value] if value is not None else None

    @staticmethod
    def keys(carrier: Mapping[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = _EnvironGetter()


class _Headers(Mapping[str, str]):
    """Request headers of an environ, read lazily (most requests never look at them)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def __bool__(self) -> bool:
        return True

    def get(self, key: str, default: Any = None) -> Any:
        return self._environ.get("HTTP_" + key.upper().replace("-", "_"), default)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(_GETTER.keys(self._environ))

    def __len__(self) -> int:
        return sum(1 for k in self._environ if k.startswith("HTTP_"))


def _header_list(headers: list[tuple[str, str]]) -> Any:
    from wsgiref.headers import Headers

    return Headers(list(headers))


def call(app: WSGIApp, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Run one WSGI request through ``app`` with a SERVER span (the body of the middleware and of the
    Flask/Django integrations)."""
    if _server.MARK_KEY in environ:
        return app(environ, start_response)
    try:
        scheme = environ.get("wsgi.url_scheme", "http")
        method = environ.get("REQUEST_METHOD", "GET")
        path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
        protocol = environ.get("SERVER_PROTOCOL", "")
        headers = _Headers(environ)
        request = _server.begin(method, scheme, path, environ.get("QUERY_STRING", ""), host,
                                environ.get("REMOTE_ADDR"), environ.get("HTTP_USER_AGENT"),
                                protocol[5:] if protocol.startswith("HTTP/") else None, environ, _GETTER, headers)
        environ[_server.MARK_KEY] = request.span
    except Exception as exc:  # noqa: BLE001 - never let our code break the request
        report("wsgi start", exc)
        return app(environ, start_response)
    response_headers: list[Any] = []

    def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        try:
            request.status = int(status[:3])
            response_headers[:] = [headers]
        except (ValueError, TypeError):
            pass
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    def _headers() -> Any:
        return _header_list(response_headers[0]) if response_headers else {}

    try:
        injected = _server.fault(scheme, host, request.method, path, headers)
        if injected is not None:
            injected.sleep()
            if injected.status is not None:
                _start_response(_server.status_line(injected.status), injected.headers())
                request.detach()
                _server.finish(request, environ.get(_server.ROUTE_KEY), None, _headers)
                return [injected.body]
        result = app(environ, _start_response)
    except BaseException as exc:
        request.detach()
        if request.status is None and isinstance(exc, Exception):
            request.status = 500  # what every WSGI server answers for an escaped exception
        _server.finish(request, environ.get(_server.ROUTE_KEY), exc, _headers)
        raise
    request.detach()
    return _Body(result, request, environ, _headers)


class _Body:
    """The application's response iterable; the span ends when the server closes it (PEP 3333)."""

    __slots__ = ("_environ", "_headers", "_iterable", "_request")

    def __init__(self, iterable: Iterable[bytes], request: _server.Request, environ: dict[str, Any],
                 headers: Callable[[], Any]) -> None:
        self._iterable = iterable
        self._request = request
        self._environ = environ
        self._headers = headers

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._iterable
        except BaseException as exc:
            _server.finish(self._request, self._environ.get(_server.ROUTE_KEY), exc, self._headers)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            _server.finish(self._request, self._environ.get(_server.ROUTE_KEY), None, self._headers)


class InstrumentMiddleware:
    """Wrap a WSGI application: a SERVER span, ``http.server.*`` metrics and server faults per request.

    Args:
        app: the WSGI application.

    .. versionadded:: 0.1
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return call(self.app, environ, start_response)
