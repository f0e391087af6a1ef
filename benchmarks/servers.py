"""A local keep-alive HTTP/1.1 server in a **subprocess** (so its CPU is not counted in the benchmark
process; on 2 cores the client and the server each get one), and a do-nothing OTLP/gRPC sink.

    python -m benchmarks.servers http   -> prints the port, serves until stdin closes
    python -m benchmarks.servers otlp   -> prints the port of a gRPC sink that accepts and drops everything
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
             b"Connection: keep-alive\r\n\r\nok")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            writer.write(_RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    except asyncio.CancelledError:
        pass  # the server is stopping with a client still connected (3.11's stream callback would print it)
    finally:
        writer.close()


async def _serve_http() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=128)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(done.set_result, None)),
                     daemon=True).start()
    async with server:
        await done


def _serve_otlp() -> None:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class T(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802
            return trace_service_pb2.ExportTraceServiceResponse()

    class M(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):  # noqa: N802
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class L(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request, context):  # noqa: N802
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(T(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(M(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(L(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


class Subprocess:
    """Start ``python -m benchmarks.servers KIND``; ``.port``; stopped by closing its stdin."""

    def __init__(self, kind: str) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.servers", kind], cwd=here,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip():
            self.proc.kill()
            raise RuntimeError(f"benchmarks.servers {kind} did not start")
        self.port = int(line)

    def stop(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(5)
        except Exception:  # noqa: BLE001
            self.proc.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["otlp"]:
        _serve_otlp()
    else:
        asyncio.run(_serve_http())
