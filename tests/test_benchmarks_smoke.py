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
                   "check"):
        assert column in header
    assert sum(line.startswith("requests GET") for line in text.splitlines()) == 2, text  # both tables
    sampled = next(line for line in text.splitlines() if line.startswith("operation") and "bare+record" in line)
    for column in ("ours Δ", "contrib Δ", "ours/contrib", "bare+record Δ", "ours − record"):
        assert column in sampled
    for title in ("Sampled out", "SDK floor", "Policy success path", "import instrument.auto", "Memory", "Targets"):
        assert title in text, text
    assert "sampled-out requests GET" in text and "one SDK record in this call" in text, text
    # start-up is timed as an application installs the toolkit, not through this checkout's editable install
    assert "the toolkit installed from its wheel in a fresh virtual environment" in text, text
    for row in ("CircuitBreaker", "full stack", "pybreaker", "circuitbreaker", "tenacity", "Endpoint.call sampled-out"):
        assert row in text, text


def test_markdown_mode() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--markdown", "--only", "requests",
                          "--skip", "policies,floor,startup,memory"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| operation | bare µs | A/A Δ |" in out.stdout


def test_every_operation_runs_with_the_spans_each_variant_should_make() -> None:
    """Each operation's variants make the spans they claim (bare 0, ours 1, contrib 1, both sampled-out 0),
    checked by the harness before and after its rounds; an operation whose service is down is listed as
    skipped, which fails here under INSTRUMENT_TEST_REQUIRE_SERVICES=1 (CI)."""
    from benchmarks.ops import ALL, load

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--markdown", "--skip",
                          "policies,floor,startup,memory"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    main_table = out.stdout.split("### Per-call overhead", 1)[1].split("###", 1)[0]  # its check column
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip()
            for line in main_table.splitlines() if line.startswith("| ") and not line.startswith("| operation")}
    require = os.environ.get("INSTRUMENT_TEST_REQUIRE_SERVICES") == "1"
    for key in ALL:
        title = load(key).title
        if title not in rows and not require and f"{title}: skipped, service" in out.stdout:
            continue  # a developer laptop without that service
        assert title in rows, out.stdout
        # contrib's pika instrumentation makes two spans per BlockingChannel publish (documented in the op)
        assert rows[title] in ("ok", "spans contrib=2"), (title, rows[title])


def test_instruction_counts_run_under_callgrind() -> None:
    """``python -m benchmarks.instructions`` runs each variant under valgrind and prints its table (the
    figures of so few calls mean nothing; this proves the mode works)."""
    import shutil

    import pytest

    from tests.conftest import need

    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    need("redis")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--only", "redis", "--calls", "100",
                          "--variants", "bare,ours,contrib"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("redis GET"))
    bare, ours, contrib, ratio = float(row[2]), float(row[3]), float(row[4]), row[5]
    # thousands per call: it counted. Ours is only checked to be a figure: with so few calls, whether the span
    # export thread and the collector ran in the N-call or the 2N-call run moves it by tens of thousands
    # (negative once, with 20 calls); contrib's ~280k and the bare call's ~160k stand well clear of that.
    assert bare > 50 and contrib > 50 and ours == ours and ratio.endswith("x")


def test_pipeline_pieces_are_timed_inside_real_calls() -> None:
    """``python -m benchmarks.insitu`` times the pipeline's start and finish inside real urllib3 requests, just
    after a no-op run of the pipeline and in a warm loop (no timing asserted: it proves the mode works)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks.insitu", "urllib3", "--calls", "50"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line[:36].strip(): line[36:].split() for line in out.stdout.splitlines()[3:] if line.strip()}
    assert set(rows) == {"inside the call, as in the tables", "the pipeline run once just before",
                         "a warm loop of no-op calls"}, out.stdout
    assert all(len(v) == 2 and all(float(x) > 0 for x in v) for v in rows.values()), out.stdout


def test_opcodes_are_counted_by_function() -> None:
    """``python -m benchmarks.opcodes`` counts the Python opcodes of real urllib3 requests by function: the
    pipeline's functions appear under the toolkit and not in the bare call, and the toolkit adds opcodes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}

    def run(variant: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-m", "benchmarks.opcodes", "urllib3", "--variant", variant,
                              "--calls", "5", "--top", "200"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return int(out.stdout.split(": ", 1)[1].split()[0]), out.stdout

    bare, bare_text = run("bare")
    ours, ours_text = run("ours sampled-out")
    assert "instrument/_call.py:call" in ours_text and "instrument/_call.py" not in bare_text, ours_text
    assert "urllib3/connectionpool.py:urlopen" in bare_text, bare_text
    assert ours > bare > 1000, (bare, ours)


def test_paired_statistics_and_the_sampled_out_verdict() -> None:
    """The sampled-out target is read against one record timed in the same rounds: per round, ours minus
    bare+record, its median within 10 µs, with a bootstrap interval; the ratio's interval shares the resampling."""
    from benchmarks.__main__ import sampled_out_verdict
    from benchmarks.harness import Result, Stats

    rounds = 9
    res = Result("op", {"bare": [100.0] * rounds, "bare+record": [110.0] * rounds,
                        "ours sampled-out": [112.0 + i for i in range(rounds)]})  # 2..10 µs beyond the record
    excess = res.difference("ours sampled-out", "bare+record")
    assert (excess.min, excess.median, excess.max) == (2.0, 6.0, 10.0)
    low, high = res.difference_interval("ours sampled-out", "bare+record")
    assert 2.0 <= low <= 6.0 <= high <= 10.0 and low < high
    assert res.ratio("ours sampled-out", "bare+record") == 1.6
    low, high = res.ratio_interval("ours sampled-out", "bare+record")
    assert 1.2 <= low <= 1.6 <= high <= 2.0
    assert Result("op", {"bare": [1.0] * 4, "x": [2.0] * 4}).difference_interval("x", "bare") is None  # too few

    def verdict(ours: float) -> str:
        summary = {"op": "requests GET", "named": "requests GET", "sampled_out": Stats(0, ours, 0), "record": Stats(0, 20.0, 0),
                   "excess": Stats(0, ours - 20.0, 0), "excess_interval": (ours - 21.0, ours - 19.0),
                   "contrib_sampled_out": Stats(0, 100.0, 0), "ratio_sampled_out": ours / 100.0}
        return sampled_out_verdict(summary, 7.8)

    assert verdict(29.9).startswith("MET  sampled-out requests GET: 29.9 µs = one SDK record in this call (20.0 µs) "
                                    "+9.9 µs"), verdict(29.9)
    assert verdict(30.1).startswith("MISS"), verdict(30.1)
    assert "against the record's loop figure: <= 17.8 µs" in verdict(29.9)
