"""The benchmark harness runs end to end in its quick mode and prints every table with all its columns.

No timing assertions: the numbers of a quick run on a shared machine mean nothing; this only proves
that ``python -m benchmarks`` works (the operation, the policies, the floor, start-up and memory).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_prints_every_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "requests"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    header = next(line for line in text.splitlines() if line.startswith("operation"))
    for column in ("bare µs", "A/A Δ", "ours Δ", "ours+bt Δ", "contrib Δ", "ours/contrib", "ours+bt/contrib",
                   "sampled-out Δ", "check"):
        assert column in header
    assert any(line.startswith("requests GET") for line in text.splitlines()), text
    for title in ("SDK floor", "Policy success path", "import instrument.auto", "Memory", "Targets"):
        assert title in text, text
    for row in ("CircuitBreaker", "full stack", "pybreaker", "circuitbreaker", "tenacity", "Endpoint.call sampled-out"):
        assert row in text, text


def test_markdown_mode() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--markdown", "--only", "requests",
                          "--skip", "policies,floor,startup,memory"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| operation | bare µs | A/A Δ |" in out.stdout
