"""One small module per operation: what to call, which of our integrations and which contrib
instrumentor make it observable, and which service it needs. ``ALL`` lists them in table order."""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec

ALL = ("requests", "httpx", "urllib3", "redis", "redis_xadd", "psycopg", "psycopg_pool", "sqlalchemy", "pika",
       "flask")

__all__ = ["ALL", "Ctx", "OpSpec", "load"]


def load(key: str) -> OpSpec:
    import importlib

    return importlib.import_module(f"benchmarks.ops.{key}").SPEC
