"""End to end: a real Prometheus scrapes instrumented code, and every dashboard query returns data.

Debian's ``prometheus`` package (2.x, no OTLP receiver) is started on loopback and scrapes the app
through ``opentelemetry-exporter-prometheus``. That path yields the same series names as the stack's
OTLP path (Collector -> Prometheus ``/api/v1/otlp``), with these differences, none of which the
dashboards depend on:

* ``service_name``: the OTLP receiver promotes ``service.name`` (prometheus.yml
  ``promote_resource_attributes``); here ``PrometheusMetricReader(resource_attribute_filter=...)``
  copies the same resource attribute onto every series, so queries filter on the same label.
* ``job``/``instance`` come from the scrape config here, from ``service.name``/``service.instance.id`` there.
* the exporter adds ``otel_scope_*`` labels and ``*_created`` series for counters; the dashboards use neither.
* unit ``1`` maps to no suffix here and to ``_ratio`` there; the catalog has no such metric.

Two tests:

* ``test_catalog_metrics_fill_every_panel``: every metric of ``instrument/_catalog.py`` is recorded through
  the OTel SDK with its catalog attributes (successes and failures, an open breaker); Prometheus stores
  exactly the catalog's ``prometheus_name`` series, and every panel query of every dashboard returns data.
* ``test_toolkit_app_fills_the_panels``: an app instrumented by ``instrument.init()`` makes real HTTP,
  PostgreSQL, Redis and RabbitMQ calls with a fault injected and a breaker configured; every series it
  emits is in the catalog, the RED panels have data, and the error-ratio and breaker panels show the faults.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stacklib import (  # noqa: E402
    ROOT, catalog_series, dashboards, free_port, iter_targets, parse_label_values, port_open, prometheus_binary,
    substitute, unavailable,
)

RATE_INTERVAL = "10s"
SCRAPE = "1s"


# ---- Prometheus on loopback ---------------------------------------------------------------------

class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as resp:  # noqa: S310 - loopback
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", query=expr)["result"]

    def label_values(self, label: str) -> list[str]:
        return self._get(f"/api/v1/label/{label}/values")

    def series(self, match: str) -> list[dict[str, str]]:
        return self._get("/api/v1/series", **{"match[]": match})

    def wait(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A factory: start Prometheus scraping 127.0.0.1:<port> every second; stopped after the test."""
    binary = prometheus_binary()
    if binary is None:
        unavailable("Prometheus not installed (apt-get install -y prometheus)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(app_port: int, job: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""\
            global:
              scrape_interval: {SCRAPE}
              scrape_timeout: {SCRAPE}
              evaluation_interval: {SCRAPE}
            scrape_configs:
              - job_name: {job}
                static_configs:
                  - targets: ["127.0.0.1:{app_port}"]
            """), encoding="utf-8")
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(  # noqa: S603 - our own arguments
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("prometheus exited: " + (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(prom.url + "/-/ready", timeout=1):  # noqa: S310
                    return prom
            except OSError:
                time.sleep(0.2)
        pytest.fail("prometheus did not become ready")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- dashboards ---------------------------------------------------------------------------------

def panel_queries(service: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every Prometheus query, variables as Grafana would fill them."""
    values = {"service": service, "target": ".*", "pool": ".*"}
    return [(name, panel["title"], substitute(target["expr"], values, RATE_INTERVAL))
            for name, d in dashboards().items() for panel, target in iter_targets(d)
            if target["datasource"]["type"] == "prometheus"]


def variable_queries(service: str) -> list[tuple[str, str, str | None, str]]:
    return [(name, var["name"], None if expr is None else substitute(expr, {"service": service}), label)
            for name, d in dashboards().items() for var in d["templating"]["list"]
            if var["type"] == "query" and var["datasource"]["type"] == "prometheus"
            for expr, label in [parse_label_values(var["query"])]]


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def first(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return max((value(s) for s in result if not math.isnan(value(s))), default=math.nan)


# ---- 1. every catalog metric, through the OTel SDK and the Prometheus exporter --------------------

SERVICE = "catalog-e2e"

VALUES = {
    "server.address": "payments.internal", "server.port": 443, "http.request.method": "GET",
    "http.response.status_code": 200, "http.route": "/orders/{id}", "url.scheme": "https",
    "http.connection.state": "active", "db.system.name": "postgresql", "db.namespace": "orders",
    "db.operation.name": "SELECT", "db.client.connection.pool.name": "orders-pool",
    "db.client.connection.state": "used", "messaging.system": "rabbitmq", "messaging.operation.name": "publish",
    "messaging.destination.name": "orders", "instrument.policy.target": "http://payments.internal:443",
    "outcome": "retried", "instrument.fault.kind": "error", "state": "open", "signal": "traces", "reason": "queue_full",
}


class CatalogEmitter:
    """Records every catalog metric with its attributes, a success and a failure for each call metric."""

    def __init__(self, port: int) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry, start_http_server

        from instrument._catalog import METRICS

        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(resource_attribute_filter=lambda key: key == "service.name",
                                        registry=self.registry)
        views = [View(instrument_name=m.name, aggregation=ExplicitBucketHistogramAggregation(list(m.buckets)))
                 for m in METRICS if m.buckets]
        self.provider = MeterProvider(metric_readers=[reader], views=views,
                                      resource=Resource.create({"service.name": SERVICE}))
        meter = self.provider.get_meter("instrument.stack-e2e")
        self.instruments: list[tuple[Any, Any]] = []
        for m in METRICS:
            make = {"histogram": meter.create_histogram, "counter": meter.create_counter,
                    "updowncounter": meter.create_up_down_counter, "gauge": meter.create_gauge}[m.instrument]
            self.instruments.append((m, make(m.name, unit=m.unit, description=m.description)))
        self.server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _attributes(self, metric: Any) -> Iterator[dict[str, Any]]:
        base = {a: VALUES[a] for a in metric.attributes if a != "error.type"}
        yield base
        if "error.type" in metric.attributes:
            yield {**base, "error.type": "TimeoutError"}

    def _tick(self, first_tick: bool) -> None:
        for metric, instrument in self.instruments:
            for attrs in self._attributes(metric):
                if metric.instrument == "histogram":
                    instrument.record(0.02 if "error.type" not in attrs else 0.4, attrs)
                elif metric.instrument == "counter":
                    instrument.add(1, attrs)
                elif metric.instrument == "updowncounter" and first_tick:
                    instrument.add(3, attrs)
                elif metric.instrument == "gauge":
                    if metric.name == "instrument.circuit_breaker.state":
                        for state in ("closed", "open", "half_open"):
                            instrument.set(1 if state == "open" else 0, {**attrs, "state": state})
                    else:
                        instrument.set(1, attrs)

    def _run(self) -> None:
        first_tick = True
        while not self.stop.is_set():
            self._tick(first_tick)
            first_tick = False
            self.stop.wait(0.2)

    def __enter__(self) -> CatalogEmitter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.shutdown()
        self.server.server_close()
        self.provider.shutdown()


def test_catalog_metrics_fill_every_panel(prometheus: Any) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    port = free_port()
    with CatalogEmitter(port):
        prom = prometheus(port, job=SERVICE)
        # Rates need two samples inside the rate window.
        assert prom.wait('count(rate(instrument_fault_injected_total{service_name="%s"}[10s]) > 0)' % SERVICE)
        stored = {s["__name__"] for s in prom.series('{__name__=~"(http|db|messaging|instrument)_.+"}')}
        stored -= {n for n in stored if n.endswith("_created")}  # prometheus_client extra; not on the OTLP path
        assert stored == set(catalog_series()), "exporter names differ from instrument._catalog.prometheus_name"
        empty = [(d, title, expr) for d, title, expr in panel_queries(SERVICE) if not prom.query(expr)]
        assert empty == [], "panels without data"
        nan = [(d, title) for d, title, expr in panel_queries(SERVICE)
               if all(math.isnan(value(s)) for s in prom.query(expr))]
        assert nan == [], "panels showing only NaN"
        for dashboard, var, expr, label in variable_queries(SERVICE):
            values = prom.label_values(label) if expr is None else \
                {s.get(label) for s in prom.series(expr)} - {None}
            assert values, f"{dashboard} ${var} has no values"
        # The failures recorded above show up as such.
        overview = {title: expr for d, title, expr in panel_queries(SERVICE) if d == "instrument-overview.json"}
        assert 0.4 < first(prom, overview["Error ratio"]) < 0.6  # one failure per success
        assert first(prom, overview["Open circuit breakers"]) == 1
        resilience = {title: expr for d, title, expr in panel_queries(SERVICE) if d == "instrument-resilience.json"}
        assert first(prom, resilience["Breaker state"]) == 2  # open


# ---- 2. the toolkit itself, making real calls -----------------------------------------------------

TOOLKIT_SERVICE = "toolkit-e2e"
APP = textwrap.dedent('''
    import http.server, os, sys, threading, time
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import start_http_server

    # The app installs its own MeterProvider before init(); instrument.init() uses it.
    reader = PrometheusMetricReader(resource_attribute_filter=lambda key: key == "service.name")
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader],
                                             resource=Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"]})))
    start_http_server(int(os.environ["E2E_METRICS_PORT"]), addr="127.0.0.1")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = 500 if self.path.startswith("/fail") else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *args):
            pass

    servers = {}
    for name in ("ok", "flaky"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["E2E_%s_PORT" % name.upper()])), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server

    import instrument
    instrument.init()
    import pika, psycopg, psycopg_pool, redis, requests

    ok, flaky = (f"http://127.0.0.1:{s.server_address[1]}" for s in (servers["ok"], servers["flaky"]))
    cache = redis.Redis(host="127.0.0.1", port=6379)
    pool = psycopg_pool.ConnectionPool(os.environ["E2E_PG_DSN"], min_size=1, max_size=2, open=True)
    mq = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    channel = mq.channel()
    channel.queue_declare("instrument-e2e", auto_delete=True)

    def attempt(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # injected faults, open breakers: exactly what the panels must show
            return exc

    print("ready", flush=True)
    deadline = time.monotonic() + float(os.environ["E2E_SECONDS"])
    while time.monotonic() < deadline:
        attempt(requests.get, ok + "/ok", timeout=2)
        attempt(requests.get, ok + "/fail", timeout=2)
        attempt(requests.get, flaky + "/flaky", timeout=2)
        attempt(cache.set, "instrument-e2e", "1")
        attempt(cache.get, "instrument-e2e")
        with pool.connection() as conn:
            attempt(conn.execute, "SELECT 1")
        attempt(channel.basic_publish, "", "instrument-e2e", b"hello")
        method, _props, _body = channel.basic_get("instrument-e2e")
        if method is not None:
            channel.basic_ack(method.delivery_tag)
        time.sleep(0.05)
    mq.close()
    pool.close()
    instrument.shutdown()
''')


def _pg_dsn() -> str | None:
    try:
        import psycopg
    except ImportError:
        return None
    for user in ("postgres", "root"):
        dsn = f"host=127.0.0.1 port=5432 dbname=test user={user} connect_timeout=2"
        try:
            psycopg.connect(dsn).close()
            return dsn
        except psycopg.Error:
            continue
    return None


def _toolkit_missing() -> list[str]:
    import importlib.util

    missing = []
    try:
        import instrument

        if not callable(getattr(instrument, "init", None)):
            missing.append("instrument.init")
    except ImportError:
        missing.append("instrument")
    for name in ("requests", "redis", "psycopg", "pika"):
        try:
            found = importlib.util.find_spec(f"instrument.integrations.{name}") is not None
        except ImportError:
            found = False
        if not found:
            missing.append(f"instrument.integrations.{name}")
    return missing


def test_toolkit_app_fills_the_panels(prometheus: Any, tmp_path: Path) -> None:
    missing = _toolkit_missing()
    if missing:
        pytest.skip("toolkit pieces not written yet: " + ", ".join(missing))
    for name, port in (("Redis", 6379), ("RabbitMQ", 5672), ("PostgreSQL", 5432)):
        if not port_open("127.0.0.1", port):
            unavailable(f"{name} is not running on 127.0.0.1:{port}")
    dsn = _pg_dsn()
    if dsn is None:
        unavailable("PostgreSQL on 127.0.0.1:5432 refuses db 'test' for users postgres and root")
    metrics_port, ok_port, flaky_port = free_port(), free_port(), free_port()
    flaky = f"http://127.0.0.1:{flaky_port}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OTEL_SERVICE_NAME": TOOLKIT_SERVICE,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "INSTRUMENT_LOG_LEVEL": "error",
        "INSTRUMENT_FAULTS_SEED": "7",
        # Half the calls to the flaky peer fail by injection: its error ratio and fault panels must show it.
        "INSTRUMENT_FAULTS": f"{flaky}: error 50%",
        # A breaker on the flaky peer that opens after a few failures and probes again soon.
        "INSTRUMENT_POLICIES": f"{flaky}=breaker(failure_rate=50%,window=6,min_calls=3,wait=1s),bulkhead(8)",
        "E2E_METRICS_PORT": str(metrics_port),
        "E2E_OK_PORT": str(ok_port),
        "E2E_FLAKY_PORT": str(flaky_port),
        "E2E_PG_DSN": dsn,
        "E2E_SECONDS": "25",
    }
    script = tmp_path / "app.py"
    script.write_text(APP, encoding="utf-8")
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        app = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        prom = prometheus(metrics_port, job=TOOLKIT_SERVICE)

        def alive() -> None:
            if app.poll() is not None:
                pytest.fail(f"app exited {app.returncode}: {log.read_text(errors='replace')[-3000:]}")

        sel = f'service_name="{TOOLKIT_SERVICE}"'
        for metric in ("http_client_request_duration_seconds_count", "db_client_operation_duration_seconds_count",
                       "messaging_client_operation_duration_seconds_count", "instrument_fault_injected_total"):
            alive()
            assert prom.wait(f"rate({metric}{{{sel}}}[{RATE_INTERVAL}]) > 0", timeout=25), \
                f"no {metric} from the toolkit; app log: {log.read_text(errors='replace')[-2000:]}"
        assert prom.wait(f"instrument_circuit_breaker_transitions_total{{{sel}}}", timeout=15), "breaker never moved"
        time.sleep(2)  # a couple more scrapes so every rate window holds two samples

        stored = {s["__name__"] for s in prom.series('{__name__=~"(http|db|messaging|instrument)_.+"}')}
        stored = {n for n in stored if not n.endswith("_created")}
        assert stored - set(catalog_series()) == set(), "the toolkit emits series that the catalog does not list"

        queries = panel_queries(TOOLKIT_SERVICE)
        produced = {n for n in stored}
        empty = []
        for dashboard, title, expr in queries:
            if prom.query(expr):
                continue
            used = {n for n in catalog_series() if n in expr}
            if used <= produced:  # the workload produced every metric the panel reads, yet no data
                empty.append((dashboard, title, expr))
        assert empty == [], "panels without data although their metrics exist"
        not_produced = sorted({m.name for n, (m, _) in catalog_series().items() if n not in produced})
        print("catalog metrics this workload did not produce:", not_produced)

        # One "Error ratio" panel per kind (HTTP, database, messaging): the injected HTTP failures show in one.
        ratio_panels = [expr for d, title, expr in queries
                        if d == "instrument-dependencies.json" and title == "Error ratio"]
        errors = {(i, s["metric"].get("server_address")): value(s) for i, expr in enumerate(ratio_panels)
                  for s in prom.query(expr) if "server_address" in s["metric"]}
        seen = sorted({(x.get("server_port"), x.get("error_type", ""))
                       for x in prom.series("http_client_request_duration_seconds_count")})
        assert any(v > 0 for v in errors.values()), f"error-ratio panel shows no failures: {errors}; series {seen}"
        resilience = {title: expr for d, title, expr in queries if d == "instrument-resilience.json"}
        assert any(value(s) > 0 for s in prom.query(resilience["Injected faults"])), "no injected faults shown"
        assert any(value(s) > 0 for s in prom.query(resilience["State transitions"])), "no breaker transitions shown"
        breaker = prom.query(f"max_over_time(({resilience['Breaker state']})[{RATE_INTERVAL}:1s])")
        assert any(value(s) > 0 for s in breaker), "breaker-state panel never left closed"
    finally:
        app.terminate()
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()
