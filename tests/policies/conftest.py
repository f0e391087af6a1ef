"""Fixtures for the policy tests: a fake clock, captured events, a silent loopback server, and PRIVATE
Redis and PostgreSQL servers that the real-fault tests may stop and restart (the machine's shared ones
are never touched)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instrument import events
from instrument.policies import configure

REQUIRE_SERVICES = os.environ.get("INSTRUMENT_TEST_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip, or fail under INSTRUMENT_TEST_REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and INSTRUMENT_TEST_REQUIRE_SERVICES=1")
    pytest.skip(reason)


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def captured() -> Iterator[list[events.PolicyEvent]]:
    """Every PolicyEvent emitted during the test."""
    got: list[events.PolicyEvent] = []
    events.subscribe(got.append)
    try:
        yield got
    finally:
        events.unsubscribe(got.append)


@pytest.fixture(autouse=True)
def _no_rules() -> Iterator[None]:
    yield
    configure("")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A loopback TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        thread.join(1)
        for conn in held:
            conn.close()
        server.close()


def _wait_port(port: int, up: bool, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class PrivateRedis:
    """A redis-server of our own on a free port: stop() and start() it at will."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.binary
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not _wait_port(self.port, up=True):
            raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        _wait_port(self.port, up=False, timeout=5)


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    pytest.importorskip("redis")
    server = PrivateRedis()
    if not server.binary:
        missing("redis-server is not installed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pg_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "pg_ctl").exists() and (root / "initdb").exists():
            return root
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb in a temp dir, run as user postgres when we are root)."""

    def __init__(self, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.sock = base / "sock"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        if self.user:
            import shlex

            subprocess.run(["su", self.user, "-c", " ".join(shlex.quote(c) for c in cmd)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        else:
            subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.user:
            shutil.chown(self.base, self.user)
            shutil.chown(self.sock, self.user)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "30",
                  "-l", str(self.base / "log"), "start")
        if not _wait_port(self.port, up=True):
            raise RuntimeError("private PostgreSQL did not start")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                      timeout=30)
        except subprocess.CalledProcessError:
            pass  # already stopped
        _wait_port(self.port, up=False, timeout=5)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=2"


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    pytest.importorskip("psycopg")
    bindir = _pg_bin()
    if bindir is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    base = Path(f"/tmp/instrument-policies-pg-{os.getpid()}")
    server = PrivatePostgres(bindir, base)  # type: ignore[arg-type]
    try:
        server.init()
        server.start()
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        missing(f"could not start a private PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def call_state(kind: str = "http", *, target: str = "http://svc:80", idempotent: bool = True,
               status_of: Any = None, errors: Any = None, method: str = "GET") -> Any:
    """A real CallState for a fake endpoint, to run policies as the core would (set it in _context.current)."""
    from opentelemetry.trace import INVALID_SPAN

    from instrument._call import DEFAULT_ERRORS, CallState, Endpoint

    ep = Endpoint(kind, kind, target, errors=errors or DEFAULT_ERRORS, status_of=status_of)  # uncached
    return CallState(ep.op(method, idempotent=idempotent), INVALID_SPAN, 0.0)
