"""Every metric the toolkit emits: the one catalog that code, README and dashboards are checked against.

Names follow ../shared/SEMCONV.md (OpenTelemetry semantic conventions v1.44, stable names, seconds);
``instrument.*`` names cover what semconv has no name for. The Prometheus name of each is derived by
:func:`prometheus_name`, the same translation the Collector and Prometheus's OTLP receiver apply.
"""

from __future__ import annotations

from dataclasses import dataclass

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    instrument: str  # "histogram", "counter", "updowncounter", "gauge"
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


_E = "error.type"

METRICS: tuple[Metric, ...] = (
    # HTTP client and server
    Metric("http.client.request.duration", "histogram", "s", "Duration of HTTP client requests.",
           ("http.request.method", "server.address", "server.port", "http.response.status_code", _E), HTTP_BUCKETS),
    Metric("http.client.active_requests", "updowncounter", "{request}", "Number of active HTTP client requests.",
           ("server.address", "server.port")),
    Metric("http.server.request.duration", "histogram", "s", "Duration of HTTP server requests.",
           ("http.request.method", "http.route", "http.response.status_code", "url.scheme", _E), HTTP_BUCKETS),
    Metric("http.server.active_requests", "updowncounter", "{request}", "Number of active HTTP server requests.",
           ("http.request.method", "url.scheme")),
    # Database client and pools
    Metric("db.client.operation.duration", "histogram", "s", "Duration of database client operations.",
           ("db.system.name", "db.namespace", "db.operation.name", "server.address", "server.port", _E), DB_BUCKETS),
    Metric("db.client.connection.count", "updowncounter", "{connection}", "Connections in the pool by state.",
           ("db.client.connection.state", "db.client.connection.pool.name")),
    Metric("db.client.connection.idle.max", "updowncounter", "{connection}", "Maximum idle connections allowed.",
           ("db.client.connection.pool.name",)),
    Metric("db.client.connection.idle.min", "updowncounter", "{connection}", "Minimum idle connections kept.",
           ("db.client.connection.pool.name",)),
    Metric("db.client.connection.max", "updowncounter", "{connection}", "Maximum open connections allowed.",
           ("db.client.connection.pool.name",)),
    Metric("db.client.connection.pending_requests", "updowncounter", "{request}",
           "Requests waiting to check out a connection.", ("db.client.connection.pool.name",)),
    Metric("db.client.connection.timeouts", "counter", "{timeout}", "Checkouts that timed out.",
           ("db.client.connection.pool.name",)),
    Metric("db.client.connection.create_time", "histogram", "s", "Time to create a new connection.",
           ("db.client.connection.pool.name",), DB_BUCKETS),
    Metric("db.client.connection.wait_time", "histogram", "s", "Time to obtain a connection from the pool.",
           ("db.client.connection.pool.name",), DB_BUCKETS),
    Metric("db.client.connection.use_time", "histogram", "s", "Time a connection was held by the application.",
           ("db.client.connection.pool.name",), DB_BUCKETS),
    # Messaging
    Metric("messaging.client.operation.duration", "histogram", "s", "Duration of messaging operations.",
           ("messaging.system", "messaging.operation.name", "messaging.destination.name", "server.address", _E),
           HTTP_BUCKETS),
    Metric("messaging.process.duration", "histogram", "s", "Duration of processing a message.",
           ("messaging.system", "messaging.operation.name", "messaging.destination.name", _E), HTTP_BUCKETS),
    Metric("messaging.client.sent.messages", "counter", "{message}", "Messages sent.",
           ("messaging.system", "messaging.operation.name", "messaging.destination.name", _E)),
    Metric("messaging.client.consumed.messages", "counter", "{message}", "Messages consumed.",
           ("messaging.system", "messaging.operation.name", "messaging.destination.name", _E)),
    # Our own: resilience and faults
    Metric("instrument.circuit_breaker.state", "gauge", "{state}",
           "1 for the breaker's current state, 0 for the others.", ("instrument.policy.target", "state")),
    Metric("instrument.circuit_breaker.transitions", "counter", "{transition}", "Breaker state changes.",
           ("instrument.policy.target", "state")),
    Metric("instrument.circuit_breaker.rejected", "counter", "{call}", "Calls rejected by an open breaker.",
           ("instrument.policy.target",)),
    Metric("instrument.retry.attempts", "counter", "{attempt}", "Retry decisions by outcome.",
           ("instrument.policy.target", "outcome")),
    Metric("instrument.timeout.expired", "counter", "{call}", "Calls whose deadline passed.",
           ("instrument.policy.target",)),
    Metric("instrument.bulkhead.rejected", "counter", "{call}", "Calls rejected by a full bulkhead.",
           ("instrument.policy.target",)),
    Metric("instrument.bulkhead.active", "updowncounter", "{call}", "Calls running inside a bulkhead.",
           ("instrument.policy.target",)),
    Metric("instrument.rate_limit.rejected", "counter", "{call}", "Calls rejected by a rate limiter.",
           ("instrument.policy.target",)),
    Metric("instrument.fault.injected", "counter", "{fault}", "Faults injected by the toolkit.",
           ("instrument.policy.target", "instrument.fault.kind")),
    Metric("instrument.telemetry.dropped", "counter", "{item}",
           "Telemetry items the toolkit's exporters dropped (queue full or export failed).", ("signal", "reason")),
    Metric("instrument.messaging.duplicates", "counter", "{message}",
           "Messages dropped by the idempotent-consumer helper as already processed.",
           ("messaging.system", "messaging.destination.name")),
    Metric("instrument.messaging.in_flight", "updowncounter", "{message}",
           "Messages being processed by a consumer under a backpressure limit.",
           ("messaging.system", "messaging.destination.name")),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


def prometheus_name(metric: Metric) -> str:
    """The name Prometheus stores for ``metric`` (histograms get ``_bucket``/``_sum``/``_count`` on top).

    Dots become underscores; a unit in braces adds nothing; ``s`` adds ``_seconds``; monotonic
    counters end in ``_total``.
    """
    name = metric.name.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(metric.unit)
    if suffix and not name.endswith("_" + suffix):
        name += "_" + suffix
    if metric.instrument == "counter":
        name += "_total"
    return name
