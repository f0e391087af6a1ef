"""The pytest plugin in a fresh project: only the toolkit installed, no conftest, run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FRESH_TEST = '''
import pytest
import requests

import instrument


@pytest.fixture(autouse=True)
def _started(telemetry):
    # the telemetry fixture first: init() then keeps its in-memory providers
    instrument.init(env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                         "OTEL_LOGS_EXPORTER": "none", "OTEL_SERVICE_NAME": "fresh"})


def test_payments_answers_503(faults, telemetry):
    scope = faults.add("http://payments.invalid:*: status 503 retry-after=1s")
    response = requests.get("http://payments.invalid:8080/charge")  # no network is touched
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert scope.injected == faults.injected == 1
    span = telemetry.span("GET", {"server.address": "payments.invalid", "http.response.status_code": 503})
    assert [e.name for e in span.events] == ["fault.injected"]
    assert telemetry.events("fault.injected", {"instrument.fault.kind": "status"})
    assert telemetry.metric_value("instrument.fault.injected", {"instrument.fault.kind": "status"}) == 1
    assert telemetry.log_events("fault.injected", kind="status")


@pytest.mark.faults("http://payments.invalid:*: error", seed=1)
def test_marker_raises_the_clients_own_error(telemetry):
    with pytest.raises(requests.ConnectionError) as info:
        requests.get("http://payments.invalid:8080/charge")
    assert isinstance(info.value, instrument.InjectedFault)
    assert telemetry.span("GET").attributes["error.type"] == "requests.exceptions.ConnectionError"


def test_isolated_between_tests(telemetry):
    assert telemetry.spans() == []
    assert telemetry.metric_value("instrument.fault.injected") == 0
    with pytest.raises(AssertionError, match="expected exactly one span 'GET'"):
        telemetry.span("GET")
'''

BROKEN_TEST = '''
import pytest


def test_broken_rule(faults):
    faults.add("http://payments:*: explode 30%")


@pytest.mark.faults("redis://*: timeout soon")
def test_broken_marker():
    pass
'''


def _run(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_fresh.py").write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTRUMENT_", "OTEL_", "PYTEST_"))}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fresh.py"]
    if not any(ep.name == "instrument" for ep in metadata.entry_points(group="pytest11")):
        env["PYTHONPATH"] = str(ROOT)  # before the toolkit is pip-installed with its entry point
        args[3:3] = ["-p", "instrument.pytest_plugin"]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_fresh_project_passes(tmp_path: Path) -> None:
    pytest.importorskip("requests")
    pytest.importorskip("instrument.integrations.requests")
    result = _run(tmp_path, FRESH_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_broken_rules_fail_with_a_clear_error(tmp_path: Path) -> None:
    result = _run(tmp_path, BROKEN_TEST)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "rule 1 'http://payments:*: explode 30%', token 'explode': unknown fault" in out
    assert "rule 1 'redis://*: timeout soon', token 'soon': unknown option for timeout" in out
    assert "ConfigError" in out
    assert "1 failed, 1 error" in out
