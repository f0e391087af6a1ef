"""Shared test fixtures: real services on loopback, the OTLP receiver, subprocess runners.

A test that needs a service calls ``need("postgresql")`` (or uses the fixture of the same name). When
the service is down it skips with the reason, except under CI (INSTRUMENT_TEST_REQUIRE_SERVICES=1),
where a skipped real test would hide a defect: then it fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from instrument.testing import OtlpReceiver

ROOT = Path(__file__).resolve().parent.parent

SERVICES = {
    "postgresql": ("127.0.0.1", 5432),
    "mariadb": ("127.0.0.1", 3306),
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
    "mosquitto": ("127.0.0.1", 1883),
    "nats": ("127.0.0.1", 4222),
}

REQUIRE_SERVICES = os.environ.get("INSTRUMENT_TEST_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def service_up(name: str, timeout: float = 0.5) -> bool:
    host, port = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need(name: str) -> tuple[str, int]:
    """Skip (or, under CI, fail) unless the named service is reachable; returns (host, port)."""
    if not service_up(name):
        host, port = SERVICES[name]
        message = f"{name} is not reachable at {host}:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} and INSTRUMENT_TEST_REQUIRE_SERVICES=1: start it (see .ci/run)")
        pytest.skip(message)
    return SERVICES[name]


def _service_fixture(name: str):  # type: ignore[no-untyped-def]
    @pytest.fixture
    def fixture() -> tuple[str, int]:
        return need(name)

    fixture.__name__ = name
    return fixture


postgresql = _service_fixture("postgresql")
mariadb = _service_fixture("mariadb")
redis_service = _service_fixture("redis")
rabbitmq = _service_fixture("rabbitmq")
mosquitto = _service_fixture("mosquitto")
nats_service = _service_fixture("nats")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A fresh OTLP receiver (gRPC and HTTP) on free loopback ports."""
    with OtlpReceiver() as rx:
        yield rx


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 60.0,
               argv: list[str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (so the toolkit initialises from ``env``), capturing output.

    ``argv`` becomes ``sys.argv[1:]``. OTEL_* and INSTRUMENT_* variables of the test run are not inherited.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    full_env.update(env or {})
    command = [sys.executable, "-c", code, *(argv or [])]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tel():  # type: ignore[no-untyped-def]
    """In-memory spans/metrics/logs for an in-process test (``instrument.testing.capture``).

    Also subscribes the policy-event listener, so span events and instrument.* metrics show up.
    """
    from instrument import _policy_telemetry
    from instrument.testing import capture

    with capture() as captured:
        _policy_telemetry.install()
        yield captured


@pytest.fixture
def patched():  # type: ignore[no-untyped-def]
    """``patched("redis")`` patches one integration for the test and unpatches it afterwards."""
    from instrument import integrations

    done: list[str] = []

    def _patch(name: str) -> None:
        assert integrations.patch(name), f"could not patch {name}"
        done.append(name)

    yield _patch
    for name in done:
        integrations.unpatch(name)


@pytest.fixture
def settings_env():  # type: ignore[no-untyped-def]
    """``settings_env({"INSTRUMENT_POLICIES": "..."})`` makes those the active settings for the test."""
    from instrument import _context, _settings

    before = _settings.active()

    def _apply(env: dict[str, str]) -> _settings.Settings:
        settings = _settings.Settings.from_env(env)
        _settings.set_active(settings)
        _context.generation.bump()
        return settings

    yield _apply
    _settings.set_active(before)
    _settings._validate_subsystems(before)  # reinstalls the rules the test replaced
    _context.generation.bump()
