"""Profile one operation under the toolkit: ``python -m benchmarks.profile requests [--sampled-out] [--contrib]``.

Runs the call N times under cProfile (after a warm-up) and prints the functions with the most own time,
then the cumulative view of the toolkit's frames: where the per-call overhead goes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

from benchmarks import _telemetry, servers
from benchmarks.ops import Ctx, load
from benchmarks.ops._base import variants


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("op")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--variant", default="ours", help="bare, ours, ours+bt, ours sampled-out, contrib")
    p.add_argument("--limit", type=int, default=35)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--filter", default="", help="regex on file names, e.g. 'instrument/|opentelemetry|wrapt'")
    args = p.parse_args()
    tel = _telemetry.install()
    spec = load(args.op)
    http = servers.Subprocess("http") if spec.needs_http else None
    ctx = Ctx(http_port=http.port if http else 0)
    v = next(v for v in variants(spec, ctx, tel) if v.name == args.variant)
    v.activate()
    try:
        fn = v.call_fn()
        for _ in range(300):
            fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            fn()
        prof.disable()
    finally:
        v.deactivate()
        for close in ctx.closers:
            close()
        if http:
            http.stop()
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats(args.sort)
    if args.filter:
        stats.print_stats(args.filter, args.limit)
    else:
        stats.print_stats(args.limit)


if __name__ == "__main__":
    main()
