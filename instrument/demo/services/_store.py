"""The orders table, on SQLite (a file; the default) or PostgreSQL (``--database postgresql://...``).

Plain DB-API calls (``sqlite3``, ``psycopg``): the toolkit's integrations see every statement.
A few connections are kept and reused (the WSGI server starts a thread per request).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from typing import Any

TABLE = "storefront_orders"
SCHEMA = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL, "
          "status TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)")


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self.mark = "%s" if self.postgres else "?"
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue(maxsize=8)

    def _connect(self) -> Any:
        if self.postgres:
            import psycopg

            return psycopg.connect(self.url, autocommit=True)
        import sqlite3

        path = self.url.removeprefix("sqlite:///")
        return sqlite3.connect("/" + path if not path.startswith("/") else path, timeout=10,
                               isolation_level=None, check_same_thread=False)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        except Exception:
            conn.close()  # a connection that failed is not reused
            raise
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql.replace("?", self.mark), params)
                return list(cur.fetchall()) if cur.description else []
            finally:
                cur.close()

    def create_schema(self) -> None:
        if not self.postgres:
            self._run("PRAGMA journal_mode=WAL")  # readers and the writer do not block each other
        try:
            self._run(SCHEMA)
        except Exception:
            if not self.postgres:
                raise

    def insert(self, order_id: str, sku: str, qty: int) -> dict[str, Any]:
        now = time.time()
        self._run(f"INSERT INTO {TABLE} (id, sku, qty, status, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                  (order_id, sku, qty, "accepted", now, now))
        return {"order_id": order_id, "sku": sku, "qty": qty, "status": "accepted"}

    def get(self, order_id: str) -> dict[str, Any] | None:
        rows = self._run(f"SELECT id, sku, qty, status FROM {TABLE} WHERE id = ?", (order_id,))
        if not rows:
            return None
        oid, sku, qty, status = rows[0]
        return {"order_id": oid, "sku": sku, "qty": qty, "status": status}

    def set_status(self, order_id: str, status: str) -> bool:
        self._run(f"UPDATE {TABLE} SET status = ?, updated = ? WHERE id = ?", (status, time.time(), order_id))
        return True
