"""instrument.messaging without a broker: stores, the idempotent decorator's ordering, the bulkhead,
message-id detection; and instrument._messaging's header getter and batch links."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from instrument import _messaging, messaging
from instrument.messaging import Limit, MemoryStore, idempotent, message_id


def test_public_names_are_one_sorted_all() -> None:
    assert messaging.__all__ == sorted(messaging.__all__)
    for name in messaging.__all__:
        assert hasattr(messaging, name)


def test_memory_store_ttl_and_bound() -> None:
    now = [0.0]
    store = MemoryStore(ttl=10, max_keys=2, clock=lambda: now[0])
    assert store.mark("a") and not store.mark("a")
    assert store.seen("a")
    now[0] = 11
    assert not store.seen("a")  # expired
    store.mark("b"), store.mark("c"), store.mark("d")
    assert not store.seen("b") and store.seen("d")  # oldest evicted


def test_marker_is_written_after_the_handler_and_before_the_ack(tel) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    before = tel.metric_total("instrument.messaging.duplicates")

    class Store(MemoryStore):
        def mark(self, key: str) -> bool:
            order.append("mark")
            return super().mark(key)

    @idempotent(Store(), key=lambda msg: msg["id"], settle=lambda msg: order.append("ack"))
    def handle(msg):  # type: ignore[no-untyped-def]
        order.append("handle")
        if msg.get("fail"):
            raise RuntimeError("crash mid-way")
        return "ok"

    assert handle({"id": "1"}) == "ok"
    assert order == ["handle", "mark", "ack"]
    order.clear()
    assert handle({"id": "1"}) is None  # duplicate: dropped, settled, not handled
    assert order == ["ack"]
    order.clear()
    with pytest.raises(RuntimeError):
        handle({"id": "2", "fail": True})
    assert order == ["handle"]  # not marked, not acked: the redelivery will run it
    assert handle({"id": "2"}) == "ok"
    assert tel.metric_total("instrument.messaging.duplicates") - before == 1


def test_message_without_key_is_processed_every_time() -> None:
    calls = []
    handle = idempotent(MemoryStore(), key=lambda m: None, ack=False)(calls.append)
    handle("x"), handle("x")
    assert calls == ["x", "x"]


async def test_async_handler() -> None:
    calls: list[str] = []

    @idempotent(key=lambda m: m, settle=lambda m: None)
    async def handle(m: str) -> None:
        await asyncio.sleep(0)
        calls.append(m)

    await handle("a")
    await handle("a")
    await handle("b")
    assert calls == ["a", "b"]


def test_message_id_detection() -> None:
    pika_props = SimpleNamespace(message_id="p-1")
    assert message_id(object(), SimpleNamespace(delivery_tag=1), pika_props, b"body") == "p-1"
    kombu_msg = SimpleNamespace(properties={}, headers={"id": "celery-task-1"})
    assert message_id({"body": 1}, kombu_msg) == "celery-task-1"
    assert message_id(b"stream", b"1700000000000-0", {b"f": b"v"}) == "1700000000000-0"
    assert message_id(b"no id") is None


def test_limit_bounds_threads() -> None:
    guard = Limit(4)
    running = [0]
    peak = [0]
    lock = threading.Lock()

    @guard
    def handle() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    threads = [threading.Thread(target=handle) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 4 and guard.peak == 4 and guard.active == 0


def test_limit_sets_prefetch_on_the_channel() -> None:
    calls = []
    channel = SimpleNamespace(basic_qos=lambda **kw: calls.append(kw))
    assert messaging.limit(channel, max_in_flight=8).max_in_flight == 8
    assert calls == [{"prefetch_count": 8}]
    with pytest.raises(ValueError):
        Limit(0)


def test_header_getter_decodes_bytes_and_batch_links_are_deduplicated() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert _messaging.extract({"traceparent": tp.encode()}) is not None
    assert _messaging.extract({"traceparent": "garbage"}) is None
    assert _messaging.extract(None) is None
    links = _messaging.links([{"traceparent": tp}, {"traceparent": tp}, None, {}])
    assert len(links) == 1 and format(links[0].context.trace_id, "032x") == tp.split("-")[1]


@pytest.mark.parametrize("module", ["pika", "aio_pika", "kombu", "nats", "paho_mqtt", "redis_streams"])
def test_patch_and_unpatch_share_targets(module: str) -> None:
    import importlib

    from instrument.patching import is_patched

    mod = importlib.import_module(f"instrument.integrations.{module}")
    mod.patch()
    mod.patch()  # idempotent
    try:
        assert all(is_patched(t) for t in mod.TARGETS)
    finally:
        mod.unpatch()
    assert not any(is_patched(t) for t in mod.TARGETS)
