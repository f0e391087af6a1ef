"""Instructions per call, counted by callgrind: ``python -m benchmarks.instructions [--only redis,psycopg]``.

The timing harness (``python -m benchmarks``) measures what a call costs on this machine, with this machine's
noise (its A/A column and 90% intervals). This counts what a call costs in CPU instructions, which does not
depend on what else the machine is doing: each variant runs in a fresh interpreter under
``valgrind --tool=callgrind``, twice, with N and 2N calls after the same warm-up, and the difference divided
by N is one call's instructions (start-up and warm-up cancel out). Repeatable to about 1%, so a change of a
few percent shows in one run. Instructions are not time: a cache miss, a syscall or a thread switch costs
more time than its instructions say, so time ratios run higher than these; use this to see where a change
helps, and the timing harness for what a call costs.

    python -m benchmarks.instructions                       # every operation (~20 min on 2 cores)
    python -m benchmarks.instructions --only redis,psycopg_pool --variants bare,ours,ours+bt,contrib
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = ("bare", "ours", "ours+bt", "ours sampled-out", "contrib")  # the default set
OTHER_VARIANTS = ("contrib sampled-out", "bare+record")
_COLLECTED = re.compile(r"Collected : (\d+)")
ROOT = Path(__file__).resolve().parents[1]


def _child(op: str, variant: str, calls: int) -> None:
    """Run ``calls`` calls of one variant after a warm-up (the process callgrind counts; the HTTP server is a
    subprocess, which callgrind does not follow)."""
    from benchmarks.ops._base import running

    with running(op, variant) as (_spec, call):
        for _ in range(200 + calls):
            call()


def _count(op: str, variant: str, calls: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
           "benchmarks.instructions", "--child", op, variant, str(calls)]
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{op} {variant}: callgrind failed: {out.stderr[-2000:]}")
    return int(found.group(1))


def per_call(op: str, variant: str, calls: int) -> float:
    """Instructions of one call: (I(2N) - I(N)) / N."""
    return (_count(op, variant, 2 * calls) - _count(op, variant, calls)) / calls


def main(argv: list[str] | None = None) -> int:
    from benchmarks.ops import ALL, load
    from benchmarks.ops._base import service_up

    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated operations: {','.join(ALL)}")
    p.add_argument("--calls", type=int, default=1000,
                   help="N: each variant runs N and 2N calls (below ~500, work done every few hundred calls, such "
                        "as a span batch's export, is not spread over the calls evenly and the figures drift)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from: " + ", ".join(VARIANTS + OTHER_VARIANTS))
    p.add_argument("--child", nargs=3, metavar=("OP", "VARIANT", "CALLS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(ALL)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = VARIANTS + OTHER_VARIANTS
    if "bare" not in chosen or any(v not in known for v in chosen) or any(k not in ALL for k in keys):
        p.error(f"operations from {','.join(ALL)}; variants from {', '.join(known)}, bare among them")
    ops = []
    for key in keys:
        spec = load(key)
        if service_up(spec.service):
            ops.append(spec)
        else:
            print(f"# {spec.title}: skipped, service {spec.service} is down", file=sys.stderr)
    others = [v for v in chosen if v != "bare"]
    header = ["operation", "bare k"] + [f"{v} Δk" for v in others]
    for ratio in ("ours", "ours+bt"):
        if ratio in others and "contrib" in others:
            header.append(f"{ratio}/contrib")
    # Fixed widths, so that each row prints as soon as its operation is counted: a run cut short keeps them
    widths = [max([len(header[0])] + [len(spec.title) for spec in ops])] + [max(len(h), 7) for h in header[1:]]
    print(f"instructions per call (k = 1,000), callgrind, N={args.calls}, python {sys.version.split()[0]}\n")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths), flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # each job is one valgrind process
        pending = [(spec, {v: pool.submit(per_call, spec.key, v, args.calls) for v in chosen}) for spec in ops]
        for spec, futures in pending:  # in operation order; later operations are counted meanwhile
            counts = {v: f.result() for v, f in futures.items()}
            bare = counts["bare"]
            delta = {v: counts[v] - bare for v in others}
            row = [spec.title, f"{bare / 1000:.1f}"] + [f"{delta[v] / 1000:.1f}" for v in others]
            for ratio in ("ours", "ours+bt"):
                if ratio in others and "contrib" in others:
                    row.append(f"{delta[ratio] / delta['contrib']:.2f}x" if delta["contrib"] > 0 else "n/a")
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
