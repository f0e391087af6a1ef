"""Every database integration patches and unpatches from one TARGETS table; redis' COMMAND_DESCRIBERS hook."""

from __future__ import annotations

import importlib

import pytest

from instrument import integrations
from instrument.patching import is_patched

NAMES = ("psycopg", "psycopg_pool", "psycopg2", "asyncpg", "sqlalchemy", "sqlite3", "pymysql", "redis")


@pytest.mark.parametrize("name", NAMES)
def test_patch_unpatch_roundtrip(name: str) -> None:
    pytest.importorskip(integrations.REGISTRY[name][0])
    module = importlib.import_module(integrations.REGISTRY[name][1])
    targets = [t for t in module.TARGETS if not t.optional]
    assert integrations.patch(name)
    try:
        assert all(is_patched(t) for t in targets)
        assert integrations.patch(name)  # idempotent
    finally:
        integrations.unpatch(name)
    assert not any(is_patched(t) for t in module.TARGETS)


def test_redis_command_describers_hook(tel, patched) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import need

    need("redis")
    import redis
    from instrument.integrations import redis as redis_integration

    from instrument._call import endpoint

    patched("redis")
    stream = endpoint("messaging", "redis", "redis://127.0.0.1:6379", server_address="127.0.0.1")

    def describe_xadd(client, args):  # type: ignore[no-untyped-def]
        return stream, stream.op("send", str(args[1])), {"messaging.operation.type": "send"}

    client = redis.Redis(host="127.0.0.1", port=6379)
    client.xadd("instrument-test-stream", {"k": "v"}, maxlen=10)  # the default span: XADD is now known
    redis_integration.COMMAND_DESCRIBERS["XADD"] = describe_xadd
    try:
        client.xadd("instrument-test-stream", {"k": "v"}, maxlen=10)  # the describer takes over
        client.delete("instrument-test-stream")
    finally:
        del redis_integration.COMMAND_DESCRIBERS["XADD"]
    client.xadd("instrument-test-stream", {"k": "v"}, maxlen=10)  # and lets go
    client.delete("instrument-test-stream")
    span = tel.span("send instrument-test-stream")
    assert span.attributes["messaging.system"] == "redis"
    assert len(tel.spans("XADD 0")) == 2 and len(tel.spans("DEL 0")) == 2
