"""``instrument demo``: a small storefront of real services, instrumented the one-line way, under load.

    gateway (ASGI, rate limited) -> orders (WSGI) -> database + order queue -> fulfillment (consumer)
                                                     fulfillment -> inventory, billing (HTTP)

Embedded by default (SQLite in a temporary file, kombu's filesystem transport for the queue); real
ones with ``--postgres DSN``, ``--rabbitmq URL`` or ``--redis URL``. After a few healthy seconds the
billing service suffers an outage made of the toolkit's own fault rules; the breaker on it (an
``INSTRUMENT_POLICIES`` rule in fulfillment's environment) opens, orders wait as "payment pending",
and the breaker closes again once billing recovers. The view shows the toolkit's own telemetry,
received over OTLP; with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (or the compose stack on localhost:4317)
everything is forwarded there too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from instrument.demo._load import Load
    from instrument.demo._runner import Services
    from instrument.demo._view import View

__all__ = ["OUTAGE_RULES", "Schedule", "main"]

# The payment provider's bad minutes: half the charges fail with 503, half of the rest take up to 1.5 s.
OUTAGE_RULES = "server:/charge: status 503 50%; server:/charge: latency 400ms-1500ms 50%"
CHAIN = ("gateway", "orders", "fulfillment", "billing")


class Schedule:
    """Healthy, then a payment outage, then recovery with a short flash sale (seconds from the start)."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.outage_start = max(2.0, 0.2 * duration)
        self.outage_end = self.outage_start + max(3.0, 0.35 * duration)
        self.sale_start = max(self.outage_end + 1.0, 0.75 * duration)
        self.sale_end = self.sale_start + max(1.5, 0.07 * duration)

    def phase(self, t: float) -> str:
        if t < self.outage_start:
            return "healthy"
        if t < self.outage_end:
            return "payment outage"
        if self.sale_start <= t < self.sale_end:
            return "flash sale"
        return "recovered"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instrument demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--rate", type=float, default=15.0, help="checkouts per second (default 15)")
    parser.add_argument("--postgres", metavar="DSN", help="use this PostgreSQL database instead of SQLite")
    queue = parser.add_mutually_exclusive_group()
    queue.add_argument("--rabbitmq", metavar="URL", help="use this RabbitMQ (amqp://...) for the order queue")
    queue.add_argument("--redis", metavar="URL", help="use this Redis (redis://...) for the order queue")
    parser.add_argument("--no-live", action="store_true", help="plain periodic lines instead of the live view")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code (0: it ran; 1: a service failed; 130: interrupted)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.duration <= 0 or args.rate <= 0:
        sys.stderr.write("instrument demo: --duration and --rate must be > 0\n")
        return 2
    from instrument.demo._collector import Collector, Forwarder, forward_target
    from instrument.demo._load import Load
    from instrument.demo._runner import SERVICES, Services, free_ports
    from instrument.demo._stats import Stats
    from instrument.demo._view import View

    live = sys.stdout.isatty() and not args.no_live
    folder = tempfile.mkdtemp(prefix="instrument-demo-")
    database = args.postgres or f"sqlite:///{os.path.join(folder, 'storefront.db')}"
    broker = args.rabbitmq or args.redis or f"filesystem://{os.path.join(folder, 'queue')}"
    stats = Stats()
    target = forward_target(os.environ)
    forwarder = Forwarder(*target) if target else None
    # The collector's port is chosen now, but it starts only after the services are forked: a process
    # with gRPC threads running should not fork (the services' first export comes a second later).
    port, *ports = free_ports(1 + len(SERVICES))
    collector = Collector([stats.ingest, *([forwarder] if forwarder else [])], port=port)
    services = Services(folder, collector=collector.endpoint, database=database, broker=broker, ports=ports)
    stats.names = services.names()
    schedule = Schedule(args.duration)
    view = View(stats, live=live, duration=args.duration)
    load = Load(services.url("gateway"), args.rate)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    orders: dict[str, int] = {}
    print(f"instrument demo: storefront on {'PostgreSQL' if args.postgres else 'SQLite'} and "
          f"{'RabbitMQ' if args.rabbitmq else 'Redis' if args.redis else 'an embedded file queue'}; "
          f"{args.duration:.0f}s of load at {args.rate:g} checkouts/s", flush=True)
    if target:
        print(f"instrument demo: forwarding all telemetry to {target[0]} ({target[1]})", flush=True)
    try:
        services.start(collector.start)
        print("instrument demo: services up: " + ", ".join(f"{n} :{p}" for n, p in services.ports.items()),
              flush=True)
        view.start()
        try:
            view.started = start = time.monotonic()
            load.start()
            phase = ""
            n = 0
            while (elapsed := time.monotonic() - start) < args.duration:
                now_phase = schedule.phase(elapsed)
                if now_phase != phase:
                    _enter(now_phase, phase, services, load, view, args.rate)
                    phase = view.phase = now_phase
                services.check()
                view.load = load.snapshot()
                view.tick(n)
                n += 1
                time.sleep(max(0.0, start + n - time.monotonic()))
            load.stop()
            view.load = load.snapshot()
            view.phase = "draining"
            time.sleep(1.5)  # pending payments go through; the services export once more
            orders = {**view.load, **{f"sampled {k}": v for k, v in load.order_statuses().items()}}
            view.tick(0)
        finally:
            view.stop()
    except KeyboardInterrupt:
        code = 130
        view.event("interrupted")
    except RuntimeError as exc:
        code = 1
        sys.stderr.write(f"instrument demo: {exc}\n")
    finally:
        load.stop()
        services.stop()
        time.sleep(0.3)
        collector.stop()
        if forwarder is not None:
            forwarder.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
    stats.sample()
    forwarded = None
    if forwarder is not None:
        forwarded = f"forwarded {forwarder.sent} OTLP requests to {forwarder.endpoint}"
        if forwarder.failed:
            forwarded += f" ({forwarder.failed} failed: {forwarder.last_error})"
    view.summary(orders=orders, traces=stats.trace_ids(CHAIN), forwarded=forwarded, jaeger=forwarder is not None)
    if code == 0:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        sys.stderr.write(f"instrument demo: service logs kept in {folder}\n")
    return code


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _enter(phase: str, before: str, services: Services, load: Load, view: View, rate: float) -> None:
    """What happens when the script moves from ``before`` to ``phase``."""
    if phase == "payment outage":
        status, _ = services.admin("PUT", "/admin/outage", {"rules": OUTAGE_RULES})
        view.event(f"billing outage begins (fault rules: {OUTAGE_RULES})" if status == 200
                   else f"could not start the billing outage (status {status})")
    elif before == "payment outage":
        status, body = services.admin("DELETE", "/admin/outage")
        injected = body.get("injected") if isinstance(body, dict) else "?"
        view.event(f"billing outage ends ({injected} faults injected); billing is healthy again")
    if phase == "flash sale":
        load.multiplier = 5.0
        view.event(f"flash sale: {rate * 5:g} checkouts/s against the gateway's rate limit")
    elif before == "flash sale":
        load.multiplier = 1.0
        view.event("flash sale over")
    if phase == "healthy":
        view.event("load begins; everything healthy")
