"""What ``import instrument.auto`` adds to interpreter start-up, measured in fresh subprocesses.

Each run times the import itself inside a new interpreter (``perf_counter`` around the import, then
``os._exit`` so that exit-time flushing is not counted); ``python -c pass`` runs are interleaved to show
the interpreter's own start-up for scale. Two settings: exporters ``none`` and the default OTLP/gRPC.

Bytecode is cached as in an installed application (pip compiles at install time): the runs share a
private ``PYTHONPYCACHEPREFIX``, filled by one warm-up run, even where ``PYTHONDONTWRITEBYTECODE`` is set
(it is on some CI images, and would make every run compile the toolkit's sources: ~40 ms here).
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_PYCACHE = tempfile.mkdtemp(prefix="instrument-startup-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, True)
# The import timed by the clock the harness uses: CPU time of the new process (default; what the import
# costs, undisturbed by other processes on a shared machine) or elapsed time.
_SNIPPET = ("import time, os, sys; now = time.{clock}; t = now(); import instrument.auto; "
            "sys.stdout.write(repr(now() - t)); sys.stdout.flush(); os._exit(0)")
_CLOCKS = {"cpu": "process_time", "wall": "perf_counter"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "INSTRUMENT_")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE
    env.update(extra)
    return env


def measure(runs: int, clock: str = "cpu") -> dict[str, dict[str, float]]:
    snippet = _SNIPPET.format(clock=_CLOCKS[clock])
    configs = {
        "exporters none": _env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"),
        "OTLP/gRPC exporters (default)": _env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    bare: list[float] = []
    for env in configs.values():  # warm-up: fills the bytecode cache
        subprocess.run([sys.executable, "-c", snippet], check=True, env=env, capture_output=True, timeout=60)
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=_env())
        bare.append((time.perf_counter() - t) * 1000)
        for name, env in configs.items():
            out = subprocess.run([sys.executable, "-c", snippet], check=True, env=env, capture_output=True,
                                 text=True, timeout=60)
            samples[name].append(float(out.stdout.strip()) * 1000)
    result = {name: _stats(v) for name, v in samples.items()}
    result["python -c pass (whole process, elapsed, for scale)"] = _stats(bare)
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def top_imports(limit: int = 12) -> list[tuple[float, str]]:
    """The slowest cumulative imports under ``import instrument.auto`` (``-X importtime``), in ms."""
    measure(1)  # the bytecode cache
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import instrument.auto"], env=_env(
        OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"),
        capture_output=True, text=True, timeout=60)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cumulative) / 1000, name.rstrip()))
    rows.sort(reverse=True)
    return rows[:limit]
