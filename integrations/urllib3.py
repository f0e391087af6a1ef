"""urllib3: one CLIENT span, RED metrics and policies per ``HTTPConnectionPool.urlopen``.

The pool already knows its origin (``scheme``, ``host``, ``port``), so the endpoint is found without
parsing a URL, and what a (method, url) resolves to (op, redacted ``url.full``, exclusion) is kept on the
pool for the settings in force. ``PoolManager`` (and ``urllib3.request``) follows redirects itself, one ``urlopen`` per
hop, so each hop is its own span; urllib3's own retries inside one ``urlopen`` stay inside its span.
Under requests this layer passes straight through (requests already made the span).

The traceparent goes into a copy of the request headers (the caller's dict is never modified). A
Timeout policy's remaining deadline caps ``timeout=`` (the pool's default timeout is used as the
starting point). Injected faults raise urllib3's own exceptions (``NewConnectionError``,
``ReadTimeoutError``, ``ProtocolError``); an injected status is an ``HTTPResponse``. With
``preload_content=False`` the span ends when the response headers arrive. Settings:
INSTRUMENT_EXCLUDED_URLS, INSTRUMENT_REDACT_QUERY_KEYS, INSTRUMENT_CAPTURE_REQUEST_HEADERS,
INSTRUMENT_CAPTURE_RESPONSE_HEADERS; switch off with INSTRUMENT_DISABLED_INTEGRATIONS=urllib3.
"""

from __future__ import annotations

from typing import Any

import urllib3
from urllib3 import exceptions as uex
from urllib3.util.timeout import Timeout

from instrument import _context, _http, _settings
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

TARGETS = (Target("urllib3.connectionpool", "HTTPConnectionPool.urlopen", per_instance=True, weakly=True),)

_suppressed = _context.suppressed

_TIMEOUT_POSITION = 7  # urlopen(method, url, body, headers, retries, redirect, assert_same_host, timeout, ...)


def _synthesized(status: int, retry_after: float | None) -> urllib3.HTTPResponse:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) if retry_after == int(retry_after) else retry_after)
    return urllib3.HTTPResponse(body=b"", headers=headers, status=status, reason="Injected Fault",
                                preload_content=True)


def _with_deadline(args: tuple[Any, ...], kwargs: dict[str, Any], left: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > _TIMEOUT_POSITION:
        return args, kwargs  # timeout passed positionally: leave the caller's value alone
    current = kwargs.get("timeout")
    if isinstance(current, Timeout):
        total = left if current.total is None else min(current.total, left)
        capped: Any = Timeout(connect=_cap(current._connect, left), read=_cap(current._read, left),  # noqa: SLF001
                              total=total)
    elif isinstance(current, (int, float)):
        capped = min(current, left)
    else:
        capped = Timeout(total=left)
    return args, {**kwargs, "timeout": capped}


def _cap(value: Any, left: float) -> Any:
    return min(value, left) if isinstance(value, (int, float)) else left


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, uex.MaxRetryError):
        exc = exc.reason or exc
    return isinstance(exc, (uex.TimeoutError, TimeoutError))


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, uex.MaxRetryError):
        exc = exc.reason or exc
    return isinstance(exc, (uex.NewConnectionError, uex.TimeoutError, uex.ProtocolError, uex.SSLError,
                            uex.ProxyError, ConnectionError, TimeoutError))


ERRORS = ClientErrors(
    catch=(uex.HTTPError,),  # the base of every urllib3 error (MaxRetryError cannot carry a plain message)
    connect=lambda msg: uex.NewConnectionError(None, msg),  # type: ignore[arg-type]
    timeout=lambda msg: uex.ReadTimeoutError(None, None, msg),  # type: ignore[arg-type]
    reset=lambda msg: uex.ProtocolError("Connection aborted.", ConnectionResetError(104, msg)),
    status=_synthesized,
    is_failure=_is_failure,
    is_timeout=_is_timeout,
)


def _status(response: Any) -> int | None:
    return getattr(response, "status", None)


_by_origin: dict[tuple[str, str, int | None], tuple[Endpoint, str]] = {}


def _endpoint(pool: Any) -> tuple[Endpoint, str]:
    key = (pool.scheme, pool.host, pool.port)
    found = _by_origin.get(key)
    if found is None:
        target, host, port = _http.origin(pool.scheme, pool.host, pool.port)
        ep = _http.client_endpoint("urllib3", target, host, port, errors=ERRORS,
                      status_of=_status, apply_deadline=_with_deadline)
        default = 443 if pool.scheme == "https" else 80
        shown = target.rsplit(":", 1)[0] if port == default else target  # url.full omits the default port
        found = (ep, shown)
        if len(_by_origin) > 1024:
            _by_origin.clear()
        _by_origin[key] = found
    return found


_PROPAGATED = frozenset({"traceparent", "tracestate", "baggage"})
_str_lower = str.lower


def _copy(headers: Any) -> Any:
    """The request headers to send, ours to add the trace context to: a plain dict (what urllib3 sends
    fastest, and a pool's default) unless the caller's could hold repeated fields or a propagation header
    (in any spelling), which urllib3's case-insensitive ``HTTPHeaderDict`` then replaces correctly."""
    if headers.__class__ is dict:
        try:
            if _PROPAGATED.isdisjoint(map(_str_lower, headers)):
                return headers.copy()
        except TypeError:  # a bytes name
            pass
    return urllib3.HTTPHeaderDict(headers)


_ROUTES = "_instrument_routes"  # on a pool: its _http.Routes


def _route(pool: Any, method: Any, url: str, settings: Any) -> tuple[Endpoint, Any, str | None]:
    ep, base = _endpoint(pool)
    return _http.route(ep, method, url if "://" in url[:12] else base + (url if url.startswith("/") else "/" + url),
                       settings)


def _urlopen(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _suppressed.get():  # under requests (or a retry of our own call): one span, not two
        return wrapped(*args, **kwargs)
    method = args[0] if args else kwargs.get("method", "GET")
    url = args[1] if len(args) > 1 else kwargs.get("url", "/")
    settings = _settings.active()
    routes = instance.__dict__.get(_ROUTES) or instance.__dict__.setdefault(_ROUTES, _http.Routes(256))
    found = routes.get((method, url), settings)
    if found is None:
        found = routes.add((method, url), _route(instance, method, url, settings))
    ep, op, redacted = found
    if redacted is None:  # INSTRUMENT_EXCLUDED_URLS
        return wrapped(*args, **kwargs)
    if len(args) > 3:  # headers passed positionally: move them to kwargs so we can hand over a copy
        args, kwargs = args[:3], {**kwargs, **dict(zip(("headers", "retries", "redirect", "assert_same_host",
                                                         "timeout", "pool_timeout", "release_conn", "chunked",
                                                         "body_pos", "preload_content", "decode_content"),
                                                        args[3:]))}
    given = kwargs.get("headers")
    headers = _copy(given if given is not None else instance.headers)
    kwargs["headers"] = headers
    if "timeout" not in kwargs:
        kwargs["timeout"] = instance.timeout  # what urlopen uses by default; lets a deadline start from it
    if op is None:
        op = _http.op_of(ep, method, headers)
    attributes: dict[str, Any] = {"url.full": redacted}
    if settings.capture_request_headers:
        attributes.update(_http.header_attributes("request", settings.capture_request_headers,
                                                  urllib3.HTTPHeaderDict(headers)))  # looked up by lower-case name
    return ep.call(op, wrapped, args, kwargs, attributes=attributes, carrier=headers,
                   on_result=_http.response_capture(settings))


def patch() -> None:
    apply(TARGETS, _urlopen)


def unpatch() -> None:
    revert(TARGETS)
