"""A steady-load application for the collector-outage tests (run as a subprocess by test_outages.py).

Makes ``RATE`` requests per second to an in-process HTTP server for ``DURATION`` seconds through a
requests Session (instrumented: a span, metrics and, every 10th call, a log line each), records each
call's latency and the RSS, then calls ``instrument.shutdown()`` and prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import instrument

instrument.init()

import requests  # noqa: E402 - after init, as an application would
from opentelemetry import trace  # noqa: E402

from instrument import _export  # noqa: E402


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one response = headers + body in separate writes: no 40 ms stalls

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    duration = float(os.environ.get("DURATION", "8"))
    rate = float(os.environ.get("RATE", "200"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/work"
    session = requests.Session()
    log = logging.getLogger("app")
    latencies: list[float] = []
    failures = 0
    period = 1.0 / rate
    start = time.monotonic()
    rss_warm = None
    n = 0
    while (now := time.monotonic()) - start < duration:
        if rss_warm is None and now - start >= min(2.0, duration / 3):
            rss_warm = _rss()
        t0 = time.perf_counter()
        try:
            session.get(url, timeout=5).content  # noqa: B018
        except Exception:  # noqa: BLE001 - counted: the test asserts there are none
            failures += 1
        latencies.append(time.perf_counter() - t0)
        n += 1
        if n % 10 == 0:
            log.warning("tick %d", n)
        next_at = start + n * period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    rss_end = _rss()
    with trace.get_tracer("app").start_as_current_span("final"):
        pass
    t0 = time.monotonic()
    instrument.shutdown()
    shutdown_s = time.monotonic() - t0
    latencies.sort()
    result = {
        "calls": len(latencies), "failures": failures,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "rss_warm_mb": (rss_warm or rss_end) / 2**20, "rss_end_mb": rss_end / 2**20,
        "shutdown_s": shutdown_s,
        "dropped": {f"{s}/{r}": v for (s, r), v in _export.dropped().items()},
        "exit_at": time.time(),
    }
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
