"""requests: one CLIENT span, RED metrics and policies per ``Session.send``.

Every request made through requests (``requests.get``, a ``Session``, an adapter) passes through
``Session.send``, so that is the one target. urllib3 underneath is suppressed (one span, not two).
A Timeout policy's remaining deadline becomes the request's ``timeout=`` (connect and read).
Settings: INSTRUMENT_EXCLUDED_URLS, INSTRUMENT_REDACT_QUERY_KEYS, INSTRUMENT_CAPTURE_REQUEST_HEADERS,
INSTRUMENT_CAPTURE_RESPONSE_HEADERS; switch off with INSTRUMENT_DISABLED_INTEGRATIONS=requests.
"""

from __future__ import annotations

from typing import Any

import requests
from requests import exceptions as rex

from instrument import _http, _settings
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

TARGETS = (Target("requests.sessions", "Session.send"),)


def _synthesized(status: int, retry_after: float | None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = "Injected Fault"
    response._content = b""  # noqa: SLF001 - the documented way to give a Response a body
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after) if retry_after == int(retry_after) else retry_after)
    return response


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (rex.ConnectionError, rex.Timeout, rex.ChunkedEncodingError))


def _with_deadline(args: tuple[Any, ...], kwargs: dict[str, Any], left: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    current = kwargs.get("timeout")
    if isinstance(current, tuple):
        timeout: Any = tuple(left if t is None else min(t, left) for t in current)
    else:
        timeout = left if current is None else min(current, left)
    return args, {**kwargs, "timeout": timeout}


ERRORS = ClientErrors(
    catch=(rex.ConnectionError,),
    connect=rex.ConnectionError,
    timeout=rex.ReadTimeout,
    reset=lambda msg: rex.ConnectionError(ConnectionResetError(104, msg)),
    status=_synthesized,
    is_failure=_is_failure,
    is_timeout=lambda exc: isinstance(exc, rex.Timeout),
)


def _status(response: Any) -> int | None:
    return getattr(response, "status_code", None)


_by_origin: dict[str, Endpoint] = {}


def _endpoint_for(url: str) -> Endpoint:
    scheme, host, port = _http.host_port(url)
    origin = f"{scheme}://{host}:{port}"
    return _http.client_endpoint("requests", origin, host, port, errors=ERRORS, status_of=_status,
                                 apply_deadline=_with_deadline)


def _origin_of(url: str) -> str:
    # "scheme://host[:port]/..." -> "scheme://host[:port]": cheap, no parsing; the cache key only.
    end = url.find("/", url.find("//") + 2)
    return url if end < 0 else url[:end]


def _endpoint(url: str) -> Endpoint:
    return _http.remember(_by_origin, _origin_of(url), _endpoint_for, url, limit=1024)


# (method, url) -> (endpoint, op or None, url.full or None), for the settings in force (see _http.route)
_routes = _http.Routes()


def _send(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    request = args[0] if args else kwargs.get("request")
    url = request.url
    method = request.method or "GET"
    settings = _settings.active()
    key = (method, url)
    found = _routes.get(key, settings)
    if found is None:
        found = _routes.add(key, _http.route(_endpoint(url), method, url, settings))
    ep, op, full = found
    if full is None:  # INSTRUMENT_EXCLUDED_URLS
        return wrapped(*args, **kwargs)
    headers = request.headers
    if op is None:
        op = _http.op_of(ep, method, headers)
    attributes: dict[str, Any] = {"url.full": full}
    if settings.capture_request_headers:
        attributes.update(_http.header_attributes("request", settings.capture_request_headers, headers))
    on_result = _capture_response if settings.capture_response_headers else None
    return ep.call(op, wrapped, args, kwargs, attributes=attributes, carrier=headers, on_result=on_result)


def _capture_response(span: Any, response: Any) -> None:
    if span.is_recording():
        names = _settings.active().capture_response_headers
        span.set_attributes(_http.header_attributes("response", names, response.headers))


def patch() -> None:
    apply(TARGETS, _send)


def unpatch() -> None:
    revert(TARGETS)
