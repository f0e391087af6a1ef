"""Secrets in URLs never reach telemetry: userinfo and the values of the semconv query keys (and our
common-secret keys) are absent from every span (attributes, events, status), metric point and log
line, for every client, on success, on an error status and on a connection failure."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import httpx
import pytest
import requests
import structlog
import urllib3

from instrument._http import scrub

SEMCONV_KEYS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "AWSAccessKeyId", "Signature", "sig",
                "X-Goog-Signature")
OUR_KEYS = ("token", "access_token", "api_key", "password")
EXTRA_KEY = "my_secret_param"  # configured through INSTRUMENT_REDACT_QUERY_KEYS
KEYS = (*SEMCONV_KEYS, *OUR_KEYS, EXTRA_KEY)
USER, PASSWORD = "alice", "pw-8c1f"


def secret(key: str) -> str:
    return f"s3cr3t-{key.lower()}-v"


QUERY = "&".join(f"{k}={secret(k)}" for k in KEYS) + "&page=2"


def _sync(name: str, url: str) -> None:
    try:
        if name == "requests":
            requests.get(url, timeout=5)
        elif name == "urllib3":
            urllib3.PoolManager().request("GET", url)
        elif name == "urllib":
            urllib.request.urlopen(url, timeout=5).close()  # noqa: S310
        elif name == "httpx":
            httpx.get(url)
        elif name == "httpx-async":
            asyncio.run(_httpx_async(url))
        else:
            asyncio.run(_aiohttp(url))
    except (OSError, requests.RequestException, urllib3.exceptions.HTTPError, httpx.HTTPError, aiohttp.ClientError):
        pass


async def _httpx_async(url: str) -> None:
    async with httpx.AsyncClient() as client:
        await client.get(url)


async def _aiohttp(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            await response.read()


CLIENTS = ["requests", "urllib3", "urllib", "httpx", "httpx-async", "aiohttp"]


def _leaks(tel: Any, logs: list[dict[str, Any]]) -> list[str]:
    found = []
    texts: list[str] = []
    for span in tel.spans():
        texts += [repr(dict(span.attributes)), repr(span.status.description)]
        texts += [repr(dict(e.attributes)) for e in span.events]
    for name in ("http.client.request.duration",):
        texts += [repr(p.attributes) for p in tel.metric_points(name)]
    texts += [repr(r.body) + repr(dict(r.attributes or {})) for r in tel.logs()]
    texts += [repr(entry) for entry in logs]
    blob = "\n".join(texts)
    for key in KEYS:
        if secret(key) in blob:
            found.append(key)
    if PASSWORD in blob:
        found.append("password in userinfo")
    return found


@pytest.fixture(params=CLIENTS)
def client(request, patched, settings_env):  # type: ignore[no-untyped-def]
    patched(request.param.split("-")[0])
    settings_env({"INSTRUMENT_REDACT_QUERY_KEYS": EXTRA_KEY})
    return request.param


@pytest.mark.parametrize("path", ["/ok", "/status/500"])
def test_no_secret_in_any_signal(tel, server, client, path):  # type: ignore[no-untyped-def]
    creds = "" if client == "urllib" else f"{USER}:{PASSWORD}@"  # urllib cannot send userinfo at all
    with structlog.testing.capture_logs() as logs:
        _sync(client, f"http://{creds}127.0.0.1:{server.port}{path}?{QUERY}")
    assert server.last().path.endswith("page=2")  # the request itself went out unchanged
    spans = tel.spans()
    assert len(spans) == 1
    full = spans[0].attributes["url.full"]
    assert all(f"{k}=REDACTED" in full for k in KEYS), full
    assert full.endswith("&page=2")
    if creds and client != "urllib3":  # urllib3's pool never sees the userinfo: nothing to redact
        assert full.startswith("http://REDACTED:REDACTED@127.0.0.1")
    assert _leaks(tel, logs) == []


def test_no_secret_when_the_connection_fails(tel, closed_port, client):  # type: ignore[no-untyped-def]
    # urllib3's MaxRetryError/NewConnectionError messages carry the request path and query; the span
    # status, exception event and call.failed log line get them scrubbed like url.full.
    with structlog.testing.capture_logs() as logs:
        _sync(client, f"http://127.0.0.1:{closed_port}/x?{QUERY}")
    assert len(tel.spans()) == 1 and tel.spans()[0].attributes.get("error.type")
    assert _leaks(tel, logs) == []


def test_scrub_free_text() -> None:
    text = f"Max retries exceeded with url: /x?{QUERY} (proxy http://{USER}:{PASSWORD}@proxy:3128/)"
    cleaned = scrub(text)
    assert [k for k in KEYS[:-1] if secret(k) in cleaned] == []
    assert PASSWORD not in cleaned and "page=2" in cleaned
    assert scrub("no secrets here") == "no secrets here"
