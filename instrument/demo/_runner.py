"""Start the storefront's services as child processes under ``instrument run``, and stop them all.

Each child gets its own OTEL_SERVICE_NAME, exports to the demo's collector every second, and has its
policies (INSTRUMENT_POLICIES) in its environment: configuration, not code. Children run in their own
session (Ctrl-C reaches only the demo, which stops them in order) and, on Linux, die with the demo.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from instrument.demo._load import request

SERVICES = ("billing", "inventory", "orders", "fulfillment", "gateway")
HTTP_SERVICES = ("billing", "inventory", "orders", "gateway")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: each stays bound until all are chosen, so that none repeats
    (a port is released before its user binds it; two picks one after another may get the same one)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str
    log: IO[bytes] = field(repr=False)

    def tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""


class Services:
    """The five services; ``url(name)`` is each HTTP service's base URL."""

    def __init__(self, folder: str, *, collector: str, database: str, broker: str, ports: list[int]) -> None:
        self.folder = folder
        self.collector = collector
        self.database = database
        self.broker = broker
        self.ports = dict(zip(SERVICES, ports, strict=True))
        self.children: list[Child] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def names(self) -> dict[str, str]:
        """``127.0.0.1:port`` -> service name, for the view's labels."""
        return {f"127.0.0.1:{port}": name for name, port in self.ports.items() if name in HTTP_SERVICES}

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
        env.update({
            "OTEL_SERVICE_NAME": name,
            "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=storefront,deployment.environment.name=demo",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "INSTRUMENT_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.policies(name))
        return env

    def policies(self, name: str) -> Mapping[str, str]:
        """The resilience configuration of each service: environment variables, as in production."""
        if name == "fulfillment":
            # Payments: a breaker that opens when half of the last 10 charges fail, probes after 2 s;
            # inside it, a charge gets 800 ms (the card network's p99 is 30 ms).
            return {"INSTRUMENT_POLICIES": f"{self.url('billing')}=breaker(failure_rate=50%,window=10,min_calls=5,"
                                           "wait=2s,probes=2),timeout(800ms)"}
        if name == "gateway":
            return {"INSTRUMENT_POLICIES": f"{self.url('orders')}=timeout(3s)"}
        return {}

    def _argv(self, name: str) -> list[str]:
        args = ["--port", str(self.ports[name])]
        if name == "gateway":
            args += ["--orders", self.url("orders")]
        elif name == "orders":
            args += ["--database", self.database, "--broker", self.broker]
        elif name == "fulfillment":
            args += ["--broker", self.broker, "--inventory", self.url("inventory"), "--billing", self.url("billing"),
                     "--orders", self.url("orders")]
        return args

    def start(self, started: Callable[[], Any] | None = None, timeout: float = 30.0) -> None:
        """Start every service (``instrument run -- python -m ...``), call ``started()``, and wait until
        each service answers."""
        for name in SERVICES:
            log_path = os.path.join(self.folder, f"{name}.log")
            log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
            command = [sys.executable, "-m", "instrument.cli", "run", "--",
                       sys.executable, "-m", f"instrument.demo.services.{name}", *self._argv(name)]
            process = subprocess.Popen(command, env=self._env(name), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # noqa: PLW1509
            self.children.append(Child(name, self.ports[name], process, log_path, log))
        if started is not None:
            started()
        deadline = time.monotonic() + timeout
        waiting = set(HTTP_SERVICES)
        while waiting:
            self.check()
            for name in sorted(waiting):
                status, _ = request("GET", f"{self.url(name)}/health", timeout=1.0)
                if status == 200:
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"services did not start within {timeout:.0f}s: {', '.join(sorted(waiting))}")
            if waiting:
                time.sleep(0.1)

    def check(self) -> None:
        """Raise RuntimeError naming a service that exited, with the end of its log."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise RuntimeError(f"service {child.name} exited with code {code}; its log ends:\n{child.tail()}")

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM each service (they flush their telemetry on the way out), then SIGKILL stragglers."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(2.0)
            child.log.close()

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return request(method, f"{self.url('billing')}{path}", body, timeout=5.0)
