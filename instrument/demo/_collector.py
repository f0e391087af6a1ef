"""A tiny OTLP/gRPC collector inside ``instrument demo``: the services export here; the live view reads
what arrives and, when the user has a Collector (``OTEL_EXPORTER_OTLP_ENDPOINT``, or the compose stack
on localhost:4317), every request is forwarded to it unchanged.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

Sink = Callable[[str, Any], None]
_log = logging.getLogger("instrument.demo")


class Collector:
    """OTLP/gRPC on a free loopback port; every export request is handed to each sink."""

    def __init__(self, sinks: list[Sink], port: int = 0) -> None:
        self.sinks = sinks
        self.port = port
        self._server: Any = None

    def _add(self, signal: str, request: Any) -> None:
        for sink in self.sinks:
            try:
                sink(signal, request)
            except Exception:  # noqa: BLE001 - a view bug must not stop the services' exports
                _log.exception("demo: could not process %s", signal)

    def start(self) -> Collector:
        import grpc

        add = self._add

        class _Trace(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                add("traces", request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                add("metrics", request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                add("logs", request)
                return logs_service_pb2.ExportLogsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Trace(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1.0).wait(2.0)
            self._server = None


_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


class Forwarder:
    """Re-sends each received request to the user's Collector (gRPC or HTTP/protobuf), off the hot path."""

    def __init__(self, endpoint: str, protocol: str = "grpc", headers: dict[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.headers = dict(headers or {})
        self.sent = 0
        self.failed = 0
        self.last_error = ""
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._run, name="otlp-forwarder", daemon=True)
        self._stubs: dict[str, Any] = {}
        self._thread.start()

    def __call__(self, signal: str, request: Any) -> None:
        try:
            self._queue.put_nowait((signal, request))
        except queue.Full:
            self.failed += 1

    def _grpc_stubs(self) -> dict[str, Any]:
        if not self._stubs:
            import grpc

            parts = urlsplit(self.endpoint)
            target = f"{parts.hostname}:{parts.port or 4317}"
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials()) if parts.scheme == "https" \
                else grpc.insecure_channel(target)
            self._stubs = {
                "traces": trace_service_pb2_grpc.TraceServiceStub(channel).Export,
                "metrics": metrics_service_pb2_grpc.MetricsServiceStub(channel).Export,
                "logs": logs_service_pb2_grpc.LogsServiceStub(channel).Export,
            }
        return self._stubs

    def _send(self, signal: str, request: Any) -> None:
        if self.protocol == "grpc":
            metadata = tuple((k.lower(), v) for k, v in self.headers.items())
            self._grpc_stubs()[signal](request, timeout=5.0, metadata=metadata or None)
            return
        import urllib.request

        base = self.endpoint.rstrip("/")
        url = base if base.endswith(_PATHS[signal]) else base + _PATHS[signal]
        http = urllib.request.Request(url, data=request.SerializeToString(), method="POST",
                                      headers={"Content-Type": "application/x-protobuf", **self.headers})
        with urllib.request.urlopen(http, timeout=5.0) as response:
            response.read()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._send(*item)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - the user's collector being down is reported, not fatal
                self.failed += 1
                code, details = getattr(exc, "code", None), getattr(exc, "details", None)
                if callable(code) and callable(details):  # a grpc.RpcError: its status, not its repr
                    self.last_error = f"{getattr(code(), 'name', code())}: {details()}"[:200]
                else:
                    self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


def reachable(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def forward_target(env: dict[str, str] | Any) -> tuple[str, str, dict[str, str]] | None:
    """Where the user wants telemetry: ``(endpoint, protocol, headers)`` from the OTEL_ variables, else the
    compose stack's Collector if it listens on localhost:4317, else None."""
    from instrument._settings import Exporter, Settings

    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("OTEL_")})
        exp: Exporter = settings.traces
        if exp.endpoint:
            endpoint = exp.endpoint
            if exp.protocol != "grpc" and endpoint.endswith("/v1/traces"):
                endpoint = endpoint[: -len("/v1/traces")]
            return endpoint, exp.protocol, dict(exp.headers)
    if reachable("127.0.0.1", 4317):
        return "http://localhost:4317", "grpc", {}
    return None
