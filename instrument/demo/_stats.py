"""What the live view shows, computed from the OTLP the services export (the toolkit's own telemetry).

Per dependency (caller, target): call rate, error ratio and p95 over a sliding window, from the
cumulative ``*.duration`` histograms; breaker states from ``instrument.circuit_breaker.state``;
transitions from the ``circuit_breaker.state_change`` log records; injected faults from
``instrument.fault.injected``; trace ids from the spans.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from instrument.testing._receiver import _attrs, _value  # the same OTLP decoding as the test receiver

_HISTOGRAMS = {
    "http.client.request.duration": "http",
    "db.client.operation.duration": "db",
    "messaging.client.operation.duration": "queue",
    "messaging.process.duration": "queue",
}
_COUNTERS = ("instrument.fault.injected", "instrument.circuit_breaker.transitions",
             "instrument.circuit_breaker.rejected", "instrument.rate_limit.rejected")
WINDOW = 5.0  # seconds


@dataclass
class Row:
    caller: str
    target: str
    kind: str
    rate: float = 0.0
    error_ratio: float | None = None
    p95: float | None = None  # seconds
    calls: int = 0
    errors: int = 0


@dataclass
class Transition:
    at: float  # unix seconds
    service: str
    target: str
    previous: str
    state: str


@dataclass
class TraceInfo:
    services: set[str] = field(default_factory=set)
    error: bool = False
    breaker: bool = False
    fault: bool = False
    start: float = 0.0


def quantile(bounds: list[float], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram (linear inside the bucket, as Prometheus's histogram_quantile)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            low = bounds[i - 1] if i > 0 else 0.0
            high = bounds[i] if i < len(bounds) else (bounds[-1] if bounds else 0.0)
            return low + (high - low) * ((rank - seen) / count)
        seen += count
    return bounds[-1] if bounds else None


class Stats:
    """Thread-safe: the collector's threads ingest, the view reads."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = dict(names or {})  # "127.0.0.1:port" -> service name
        self._lock = threading.Lock()
        self._series: dict[tuple[Any, ...], tuple[int, int, list[int], list[float]]] = {}
        self._counters: dict[tuple[Any, ...], float] = {}
        self._breakers: dict[tuple[str, str], str] = {}
        self._history: deque[tuple[float, dict[tuple[str, str, str], tuple[int, int, list[int], list[float]]]]] = \
            deque(maxlen=120)
        self.transitions: list[Transition] = []
        self.traces: OrderedDict[str, TraceInfo] = OrderedDict()
        self.services_seen: set[str] = set()
        self.spans = 0
        self.metric_points = 0
        self.log_records = 0

    # -- naming -------------------------------------------------------------------------------------

    def label(self, target: str) -> str:
        """``127.0.0.1:5123`` -> ``billing``; anything else unchanged."""
        return self.names.get(target, target)

    def _dependency(self, kind: str, attrs: dict[str, Any]) -> str:
        if kind == "http":
            return self.label(f"{attrs.get('server.address', '?')}:{attrs.get('server.port', '?')}")
        if kind == "db":
            namespace = attrs.get("db.namespace")
            if isinstance(namespace, str) and "/" in namespace:  # SQLite names the file: keep its name
                namespace = namespace.rsplit("/", 1)[-1]
            system = str(attrs.get("db.system.name", "db"))
            return f"{system} {namespace}" if namespace else system
        system = str(attrs.get("messaging.system", "queue"))
        destination = attrs.get("messaging.destination.name")
        operation = attrs.get("messaging.operation.name")
        return " ".join(str(p) for p in (system, destination, operation) if p)

    # -- ingest -------------------------------------------------------------------------------------

    def ingest(self, signal: str, request: Any) -> None:
        if signal == "metrics":
            self._metrics(request)
        elif signal == "traces":
            self._traces(request)
        elif signal == "logs":
            self._logs(request)

    def _metrics(self, request: Any) -> None:
        with self._lock:
            for rm in request.resource_metrics:
                service = str(_attrs(rm.resource.attributes).get("service.name", "?"))
                self.services_seen.add(service)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self._metric(service, m)

    def _metric(self, service: str, m: Any) -> None:
        which = m.WhichOneof("data")
        if m.name in _HISTOGRAMS and which == "histogram":
            delta = m.histogram.aggregation_temporality == 1
            for p in m.histogram.data_points:
                self.metric_points += 1
                attrs = _attrs(p.attributes)
                key = (service, m.name, tuple(sorted(attrs.items())))
                counts = list(p.bucket_counts)
                errors = int(p.count) if "error.type" in attrs else 0
                if delta and key in self._series:
                    old = self._series[key]
                    counts = [a + b for a, b in zip(old[2], counts)] if len(old[2]) == len(counts) else counts
                    self._series[key] = (old[0] + int(p.count), old[1] + errors, counts, list(p.explicit_bounds))
                else:
                    self._series[key] = (int(p.count), errors, counts, list(p.explicit_bounds))
        elif m.name == "instrument.circuit_breaker.state" and which == "gauge":
            for p in m.gauge.data_points:
                self.metric_points += 1
                attrs = _attrs(p.attributes)
                value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                if value:
                    self._breakers[(service, str(attrs.get("instrument.policy.target", "?")))] = str(attrs.get("state"))
        elif m.name in _COUNTERS and which == "sum":
            delta = m.sum.aggregation_temporality == 1
            for p in m.sum.data_points:
                self.metric_points += 1
                attrs = _attrs(p.attributes)
                value = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
                key = (service, m.name, tuple(sorted(attrs.items())))
                self._counters[key] = self._counters.get(key, 0.0) + value if delta else value

    def _traces(self, request: Any) -> None:
        with self._lock:
            for rs in request.resource_spans:
                service = str(_attrs(rs.resource.attributes).get("service.name", "?"))
                self.services_seen.add(service)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans += 1
                        trace_id = s.trace_id.hex()
                        info = self.traces.get(trace_id)
                        if info is None:
                            info = self.traces[trace_id] = TraceInfo(start=s.start_time_unix_nano / 1e9)
                            while len(self.traces) > 20_000:
                                self.traces.popitem(last=False)
                        info.services.add(service)
                        info.start = min(info.start, s.start_time_unix_nano / 1e9)
                        if s.status.code == 2:
                            info.error = True
                        for event in s.events:
                            if event.name.startswith("circuit_breaker"):
                                info.breaker = True
                            elif event.name == "fault.injected":
                                info.fault = True

    def _logs(self, request: Any) -> None:
        with self._lock:
            for rl in request.resource_logs:
                service = str(_attrs(rl.resource.attributes).get("service.name", "?"))
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.log_records += 1
                        if _value(r.body) != "circuit_breaker.state_change":
                            continue
                        attrs = _attrs(r.attributes)
                        at = (r.time_unix_nano or r.observed_time_unix_nano) / 1e9 or time.time()
                        self.transitions.append(Transition(at, service, str(attrs.get("target", "?")),
                                                           str(attrs.get("previous_state", "?")),
                                                           str(attrs.get("state", "?"))))
                        self.transitions.sort(key=lambda t: t.at)

    # -- read ---------------------------------------------------------------------------------------

    def sample(self, now: float | None = None) -> None:
        """Take one snapshot of the cumulative totals per dependency (call about once a second)."""
        now = time.monotonic() if now is None else now
        rows: dict[tuple[str, str, str], tuple[int, int, list[int], list[float]]] = {}
        with self._lock:
            for (service, name, attrs), (count, errors, counts, bounds) in self._series.items():
                kind = _HISTOGRAMS[name]
                key = (service, self._dependency(kind if kind != "queue" else "messaging", dict(attrs)), kind)
                if name == "messaging.process.duration":
                    key = (service, key[1] + " process" if "process" not in key[1] else key[1], kind)
                found = rows.get(key)
                if found is None or len(found[2]) != len(counts):
                    rows[key] = (count, errors, list(counts), bounds)
                else:
                    rows[key] = (found[0] + count, found[1] + errors, [a + b for a, b in zip(found[2], counts)],
                                 bounds)
            self._history.append((now, rows))

    def rows(self, window: float = WINDOW) -> list[Row]:
        with self._lock:
            if not self._history:
                return []
            now, latest = self._history[-1]
            base: dict[Any, Any] = {}
            for t, snapshot in self._history:
                if now - t <= window + 0.01:
                    base = snapshot
                    span = max(now - t, 1e-9)
                    break
            else:  # pragma: no cover - the last snapshot is always inside the window
                span = 1.0
        out = []
        for (caller, target, kind), (count, errors, counts, bounds) in sorted(latest.items()):
            old = base.get((caller, target, kind))
            if old is not None and old is not latest.get((caller, target, kind)) and len(old[2]) == len(counts):
                d_count, d_err = count - old[0], errors - old[1]
                d_counts = [a - b for a, b in zip(counts, old[2])]
            elif span < 0.5:  # only one snapshot so far
                d_count, d_err, d_counts = 0, 0, [0] * len(counts)
            else:
                d_count, d_err, d_counts = count, errors, counts
            rate = d_count / span if span >= 0.5 else 0.0
            out.append(Row(caller, target, kind, rate, d_err / d_count if d_count else None,
                           quantile(bounds, d_counts, 0.95), count, errors))
        return out

    def breakers(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._breakers)

    def counter(self, name: str, **where: str) -> float:
        with self._lock:
            total = 0.0
            for (service, metric, attrs), value in self._counters.items():
                if metric != name:
                    continue
                found = dict(attrs)
                found["service"] = service
                if all(str(found.get(k.replace("_", "."), found.get(k))) == v for k, v in where.items()):
                    total += value
            return total

    def faults_by_service(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {}
            for (service, metric, _attrs_), value in self._counters.items():
                if metric == "instrument.fault.injected":
                    out[service] = out.get(service, 0.0) + value
            return out

    def trace_ids(self, chain: tuple[str, ...]) -> dict[str, str]:
        """A few trace ids worth opening: a healthy end-to-end one, one with a fault, one with a breaker event."""
        with self._lock:
            items = list(self.traces.items())
        picks: dict[str, str] = {}
        for trace_id, info in items:
            whole = all(s in info.services for s in chain)
            if whole and not info.error and "end-to-end (healthy)" not in picks:
                picks["end-to-end (healthy)"] = trace_id
            if info.fault and whole and "payment outage (fault injected)" not in picks:
                picks["payment outage (fault injected)"] = trace_id
            if info.breaker and "breaker event" not in picks:
                picks["breaker event"] = trace_id
            if info.error and whole and "payment failed (order kept as pending)" not in picks:
                picks["payment failed (order kept as pending)"] = trace_id
        return picks
