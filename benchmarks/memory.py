"""Memory after many instrumented calls: RSS after N1 and after N2 calls, in a fresh subprocess.

The call is ``Endpoint.call`` (telemetry + breaker + timeout) around a function that does nothing: the
whole pipeline runs (span, histogram, policies) with no client library in the way. Spans go to a
BatchSpanProcessor that drops them (its queue is bounded at 2048), metrics to an in-memory reader.

    python -m benchmarks.memory 10000 1000000   -> prints a JSON line
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _main(n1: int, n2: int) -> dict[str, Any]:
    from benchmarks import _telemetry

    _telemetry.install()
    from instrument import _call, policies

    policies.configure("http://bench.invalid:*=timeout(2s),breaker")
    ep = _call.endpoint("http", "http", "http://bench.invalid:80", server_address="bench.invalid", server_port=80)
    op = ep.op("GET")
    call = ep.call
    args: tuple[Any, ...] = ()

    def fn() -> int:
        return 1

    for _ in range(1000):  # warm every cache and the span queue
        call(op, fn, args, {})
    done = 0
    out: dict[str, Any] = {}
    start = time.perf_counter()
    for target in (n1, n2):
        for _ in range(target - done):
            call(op, fn, args, {})
        done = target
        time.sleep(0.2)  # let the batch processor drain its queue
        gc.collect()
        out[str(target)] = round(_rss_mb(), 2)
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)
    return out


def measure(n1: int, n2: int) -> dict[str, Any]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INSTRUMENT_"))}
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", str(n1), str(n2)], cwd=here, env=env,
                         capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_main(int(sys.argv[1]), int(sys.argv[2]))))
    sys.stdout.flush()
    os._exit(0)
