"""httpx.AsyncClient and aiohttp.ClientSession against a real loopback server (the twin of test_clients_sync.py).

For each client: exactly one CLIENT span per request with the semconv attributes and status, one
``http.client.request.duration`` point, the traceparent as the server received it, and errors
(connection refused, 500, timeout) with the client's own error.type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
from http_helpers import assert_one_client_span, client_spans, traceparent_of


@dataclass
class Client:
    name: str
    get: Callable[..., Awaitable[int]]  # url, timeout, headers -> status
    refused: str
    timeout: str
    raises: tuple[type[BaseException], ...]


async def _httpx_get(url: str, timeout: float, headers: Any = None) -> int:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return (await client.get(url, headers=headers, follow_redirects=True)).status_code


async def _aiohttp_get(url: str, timeout: float, headers: Any = None) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, headers=headers) as response:
            await response.read()
            return response.status


CLIENTS = [
    Client("httpx", _httpx_get, "httpx.ConnectError", "httpx.ReadTimeout", (httpx.TransportError,)),
    Client("aiohttp", _aiohttp_get, "aiohttp.client_exceptions.ClientConnectorError", "TimeoutError",
           (aiohttp.ClientError, asyncio.TimeoutError)),
]


@pytest.fixture(params=CLIENTS, ids=lambda c: c.name)
def client(request, patched):  # type: ignore[no-untyped-def]
    patched(request.param.name)
    return request.param


async def test_success(tel, server, client):  # type: ignore[no-untyped-def]
    assert await client.get(server.url("/ok"), 5) == 200
    span = assert_one_client_span(tel, server, path="/ok", status=200, error=None)
    assert server.last().headers["traceparent"].startswith(traceparent_of(span))


async def test_500(tel, server, client):  # type: ignore[no-untyped-def]
    assert await client.get(server.url("/status/500"), 5) == 500
    assert_one_client_span(tel, server, path="/status/500", status=500, error="500")


async def test_connection_refused(tel, closed_port, client):  # type: ignore[no-untyped-def]
    with pytest.raises(client.raises):
        await client.get(f"http://127.0.0.1:{closed_port}/x", 5)
    (span,) = client_spans(tel)
    assert span.attributes["error.type"] == client.refused
    assert tel.metric_points("http.client.request.duration", server__port=closed_port, error__type=client.refused)


async def test_timeout(tel, server, client):  # type: ignore[no-untyped-def]
    with pytest.raises(client.raises):
        await client.get(server.url("/slow/1"), 0.2)
    assert_one_client_span(tel, server, path="/slow/1", status=None, error=client.timeout)


async def test_concurrent_requests_keep_their_own_spans(tel, server, client):  # type: ignore[no-untyped-def]
    await asyncio.gather(*(client.get(server.url(f"/ok?n={i}"), 5) for i in range(5)))
    spans = client_spans(tel)
    assert sorted(s.attributes["url.full"].rsplit("=", 1)[1] for s in spans) == ["0", "1", "2", "3", "4"]
    received = {s.headers["traceparent"][:52] for s in server.seen}
    assert received == {traceparent_of(s) for s in spans}


async def test_parent_span_and_caller_headers(tel, server, client):  # type: ignore[no-untyped-def]
    from opentelemetry import trace

    headers = {"X-Request-Id": "q-1"}
    with trace.get_tracer("test").start_as_current_span("parent") as parent:
        await client.get(server.url("/ok"), 5, headers)
    (span,) = client_spans(tel)
    assert span.parent.span_id == parent.get_span_context().span_id
    assert headers == {"X-Request-Id": "q-1"}  # the caller's mapping is not modified
    assert server.last().headers["x-request-id"] == "q-1"


async def test_httpx_redirect_hops_are_spans(tel, server, patched):  # type: ignore[no-untyped-def]
    patched("httpx")
    assert await _httpx_get(server.url("/redirect"), 5) == 200
    assert [s.attributes["http.response.status_code"] for s in client_spans(tel)] == [302, 200]


async def test_aiohttp_redirect_chain_is_one_span(tel, server, patched):  # type: ignore[no-untyped-def]
    patched("aiohttp")  # aiohttp follows redirects inside ClientSession._request
    assert await _aiohttp_get(server.url("/redirect"), 5) == 200
    (span,) = client_spans(tel)
    assert span.attributes["http.response.status_code"] == 200


async def test_injected_faults_look_like_the_client(tel, server, client):  # type: ignore[no-untyped-def]
    from instrument.faults import inject

    with inject(f"http://127.0.0.1:{server.port}: status 503 retry-after=2s"):
        assert await client.get(server.url("/ok"), 5) == 503
    with inject(f"http://127.0.0.1:{server.port}: error"), pytest.raises(client.raises):
        await client.get(server.url("/ok"), 5)
    assert server.seen == []
    assert client_spans(tel)[0].attributes["error.type"] == "503"
