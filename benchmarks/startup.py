"""What ``import instrument.auto`` adds to interpreter start-up, measured in fresh subprocesses.

Each run times the import itself inside a new interpreter (``perf_counter`` around the import, then
``os._exit`` so that exit-time flushing is not counted); ``python -c pass`` runs are interleaved to show
the interpreter's own start-up for scale. Two settings: exporters ``none`` and the default OTLP/gRPC.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

_SNIPPET = ("import time, os, sys; t = time.perf_counter(); import instrument.auto; "
            "sys.stdout.write(repr(time.perf_counter() - t)); sys.stdout.flush(); os._exit(0)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    env.update(extra)
    return env


def measure(runs: int) -> dict[str, dict[str, float]]:
    configs = {
        "exporters none": _env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"),
        "OTLP/gRPC exporters (default)": _env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    bare: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=_env())
        bare.append((time.perf_counter() - t) * 1000)
        for name, env in configs.items():
            out = subprocess.run([sys.executable, "-c", _SNIPPET], check=True, env=env, capture_output=True,
                                 text=True, timeout=60)
            samples[name].append(float(out.stdout.strip()) * 1000)
    result = {name: _stats(v) for name, v in samples.items()}
    result["python -c pass (whole process, for scale)"] = _stats(bare)
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def top_imports(limit: int = 12) -> list[tuple[float, str]]:
    """The slowest cumulative imports under ``import instrument.auto`` (``-X importtime``), in ms."""
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
