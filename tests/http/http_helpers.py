"""Assertions shared by the HTTP client tests."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode


def client_spans(tel: Any) -> list[Any]:
    return [s for s in tel.spans() if s.kind == SpanKind.CLIENT]


def wait_spans(tel: Any, count: int, kind: SpanKind | None = None, timeout: float = 5.0) -> list[Any]:
    """Spans end on server threads after the client already has its answer: poll for them."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in tel.spans() if kind is None or s.kind == kind]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


def traceparent_of(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}"


def assert_one_client_span(tel: Any, server: Any, *, path: str, status: int | None, error: str | None,
                           method: str = "GET") -> Any:
    """Exactly one CLIENT span, with the semconv attributes, status and histogram point."""
    spans = client_spans(tel)
    assert len(spans) == 1, [(s.name, dict(s.attributes)) for s in spans]
    span = spans[0]
    attrs = dict(span.attributes)
    assert span.name == method
    assert attrs["http.request.method"] == method
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == server.port
    assert attrs["url.full"] == f"http://127.0.0.1:{server.port}{path}"
    assert attrs.get("http.response.status_code") == status
    assert attrs.get("error.type") == error
    if error is None:
        assert span.status.status_code == StatusCode.UNSET
    else:
        assert span.status.status_code == StatusCode.ERROR
    points = tel.metric_points("http.client.request.duration", server__port=server.port)
    assert len(points) == 1 and points[0].value == 1, points
    expected = {"http.request.method": method, "server.address": "127.0.0.1", "server.port": server.port}
    if status is not None:
        expected["http.response.status_code"] = status
    if error is not None:
        expected["error.type"] = error
    assert points[0].attributes == expected
    assert 0 < points[0].sum < 5
    return span
