"""Python opcodes per call, by file and function: ``python -m benchmarks.opcodes urllib3 [--variant V]``.

Callgrind (``python -m benchmarks.instructions``) counts a call's machine instructions, in minutes per
variant; this counts the Python opcodes each function runs during real calls of an operation, with
``sys.settrace`` (opcode events), in seconds, and shows where in *our* code they go, line by line with
``--lines``. It is deterministic for a given code path, which makes it the quickest way to see whether a
change removes work. Opcodes are not time (a C call is one opcode; a cache miss is none), but our code is
Python, so in real calls its time follows them closely: about 40-50 ns an opcode on a slow VM.
"""

from __future__ import annotations

import argparse
import collections
import linecache
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OURS = (str(ROOT / "instrument"), str(ROOT / "integrations"))


def count(op: str, variant: str, calls: int, lines: bool = False) -> tuple[float, collections.Counter[Any]]:
    """(opcodes per call in all, opcodes per call by (file, function) or, with ``lines``, ours by (file, line))."""
    from benchmarks.ops._base import running

    counts: collections.Counter[Any] = collections.Counter()
    total = [0]
    with running(op, variant) as (spec, call):
        if spec.is_async:
            raise SystemExit(f"{op}: async operations are not counted by this tool")
        for _ in range(300):  # warm: caches filled, specialised bytecode in place
            call()

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            code = frame.f_code
            filename = code.co_filename
            mine = filename.startswith(OURS)
            key = None if lines and not mine else (_short(filename), code.co_name)
            frame.f_trace_opcodes = True

            def local(frame: Any, event: str, arg: Any) -> Any:
                if event == "opcode":
                    total[0] += 1
                    if lines:
                        if mine:
                            counts[(filename, frame.f_lineno or 0)] += 1
                    else:
                        counts[key] += 1
                return local

            return local

        sys.settrace(tracer)
        try:
            for _ in range(calls):
                call()
        finally:
            sys.settrace(None)
    return total[0] / calls, collections.Counter({k: v / calls for k, v in counts.items()})


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.replace(f"{ROOT}/", "")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.ops import ALL

    p = argparse.ArgumentParser(prog="python -m benchmarks.opcodes", description=__doc__.split("\n")[0])
    p.add_argument("op", choices=ALL)
    p.add_argument("--variant", default="ours sampled-out",
                   help="bare, ours, ours+bt, ours sampled-out, contrib, contrib sampled-out")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--lines", action="store_true", help="our code line by line instead of by function")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    per_call, counts = count(args.op, args.variant, args.calls, args.lines)
    print(f"{args.op}, {args.variant}: {per_call:.0f} Python opcodes per call (mean of {args.calls} calls)\n")
    if args.lines:
        for (filename, line), n in sorted(counts.items()):
            print(f"{n:7.1f}  {_short(filename)}:{line}  {linecache.getline(filename, line).strip()[:100]}")
        return 0
    by_file: collections.Counter[str] = collections.Counter()
    for (filename, _), n in counts.items():
        by_file[filename] += n
    print("by file:")
    for filename, n in by_file.most_common(args.top):
        print(f"{n:7.1f}  {filename}")
    print("\nby function:")
    for (filename, name), n in counts.most_common(args.top):
        print(f"{n:7.1f}  {filename}:{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
