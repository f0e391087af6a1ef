"""The TCP fault proxy, mode by mode, against a local echo server, PostgreSQL and a slow HTTP server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from instrument.testing._proxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    thread.join()
    server.close()


def _client(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_pass_through(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo) as proxy, _client(proxy) as sock:
        assert _roundtrip(sock, b"hello") == b"hello"
        assert proxy.accepted == 1 and proxy.bytes_up == proxy.bytes_down == 5


def test_latency_per_chunk_and_first_byte(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo) as proxy, _client(proxy) as sock:
        proxy.add_latency(0.4)
        start = time.perf_counter()
        assert _roundtrip(sock, b"slow") == b"slow"
        assert 0.4 <= time.perf_counter() - start < 1.5
        start = time.perf_counter()
        assert _roundtrip(sock, b"again") == b"again"
        assert time.perf_counter() - start >= 0.4  # every chunk
        proxy.add_latency(0.4, first_byte_only=True)
        with _client(proxy) as other:
            start = time.perf_counter()
            _roundtrip(other, b"a")
            assert time.perf_counter() - start >= 0.4
            start = time.perf_counter()
            _roundtrip(other, b"b")
            assert time.perf_counter() - start < 0.3  # only the first one
        proxy.pass_through()
        start = time.perf_counter()
        assert _roundtrip(sock, b"fast") == b"fast"
        assert time.perf_counter() - start < 0.3


def test_bandwidth(echo: tuple[str, int]) -> None:
    payload = b"x" * 20_000
    with FaultProxy(*echo) as proxy, _client(proxy, timeout=5) as sock:
        proxy.limit_bandwidth(40_000)  # per direction; the two directions overlap: ~0.5 s
        start = time.perf_counter()
        assert _roundtrip(sock, payload) == payload
        assert 0.4 <= time.perf_counter() - start < 3.0


def test_blackhole_accepts_and_never_answers(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo) as proxy:
        with _client(proxy) as old:
            assert _roundtrip(old, b"1") == b"1"
            proxy.blackhole()
            old.settimeout(0.3)
            old.sendall(b"2")
            with pytest.raises(socket.timeout):
                old.recv(10)
        with _client(proxy, timeout=0.3) as new:  # the TCP handshake succeeds
            new.sendall(b"3")
            with pytest.raises(socket.timeout):
                new.recv(10)
        proxy.pass_through()
        with _client(proxy) as fresh:
            assert _roundtrip(fresh, b"4") == b"4"


def test_reset_peer(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo) as proxy:
        with _client(proxy) as old:
            assert _roundtrip(old, b"1") == b"1"
            proxy.reset_peer()
            time.sleep(0.05)
            with pytest.raises(ConnectionResetError):
                old.sendall(b"2")
                old.recv(10)
        with pytest.raises(ConnectionResetError):  # on loopback the RST may even beat connect()
            with _client(proxy) as new:
                time.sleep(0.05)
                new.sendall(b"3")
                new.recv(10)


def test_close_all_sends_eof(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo) as proxy, _client(proxy) as sock:
        assert _roundtrip(sock, b"1") == b"1"
        assert proxy.close_all() == 1
        assert sock.recv(10) == b""
        assert proxy.connections == 0


def test_upstream_down_looks_like_a_refused_or_reset_connection() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with FaultProxy("127.0.0.1", port) as proxy, pytest.raises((ConnectionResetError, ConnectionRefusedError)):
        with _client(proxy) as sock:  # on loopback the RST may even beat connect()
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"


def test_stop_is_prompt_with_open_connections(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(*echo).start()
    socks = [_client(proxy) for _ in range(5)]
    proxy.blackhole()
    start = time.perf_counter()
    proxy.stop()
    assert time.perf_counter() - start < 1.5
    for s in socks:
        s.close()


# -- real PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_proxy(need: Any) -> Iterator[FaultProxy]:
    need("PostgreSQL", 5432)
    with FaultProxy("127.0.0.1", 5432) as proxy:
        yield proxy


def _pg(proxy: FaultProxy, **kw: Any) -> Any:
    psycopg = pytest.importorskip("psycopg")
    return psycopg.connect(host=proxy.host, port=proxy.port, user="postgres", dbname="test", **kw)


def test_postgres_through_the_proxy(pg_proxy: FaultProxy) -> None:
    with _pg(pg_proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg_proxy.add_latency(0.2)
        start = time.perf_counter()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert time.perf_counter() - start >= 0.2


def test_blackholed_postgres_connect_timeout_fires_within_its_deadline(pg_proxy: FaultProxy) -> None:
    import psycopg

    pg_proxy.blackhole()
    start = time.perf_counter()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        _pg(pg_proxy, connect_timeout=2)  # libpq's and psycopg's minimum is 2 s
    assert 1.9 <= time.perf_counter() - start < 3.0


@pytest.mark.asyncio
async def test_blackholed_postgres_async_connect_is_cancelled_at_the_deadline(pg_proxy: FaultProxy) -> None:
    import asyncio

    import psycopg

    pg_proxy.blackhole()
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(psycopg.AsyncConnection.connect(
            host=pg_proxy.host, port=pg_proxy.port, user="postgres", dbname="test"), 0.3)
    assert time.perf_counter() - start < 1.0


def test_reset_postgres_raises_operational_error(pg_proxy: FaultProxy) -> None:
    import psycopg

    conn = _pg(pg_proxy)
    try:
        pg_proxy.reset_peer()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        # not `with conn`: its COMMIT on a reset connection fails again (or not) depending on when the RST lands
        conn.close()


# -- slow HTTP server -----------------------------------------------------------------------------


def test_slow_http_server_read_timeout_fires_within_its_deadline(http_server: Any) -> None:
    requests = pytest.importorskip("requests")
    port = int(http_server.url.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/"
        assert requests.get(url, timeout=2).text == "ok"
        proxy.add_latency(1.0)
        start = time.perf_counter()
        with pytest.raises(requests.ReadTimeout):
            requests.get(url, timeout=(1.0, 0.3))
        assert 0.3 <= time.perf_counter() - start < 0.8
