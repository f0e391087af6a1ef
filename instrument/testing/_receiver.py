"""An OTLP receiver for tests: gRPC and HTTP/protobuf on free loopback ports, collecting what arrives.

    with OtlpReceiver() as rx:
        env = rx.env("grpc")            # OTEL_EXPORTER_OTLP_ENDPOINT etc. for a child process
        ...
        span = rx.wait_for_span(lambda s: s.name == "GET")

Telemetry is asserted as it crossed the wire: decoded from the same protobuf messages a Collector gets.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["LogRecord", "MetricPoint", "OtlpReceiver", "Span"]

_TEMPORALITY = {1: "delta", 2: "cumulative"}
_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(v, which)
    if which == "array_value":
        return [_value(x) for x in raw.values]
    if which == "kvlist_value":
        return _attrs(raw.values)
    return raw


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]
    resource: dict[str, Any]
    scope: str
    start_ns: int = 0
    end_ns: int = 0

    @property
    def is_error(self) -> bool:
        return self.status_code == 2


@dataclass
class MetricPoint:
    name: str
    unit: str
    kind: str  # "histogram", "sum", "gauge"
    attributes: dict[str, Any]
    value: float  # sum for sums/gauges' value; count for histograms
    resource: dict[str, Any]
    sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)
    monotonic: bool = False
    temporality: str = ""  # "cumulative" or "delta" (sums and histograms)
    exemplar_trace_ids: list[str] = field(default_factory=list)  # hex; "" for an exemplar without a trace


@dataclass
class LogRecord:
    body: Any
    severity_text: str
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    resource: dict[str, Any]


class OtlpReceiver:
    """Collects OTLP traces, metrics and logs over gRPC and HTTP/protobuf on loopback."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Message]] = []
        self._lock = threading.Lock()
        self._grpc: Any = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_port = 0
        self.http_port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        import grpc

        receiver = self

        class _Trace(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - generated name
                receiver._add("traces", request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                receiver._add("metrics", request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                receiver._add("logs", request)
                return logs_service_pb2.ExportLogsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Trace(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(), server)
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server

        kinds = {
            "/v1/traces": ("traces", trace_service_pb2.ExportTraceServiceRequest,
                           trace_service_pb2.ExportTraceServiceResponse),
            "/v1/metrics": ("metrics", metrics_service_pb2.ExportMetricsServiceRequest,
                            metrics_service_pb2.ExportMetricsServiceResponse),
            "/v1/logs": ("logs", logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
        }

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                found = kinds.get(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if found is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                signal, request_type, response_type = found
                request = request_type()
                request.ParseFromString(body)
                receiver._add(signal, request)
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="otlp-http-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _add(self, signal: str, request: Message) -> None:
        with self._lock:
            self.requests.append((signal, request))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- configuration for the code under test -----------------------------------------------

    def endpoint(self, protocol: str = "grpc") -> str:
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"http://127.0.0.1:{port}"

    def env(self, protocol: str = "grpc", *, interval_ms: int = 200) -> dict[str, str]:
        """Environment variables that send every signal here, exporting metrics every ``interval_ms``."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint(protocol),
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
        }

    # -- what arrived ------------------------------------------------------------------------

    def _of(self, signal: str) -> list[Any]:
        with self._lock:
            return [r for s, r in self.requests if s == signal]

    def spans(self) -> list[Span]:
        out = []
        for request in self._of("traces"):
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(Span(
                            name=s.name, kind=_KINDS.get(s.kind, str(s.kind)), trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                            attributes=_attrs(s.attributes), status_code=s.status.code,
                            status_message=s.status.message,
                            events=[(e.name, _attrs(e.attributes)) for e in s.events],
                            links=[(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                            resource=resource, scope=ss.scope.name, start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano))
        return out

    def metric_points(self, name: str | None = None) -> list[MetricPoint]:
        out = []
        for request in self._of("metrics"):
            for rm in request.resource_metrics:
                resource = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if name is not None and m.name != name:
                            continue
                        which = m.WhichOneof("data")
                        data = getattr(m, which)
                        temporality = _TEMPORALITY.get(getattr(data, "aggregation_temporality", 0), "")
                        for p in data.data_points:
                            attrs = _attrs(p.attributes)
                            if which == "histogram":
                                out.append(MetricPoint(m.name, m.unit, "histogram", attrs, float(p.count), resource,
                                                       sum=p.sum, bucket_counts=list(p.bucket_counts),
                                                       bounds=list(p.explicit_bounds), temporality=temporality,
                                                       exemplar_trace_ids=[e.trace_id.hex() for e in p.exemplars]))
                            elif which in ("sum", "gauge"):
                                value = p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)
                                out.append(MetricPoint(m.name, m.unit, which, attrs, value, resource,
                                                       monotonic=which == "sum" and data.is_monotonic,
                                                       temporality=temporality))
        return out

    def logs(self) -> list[LogRecord]:
        out = []
        for request in self._of("logs"):
            for rl in request.resource_logs:
                resource = _attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        out.append(LogRecord(_value(r.body), r.severity_text, _attrs(r.attributes),
                                             r.trace_id.hex(), r.span_id.hex(), resource))
        return out

    def wait_for(self, check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``check()`` until it returns something truthy; raise AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s; received: {self.summary()}")
            time.sleep(interval)

    def wait_for_span(self, predicate: Callable[[Span], bool], timeout: float = 10.0) -> Span:
        return self.wait_for(lambda: next((s for s in self.spans() if predicate(s)), None), timeout)

    def summary(self) -> str:
        spans = [f"{s.name}({s.kind})" for s in self.spans()]
        metrics = sorted({p.name for p in self.metric_points()})
        return f"spans={spans[:30]} metrics={metrics} logs={len(self.logs())}"


