"""httpx: one CLIENT span, RED metrics and policies per HTTP request, sync and async.

Targets are the transports, ``HTTPTransport.handle_request`` and ``AsyncHTTPTransport.handle_async_request``,
not ``Client.send``: each request that goes on the wire gets its own span, so every redirect hop and
every auth round trip (digest's 401 then retry) is one span, as semconv asks, and the request seen is
the one actually sent (auth headers, cookies applied). Custom transports that delegate to these
(retrying or logging transports) still give one span; transports that never touch the network
(``MockTransport``, ``WSGITransport``, ``ASGITransport``) give none.

A Timeout policy's remaining deadline caps the request's ``extensions["timeout"]`` (connect, read,
write, pool), httpx's own per-request timeouts. Injected faults and rejections raise httpx's own
exceptions (``ConnectError``, ``ReadTimeout``, ``ReadError``) and an injected status is an
``httpx.Response``. Settings: INSTRUMENT_EXCLUDED_URLS, INSTRUMENT_REDACT_QUERY_KEYS,
INSTRUMENT_CAPTURE_REQUEST_HEADERS, INSTRUMENT_CAPTURE_RESPONSE_HEADERS; switch off with
INSTRUMENT_DISABLED_INTEGRATIONS=httpx.
"""

from __future__ import annotations

from typing import Any

import httpx

from instrument import _context, _http, _settings
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

TARGETS = (
    Target("httpx", "HTTPTransport.handle_request", per_instance=True, weakly=True),  # each transport its own
    Target("httpx", "AsyncHTTPTransport.handle_async_request", is_async=True, per_instance=True, weakly=True),
)


def _synthesized(status: int, retry_after: float | None) -> httpx.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) if retry_after == int(retry_after) else retry_after)
    return httpx.Response(status, headers=headers, content=b"")


def _with_deadline(args: tuple[Any, ...], kwargs: dict[str, Any], left: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    request = args[0] if args else kwargs["request"]
    current = request.extensions.get("timeout") or {}
    capped = {key: left if current.get(key) is None else min(current[key], left)
              for key in ("connect", "read", "write", "pool")}
    request.extensions = {**request.extensions, "timeout": capped}
    return args, kwargs


ERRORS = ClientErrors(
    catch=(httpx.ConnectError,),  # subclasses TransportError, RequestError and HTTPError: every usual except
    connect=httpx.ConnectError,
    timeout=httpx.ReadTimeout,
    reset=httpx.ReadError,
    status=_synthesized,
    is_failure=lambda exc: isinstance(exc, (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)),
    is_timeout=lambda exc: isinstance(exc, httpx.TimeoutException),
)


def _status(response: Any) -> int | None:
    return getattr(response, "status_code", None)


_by_origin: dict[tuple[bytes, bytes, int | None], Endpoint] = {}


def _endpoint(url: httpx.URL) -> Endpoint:
    return _http.remember(_by_origin, (url.raw_scheme, url.raw_host, url.port), _origin_endpoint, url, limit=1024)


def _origin_endpoint(url: httpx.URL) -> Endpoint:
    target, host, port = _http.origin(url.scheme, url.host, url.port)
    return _http.client_endpoint("httpx", target, host, port, errors=ERRORS, status_of=_status,
                                 apply_deadline=_with_deadline)


# (method, URL) -> (endpoint, op or None, url.full or None), for the settings in force. A URL is keyed by
# its parsed components (httpx keeps them as a hashable tuple), not by str(url), which httpx rebuilds from
# them on every call (1.6 µs here).
_routes = _http.Routes()


def _prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Endpoint, Any, dict[str, Any], Any, Any] | None:
    request = args[0] if args else kwargs["request"]
    request_url = request.url
    method = request.method
    settings = _settings.active()
    key = (method, getattr(request_url, "_uri_reference", None) or str(request_url))
    found = _routes.get(key, settings)
    if found is None:
        found = _routes.add(key, _http.route(_endpoint(request_url), method, str(request_url), settings))
    ep, op, full = found
    if full is None:  # INSTRUMENT_EXCLUDED_URLS
        return None
    headers = request.headers
    if op is None:
        op = _http.op_of(ep, method, headers)
    attributes: dict[str, Any] = {"url.full": full}
    if settings.capture_request_headers:
        attributes.update(_http.header_attributes("request", settings.capture_request_headers, headers))
    return ep, op, attributes, headers, _http.response_capture(settings)


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _context.suppressed.get():
        return wrapped(*args, **kwargs)
    prepared = _prepare(args, kwargs)
    if prepared is None:
        return wrapped(*args, **kwargs)
    ep, op, attributes, headers, on_result = prepared
    return ep.call(op, wrapped, args, kwargs, attributes=attributes, carrier=headers, on_result=on_result)


async def _asend(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _context.suppressed.get():
        return await wrapped(*args, **kwargs)
    prepared = _prepare(args, kwargs)
    if prepared is None:
        return await wrapped(*args, **kwargs)
    ep, op, attributes, headers, on_result = prepared
    return await ep.acall(op, wrapped, args, kwargs, attributes=attributes, carrier=headers, on_result=on_result)


def patch() -> None:
    apply(TARGETS, _send, _asend)


def unpatch() -> None:
    revert(TARGETS)
