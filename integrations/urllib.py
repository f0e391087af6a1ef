"""urllib.request: one CLIENT span, RED metrics and policies per HTTP(S) request.

Target: ``AbstractHTTPHandler.do_open``, which both ``HTTPHandler`` and ``HTTPSHandler`` call once
per request that goes on the wire. ``OpenerDirector`` follows redirects by opening again, so each hop
is its own span. A 4xx/5xx answer is returned by ``do_open`` and turned into ``HTTPError`` later by
``HTTPErrorProcessor``, so the span sees the status code (error.type ``"500"``) exactly as for the
other clients. Connection failures surface as ``urllib.error.URLError`` (error.type
``urllib.error.URLError``), a read timeout as ``TimeoutError``.

The traceparent goes into the request's unredirected headers (not copied onto redirected requests,
which get their own). A Timeout policy's remaining deadline caps ``Request.timeout`` (the ``timeout=``
of ``urlopen``). Injected faults raise ``URLError`` (connect), ``TimeoutError`` and
``ConnectionResetError``; an injected status is an ``addinfourl`` response that ``HTTPErrorProcessor``
turns into ``HTTPError`` as usual. Settings: INSTRUMENT_EXCLUDED_URLS, INSTRUMENT_REDACT_QUERY_KEYS,
INSTRUMENT_CAPTURE_REQUEST_HEADERS, INSTRUMENT_CAPTURE_RESPONSE_HEADERS; switch off with
INSTRUMENT_DISABLED_INTEGRATIONS=urllib.
"""

from __future__ import annotations

import io
import socket
from email.message import Message
from typing import Any
from urllib.error import URLError
from urllib.response import addinfourl

from instrument import _context, _http
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

TARGETS = (Target("urllib.request", "AbstractHTTPHandler.do_open"),)


def _synthesized(status: int, retry_after: float | None) -> addinfourl:
    headers = Message()
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) if retry_after == int(retry_after) else retry_after)
    response = addinfourl(io.BytesIO(b""), headers, "", code=status)
    response.msg = "Injected Fault"  # type: ignore[attr-defined] - read by HTTPErrorProcessor
    response.reason = "Injected Fault"  # type: ignore[attr-defined]
    return response


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs["req"]


def _with_deadline(args: tuple[Any, ...], kwargs: dict[str, Any], left: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    request = _request_of(args, kwargs)
    current = getattr(request, "timeout", None)
    if current is None or current is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]  # noqa: SLF001
        request.timeout = left
    else:
        request.timeout = min(current, left)
    return args, kwargs


def _is_failure(exc: BaseException) -> bool:
    if isinstance(exc, URLError) and not hasattr(exc, "code"):  # URLError, not HTTPError
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, URLError) and isinstance(exc.reason, TimeoutError):
        return True
    return isinstance(exc, TimeoutError)


ERRORS = ClientErrors(
    catch=(URLError,),  # what urlopen callers catch (HTTPError subclasses it too)
    connect=lambda msg: URLError(ConnectionRefusedError(111, msg)),
    timeout=TimeoutError,
    reset=lambda msg: ConnectionResetError(104, msg),
    status=_synthesized,
    is_failure=_is_failure,
    is_timeout=_is_timeout,
)


def _status(response: Any) -> int | None:
    return getattr(response, "status", None) or getattr(response, "code", None)


_by_origin: dict[tuple[str, str], Endpoint] = {}


def _endpoint(request: Any) -> Endpoint:
    key = (request.type, request.host)
    found = _by_origin.get(key)
    if found is None:
        scheme, host, port = _http.host_port(f"{request.type}://{request.host}")
        target, host, port = _http.origin(scheme, host, port)
        found = _http.client_endpoint("urllib", target, host, port, errors=ERRORS,
                         status_of=_status, apply_deadline=_with_deadline)
        if len(_by_origin) > 1024:
            _by_origin.clear()
        _by_origin[key] = found
    return found


class _Headers:
    """Case-insensitive ``get`` over a Request's headers (urllib capitalizes names: ``X-request-id``)."""

    __slots__ = ("_request",)

    def __init__(self, request: Any) -> None:
        self._request = request

    def get(self, name: str, default: Any = None) -> Any:
        return self._request.get_header(name.capitalize(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._request.has_header(name.capitalize())

    def __iter__(self) -> Any:
        return iter([name for name, _ in self._request.header_items()])


def _do_open(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _context.suppressed.get():
        return wrapped(*args, **kwargs)
    request = _request_of(args, kwargs)
    url = request.full_url
    if _http.is_excluded(url):
        return wrapped(*args, **kwargs)
    ep = _endpoint(request)
    method = _http.method_name(request.get_method())
    headers = _Headers(request)
    op = ep.op(method, idempotent=_http.is_idempotent(method, headers))
    return ep.call(op, wrapped, args, kwargs, attributes=_http.request_attributes(url, headers),
                   carrier=request.unredirected_hdrs, on_result=_http.response_capture())


def patch() -> None:
    apply(TARGETS, _do_open)


def unpatch() -> None:
    revert(TARGETS)
