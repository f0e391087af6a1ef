"""Grafana dashboards: in sync with their generator, provisioned data sources, valid PromQL, catalog names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stacklib import (  # noqa: E402
    CONFIG, DASHBOARD_PROVIDERS, DASHBOARDS, DATASOURCES, catalog_series, check_promql, dashboards, iter_panels,
    iter_targets, load_yaml, parse_label_values, substitute, variables_used,
)

promql_parser = pytest.importorskip("promql_parser")

EXPECTED = {
    "instrument-overview.json": {"service"},
    "instrument-dependencies.json": {"service", "target"},
    "instrument-resilience.json": {"service", "target"},
    "instrument-pools.json": {"service", "pool"},
    "instrument-logs.json": {"service", "search"},
}
SAMPLE = {"service": "checkout", "target": ".*", "pool": ".*", "search": ""}
ALL = dashboards()


def _prom_targets() -> list[tuple[str, str, str]]:
    return [(name, panel["title"], target["expr"]) for name, d in ALL.items() for panel, target in iter_targets(d)
            if target["datasource"]["type"] == "prometheus"]


def test_generated_json_is_in_sync() -> None:
    script = CONFIG / "grafana" / "generate_dashboards.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_load_with_unique_uids() -> None:
    assert set(ALL) == set(EXPECTED)
    uids = [d["uid"] for d in ALL.values()]
    assert len(set(uids)) == len(uids)
    for name, d in ALL.items():
        assert d["uid"] == name.removesuffix(".json")
        assert d["title"] and d["panels"]
        ids = [p["id"] for p in iter_panels(d)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_variables() -> None:
    for name, d in ALL.items():
        defined = {v["name"] for v in d["templating"]["list"]}
        assert defined == EXPECTED[name]
        for panel, target in iter_targets(d):
            used = variables_used(target["expr"])
            assert used <= defined, f"{name} / {panel['title']}: undefined {used - defined}"


def test_provider_serves_the_dashboards_folder() -> None:
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARDS.is_dir()  # mounted there by docker-compose.yml (test_compose checks the mount)


def test_every_datasource_is_provisioned() -> None:
    provisioned = {d["uid"]: d["type"] for d in load_yaml(DATASOURCES)["datasources"]}
    for name, d in ALL.items():
        refs = [p["datasource"] for p in iter_panels(d) if p.get("datasource")]
        refs += [t["datasource"] for _, t in iter_targets(d)]
        refs += [v["datasource"] for v in d["templating"]["list"] if v.get("datasource")]
        assert refs, name
        for ref in refs:
            assert provisioned.get(ref["uid"]) == ref["type"], f"{name}: data source {ref} is not provisioned"


@pytest.mark.parametrize(("dashboard", "panel", "expr"), _prom_targets(),
                         ids=[f"{d}:{p}:{i}" for i, (d, p, _) in enumerate(_prom_targets())])
def test_promql_parses_and_uses_catalog_names(dashboard: str, panel: str, expr: str) -> None:
    concrete = substitute(expr, SAMPLE)
    promql_parser.parse(concrete)  # raises on a syntax error
    assert check_promql(concrete) == []


def test_variable_queries_use_catalog_names() -> None:
    for name, d in ALL.items():
        for var in d["templating"]["list"]:
            if var["type"] != "query":
                continue
            expr, label = parse_label_values(var["query"])
            assert var["definition"] == var["query"]
            if var["datasource"]["type"] == "prometheus" and expr is not None:
                concrete = substitute(expr, SAMPLE)
                promql_parser.parse(concrete)
                assert check_promql(concrete) == [], f"{name} ${var['name']}"
                assert label in {lbl for _, labels in catalog_series().values() for lbl in labels}
            else:
                assert label == "service_name"


def test_checker_rejects_unknown_names() -> None:
    problems = check_promql('sum by (server_addr) (rate(http_client_request_duration_count{error_type!=""}[1m]))')
    assert any("not in instrument/_catalog.py" in p for p in problems)
    assert any("server_addr" in p for p in problems)
    assert check_promql('rate(instrument_fault_injected_total{instrument_fault_kind="error"}[1m])') == []


def test_every_catalog_metric_has_a_panel() -> None:
    from instrument._catalog import METRICS, prometheus_name

    text = "\n".join(expr for _, _, expr in _prom_targets())
    missing = [m.name for m in METRICS if prometheus_name(m) not in text]
    assert missing == []


def test_failure_panels_show_zero_not_no_data() -> None:
    for name, d in ALL.items():
        for panel in iter_panels(d):
            if panel["type"] in ("row", "logs"):
                continue
            assert panel["fieldConfig"]["defaults"].get("noValue") == "0", f"{name} / {panel['title']}"
    for name, _panel, expr in _prom_targets():
        if "_total{" in expr and "rate(" in expr:
            assert "or on() vector(0)" in expr, f"{name}: counter panel without a 0 fallback: {expr}"


def test_latency_panels_show_exemplars() -> None:
    for _panel, target in (pt for d in ALL.values() for pt in iter_targets(d)):
        if "histogram_quantile" in target["expr"] and "wait_time" in target["expr"]:
            assert target["exemplar"] is True
    dependencies = ALL["instrument-dependencies.json"]
    assert any(t.get("exemplar") for _, t in iter_targets(dependencies))


def test_logs_dashboard_queries_the_selected_service() -> None:
    d = ALL["instrument-logs.json"]
    for _panel, target in iter_targets(d):
        assert target["datasource"]["uid"] == "loki"
        assert '{service_name="$service"}' in target["expr"]
    assert {p["type"] for p in iter_panels(d)} >= {"logs", "timeseries"}


def test_required_panels_exist() -> None:
    def titles(name: str) -> set[str]:
        return {p["title"] for p in iter_panels(ALL[name])}

    assert {"Request rate", "Error ratio", "p95 latency"} <= titles("instrument-overview.json")
    assert {"Call rate", "Error ratio", "Duration p50 / p95 / p99", "Messages sent / consumed"} <= \
        titles("instrument-dependencies.json")
    assert {"Breaker state", "State transitions", "Rejected by open breaker", "Retry decisions", "Timeouts",
            "Bulkhead rejections", "Rate-limit rejections", "Injected faults"} <= titles("instrument-resilience.json")
    assert {"Connections used / idle", "Pool limits", "Pending requests", "Wait time p95", "Checkout timeouts"} <= \
        titles("instrument-pools.json")


