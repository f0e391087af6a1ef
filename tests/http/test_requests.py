"""requests (the model integration), against a real loopback server: one CLIENT span per request,
semconv attributes and status, the duration histogram, the traceparent as the server received it,
errors with the right error.type, redaction, and no second span from urllib3 underneath."""

from __future__ import annotations

import pytest
import requests
from http_helpers import assert_one_client_span, client_spans, traceparent_of


@pytest.fixture(autouse=True)
def _patch(patched):  # type: ignore[no-untyped-def]
    patched("requests")
    patched("urllib3")  # also patched, as under instrument.auto: it must not add a second span


def test_success_one_span_attributes_metric_and_traceparent(tel, server):  # type: ignore[no-untyped-def]
    response = requests.get(server.url("/ok"), timeout=5)
    assert response.status_code == 200
    span = assert_one_client_span(tel, server, path="/ok", status=200, error=None)
    assert server.last().headers["traceparent"].startswith(traceparent_of(span))


def test_post_method(tel, server):  # type: ignore[no-untyped-def]
    requests.post(server.url("/ok"), data=b"x", timeout=5)
    assert_one_client_span(tel, server, path="/ok", status=200, error=None, method="POST")


def test_500_is_an_error(tel, server):  # type: ignore[no-untyped-def]
    assert requests.get(server.url("/status/500"), timeout=5).status_code == 500
    assert_one_client_span(tel, server, path="/status/500", status=500, error="500")


def test_404_is_an_error_on_a_client_span(tel, server):  # type: ignore[no-untyped-def]
    requests.get(server.url("/status/404"), timeout=5)
    assert_one_client_span(tel, server, path="/status/404", status=404, error="404")


def test_connection_refused(tel, closed_port):  # type: ignore[no-untyped-def]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{closed_port}/x", timeout=5)
    (span,) = client_spans(tel)
    assert span.attributes["error.type"] == "requests.exceptions.ConnectionError"
    assert span.attributes["server.port"] == closed_port
    assert tel.metric_points("http.client.request.duration", server__port=closed_port,
                             error__type="requests.exceptions.ConnectionError")


def test_timeout(tel, server):  # type: ignore[no-untyped-def]
    with pytest.raises(requests.Timeout):
        requests.get(server.url("/slow/1"), timeout=0.2)
    assert_one_client_span(tel, server, path="/slow/1", status=None, error="requests.exceptions.ReadTimeout")


def test_redirect_chain_is_one_span(tel, server):  # type: ignore[no-untyped-def]
    # Session.send follows redirects by calling itself: the hops run inside the first call's span.
    # (semconv would rather have one span per hop; see the README, HTTP)
    assert requests.get(server.url("/redirect"), timeout=5).status_code == 200
    (span,) = client_spans(tel)
    assert span.attributes["url.full"].endswith("/redirect")
    assert [s.path for s in server.seen] == ["/redirect", "/ok"]


def test_url_credentials_and_query_secrets_are_redacted(tel, server):  # type: ignore[no-untyped-def]
    url = f"http://alice:hunter2@127.0.0.1:{server.port}/ok?sig=s1g&token=t0k&page=2"
    requests.get(url, timeout=5)
    (span,) = client_spans(tel)
    assert span.attributes["url.full"] == \
        f"http://REDACTED:REDACTED@127.0.0.1:{server.port}/ok?sig=REDACTED&token=REDACTED&page=2"


def test_excluded_urls_are_not_instrumented(tel, server, settings_env):  # type: ignore[no-untyped-def]
    settings_env({"INSTRUMENT_EXCLUDED_URLS": r"/health$,/ok"})
    requests.get(server.url("/ok"), timeout=5)
    assert client_spans(tel) == []
    assert "traceparent" not in server.last().headers
