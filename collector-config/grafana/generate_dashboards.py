"""Generate the Grafana dashboards of the instrument stack from the toolkit's metric catalog.

    python collector-config/grafana/generate_dashboards.py          # rewrite dashboards/*.json
    python collector-config/grafana/generate_dashboards.py --check  # exit 1 if they are out of date

Every metric name goes through ``instrument._catalog.prometheus_name`` (histograms add ``_bucket``/
``_count``), so a renamed metric breaks generation instead of leaving a panel on "No data".
Labels are OTel attributes with dots turned into underscores; ``service_name`` is the promoted
resource attribute ``service.name`` (prometheus.yml ``otlp.promote_resource_attributes``).
Panels that count failures fall back to 0 (``or on() vector(0)`` and ``noValue: "0"``), never "No data".
tests/stack/test_dashboards.py keeps the committed JSON in step with this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
sys.path.insert(0, str(HERE.parents[1]))

from instrument._catalog import BY_NAME, prometheus_name  # noqa: E402

PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
RI = "$__rate_interval"
SVC = 'service_name="$service"'
TAG = "instrument"


def m(name: str, suffix: str = "") -> str:
    """Prometheus name of catalog metric ``name`` (KeyError if the toolkit does not emit it)."""
    return prometheus_name(BY_NAME[name]) + suffix


# ---- PromQL helpers ------------------------------------------------------------------------------

def _sum(by: str, inner: str) -> str:
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def rate(metric: str, matchers: str, by: str = "", zero: bool = True) -> str:
    expr = _sum(by, f"rate({metric}{{{matchers}}}[{RI}])")
    return f"{expr} or on() vector(0)" if zero else expr


def gauge(metric: str, matchers: str, by: str = "", zero: bool = True) -> str:
    expr = _sum(by, f"{metric}{{{matchers}}}")
    return f"{expr} or on() vector(0)" if zero else expr


def error_ratio(count_metric: str, matchers: str, by: str = "") -> str:
    """Share of calls with an error.type; 0 (not "No data") for targets without errors."""
    errors = _sum(by, f'rate({count_metric}{{{matchers}, error_type!=""}}[{RI}])')
    total = _sum(by, f"rate({count_metric}{{{matchers}}}[{RI}])")
    return f"({errors} or {total} * 0) / {total}"


def quantile(q: float, bucket_metric: str, matchers: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({bucket_metric}{{{matchers}}}[{RI}])))"


# ---- panel builders ------------------------------------------------------------------------------

class Layout:
    """Places panels left to right, 24 columns wide, rows where asked."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": len(self.panels) + 1})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def add(self, panel: dict[str, Any], w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = len(self.panels) + 1
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", *, exemplar: bool = False,
           ds: dict[str, str] = PROM) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": ds, "expr": expr, "refId": ref}
    if ds is PROM:
        t.update(legendFormat=legend or "__auto", range=True, instant=False, exemplar=exemplar)
    elif legend:
        t["legendFormat"] = legend
    return t


def panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str = "short",
          *, ds: dict[str, str] = PROM, **extra: Any) -> dict[str, Any]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": ds,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "noValue": "0"}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                   "showPoints": "never", "spanNulls": True}
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    p.update(extra)
    return p


def ts(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", **kw: Any) -> dict[str, Any]:
    return panel("timeseries", title, description, targets, unit, **kw)


def stat(title: str, description: str, expr: str, unit: str = "short", thresholds: list[float] | None = None
         ) -> dict[str, Any]:
    p = panel("stat", title, description, [target(expr, "")], unit)
    if thresholds is not None:
        steps = [{"color": "green", "value": None}] + [
            {"color": c, "value": v} for c, v in zip(("orange", "red"), thresholds, strict=False)]
        p["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": steps}
    return p


def latency(title: str, description: str, bucket_metric: str, matchers: str, by: str = "") -> dict[str, Any]:
    legend = "{{" + by.split(",")[0].strip() + "}}" if by else ""
    return ts(title, description, [
        target(quantile(q, bucket_metric, matchers, by), f"p{int(q * 100)} {legend}".strip(), exemplar=True)
        for q in (0.5, 0.95, 0.99)], "s")


def var_query(name: str, label: str, query: str, *, include_all: bool = False, ds: dict[str, str] = PROM
              ) -> dict[str, Any]:
    v: dict[str, Any] = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": ds,
        "definition": query,
        "query": query,
        "refresh": 2,
        "sort": 1,
        "multi": include_all,
        "includeAll": include_all,
        "current": {},
        "options": [],
        "hide": 0,
    }
    if include_all:
        v["allValue"] = ".*"
    return v


SERVICE_VAR = var_query("service", "Service", "label_values(service_name)")


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict[str, Any]]
              ) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": [TAG], "asDropdown": True, "title": "instrument dashboards",
                   "includeVars": True, "keepTime": True}],
        "panels": layout.panels,
    }


# ---- the dashboards ------------------------------------------------------------------------------

def overview() -> dict[str, Any]:
    count, bucket = m("http.server.request.duration", "_count"), m("http.server.request.duration", "_bucket")
    lay = Layout()
    lay.row("Inbound HTTP (this service's own endpoints)")
    lay.add(stat("Request rate", "Inbound requests per second.", rate(count, SVC), "reqps"), w=6, h=5)
    lay.add(stat("Error ratio", "Share of inbound requests with an error.type (5xx or an exception).",
                 error_ratio(count, SVC), "percentunit", [0.01, 0.05]), w=6, h=5)
    lay.add(stat("p95 latency", "95th percentile of http.server.request.duration.",
                 quantile(0.95, bucket, SVC), "s"), w=6, h=5)
    lay.add(stat("Active requests", "Requests being served now.",
                 gauge(m("http.server.active_requests"), SVC)), w=6, h=5)
    lay.add(ts("Requests by route", "Inbound request rate per route and method.",
               [target(rate(count, SVC, "http_route, http_request_method"), "{{http_request_method}} {{http_route}}")],
               "reqps"))
    lay.add(ts("Error ratio by route", "Share of failed requests per route; 0 where nothing failed.",
               [target(error_ratio(count, SVC, "http_route"), "{{http_route}}")], "percentunit"))
    lay.add(latency("Latency p50 / p95 / p99", "Inbound latency quantiles; exemplar dots open the trace in Jaeger.",
                    bucket, SVC))
    lay.add(ts("Responses by status code", "Inbound responses per second by status code.",
               [target(rate(count, SVC, "http_response_status_code"), "{{http_response_status_code}}")], "reqps"))
    lay.row("Outbound at a glance (details: Dependencies, Resilience, Pools)")
    http, db = m("http.client.request.duration", "_count"), m("db.client.operation.duration", "_count")
    msg = m("messaging.client.operation.duration", "_count")
    lay.add(ts("Outbound calls by kind", "Calls per second this service makes to HTTP, database and messaging peers.",
               [target(rate(http, SVC), "HTTP"), target(rate(db, SVC), "DB"), target(rate(msg, SVC), "messaging")],
               "ops"))
    lay.add(ts("Outbound error ratio by kind", "Share of outbound calls that failed, by kind; 0 when none failed.",
               [target(error_ratio(http, SVC), "HTTP"), target(error_ratio(db, SVC), "DB"),
                target(error_ratio(msg, SVC), "messaging")], "percentunit"))
    lay.add(stat("Open circuit breakers", "Breakers currently open (calls to their target fail fast).",
                 gauge(m("instrument.circuit_breaker.state"), SVC + ', state="open"'), "short", [1, 1]), w=8, h=5)
    lay.add(stat("Rejected calls / s", "Calls refused by a breaker, bulkhead or rate limiter.",
                 " + ".join(f"({rate(m(n), SVC)})" for n in (
                     "instrument.circuit_breaker.rejected", "instrument.bulkhead.rejected",
                     "instrument.rate_limit.rejected")), "ops", [0.001, 1]), w=8, h=5)
    lay.add(stat("Injected faults / s", "Faults injected by INSTRUMENT_FAULTS (0 in production).",
                 rate(m("instrument.fault.injected"), SVC), "ops", [0.001, 1]), w=8, h=5)
    lay.add(ts("Telemetry dropped", "Spans, metric batches and log records the toolkit's exporters dropped "
               "(queue full or collector unreachable); 0 while the collector keeps up.",
               [target(rate(m("instrument.telemetry.dropped"), SVC, "signal, reason"), "{{signal}} {{reason}}")],
               "ops"))
    return dashboard("instrument-overview", "instrument / Service overview",
                     "Inbound RED for one service, and a summary of what it calls.", lay, [SERVICE_VAR])


def dependencies() -> dict[str, Any]:
    sel = SVC + ', server_address=~"$target"'
    lay = Layout()
    for title, name, by, legend in (
        ("HTTP clients", "http.client.request.duration", "server_address", "{{server_address}}"),
        ("Databases", "db.client.operation.duration", "db_system_name, server_address",
         "{{db_system_name}} {{server_address}}"),
    ):
        count, bucket = m(name, "_count"), m(name, "_bucket")
        lay.row(f"{title}: rate, errors, duration per target")
        lay.add(ts("Call rate", f"{name}: calls per second per target.", [target(rate(count, sel, by), legend)],
                   "ops"), w=8)
        lay.add(ts("Error ratio", "Share of calls with an error.type; 0 where nothing failed.",
                   [target(error_ratio(count, sel, by), legend)], "percentunit"), w=8)
        lay.add(ts("Errors by type", "Failed calls per second by error.type (exception class or status code).",
                   [target(rate(count, sel + ', error_type!=""', "server_address, error_type"),
                           "{{server_address}} {{error_type}}")], "ops"), w=8)
        lay.add(latency("Duration p50 / p95 / p99", f"Quantiles of {name} per target.", bucket, sel,
                        "server_address"), w=12)
        op_by = "http_request_method" if name.startswith("http") else "db_operation_name"
        lay.add(ts("Call rate by operation", "Calls per second by method or operation.",
                   [target(rate(count, sel, f"server_address, {op_by}"), "{{server_address}} {{" + op_by + "}}")],
                   "ops"), w=12)
    count = m("messaging.client.operation.duration", "_count")
    bucket = m("messaging.client.operation.duration", "_bucket")
    by, legend = "messaging_operation_name, messaging_destination_name", \
        "{{messaging_operation_name}} {{messaging_destination_name}}"
    lay.row("Messaging: publish / receive / settle per destination, queue health")
    lay.add(ts("Operation rate", "Messaging operations per second per destination.",
               [target(rate(count, sel, by), legend)], "ops"), w=8)
    lay.add(ts("Error ratio", "Share of messaging operations with an error.type.",
               [target(error_ratio(count, sel, by), legend)], "percentunit"), w=8)
    lay.add(latency("Operation duration p50 / p95 / p99", "Quantiles of messaging.client.operation.duration.",
                    bucket, sel, "messaging_destination_name"), w=8)
    dest = "messaging_destination_name"
    lay.add(ts("Messages sent / consumed", "Messages per second per destination.",
               [target(rate(m("messaging.client.sent.messages"), SVC, dest), "sent {{" + dest + "}}"),
                target(rate(m("messaging.client.consumed.messages"), SVC, dest), "consumed {{" + dest + "}}")],
               "ops"), w=8)
    lay.add(latency("Processing duration p50 / p95 / p99", "Quantiles of messaging.process.duration (handler time).",
                    m("messaging.process.duration", "_bucket"), SVC, dest), w=8)
    lay.add(ts("In flight / duplicates dropped", "Messages being processed under the backpressure limit, and "
               "redeliveries dropped by the idempotent-consumer helper.",
               [target(gauge(m("instrument.messaging.in_flight"), SVC, dest), "in flight {{" + dest + "}}"),
                target(rate(m("instrument.messaging.duplicates"), SVC, dest), "duplicates/s {{" + dest + "}}")]),
            w=8)
    target_var = var_query(
        "target", "Target (server.address)",
        'label_values({__name__=~"' + "|".join(m(n, "_count") for n in (
            "http.client.request.duration", "db.client.operation.duration", "messaging.client.operation.duration"))
        + '", service_name="$service"}, server_address)', include_all=True)
    return dashboard("instrument-dependencies", "instrument / Dependencies",
                     "Outbound HTTP, database and messaging RED per target.", lay, [SERVICE_VAR, target_var])


def resilience() -> dict[str, Any]:
    sel = SVC + ', instrument_policy_target=~"$target"'
    tgt = "instrument_policy_target"
    state = m("instrument.circuit_breaker.state")
    lay = Layout()
    lay.row("Circuit breakers")
    timeline = panel(
        "state-timeline", "Breaker state", "0 closed, 1 half-open, 2 open, per target.",
        [target(f'sum by ({tgt}) ({state}{{{sel}, state="open"}}) * 2 + '
                f'sum by ({tgt}) ({state}{{{sel}, state="half_open"}}) or on() vector(0)', "{{" + tgt + "}}")])
    timeline["fieldConfig"]["defaults"]["mappings"] = [{"type": "value", "options": {
        "0": {"text": "closed", "color": "green"}, "1": {"text": "half-open", "color": "yellow"},
        "2": {"text": "open", "color": "red"}}}]
    timeline["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    timeline["options"] = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.8}
    lay.add(timeline, w=12)
    lay.add(ts("State transitions", "Breaker state changes per target and new state.",
               [target(rate(m("instrument.circuit_breaker.transitions"), sel, f"{tgt}, state"),
                       "{{" + tgt + "}} -> {{state}}")], "ops"), w=6)
    lay.add(ts("Rejected by open breaker", "Calls that failed fast because the breaker was open.",
               [target(rate(m("instrument.circuit_breaker.rejected"), sel, tgt), "{{" + tgt + "}}")], "ops"), w=6)
    lay.row("Retries and timeouts")
    lay.add(ts("Retry decisions", "Retries by outcome: retried, succeeded (after a retry), gave_up.",
               [target(rate(m("instrument.retry.attempts"), sel, f"{tgt}, outcome"),
                       "{{" + tgt + "}} {{outcome}}")], "ops"))
    lay.add(ts("Timeouts", "Calls whose deadline passed.",
               [target(rate(m("instrument.timeout.expired"), sel, tgt), "{{" + tgt + "}}")], "ops"))
    lay.row("Bulkheads and rate limits")
    lay.add(ts("Bulkhead: active calls", "Calls running inside a bulkhead.",
               [target(gauge(m("instrument.bulkhead.active"), sel, tgt), "{{" + tgt + "}}")]), w=8)
    lay.add(ts("Bulkhead rejections", "Calls refused because the bulkhead was full.",
               [target(rate(m("instrument.bulkhead.rejected"), sel, tgt), "{{" + tgt + "}}")], "ops"), w=8)
    lay.add(ts("Rate-limit rejections", "Calls refused by a rate limiter.",
               [target(rate(m("instrument.rate_limit.rejected"), sel, tgt), "{{" + tgt + "}}")], "ops"), w=8)
    lay.row("Fault injection (INSTRUMENT_FAULTS)")
    lay.add(ts("Injected faults", "Faults injected per target and kind (latency, error, timeout, reset, status).",
               [target(rate(m("instrument.fault.injected"), sel, f"{tgt}, instrument_fault_kind"),
                       "{{" + tgt + "}} {{instrument_fault_kind}}")], "ops"), w=24)
    target_var = var_query("target", "Target (instrument.policy.target)",
                           'label_values({__name__=~"instrument_.+", service_name="$service"}, ' + tgt + ")",
                           include_all=True)
    return dashboard("instrument-resilience", "instrument / Resilience",
                     "Circuit breakers, retries, timeouts, bulkheads, rate limits and injected faults.", lay,
                     [SERVICE_VAR, target_var])


def pools() -> dict[str, Any]:
    pool = "db_client_connection_pool_name"
    sel = SVC + f', {pool}=~"$pool"'
    lay = Layout()
    lay.row("Database connection pools")
    lay.add(ts("Connections used / idle", "Open connections by state.",
               [target(gauge(m("db.client.connection.count"), sel, f"{pool}, db_client_connection_state"),
                       "{{" + pool + "}} {{db_client_connection_state}}")]), w=8)
    lay.add(ts("Pool limits", "Maximum open, maximum idle and minimum idle connections.",
               [target(gauge(m("db.client.connection.max"), sel, pool), "max {{" + pool + "}}"),
                target(gauge(m("db.client.connection.idle.max"), sel, pool), "idle max {{" + pool + "}}"),
                target(gauge(m("db.client.connection.idle.min"), sel, pool), "idle min {{" + pool + "}}")]), w=8)
    count = m("db.client.connection.count")
    lay.add(ts("Utilisation", "Used connections as a share of the pool maximum.",
               [target(f'sum by ({pool}) ({count}{{{sel}, db_client_connection_state="used"}}) / '
                       f'sum by ({pool}) ({m("db.client.connection.max")}{{{sel}}})', "{{" + pool + "}}")],
               "percentunit"), w=8)
    lay.add(ts("Pending requests", "Callers waiting to check out a connection.",
               [target(gauge(m("db.client.connection.pending_requests"), sel, pool), "{{" + pool + "}}")]), w=8)
    lay.add(ts("Wait time p95", "95th percentile time to obtain a connection.",
               [target(quantile(0.95, m("db.client.connection.wait_time", "_bucket"), sel, pool),
                       "{{" + pool + "}}", exemplar=True)], "s"), w=8)
    lay.add(ts("Checkout timeouts", "Checkouts that gave up waiting for a connection.",
               [target(rate(m("db.client.connection.timeouts"), sel, pool), "{{" + pool + "}}")], "ops"), w=8)
    lay.add(ts("Create time / use time p95", "Time to open a new connection, and time the application held one.",
               [target(quantile(0.95, m("db.client.connection.create_time", "_bucket"), sel, pool),
                       "create {{" + pool + "}}"),
                target(quantile(0.95, m("db.client.connection.use_time", "_bucket"), sel, pool),
                       "use {{" + pool + "}}")], "s"), w=24)
    lay.row("HTTP client requests")
    lay.add(ts("Active HTTP requests", "HTTP client requests in progress per peer.",
               [target(gauge(m("http.client.active_requests"), SVC, "server_address"), "{{server_address}}")]))
    pool_var = var_query("pool", "Pool", f"label_values({count}{{{SVC}}}, {pool})", include_all=True)
    return dashboard("instrument-pools", "instrument / Pools",
                     "Connection pools: used, idle and max connections, waiting callers, wait time, timeouts.",
                     lay, [SERVICE_VAR, pool_var])


def logs() -> dict[str, Any]:
    stream = '{service_name="$service"} |~ "(?i)$search"'
    lay = Layout()
    lay.add(ts("Log volume by level", "Log lines per interval by detected level.",
               [target(f"sum by (detected_level) (count_over_time({stream} [$__auto]))", "{{detected_level}}",
                       ds=LOKI)], ds=LOKI), w=24, h=6)
    errors = panel("logs", "Errors and warnings", "Lines at warning level or above; the TraceID link opens Jaeger.",
                   [target('{service_name="$service"} | detected_level=~"(?i)warn|warning|error|critical|fatal"',
                           ds=LOKI)], ds=LOKI)
    lines = panel("logs", "Logs", "All lines of the service (filter with Search). Each line with a trace_id links to "
                  "its trace in Jaeger.", [target(stream, ds=LOKI)], ds=LOKI)
    for p in (errors, lines):
        p["options"] = {"showTime": True, "wrapLogMessage": True, "enableLogDetails": True,
                        "sortOrder": "Descending", "dedupStrategy": "none", "prettifyLogMessage": False}
    lay.add(errors, w=24, h=10)
    lay.add(lines, w=24, h=14)
    search = {"type": "textbox", "name": "search", "label": "Search (regex)", "query": "", "hide": 0,
              "current": {"text": "", "value": ""}, "options": []}
    service_var = var_query("service", "Service", "label_values(service_name)", ds=LOKI)
    return dashboard("instrument-logs", "instrument / Logs",
                     "Structured logs of one service, each linked to its trace.", lay, [service_var, search])


DASHBOARDS = {
    "instrument-overview.json": overview,
    "instrument-dependencies.json": dependencies,
    "instrument-resilience.json": resilience,
    "instrument-pools.json": pools,
    "instrument-logs.json": logs,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [n for n, text in rendered.items()
                 if not (OUT / n).exists() or (OUT / n).read_text(encoding="utf-8") != text]
        if stale:
            print("out of date (run collector-config/grafana/generate_dashboards.py):", ", ".join(stale))
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text, encoding="utf-8")
        print("wrote", OUT / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
