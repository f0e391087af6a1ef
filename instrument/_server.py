"""What the WSGI and ASGI middleware share: the SERVER span, its metrics and server-side faults.

The client side goes through :class:`instrument._call.Endpoint`; a server request is the mirror
image and is simpler, so it has its own small core here, used by :mod:`instrument.wsgi` and
:mod:`instrument.asgi`:

    begin(...)    extract the caller's context, start the SERVER span, attach it (client calls made
                  by the handler become its children), count an active request
    fault(...)    a server-side fault for this request (``instrument.faults.server_fault``) or None
    finish(...)   name the span ``{method} {route}``, status (Error only for 5xx or an exception),
                  end it, record ``http.server.request.duration``, uncount the active request

Frameworks tell the middleware the matched route by writing ``ROUTE_KEY`` into the WSGI environ or
ASGI scope (the Flask, Django and Starlette integrations do); ``MARK_KEY`` there means a server span
already exists for the request, so a second middleware layer passes straight through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from http import HTTPStatus
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation import _SPAN_KEY

from instrument import _context, _http, _instruments, _settings, _span
from instrument._call import OWN_SPANS, error_type, extract
from instrument._safety import report

MARK_KEY = "instrument.server_span"
ROUTE_KEY = "instrument.route"

_perf = time.perf_counter
_SERVER = SpanKind.SERVER
_NonRecordingSpan = trace.NonRecordingSpan
_ERROR = StatusCode.ERROR


class Request:
    """One incoming request in flight: its span, start time, attached context and metric attributes."""

    __slots__ = ("active", "done", "method", "scheme", "span", "start", "status", "token")

    def __init__(self, span: trace.Span, method: str, scheme: str, token: object, active: Any) -> None:
        self.span = span
        self.method = method
        self.scheme = scheme
        self.token = token
        self.active = active  # http.server.active_requests, bound to this method and scheme
        self.start = _perf()
        self.status: int | None = None
        self.done = False

    def detach(self) -> None:
        """Detach the span's context (idempotent; call in the context that attached it)."""
        token, self.token = self.token, None
        if token is not None:
            try:
                _context.otel_detach(token)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - a token of another context: as OpenTelemetry's detach, logged
                report("server detach", exc)


# (method, scheme) -> their attributes, the span template (validated once), http.server.active_requests bound to them
_span_bases: dict[tuple[str, str], tuple[dict[str, Any], Any, Any]] = {}
# (method, route, status, scheme, error) -> http.server.request.duration bound to those attributes
_durations: dict[tuple[str, str | None, int | None, str, str | None], Any] = {}


def begin(method_raw: str, scheme: str, path: str, query: str, host: str | None, client: str | None,
          user_agent: str | None, protocol: str | None, carrier: Any, getter: Any, headers: Any) -> Request:
    """Start the SERVER span for one request and make it the current context."""
    method = _http.method_name(method_raw)
    parent = extract(carrier, getter)
    key = (method, scheme)
    found = _span_bases.get(key)
    if found is None:
        base = {"http.request.method": method, "url.scheme": scheme}
        found = (base, None, _instruments.get("http.server.active_requests").bind(base))
    base, template, active = found
    # The pipeline's span start (instrument._span): the per-(method, scheme) attributes validated once, the
    # per-request ones built only for a span that keeps them (not for a sampled-out request)
    attrs = partial(_request_attributes, method, method_raw, scheme, path, query, host, client, user_agent,
                    protocol, headers)
    span, template = _span.start(_instruments.tracer(), "HTTP" if method == "_OTHER" else method, _SERVER, base,
                                 template, attrs, parent, None)
    if len(_span_bases) < 256:
        _span_bases[key] = (base, template, active)
    token = _context.otel_attach(Context({**parent, _SPAN_KEY: span}))  # set_span_in_context(span, parent)
    active.add(1)
    return Request(span, method, scheme, token, active)


def _request_attributes(method: str, method_raw: str, scheme: str, path: str, query: str, host: str | None,
                        client: str | None, user_agent: str | None, protocol: str | None,
                        headers: Any) -> dict[str, Any]:
    """A request's own SERVER span attributes."""
    attrs: dict[str, Any] = {"url.path": path}
    if method == "_OTHER":
        attrs["http.request.method_original"] = method_raw
    if query:
        attrs["url.query"] = _http.redact_query(query)
    if host:
        address, port = _split_host(host, scheme)
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
    if client:
        attrs["client.address"] = client
    if user_agent:
        attrs["user_agent.original"] = user_agent
    if protocol:
        attrs["network.protocol.version"] = protocol
    names = _settings.active().capture_request_headers
    if names:
        attrs.update(_http.header_attributes("request", names, headers))
    return attrs


def _split_host(host: str, scheme: str) -> tuple[str, int | None]:
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        address, rest = host[1:end], host[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = host.partition(":")
    if port.isdigit():
        return address, int(port)
    return address, (443 if scheme == "https" else 80)


_server_fault: list[Any] = []  # [(instrument.faults.server_fault, the rules' registry)], or [None] without faults


def fault(scheme: str, host: str, method: str, path: str, headers: Mapping[str, str]) -> Any:
    """``instrument.faults.server_fault(f"{scheme}://{host}", ...)`` guarded: a missing or broken faults module
    never breaks a request. Without a server rule armed or header faults enabled (the usual case), None at once."""
    if not _server_fault:
        try:
            from instrument.faults import _registry, server_fault
        except Exception:  # noqa: BLE001 - faults not installed or broken: no server faults
            _server_fault.append(None)
        else:
            _server_fault.append((server_fault, _registry))
    found = _server_fault[0]
    if found is None or not (found[1].server_rules() or found[1].header_enabled[0]):
        return None
    try:
        return found[0](f"{scheme}://{host}", method, path, headers)
    except Exception as exc:  # noqa: BLE001
        report("server fault", exc)
        return None


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Injected Fault"


def finish(request: Request, route: str | None, exc: BaseException | None,
           response_headers: Callable[[], Any] | None = None) -> None:
    """End the span and record the duration; runs once per request (later calls do nothing)."""
    if request.done:
        return
    request.done = True
    try:
        duration = _perf() - request.start
        span = request.span
        status = request.status
        error: str | None = None
        if exc is not None:
            error = error_type(exc)
        elif status is not None and status >= 500:
            error = str(status)
        cls = span.__class__
        if cls is not _NonRecordingSpan:  # sampled out: nothing to set, nothing to end
            if span.is_recording():
                if route:
                    span.update_name(f"{'HTTP' if request.method == '_OTHER' else request.method} {route}")
                    span.set_attribute("http.route", route)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                names = _settings.active().capture_response_headers
                if names and response_headers is not None:
                    span.set_attributes(_http.header_attributes("response", names, response_headers()))
                if error is not None:
                    span.set_attribute("error.type", error)
                    if exc is not None:
                        span.record_exception(exc)
                        span.set_status(Status(_ERROR, f"{type(exc).__name__}: {exc}"[:512]))
                    else:
                        span.set_status(Status(_ERROR))
            span.end()
        context = span._context if cls in OWN_SPANS else span.get_span_context()  # noqa: SLF001
        # a sampled request's span becomes its bucket's exemplar, as a client call's does
        key = (request.method, route, status, request.scheme, error)
        (_durations.get(key) or _duration(key)).record(duration, context)
        request.active.add(-1)
    except Exception as internal:  # noqa: BLE001
        report("server finish", internal)


def _duration(key: tuple[str, str | None, int | None, str, str | None]) -> Any:
    """``http.server.request.duration`` bound to the attributes of ``(method, route, status, scheme, error)``."""
    method, route, status, scheme, error = key
    attrs: dict[str, Any] = {"http.request.method": method, "url.scheme": scheme}
    if route:
        attrs["http.route"] = route
    if status is not None:
        attrs["http.response.status_code"] = status
    if error is not None:
        attrs["error.type"] = error
    bound = _instruments.get("http.server.request.duration").bind(attrs)
    if len(_durations) < 2048:  # routes are templates (bounded); be safe anyway
        _durations[key] = bound
    return bound
