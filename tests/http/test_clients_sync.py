"""urllib3, urllib.request and httpx.Client against a real loopback server (async twins: test_clients_async.py).

For each client: exactly one CLIENT span per request with the semconv attributes and status, one
``http.client.request.duration`` point, the traceparent as the server received it, and errors
(connection refused, 500, timeout) with the client's own error.type. Redirects: one span per hop.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import urllib3
from http_helpers import assert_one_client_span, client_spans, traceparent_of


@dataclass
class Client:
    name: str
    get: Callable[[str, float], Any]  # url, timeout -> status (raises on connection errors)
    refused: str  # error.type of a refused connection
    timeout: str  # error.type of a read timeout
    raises: type[BaseException]  # what a caller catches for both


def _urllib3_get(url: str, timeout: float) -> int:
    return urllib3.PoolManager().request("GET", url, timeout=timeout, retries=False).status


def _urllib_get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback test URL
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _httpx_get(url: str, timeout: float) -> int:
    with httpx.Client(timeout=timeout) as client:
        return client.get(url).status_code


CLIENTS = [
    Client("urllib3", _urllib3_get, "urllib3.exceptions.NewConnectionError", "urllib3.exceptions.ReadTimeoutError",
           urllib3.exceptions.HTTPError),
    Client("urllib", _urllib_get, "urllib.error.URLError", "TimeoutError", OSError),
    Client("httpx", _httpx_get, "httpx.ConnectError", "httpx.ReadTimeout", httpx.TransportError),
]


@pytest.fixture(params=CLIENTS, ids=lambda c: c.name)
def client(request, patched):  # type: ignore[no-untyped-def]
    patched(request.param.name)
    return request.param


def test_success(tel, server, client):  # type: ignore[no-untyped-def]
    assert client.get(server.url("/ok"), 5) == 200
    span = assert_one_client_span(tel, server, path="/ok", status=200, error=None)
    assert server.last().headers["traceparent"].startswith(traceparent_of(span))


def test_500(tel, server, client):  # type: ignore[no-untyped-def]
    assert client.get(server.url("/status/500"), 5) == 500
    assert_one_client_span(tel, server, path="/status/500", status=500, error="500")


def test_4xx_is_an_error_on_a_client_span(tel, server, client):  # type: ignore[no-untyped-def]
    assert client.get(server.url("/status/429"), 5) == 429
    assert_one_client_span(tel, server, path="/status/429", status=429, error="429")


def test_connection_refused(tel, closed_port, client):  # type: ignore[no-untyped-def]
    with pytest.raises(client.raises):
        client.get(f"http://127.0.0.1:{closed_port}/x", 5)
    (span,) = client_spans(tel)
    assert span.attributes["error.type"] == client.refused
    assert span.attributes["server.port"] == closed_port
    assert span.events and span.events[0].name == "exception"
    assert tel.metric_points("http.client.request.duration", server__port=closed_port, error__type=client.refused)


def test_timeout(tel, server, client):  # type: ignore[no-untyped-def]
    with pytest.raises(client.raises):
        client.get(server.url("/slow/1"), 0.2)
    assert_one_client_span(tel, server, path="/slow/1", status=None, error=client.timeout)


def test_each_redirect_hop_is_a_span(tel, server, client):  # type: ignore[no-untyped-def]
    if client.name == "httpx":
        with httpx.Client() as c:
            assert c.get(server.url("/redirect"), follow_redirects=True).status_code == 200
    elif client.name == "urllib3":  # PoolManager follows redirects (retries=False would not)
        assert urllib3.PoolManager().request("GET", server.url("/redirect")).status == 200
    else:
        assert client.get(server.url("/redirect"), 5) == 200
    spans = client_spans(tel)
    assert [(s.attributes["url.full"].rsplit("/", 1)[1], s.attributes["http.response.status_code"])
            for s in spans] == [("redirect", 302), ("ok", 200)]
    assert len({s.context.trace_id for s in spans}) == 2  # no parent span: two separate requests
    assert [s.headers["traceparent"][3:35] for s in server.seen] == [f"{s.context.trace_id:032x}" for s in spans]


def test_headers_are_captured_only_when_listed_and_sensitive_ones_stay_redacted(
        tel, server, client, settings_env):  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_CAPTURE_RESPONSE_HEADERS": "x-response-id,set-cookie"})
    client.get(server.url("/ok"), 5)
    (span,) = client_spans(tel)
    attrs = dict(span.attributes)
    assert attrs["http.response.header.x-response-id"] == ("r-1",)
    assert attrs["http.response.header.set-cookie"] == ("REDACTED",)
    assert not [k for k in attrs if k.startswith("http.request.header.")]


def test_request_headers_captured(tel, server, client, settings_env):  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_CAPTURE_REQUEST_HEADERS": "x-request-id,authorization"})
    headers = {"X-Request-Id": "q-1", "Authorization": "Bearer s3cr3t"}
    if client.name == "urllib3":
        urllib3.PoolManager().request("GET", server.url("/ok"), headers=headers)
    elif client.name == "urllib":
        urllib.request.urlopen(urllib.request.Request(server.url("/ok"), headers=headers)).close()  # noqa: S310
    else:
        httpx.get(server.url("/ok"), headers=headers)
    (span,) = client_spans(tel)
    assert span.attributes["http.request.header.x-request-id"] == ("q-1",)
    assert span.attributes["http.request.header.authorization"] == ("REDACTED",)
    assert server.last().headers["authorization"] == "Bearer s3cr3t"  # the request itself is untouched
    assert "traceparent" not in headers  # the caller's mapping is not modified


@pytest.mark.parametrize("given", [None, {"X-Request-Id": "q-1"}, {"TraceParent": "00-stale", "x-a": "1"},
                                   {"traceparent": "00-stale"}],
                         ids=["pool default", "plain dict", "other spelling", "same spelling"])
def test_urllib3_sends_exactly_one_traceparent_and_leaves_the_callers_headers_alone(tel, server, patched,  # type: ignore[no-untyped-def]
                                                                                  given) -> None:
    patched("urllib3")
    before = dict(given) if given is not None else None
    urllib3.PoolManager().request("GET", server.url("/ok"), headers=given)
    (span,) = client_spans(tel)
    sent = [v for k, v in server.last().fields if k.lower() == "traceparent"]
    assert sent == [f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}"]
    assert given == before  # the caller's mapping is not modified


def test_excluded_urls(tel, server, client, settings_env):  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_EXCLUDED_URLS": "/status/"})
    client.get(server.url("/status/204"), 5)
    assert client_spans(tel) == []
    client.get(server.url("/ok"), 5)
    assert len(client_spans(tel)) == 1


@pytest.mark.parametrize("lib", ["urllib3", "httpx", "requests"])
def test_a_url_seen_before_follows_new_settings(tel, server, patched, settings_env, lib) -> None:  # type: ignore[no-untyped-def]
    """A (method, url) is resolved once per settings (urllib3: per pool; httpx: per URL's components):
    new settings (re-init) apply to it at once."""
    import requests

    patched(lib)
    get = {"urllib3": urllib3.PoolManager().request, "httpx": httpx.Client().request,
           "requests": requests.Session().request}[lib]
    url = server.url("/ok?ticket=t0p")
    get("GET", url)
    settings_env({"INSTRUMENT_REDACT_QUERY_KEYS": "ticket"})
    get("GET", url)
    settings_env({"INSTRUMENT_EXCLUDED_URLS": "/ok"})
    get("GET", url)
    assert [s.attributes["url.full"] for s in client_spans(tel)] == [url, server.url("/ok?ticket=REDACTED")]


@pytest.mark.parametrize("lib", ["urllib3", "httpx", "requests"])
def test_a_post_is_retried_only_with_an_idempotency_key(tel, server, patched, lib) -> None:  # type: ignore[no-untyped-def]
    """POST is not idempotent: a Retry policy leaves it alone, unless the request carries an idempotency key
    (decided per request, though the (method, url) is resolved once)."""
    import requests

    from instrument import policies

    patched(lib)
    post = {"urllib3": urllib3.PoolManager(retries=False).request, "httpx": httpx.Client().request,
            "requests": requests.Session().request}[lib]
    url = server.url("/status/503")
    policies.configure(f"http://127.0.0.1:{server.port}=retry(3,base=1ms,cap=2ms)")
    try:
        post("POST", url, headers={"X-Request-Id": "a"})
        plain = len(server.seen)
        post("POST", url, headers={"Idempotency-Key": "k-1"})
        keyed = len(server.seen) - plain
        post("POST", url, headers={"X-Request-Id": "b"})
    finally:
        policies.configure("")
    assert (plain, keyed, len(server.seen) - plain - keyed) == (1, 3, 1)


def test_unpatch_restores_the_client(tel, server, client):  # type: ignore[no-untyped-def]
    from instrument import integrations

    integrations.unpatch(client.name)
    client.get(server.url("/ok"), 5)
    assert client_spans(tel) == []
    assert "traceparent" not in server.last().headers


def test_injected_faults_look_like_the_client(tel, server, client):  # type: ignore[no-untyped-def]
    from instrument.faults import inject

    with inject(f"http://127.0.0.1:{server.port}: status 503"):
        assert client.get(server.url("/ok"), 5) == 503
    with inject(f"http://127.0.0.1:{server.port}: error"), pytest.raises(client.raises):
        client.get(server.url("/ok"), 5)
    assert server.seen == []  # neither reached the server
    assert [s.attributes["error.type"] for s in client_spans(tel)][0] == "503"
