"""Collector outages under steady load: endpoint down, hanging (blackhole) and flapping.

The application's own calls must neither fail nor stall because of telemetry, memory stays bounded
(queues drop, and the drops are counted), export resumes when the collector returns, and shutdown
takes at most INSTRUMENT_SHUTDOWN_TIMEOUT. Each scenario runs ~8 s in CI (all at once, against a
baseline with exporters off); INSTRUMENT_TEST_SOAK=1 runs each for 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from instrument.testing._proxy import FaultProxy
from tests.conftest import ROOT, free_port
from tests.hardening.conftest import SOAK

APP = Path(__file__).with_name("_outage_app.py")
DURATION = 60.0 if SOAK else 8.0
SHUTDOWN_TIMEOUT = 2.0
# Memory growth allowed between warm-up and the end of the run. The queues are bounded (512 spans and
# log records here), so growth is flat after warm-up; the allowance covers allocator noise.
RSS_GROWTH_MB = 40.0 if SOAK else 25.0


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    full.update({"DURATION": str(DURATION), "RATE": "100", "OTEL_SERVICE_NAME": "outage",
                 "INSTRUMENT_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), "OTEL_BSP_MAX_QUEUE_SIZE": "512",
                 "OTEL_BLRP_MAX_QUEUE_SIZE": "512", "OTEL_BSP_SCHEDULE_DELAY": "200",
                 "OTEL_METRIC_EXPORT_INTERVAL": "1000", "INSTRUMENT_LOG_LEVEL": "warning",
                 "PYTHONPATH": str(ROOT)})
    full.update(env)
    return subprocess.Popen([sys.executable, str(APP)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=DURATION + 60)
    ended = time.time()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, err[-3000:]
    result = json.loads(lines[-1])
    result["exit_s"] = ended - result["exit_at"]
    result["stderr"] = err
    return result


def _otlp(endpoint: str, protocol: str = "grpc") -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}


@pytest.mark.timeout(DURATION + 120)
def test_collector_down_hanging_and_flapping(receiver):
    closed_port = free_port()  # nothing listens here
    with FaultProxy("127.0.0.1", receiver.grpc_port) as hanging, \
            FaultProxy("127.0.0.1", receiver.grpc_port) as flapping:
        hanging.blackhole()
        procs = {
            "baseline": _start({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                                "OTEL_LOGS_EXPORTER": "none"}),
            "down": _start(_otlp(f"http://127.0.0.1:{closed_port}")),
            "hanging": _start(_otlp(f"http://127.0.0.1:{hanging.port}")),
            "flapping": _start({**_otlp(f"http://127.0.0.1:{flapping.port}"), "OTEL_EXPORTER_OTLP_TIMEOUT": "2000"}),
        }
        stop = threading.Event()

        def flap() -> None:
            # Down and up every 1.5 s; up for good for the last stretch so that export resumes.
            up_for_good_at = time.monotonic() + DURATION - 3.0
            down = True
            while not stop.is_set() and time.monotonic() < up_for_good_at:
                flapping.reset_peer() if down else flapping.pass_through()
                down = not down
                stop.wait(1.5)
            flapping.pass_through()

        flapper = threading.Thread(target=flap, daemon=True)
        flapper.start()
        results: dict[str, dict] = {}
        errors: list[BaseException] = []

        def collect(name: str, proc: subprocess.Popen[str]) -> None:
            try:
                results[name] = _result(proc)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        # One collector per process, so that each exit time is measured when it happens.
        collectors = [threading.Thread(target=collect, args=item) for item in procs.items()]
        try:
            for thread in collectors:
                thread.start()
            for thread in collectors:
                thread.join(DURATION + 90)
            if errors:
                raise errors[0]
        finally:
            stop.set()
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
    base = results["baseline"]
    summary = {k: {f: round(v, 2) if isinstance(v, float) else v for f, v in r.items() if f != "stderr"}
               for k, r in results.items()}
    print(json.dumps(summary, indent=1))
    for name, r in results.items():
        # The application's calls never fail and never stall because of telemetry.
        assert r["failures"] == 0, (name, r["stderr"][-2000:])
        # Throughput: as many calls as the baseline made (2 CPUs are shared by 4 apps: a loose ratio).
        assert r["calls"] >= 0.5 * base["calls"], (name, summary)
        assert r["p99_ms"] < 5 * base["p99_ms"] + 2 + 3, (name, summary)  # +3 ms: span/metric work itself
        assert r["max_ms"] < 1000, (name, summary[name])  # no call waits on an export (timeouts are 2-10 s)
        # Memory stays bounded: growth after warm-up is small; the queues drop instead of growing.
        assert r["rss_end_mb"] - r["rss_warm_mb"] < RSS_GROWTH_MB, (name, summary[name])
        # Shutdown takes at most INSTRUMENT_SHUTDOWN_TIMEOUT, and the process then exits promptly.
        assert r["shutdown_s"] <= SHUTDOWN_TIMEOUT + 0.5, (name, summary[name])
        assert r["exit_s"] < 3.0, (name, summary[name])
        assert "Failed to detach context" not in r["stderr"]
    # Losses are counted, not hidden.
    assert results["down"]["dropped"].get("traces/export_failed", 0) > 0, summary["down"]
    hanging_lost = results["hanging"]["dropped"]
    assert hanging_lost.get("traces/queue_full", 0) + hanging_lost.get("traces/export_failed", 0) > 0, hanging_lost
    assert base["dropped"] == {}
    # Export resumed once the flapping collector stayed up: the last span of the run arrived.
    final = receiver.wait_for_span(lambda s: s.name == "final", timeout=10)
    assert final.resource["service.name"] == "outage"
    late = [s for s in receiver.spans() if s.kind == "CLIENT"]
    assert late, "no client spans arrived from the flapping run"
