"""The pipeline's pieces timed inside real calls: ``python -m benchmarks.insitu urllib3 [--variant V]``.

The timing harness gives a call's whole overhead; this splits it. The pipeline's start (span, context
injection, call state) and finish (status, duration record, log hook) are each timed with
``perf_counter_ns`` around them (the stamps cost about 0.05 µs each), over N calls of a real operation with
the harness's pause before each, as in the tables. The same pieces are then timed again with the
pipeline run once on a no-op just before each call (the rest of the call still in between) and in a warm
loop of no-op calls, to show how much of their time is the cold caches a client's own work leaves them:
our code runs once per call, after the client's hundreds of thousands of instructions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _telemetry, harness, servers
from benchmarks.ops import Ctx, load
from benchmarks.ops._base import service_up, variants


class _Stamps:
    """Endpoint._start and Endpoint._finish, timed (installed for the run, removed after)."""

    def __init__(self) -> None:
        from instrument._call import Endpoint

        self.cls = Endpoint
        self.real = (Endpoint._start, Endpoint._finish)
        self.times: dict[str, list[int]] = {"start": [], "finish": []}
        self.keep = True

    def install(self) -> None:
        start, finish = self.real
        now = time.perf_counter_ns
        times = self.times

        def timed_start(ep: Any, *args: Any) -> Any:
            t = now()
            state = start(ep, *args)
            if self.keep:
                times["start"].append(now() - t)
            return state

        def timed_finish(ep: Any, *args: Any) -> None:
            t = now()
            finish(ep, *args)
            if self.keep:
                times["finish"].append(now() - t)

        self.cls._start, self.cls._finish = timed_start, timed_finish  # type: ignore[method-assign]

    def remove(self) -> None:
        self.cls._start, self.cls._finish = self.real  # type: ignore[method-assign]

    def medians(self) -> dict[str, float]:
        out = {k: statistics.median(v) / 1000 for k, v in self.times.items() if v}
        for v in self.times.values():
            v.clear()
        return out


def _noop_call() -> Callable[[], Any]:
    """The pipeline around a no-op on the operation's own endpoint and op (the last one used)."""
    from instrument import _call

    ep = next(e for e in reversed(_call.endpoints()) if e._ops)  # noqa: SLF001 - the endpoint the calls used
    op = next(iter(ep._ops.values()))  # noqa: SLF001
    carrier: dict[str, str] = {}

    def call() -> None:
        carrier.clear()
        ep.call(op, _none, (), {}, carrier=carrier if ep.kind == "http" else None)

    return call


def _none() -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.insitu", description=__doc__.split("\n")[0])
    p.add_argument("op", help="an operation of python -m benchmarks (urllib3, requests, redis, psycopg ...)")
    p.add_argument("--variant", default="ours sampled-out", help="ours, ours+bt or ours sampled-out")
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args(argv)
    tel = _telemetry.install()
    spec = load(args.op)
    if not service_up(spec.service):
        print(f"{spec.title}: service {spec.service} is down")
        return 2
    http = servers.Subprocess("http") if spec.needs_http else None
    ctx = Ctx(http_port=http.port if http else 0)
    chosen = next(v for v in variants(spec, ctx, tel) if v.name == args.variant)
    stamps = _Stamps()
    try:
        chosen.activate()
        stamps.install()
        fn = chosen.call_fn()
        for _ in range(300):
            fn()
        stamps.medians()
        rows: list[tuple[str, dict[str, float]]] = []
        for _ in range(args.calls):
            harness._pause()  # noqa: SLF001 - the same pause as the tables
            fn()
        rows.append(("inside the call, as in the tables", stamps.medians()))
        noop = _noop_call()
        for _ in range(args.calls):
            harness._pause()  # noqa: SLF001
            stamps.keep = False
            noop()
            stamps.keep = True
            fn()
        rows.append(("the pipeline run once just before", stamps.medians()))
        for _ in range(args.calls):
            noop()
        rows.append(("a warm loop of no-op calls", stamps.medians()))
    finally:
        stamps.remove()
        chosen.deactivate()
        for close in ctx.closers:
            close()
        if http:
            http.stop()
    print(f"{spec.title}, {args.variant}: median µs of the pipeline's pieces over {args.calls} calls\n")
    print(f"{'where':36s}  {'start':>6s}  {'finish':>6s}")
    for name, m in rows:
        print(f"{name:36s}  {m.get('start', float('nan')):6.2f}  {m.get('finish', float('nan')):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
