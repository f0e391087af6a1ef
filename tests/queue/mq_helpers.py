"""Helpers for the messaging tests: unique names, the "HTTP request" that publishes, span lookups."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from opentelemetry.trace import SpanKind

from instrument import _instruments


def unique(prefix: str) -> str:
    return f"instrument-test-{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def http_request(route: str = "/orders") -> Iterator[Any]:
    """A SERVER span standing in for an HTTP request handled by an instrumented server (see
    test_wsgi_publish for the same through ``instrument.wsgi`` when it exists)."""
    with _instruments.tracer().start_as_current_span(f"POST {route}", kind=SpanKind.SERVER,
                                                     attributes={"http.route": route}) as span:
        yield span


def ids(span: Any) -> tuple[int, int]:
    ctx = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return ctx.trace_id, ctx.span_id


def assert_child(child: Any, parent: Any) -> None:
    assert child.context.trace_id == ids(parent)[0], "not in the same trace"
    assert child.parent is not None and child.parent.span_id == ids(parent)[1], "not a child"
