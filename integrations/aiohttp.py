"""aiohttp: one CLIENT span, RED metrics and policies per ``ClientSession`` request.

Target: ``ClientSession._request``, the coroutine behind ``session.get/post/...``, ``session.request``
and ``ws_connect``. aiohttp follows redirects inside that coroutine, so a redirected request is one span
(status of the final answer), unlike the other clients' one span per hop: aiohttp offers no
per-hop hook short of its TraceConfig signals, which cannot carry policies.

The traceparent goes into a copy of the ``headers=`` argument (the caller's mapping is never
modified; the session's default headers still apply). A Timeout policy's remaining deadline caps
``timeout=`` (``ClientTimeout.total``; the session's timeout is the starting point). Injected faults
raise aiohttp's own exceptions (``ClientConnectorError``, ``ServerTimeoutError``, ``ClientOSError``);
an injected status is a ``ClientResponse`` whose ``status``, ``headers``, ``read()``/``text()`` and
``raise_for_status()`` work (a session's ``raise_for_status=True`` is not applied to it). The span
ends when the response headers arrive, before the body is read. Settings: INSTRUMENT_EXCLUDED_URLS,
INSTRUMENT_REDACT_QUERY_KEYS, INSTRUMENT_CAPTURE_REQUEST_HEADERS, INSTRUMENT_CAPTURE_RESPONSE_HEADERS;
switch off with INSTRUMENT_DISABLED_INTEGRATIONS=aiohttp.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import attr
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from instrument import _context, _http
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

TARGETS = (Target("aiohttp.client", "ClientSession._request", is_async=True),)


def _synthesized(status: int, retry_after: float | None) -> aiohttp.ClientResponse:
    from aiohttp.client_reqrep import RequestInfo
    from aiohttp.helpers import TimerNoop

    headers: CIMultiDict[str] = CIMultiDict()
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after) if retry_after == int(retry_after) else retry_after)
    url = URL("http://injected.invalid/")
    arguments: dict[str, Any] = {
        "writer": None, "continue100": None, "timer": TimerNoop(), "traces": [], "session": None,
        "request_info": RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url),
        "loop": asyncio.get_running_loop(), "stream_writer": SimpleNamespace(output_size=0)}
    try:
        response = aiohttp.ClientResponse("GET", url, **arguments)
    except TypeError:  # aiohttp before 3.12 has no stream_writer argument
        del arguments["stream_writer"]
        response = aiohttp.ClientResponse("GET", url, **arguments)
    response.status = status
    response.reason = "Injected Fault"
    response._headers = CIMultiDictProxy(headers)  # noqa: SLF001 - what ClientResponse.start() would set
    response._body = b""  # noqa: SLF001 - read()/text() return it without a connection
    return response


def _with_deadline(args: tuple[Any, ...], kwargs: dict[str, Any], left: float) -> tuple[tuple[Any, ...], dict[str, Any]]:
    current = kwargs.get("timeout")
    if isinstance(current, aiohttp.ClientTimeout):
        capped = attr.evolve(current, total=left if current.total is None else min(current.total, left))
    elif isinstance(current, (int, float)):
        capped = aiohttp.ClientTimeout(total=min(current, left))
    else:
        capped = aiohttp.ClientTimeout(total=left)
    return args, {**kwargs, "timeout": capped}


def _is_failure(exc: BaseException) -> bool:
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError))


def _errors(host: str, port: int, ssl: bool) -> ClientErrors:
    key = SimpleNamespace(host=host, port=port, ssl=True if ssl else False)  # what ClientConnectorError shows
    return ClientErrors(
        catch=(aiohttp.ClientConnectionError,),  # a ClientError too: the usual except clauses catch rejections
        connect=lambda msg: aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, msg)),  # type: ignore[arg-type]
        timeout=aiohttp.ServerTimeoutError,
        reset=lambda msg: aiohttp.ClientOSError(104, msg),
        status=_synthesized,
        is_failure=_is_failure,
        is_timeout=lambda exc: isinstance(exc, asyncio.TimeoutError),
    )


def _status(response: Any) -> int | None:
    return getattr(response, "status", None)


_by_origin: dict[str, Endpoint] = {}


def _endpoint(url: str) -> Endpoint:
    return _http.remember(_by_origin, _origin_of(url), _origin_endpoint, url, limit=1024)


def _origin_endpoint(url: str) -> Endpoint:
    scheme, host, port = _http.host_port(url)
    target, host, port = _http.origin(scheme, host, port)
    return _http.client_endpoint("aiohttp", target, host, port, errors=_errors(host, port, scheme in ("https", "wss")),
                                 status_of=_status, apply_deadline=_with_deadline)


def _origin_of(url: str) -> str:
    end = url.find("/", url.find("//") + 2)
    return url if end < 0 else url[:end]


def _full_url(session: Any, str_or_url: Any, params: Any) -> str:
    base = getattr(session, "_base_url", None)
    if isinstance(str_or_url, str) and base is None and not params:
        return str_or_url  # the common case: no parsing at all
    url = session._build_url(str_or_url) if base is not None else URL(str_or_url)  # noqa: SLF001
    if params:
        url = url.extend_query(params)
    return str(url)


async def _request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _context.suppressed.get():
        return await wrapped(*args, **kwargs)
    try:
        method = args[0] if args else kwargs["method"]
        str_or_url = args[1] if len(args) > 1 else kwargs["str_or_url"]
        url = _full_url(instance, str_or_url, kwargs.get("params"))
        excluded = _http.is_excluded(url)
    except Exception:  # noqa: BLE001 - an odd URL: let aiohttp raise its own error
        excluded = True
    if excluded:
        return await wrapped(*args, **kwargs)
    ep = _endpoint(url)
    given = kwargs.get("headers")
    headers: CIMultiDict[str] = CIMultiDict(given) if given is not None else CIMultiDict()
    kwargs["headers"] = headers
    if "timeout" not in kwargs:
        kwargs["timeout"] = instance.timeout  # what _request uses by default; lets a deadline start from it
    name = _http.method_name(method)
    op = ep.op(name, idempotent=_http.is_idempotent(name, headers))
    return await ep.acall(op, wrapped, args, kwargs, attributes=_http.request_attributes(url, headers),
                          carrier=headers, on_result=_http.response_capture())


def patch() -> None:
    apply(TARGETS, _request, _request)


def unpatch() -> None:
    revert(TARGETS)
