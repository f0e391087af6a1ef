"""Shared fixtures for the fault tests: services, a local HTTP server, captured policy events."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

import pytest

from instrument import _chain, events
from instrument.faults import _registry

# The plugin's fixtures, when the toolkit is not installed with its pytest11 entry point yet.
if not any(ep.name == "instrument" for ep in metadata.entry_points(group="pytest11")):
    from instrument.pytest_plugin import _instrument_faults_marker, faults, telemetry  # noqa: F401

REQUIRE = os.environ.get("INSTRUMENT_TEST_REQUIRE_SERVICES") == "1"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults(*rules, seed=None): inject instrument fault rules during the test")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need_service(name: str, port: int) -> None:
    """Skip (or fail with INSTRUMENT_TEST_REQUIRE_SERVICES=1) when a local service is not listening."""
    if not port_open("127.0.0.1", port):
        reason = f"{name} is not listening on 127.0.0.1:{port}"
        if REQUIRE:
            pytest.fail(reason + " (INSTRUMENT_TEST_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


@pytest.fixture
def need() -> Any:
    """``need("PostgreSQL", 5432)``: skip, or fail under INSTRUMENT_TEST_REQUIRE_SERVICES=1, when it is down."""
    return need_service


@pytest.fixture(autouse=True)
def _clean_rules() -> Iterator[None]:
    """No test leaks fault rules into the next one."""
    yield
    _registry.install_env((), None)
    _registry.header_enabled[0] = False
    while _registry._scopes:  # noqa: SLF001 - test cleanup
        _registry.pop(_registry._scopes[-1])  # noqa: SLF001


@pytest.fixture(autouse=True)
def _faults_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until instrument.policies lands, build chains from faults alone (the injector is itself a chain)."""
    try:
        from instrument.policies import Pipeline, policies_for  # noqa: F401
    except ImportError:
        from instrument.faults import faults_for

        monkeypatch.setattr(_chain, "build_chain", faults_for)


@pytest.fixture
def policy_events() -> Iterator[list[Any]]:
    seen: list[Any] = []
    events.subscribe(seen.append)
    yield seen
    events.unsubscribe(seen.append)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: Any = self.server
        server.hits += 1
        if server.delay:
            time.sleep(server.delay)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[Any]:
    """A local HTTP server: ``.url``, ``.hits`` (requests served), ``.delay`` (seconds before answering)."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.hits = 0
    server.delay = 0.0
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
