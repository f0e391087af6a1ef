"""Fixtures for the HTTP tests: a real loopback HTTP server that records what it receives.

``server.url("/status/500")``; ``server.seen[-1]`` is the last request as received
(method, path, headers with lower-case names). Paths:

- ``/ok`` (and anything else): 200 ``ok``
- ``/status/<code>``: that status
- ``/slow/<seconds>``: sleeps, then 200
- ``/redirect``: 302 to ``/ok``
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest



@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    fields: list[tuple[str, str]] = field(default_factory=list)  # every header field as sent, in order


@dataclass
class LoopbackServer:
    port: int
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str = "/ok", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def last(self) -> Seen:
        assert self.seen, "the server received no request"
        return self.seen[-1]


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            server.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                    list(self.headers.items())))
            path = self.path.split("?", 1)[0]
            status, body, extra = 200, b"ok", {}
            if path.startswith("/status/"):
                status = int(path.rsplit("/", 1)[1])
                body = b"status"
            elif path.startswith("/slow/"):
                time.sleep(float(path.rsplit("/", 1)[1]))
            elif path == "/redirect":
                status, body, extra = 302, b"", {"Location": "/ok"}
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain")
            self.send_header("X-Response-Id", "r-1")
            self.send_header("Set-Cookie", "session=s3cr3t")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout tests)
                    self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer  # noqa: N815

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A fresh server per test: a new port keeps each test's metric points apart (they are cumulative)."""
    state = LoopbackServer(0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

