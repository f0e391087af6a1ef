"""A loopback TCP fault proxy for tests, in the spirit of toxiproxy: real sockets, misbehaving on cue.

::

    with FaultProxy("127.0.0.1", 5432) as proxy:
        conn = psycopg.connect(host="127.0.0.1", port=proxy.port, ...)
        proxy.blackhole()          # connections stay open, nothing ever comes back
        proxy.add_latency(0.5)     # each chunk is held 0.5 s (direction="downstream" | "upstream" | "both")
        proxy.limit_bandwidth(1024)  # bytes per second, per direction
        proxy.reset_peer()         # existing and new connections get a TCP RST
        proxy.close_all()          # close current connections cleanly (FIN)
        proxy.pass_through()       # back to normal

Threads, not asyncio: one acceptor plus two pumps per connection, each with a short socket timeout
so a mode change applies at once and :meth:`stop` returns promptly. Modes apply to data moving after
the change; ``blackhole`` also makes new connections hang after the TCP handshake (the kernel's
listen queue accepts them, as a firewall dropping replies would look).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy"]

_TICK = 0.05  # seconds: how often idle threads look at the mode and the stop flag
_CHUNK = 65536


def _rst(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.pumps = 2  # both directions running; the connection closes when both are done

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                _rst(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``, with faults switchable at runtime.

    Args:
        upstream_host: where to forward.
        upstream_port: where to forward.
        host: listen address (loopback by default).
        port: listen port (0: a free one; read :attr:`port`).

    .. versionadded:: 0.1
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.settimeout(_TICK)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.mode = "pass"  # "pass" | "blackhole" | "reset"
        self.latency = 0.0
        self.jitter = 0.0
        self.latency_direction = "downstream"
        self.first_byte_only = False
        self.bandwidth: float | None = None  # bytes per second
        self.accepted = 0  # connections accepted so far
        self.bytes_up = 0  # client -> upstream, forwarded
        self.bytes_down = 0  # upstream -> client, forwarded

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy:{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.close_all()
        for thread in list(self._threads):
            thread.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- modes ---------------------------------------------------------------------------------

    def pass_through(self) -> FaultProxy:
        """Forward everything as is (clears latency and bandwidth too)."""
        self.mode, self.latency, self.jitter, self.bandwidth = "pass", 0.0, 0.0, None
        return self

    def add_latency(self, seconds: float, *, jitter: float = 0.0, direction: str = "downstream",
                    first_byte_only: bool = False) -> FaultProxy:
        """Hold each chunk ``seconds`` (+ up to ``jitter``) before forwarding it in ``direction``.

        ``first_byte_only``: delay only the first chunk of each connection in that direction
        (a slow time-to-first-byte), not every chunk.
        """
        if direction not in ("downstream", "upstream", "both"):
            raise ValueError("direction must be downstream, upstream or both")
        self.latency, self.jitter, self.latency_direction = seconds, jitter, direction
        self.first_byte_only = first_byte_only
        return self

    def limit_bandwidth(self, bytes_per_second: float | None) -> FaultProxy:
        """Forward at most ``bytes_per_second`` in each direction (None: unlimited)."""
        self.bandwidth = bytes_per_second
        return self

    def blackhole(self) -> FaultProxy:
        """Accept connections and swallow everything: nothing is forwarded, nothing answered."""
        self.mode = "blackhole"
        return self

    def reset_peer(self) -> FaultProxy:
        """RST every current connection now and every new one as soon as it is accepted."""
        self.mode = "reset"
        self.close_all(reset=True)
        return self

    def close_all(self, *, reset: bool = False) -> int:
        """Close every current connection (FIN, or RST with ``reset=True``); returns how many."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            conn.close(reset=reset)
        return len(conns)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- the work ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "reset":
                _rst(client)
                continue
            upstream = None
            if self.mode != "blackhole":
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _rst(client)  # as the real server being down would look
                    continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.add(conn)
            if upstream is None:
                self._spawn(self._sink, conn)
            else:
                self._spawn(self._pump, conn, client, upstream, "upstream")
                self._spawn(self._pump, conn, upstream, client, "downstream")

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)

    def _sink(self, conn: _Conn) -> None:
        """A connection accepted while blackholed: read and drop until it closes."""
        while not conn.closed.is_set() and not self._stop.is_set():
            try:
                conn.client.settimeout(_TICK)
                if not conn.client.recv(_CHUNK):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        self._forget(conn)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, direction: str) -> None:
        broken = False
        first = True
        try:
            src.settimeout(_TICK)
            while not conn.closed.is_set() and not self._stop.is_set():
                try:
                    data = src.recv(_CHUNK)
                except socket.timeout:
                    continue
                if not data:  # half-close: pass the FIN on, keep the other direction going
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                if self.mode == "blackhole":
                    continue  # swallowed
                if self.latency and self.latency_direction in (direction, "both") \
                        and (first or not self.first_byte_only):
                    self._sleep(conn, self.latency + self.jitter * random.random())  # noqa: S311
                first = False
                self._send(conn, dst, data, direction)
        except OSError:
            broken = True
        finally:
            with self._lock:
                conn.pumps -= 1
                last = conn.pumps <= 0
            if last or broken:
                self._forget(conn)
                conn.close(reset=broken and self.mode == "reset")

    def _send(self, conn: _Conn, dst: socket.socket, data: bytes, direction: str) -> None:
        if direction == "upstream":  # counted before sending, so a reader that got the bytes sees them counted
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)
        rate = self.bandwidth
        if not rate:
            dst.sendall(data)
        else:
            step = max(1, int(rate * _TICK))
            for i in range(0, len(data), step):
                piece = data[i:i + step]
                dst.sendall(piece)
                self._sleep(conn, len(piece) / rate)

    def _sleep(self, conn: _Conn, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not conn.closed.is_set() and not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _TICK))

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def __repr__(self) -> str:
        return f"<FaultProxy {self.host}:{self.port} -> {self.upstream[0]}:{self.upstream[1]} mode={self.mode}>"
