"""An application that drops its clients without closing them keeps no more sockets open under the toolkit
than without it.

Many applications make a client per call and never close it (``urllib3.PoolManager().request(...)``,
``redis.Redis().get(...)``, a connection per request): CPython closes its sockets at the client's last
reference. If a wrapper of ours tied a client into a reference cycle (a wrapper of its own held in its
``__dict__``, a cached bound method), its sockets would stay open until the cycle collector ran, and an
application in a loop runs out of file descriptors; if we kept a reference to it, they would never close.
Each client is dropped unclosed N times, bare and then patched with telemetry, breaker and timeout: the
descriptors left open with the cycle collector off, and after it ran, must not grow under the toolkit.
httpx's client, a SQLAlchemy engine and pika's connection are in reference cycles of their own, so for them only
the second count can tell (the engine's pool gets a wrapper of its own: patching's per_instance). The async
clients and those with helper threads of their own (sqlite3, paho-mqtt, kombu, aiohttp, httpx, redis.asyncio,
asyncpg, psycopg, aio-pika, nats) are checked on the objects themselves: used, dropped, freed by a collection.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")

N = 40


def _open_fds() -> int:
    """Open descriptors, once the test server's threads have closed their ends of the closed connections."""
    count, deadline = len(os.listdir("/proc/self/fd")), time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = len(os.listdir("/proc/self/fd"))
        if now == count:
            break
        count = now
    return count


def _left_open(call: Callable[[], Any]) -> tuple[int, int]:
    """Descriptors still open after N calls that each make a client, use it once and drop it unclosed: with the
    cycle collector off, and after it ran."""
    call()  # first-use work (imports, caches, connection to the test's own server) happens outside the count
    gc.collect()
    gc.disable()
    try:
        before = _open_fds()
        for _ in range(N):
            call()
        left = _open_fds() - before
    finally:
        gc.enable()
    gc.collect()
    return left, _open_fds() - before


def _compare(call: Callable[[], Any], tel: Any, patch: Callable[[], Any]) -> None:
    """``call`` bare, then patched by ``patch()``: no more descriptors left open under the toolkit."""
    bare = _left_open(call)
    patch()
    ours = _left_open(call)
    assert tel.spans(), "the patched calls made no span: the comparison would prove nothing"
    _assert_no_more_left_open(bare, ours)


def _assert_no_more_left_open(bare: tuple[int, int], ours: tuple[int, int]) -> None:
    assert ours[0] <= bare[0], f"{ours[0]} descriptors left open by {N} unclosed clients under the toolkit, " \
                               f"{bare[0]} without (a reference cycle of ours)"
    assert ours[1] <= bare[1], f"{ours[1]} descriptors still open after a collection under the toolkit, " \
                               f"{bare[1]} without (a reference of ours keeps the clients)"


def _urllib3(url: str) -> Callable[[], Any]:
    import urllib3

    return lambda: urllib3.PoolManager().request("GET", url, retries=False)


def _requests(url: str) -> Callable[[], Any]:
    import requests

    return lambda: requests.Session().get(url)


def _httpx(url: str) -> Callable[[], Any]:
    import httpx

    return lambda: httpx.Client().get(url)


def _redis(host: str, port: int) -> Callable[[], Any]:
    import redis

    return lambda: redis.Redis(host=host, port=port).get("instrument-test-unclosed")


def _psycopg(host: str, port: int) -> Callable[[], Any]:
    import psycopg

    return lambda: psycopg.connect(host=host, port=port, dbname="test", user="postgres").execute("SELECT 1")


def _psycopg2(host: str, port: int) -> Callable[[], Any]:
    import psycopg2

    return lambda: psycopg2.connect(host=host, port=port, dbname="test", user="postgres").cursor().execute("SELECT 1")


def _pymysql(host: str, port: int) -> Callable[[], Any]:
    import pymysql

    return lambda: pymysql.connect(host=host, port=port, user="root", database="test").cursor().execute("SELECT 1")


def _sqlalchemy(host: str, port: int) -> Callable[[], Any]:
    import sqlalchemy

    url = f"postgresql+psycopg://postgres@{host}:{port}/test"
    return lambda: sqlalchemy.create_engine(url).connect().execute(sqlalchemy.text("SELECT 1"))


def _pika(host: str, port: int) -> Callable[[], Any]:
    import pika

    def call() -> None:
        channel = pika.BlockingConnection(pika.ConnectionParameters(host, port)).channel()
        channel.basic_publish("", "instrument-test-unclosed", b"x")  # no such queue: the broker drops it

    return call


@pytest.fixture
def policies_on() -> Iterator[None]:
    from instrument import policies

    policies.configure("*=timeout(5s),breaker")
    yield
    policies.configure("")


@pytest.mark.parametrize(("integration", "make"), [("urllib3", _urllib3), ("requests", _requests), ("httpx", _httpx)])
def test_an_http_client_dropped_unclosed_closes_its_sockets(tel, patched, policies_on, upstream, integration,
                                                           make) -> None:  # type: ignore[no-untyped-def]
    _compare(make(upstream.url + "/ok"), tel, lambda: patched(integration))


@pytest.mark.parametrize(("integration", "service", "make"), [
    ("redis", "redis_service", _redis),
    ("psycopg", "postgresql", _psycopg),
    ("psycopg2", "postgresql", _psycopg2),
    ("pymysql", "mariadb", _pymysql),
    ("sqlalchemy,psycopg", "postgresql", _sqlalchemy),  # the statement's span is psycopg's
    ("pika", "rabbitmq", _pika),
])
def test_a_database_or_queue_client_dropped_unclosed_closes_its_socket(request, tel, patched, policies_on, integration,
                                                              service, make) -> None:  # type: ignore[no-untyped-def]
    _compare(make(*request.getfixturevalue(service)), tel, lambda: [patched(n) for n in integration.split(",")])


# -- nothing of ours keeps a client alive, checked on the object itself: for async clients and clients with helper
# threads of their own, whose descriptors cannot be counted the same way


def _freed(make: Callable[[], Any]) -> bool:
    """True when the client ``make()`` returns (used, and dropped by it) is freed by a collection."""
    gone = weakref.ref(make())
    gc.collect()
    return gone() is None


def _sqlite3() -> Any:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 1")
    return conn


def _paho(host: str, port: int) -> Any:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    client.publish("instrument-test-unclosed", b"x", qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    return client


def _kombu(host: str, port: int) -> Any:
    import kombu

    conn = kombu.Connection(f"amqp://guest:guest@{host}:{port}//")
    conn.Producer().publish({"x": 1}, routing_key="instrument-test-unclosed")
    conn.release()
    return conn


async def _async_clients(url: str, pg: tuple[str, int], redis_at: tuple[str, int], amqp: tuple[str, int],
                         nats_at: tuple[str, int]) -> dict[str, weakref.ref[Any]]:
    import aio_pika
    import aiohttp
    import asyncpg
    import httpx
    import nats
    import psycopg
    import redis.asyncio as aredis

    made: dict[str, weakref.ref[Any]] = {}
    session = aiohttp.ClientSession()
    async with session.get(url) as response:
        await response.read()
    await session.close()
    made["aiohttp"] = weakref.ref(session)
    client = httpx.AsyncClient()
    await client.get(url)
    await client.aclose()
    made["httpx"] = weakref.ref(client)
    r = aredis.Redis(host=redis_at[0], port=redis_at[1])
    await r.get("instrument-test-unclosed")
    await r.aclose()
    made["redis"] = weakref.ref(r)
    pg_conn = await asyncpg.connect(host=pg[0], port=pg[1], user="postgres", database="test")
    await pg_conn.fetch("SELECT 1")  # left open, as applications do
    made["asyncpg"] = weakref.ref(pg_conn)
    aconn = await psycopg.AsyncConnection.connect(host=pg[0], port=pg[1], user="postgres", dbname="test")
    await aconn.execute("SELECT 1")
    await aconn.close()
    made["psycopg"] = weakref.ref(aconn)
    amqp_conn = await aio_pika.connect(f"amqp://guest:guest@{amqp[0]}:{amqp[1]}/")
    channel = await amqp_conn.channel()
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="instrument-test-unclosed")
    await amqp_conn.close()
    made["aio_pika"] = weakref.ref(amqp_conn)
    nc = await nats.connect(f"nats://{nats_at[0]}:{nats_at[1]}")
    await nc.publish("instrument-test-unclosed", b"x")
    await nc.flush()
    await nc.close()
    made["nats"] = weakref.ref(nc)
    return made


def test_no_client_is_kept_alive_by_the_toolkit(tel, patched, policies_on, upstream, postgresql, redis_service,
                                                rabbitmq, mosquitto, nats_service) -> None:  # type: ignore[no-untyped-def]
    for name in ("sqlite3", "paho_mqtt", "kombu", "aiohttp", "httpx", "redis", "asyncpg", "psycopg", "aio_pika",
                 "nats"):
        patched(name)
    kept = [name for name, make in (("sqlite3", _sqlite3), ("paho-mqtt", lambda: _paho(*mosquitto)),
                                    ("kombu", lambda: _kombu(*rabbitmq))) if not _freed(make)]
    made = asyncio.run(_async_clients(upstream.url + "/ok", postgresql, redis_service, rabbitmq, nats_service))
    gc.collect()
    kept += [f"{name} (async)" for name, gone in made.items() if gone() is not None]
    assert len(tel.spans()) >= 10, "too few spans: the clients did not run under the toolkit"
    assert kept == []
