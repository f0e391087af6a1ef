"""Packaging: every package ships, one top-level import name, the public surface is what we say."""

from __future__ import annotations

import tomllib

import instrument
from tests.conftest import ROOT


def _declared() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def test_every_package_in_the_tree_is_declared():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "instrument").rglob("__init__.py")}
    found |= {"instrument.integrations" for _ in (ROOT / "integrations").glob("__init__.py")}
    assert found == _declared()


def test_integrations_install_under_the_one_top_level_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-dir"] == {"instrument.integrations": "integrations"}
    assert {p.split(".")[0] for p in _declared()} == {"instrument"}
    import instrument.integrations as integrations

    assert integrations.__name__ == "instrument.integrations"


def test_core_dependencies_are_only_the_five():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = sorted(d.split(">")[0].split("=")[0].split("!")[0].split("<")[0] for d in config["project"]["dependencies"])
    assert names == ["opentelemetry-api", "opentelemetry-exporter-otlp", "opentelemetry-sdk", "structlog", "wrapt"]
    assert any("!=2.2.0" in d for d in config["project"]["dependencies"] if d.startswith("wrapt"))


def test_public_surface():
    assert instrument.__all__ == sorted(instrument.__all__)
    assert set(instrument.__all__) == {
        "BulkheadFull", "CircuitOpen", "ConfigError", "DeadlineExceeded", "InjectedFault", "InstrumentError",
        "PoolExhausted", "RateLimited", "Rejected", "Settings", "__version__", "init", "is_initialized", "shutdown"}


def test_no_client_library_is_imported_by_the_toolkit():
    from tests.conftest import run_python

    code = ("import sys, instrument.auto\n"
            "libs = ['requests', 'urllib3', 'httpx', 'aiohttp', 'psycopg', 'psycopg2', 'asyncpg', 'sqlalchemy',\n"
            "        'pymysql', 'redis', 'pika', 'aio_pika', 'kombu', 'nats', 'paho', 'flask', 'django', 'starlette']\n"
            "print([m for m in libs if m in sys.modules])")
    result = run_python(code, env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                   "OTEL_LOGS_EXPORTER": "none"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_readme_metric_table_is_the_catalog():
    from instrument._catalog import METRICS, prometheus_name

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `") and "_" in line and "| histogram |" in line
            or line.startswith("| `") and any(f"| {k} |" in line for k in ("counter", "updowncounter", "gauge"))]
    listed = {row.split("`")[1] for row in rows}
    assert listed == {m.name for m in METRICS}
    for m in METRICS:
        assert f"`{prometheus_name(m)}`" in text
