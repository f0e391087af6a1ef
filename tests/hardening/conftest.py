"""Shared helpers for the production-hardening tests: a local upstream HTTP server, subprocess apps."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SOAK = os.environ.get("INSTRUMENT_TEST_SOAK", "") in ("1", "true", "yes")


class Upstream(ThreadingHTTPServer):
    """Answers every request with a small JSON body; counts TCP connections it accepted."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.lock = threading.Lock()
        self.paths: dict[str, int] = {}

    def hits(self, path: str) -> int:
        with self.lock:
            return self.paths.get(path, 0)

    def get_request(self):  # type: ignore[no-untyped-def]
        with self.lock:
            self.connections += 1
        return super().get_request()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one response = headers + body in separate writes: no 40 ms stalls

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        path = self.path
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.paths[path] = self.server.paths.get(path, 0) + 1  # type: ignore[attr-defined]
        if path.startswith("/slow"):
            time.sleep(1.0)
        if path.startswith("/redirect/"):
            n = int(path.split("/")[2])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{n - 1}" if n > 1 else "/final")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/cookie"):
            self.send_response(200)
            self.send_header("Set-Cookie", "session=abc; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                chunk = f"chunk-{i}\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        payload = json.dumps({"path": path, "method": self.command, "headers": headers,
                              "body": body_in.decode("latin-1")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _reply  # noqa: N815

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def start_upstream() -> Upstream:
    server = Upstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    server.shutdown()
    server.server_close()
