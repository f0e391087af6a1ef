"""``instrument demo`` end to end: the real command, its real child services, telemetry checked as it
crossed the wire (the demo forwards everything its services export to the test's OTLP receiver)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable

import pytest

from instrument.testing import OtlpReceiver
from tests.conftest import need

ANSI = re.compile(r"\x1b\[")
DURATION = "12"


def run_demo(receiver: OtlpReceiver, *args: str, timeout: float = 75.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(receiver.env("grpc"))
    return subprocess.run([sys.executable, "-m", "instrument.cli", "demo", "--duration", DURATION, *args],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def ports(stdout: str) -> dict[str, int]:
    line = next(ln for ln in stdout.splitlines() if "services up:" in ln)
    return {name: int(port) for name, port in re.findall(r"(\w+) :(\d+)", line)}


def service(item: object) -> str:
    return str(getattr(item, "resource", {}).get("service.name"))


def assert_storefront(result: subprocess.CompletedProcess[str], rx: OtlpReceiver, *, db_system: str,
                      messaging_system: str) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # CI logs: no colour, no cursor movement when stdout is not a terminal.
    assert not ANSI.search(result.stdout + result.stderr), result.stdout[:2000]
    assert "Summary" in result.stdout
    where = ports(result.stdout)

    # One trace crosses gateway -> orders -> queue -> fulfillment -> billing.
    spans = rx.spans()
    by_trace: dict[str, list[object]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)

    def crosses(trace: Iterable[object]) -> bool:
        kinds = {(service(s), s.kind) for s in trace}  # type: ignore[attr-defined]
        return {("gateway", "SERVER"), ("orders", "SERVER"), ("orders", "PRODUCER"), ("fulfillment", "CONSUMER"),
                ("billing", "SERVER")} <= kinds

    whole = [t for t, trace in by_trace.items() if crosses(trace)]
    assert whole, f"no trace crosses all services; {rx.summary()}"
    trace = by_trace[whole[0]]
    assert any(s.kind == "CLIENT" and service(s) == "fulfillment" and s.attributes.get("server.port") == where["billing"]
               for s in trace)  # type: ignore[attr-defined]

    # The breaker on billing opened during the outage and closed after it: span events and log records.
    events = [(service(s), attrs.get("instrument.circuit_breaker.state"))
              for s in spans for name, attrs in s.events if name == "circuit_breaker.state_change"]  # type: ignore[attr-defined]
    assert ("fulfillment", "open") in events, events
    assert ("fulfillment", "closed") in events, events
    changes = [r.attributes.get("state") for r in rx.logs()
               if r.body == "circuit_breaker.state_change" and service(r) == "fulfillment"]
    assert "open" in changes and "closed" in changes, changes
    assert changes.index("open") < len(changes) - 1 - changes[::-1].index("closed"), changes  # closed after open
    faults = [p for p in rx.metric_points("instrument.fault.injected") if service(p) == "billing"]
    assert faults and max(p.value for p in faults) > 0

    # RED metrics of every dependency.
    http = rx.metric_points("http.client.request.duration")
    for caller, callee in (("gateway", "orders"), ("fulfillment", "inventory"), ("fulfillment", "billing"),
                           ("fulfillment", "orders")):
        points = [p for p in http if service(p) == caller and p.attributes.get("server.port") == where[callee]]
        assert points and max(p.value for p in points) > 0, f"{caller} -> {callee}: {rx.summary()}"
    billing_errors = [p for p in http if service(p) == "fulfillment" and p.attributes.get("server.port") ==
                      where["billing"] and "error.type" in p.attributes]
    assert billing_errors, "no failed charge recorded"
    db = [p for p in rx.metric_points("db.client.operation.duration") if service(p) == "orders"]
    assert {p.attributes.get("db.system.name") for p in db} == {db_system}
    assert {p.attributes.get("db.operation.name") for p in db} >= {"INSERT", "SELECT", "UPDATE"}
    messaging = rx.metric_points("messaging.client.operation.duration")
    publish = [p for p in messaging if service(p) == "orders"]
    assert publish and {p.attributes.get("messaging.system") for p in publish} == {messaging_system}
    assert [p for p in messaging + rx.metric_points("messaging.process.duration") if service(p) == "fulfillment"]
    server = rx.metric_points("http.server.request.duration")
    assert {service(p) for p in server} >= {"gateway", "orders", "inventory", "billing"}

    # The summary names traces to look up, and they are real.
    listed = re.findall(r"\b([0-9a-f]{32})\b", result.stdout.split("Traces to look up:")[-1])
    assert listed and set(listed) <= set(by_trace), listed


@pytest.mark.timeout(120)
def test_demo_embedded(receiver: OtlpReceiver) -> None:
    result = run_demo(receiver, "--no-live")
    assert_storefront(result, receiver, db_system="sqlite", messaging_system="filesystem")


@pytest.mark.services
@pytest.mark.timeout(120)
def test_demo_postgres_rabbitmq(receiver: OtlpReceiver) -> None:
    need("postgresql")
    need("rabbitmq")
    result = run_demo(receiver, "--postgres", "postgresql://postgres@127.0.0.1:5432/test",
                      "--rabbitmq", "amqp://guest:guest@127.0.0.1:5672//")
    assert "PostgreSQL" in result.stdout and "RabbitMQ" in result.stdout
    assert_storefront(result, receiver, db_system="postgresql", messaging_system="rabbitmq")


def test_schedule_has_outage_then_recovery() -> None:
    from instrument.demo import Schedule

    for duration in (8.0, 12.0, 30.0, 120.0):
        s = Schedule(duration)
        phases = [s.phase(t / 10) for t in range(int(duration * 10))]
        assert phases[0] == "healthy"
        assert "payment outage" in phases and phases[-1] in ("recovered", "flash sale")
        assert phases.index("recovered") > phases.index("payment outage")


def test_quantile_from_buckets() -> None:
    from instrument.demo._stats import quantile

    assert quantile([0.1, 0.2], [0, 10, 0], 0.95) == pytest.approx(0.195)
    assert quantile([0.1, 0.2], [0, 0, 0], 0.95) is None


def _wait_for_ports(process: subprocess.Popen[str]) -> dict[str, int]:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "services up:" in line:
            return ports(line)
    raise AssertionError("demo ended before its services were up:\n" + "".join(seen))


def _service_processes(where: dict[str, int]) -> list[str]:
    """Command lines of running processes that are this demo's services (found by their ports)."""
    found = []
    wanted = {f"--port\0{port}\0" for port in where.values()}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if "instrument.demo.services" in cmdline and any(w in cmdline + "\0" for w in wanted):
            found.append(cmdline.replace("\0", " "))
    return found


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", ["SIGINT", "SIGKILL"])
def test_no_orphans(receiver: OtlpReceiver, signum: str) -> None:
    """Ctrl-C stops every service (exit 130); even a killed demo takes its services with it (Linux)."""
    import signal
    import time

    if signum == "SIGKILL" and not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(receiver.env("grpc"))
    process = subprocess.Popen([sys.executable, "-m", "instrument.cli", "demo", "--duration", "60", "--no-live"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        where = _wait_for_ports(process)
        assert all(_listening(port) for name, port in where.items() if name != "fulfillment")
        if os.path.isdir("/proc"):
            assert len(_service_processes(where)) == 5, _service_processes(where)
        time.sleep(1.0)
        process.send_signal(getattr(signal, signum))
        code = process.wait(30)
        assert code == (130 if signum == "SIGINT" else -signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (_service_processes(where) or any(_listening(p) for p in where.values())) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _service_processes(where), _service_processes(where)
        assert not any(_listening(port) for port in where.values()), where
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.timeout(60)
def test_a_stopped_worker_leaves_within_its_grace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM reaches the fulfillment worker while its order waits on services that do not answer (a listening
    socket that never accepts): it stops within STOP_GRACE, not after its requests' timeouts."""
    import signal
    import socket
    import time

    from instrument.demo.services._queue import EXCHANGE, ORDERS, connect
    from instrument.demo.services.fulfillment import STOP_GRACE

    broker = f"filesystem://{tmp_path}"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with connect(broker) as conn:
            conn.Producer(serializer="json").publish({"order_id": "o-1", "sku": "mug", "qty": 1}, exchange=EXCHANGE,
                                                     routing_key="order.placed", declare=[ORDERS])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
        worker = subprocess.Popen([sys.executable, "-m", "instrument.demo.services.fulfillment", "--broker", broker,
                                   "--inventory", url, "--billing", url, "--orders", url], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            silent.settimeout(30)
            deadline = time.monotonic() + 30  # the worker's reserve request is queued on the silent socket
            while time.monotonic() < deadline and not _queued(silent):
                time.sleep(0.05)
            assert worker.poll() is None and _queued(silent)
            stopped = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(STOP_GRACE + 10)
            took = time.monotonic() - stopped
        finally:
            worker.kill()
    assert code == 128 + signal.SIGTERM and took < STOP_GRACE + 2, (code, took)


def _queued(listener) -> bool:  # type: ignore[no-untyped-def]
    """A connection waits in the listener's backlog (ss: Recv-Q of a listening socket)."""
    port = listener.getsockname()[1]
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(int(r[1].split(":")[1], 16) == port and r[3] == "0A" and int(r[4].split(":")[1], 16) > 0 for r in rows)
