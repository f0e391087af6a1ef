"""The terminal view: a rich live dashboard on a TTY, plain periodic lines without colour otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from instrument.demo._stats import Row, Stats

_STATE_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


class View:
    """Collects notable events and renders the stats; ``live`` picks the rich dashboard."""

    def __init__(self, stats: Stats, *, live: bool, out: TextIO | None = None, duration: float = 30.0) -> None:
        self.stats = stats
        self.out = out or sys.stdout
        self.live = live
        self.duration = duration
        self.console = Console(file=self.out) if live else Console(file=self.out, force_terminal=False,
                                                                    no_color=True, width=120)
        self.events: deque[str] = deque(maxlen=10)
        self.phase = "starting"
        self.started = time.monotonic()
        self.load: dict[str, int] = {}
        self._seen_transitions = 0
        self._lock = threading.Lock()
        self._live: Any = None

    # -- events -------------------------------------------------------------------------------------

    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:5.1f}s  {text}"
        with self._lock:
            self.events.append(line)
        if not self.live:
            self.out.write(line + "\n")
            self.out.flush()

    def poll_transitions(self) -> None:
        """Turn new breaker transitions (from the services' logs) into events."""
        transitions = self.stats.transitions[self._seen_transitions:]
        self._seen_transitions += len(transitions)
        for t in transitions:
            self.event(f"breaker {t.service} -> {self.stats.label(_origin(t.target))}: {t.previous} -> {t.state}")

    # -- rendering ----------------------------------------------------------------------------------

    def dependency_table(self, rows: list[Row], *, title: str = "Dependencies (last 5 s)") -> Table:
        table = Table(title=title, box=box.SIMPLE_HEAVY if self.live else box.ASCII, title_justify="left")
        for name, justify in (("caller", "left"), ("dependency", "left"), ("kind", "left"), ("rate/s", "right"),
                              ("errors", "right"), ("p95", "right"), ("calls", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            error_style = "red" if (row.error_ratio or 0) >= 0.05 else ""
            table.add_row(row.caller, row.target, row.kind, f"{row.rate:.1f}",
                          Text(_pct(row.error_ratio), style=error_style), _ms(row.p95), str(row.calls))
        return table

    def breaker_table(self) -> Table:
        table = Table(title="Circuit breakers", box=box.SIMPLE_HEAVY if self.live else box.ASCII, title_justify="left")
        table.add_column("caller")
        table.add_column("target")
        table.add_column("state")
        table.add_column("transitions", justify="right")
        table.add_column("rejected", justify="right")
        for (service, target), state in sorted(self.stats.breakers().items()):
            moves = self.stats.counter("instrument.circuit_breaker.transitions", service=service,
                                       instrument_policy_target=target)
            rejected = self.stats.counter("instrument.circuit_breaker.rejected", service=service,
                                          instrument_policy_target=target)
            table.add_row(service, self.stats.label(_origin(target)), Text(state, style=_STATE_STYLE.get(state, "")),
                          f"{moves:.0f}", f"{rejected:.0f}")
        return table

    def header(self) -> str:
        elapsed = time.monotonic() - self.started
        load = self.load
        faults = sum(self.stats.faults_by_service().values())
        limited = self.stats.counter("instrument.rate_limit.rejected")
        return (f"phase: {self.phase}   {elapsed:4.0f}s / {self.duration:.0f}s   "
                f"checkouts: {load.get('sent', 0)} sent, {load.get('accepted', 0)} accepted, "
                f"{load.get('limited', 0)} rate-limited (gateway counted {limited:.0f}), "
                f"{load.get('unavailable', 0)} unavailable   faults injected: {faults:.0f}")

    def renderable(self) -> Any:
        with self._lock:
            events = "\n".join(self.events) or "(nothing yet)"
        return Group(Text(self.header(), style="bold"), self.dependency_table(self.stats.rows()),
                     self.breaker_table(), Panel(events, title="events", title_align="left"))

    # -- driving ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self.renderable, console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def tick(self, n: int) -> None:
        """Called about once a second: sample metrics; without a TTY print a status block every 5 s."""
        self.stats.sample()
        self.poll_transitions()
        if not self.live and n % 5 == 0:
            self.out.write(self.header() + "\n")
            for row in self.stats.rows():
                self.out.write(f"    {row.caller:<12} -> {row.target:<32} {row.kind:<5} {row.rate:6.1f}/s  "
                               f"errors {_pct(row.error_ratio):>4}  p95 {_ms(row.p95):>8}\n")
            for (service, target), state in sorted(self.stats.breakers().items()):
                self.out.write(f"    breaker {service} -> {self.stats.label(_origin(target))}: {state}\n")
            self.out.flush()

    def summary(self, *, orders: dict[str, int], traces: dict[str, str], forwarded: str | None,
                jaeger: bool) -> None:
        console = Console(file=self.out) if self.live else self.console
        console.print()
        console.print(Text("Summary", style="bold"))
        console.print(self.dependency_table(self.stats.rows(window=1e9), title="Dependencies (whole run)"))
        console.print(self.breaker_table())
        lines = ["Breaker transitions:"]
        for t in self.stats.transitions:
            stamp = time.strftime("%H:%M:%S", time.localtime(t.at)) + f".{int(t.at * 10) % 10}"
            lines.append(f"  {stamp}  {t.service} -> {self.stats.label(_origin(t.target))}: {t.previous} -> {t.state}")
        if len(lines) == 1:
            lines.append("  (none)")
        faults = self.stats.faults_by_service()
        lines.append("Faults injected: " + (", ".join(f"{s} {n:.0f}" for s, n in sorted(faults.items())) or "none"))
        lines.append("Orders: " + ", ".join(f"{k} {v}" for k, v in orders.items()))
        lines.append("Traces to look up:")
        for what, trace_id in traces.items():
            hint = f"  http://localhost:16686/trace/{trace_id}" if jaeger else ""
            lines.append(f"  {what:<40} {trace_id}{hint}")
        if not traces:
            lines.append("  (none received)")
        lines.append(f"Telemetry: {forwarded}" if forwarded else
                     "Telemetry: shown here only; set OTEL_EXPORTER_OTLP_ENDPOINT or start the compose stack "
                     "(docker compose up -d) to see it in Jaeger and Grafana.")
        for line in lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def _origin(target: str) -> str:
    """``http://127.0.0.1:5123`` -> ``127.0.0.1:5123`` (the label key)."""
    return target.split("://", 1)[-1].rstrip("/")
