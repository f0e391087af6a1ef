"""The orders service (WSGI, Flask): stores orders and announces each one on the queue.

    POST /orders                {"sku", "qty"} -> 201 {"order_id", "status": "accepted"}
    GET  /orders/<id>           the order
    POST /orders/<id>/status    {"status"}: fulfillment reports progress
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from flask import Flask, jsonify, request

from instrument.demo.services._queue import EXCHANGE, ORDERS, connect
from instrument.demo.services._serve import arguments, serve_wsgi
from instrument.demo.services._store import Store


class Publisher:
    """One kombu producer shared by the server's threads (kombu connections are not thread-safe)."""

    def __init__(self, url: str) -> None:
        self._conn = connect(url)
        self._producer = self._conn.Producer(serializer="json")
        self._lock = threading.Lock()
        with self._lock:
            ORDERS(self._conn.default_channel).declare()

    def order_placed(self, order: dict[str, Any]) -> None:
        with self._lock:
            self._producer.publish(order, exchange=EXCHANGE, routing_key="order.placed", declare=[ORDERS],
                                   retry=True, retry_policy={"max_retries": 3})


def create_app(store: Store, publisher: Publisher) -> Flask:
    app = Flask("orders")

    @app.post("/orders")
    def place() -> Any:
        item = request.get_json(force=True)
        order = store.insert(uuid.uuid4().hex[:12], str(item["sku"]), int(item.get("qty", 1)))
        publisher.order_placed(order)
        return jsonify(order), 201

    @app.get("/orders/<order_id>")
    def show(order_id: str) -> Any:
        order = store.get(order_id)
        if order is None:
            return jsonify({"message": "no such order"}), 404
        return jsonify(order)

    @app.post("/orders/<order_id>/status")
    def progress(order_id: str) -> Any:
        store.set_status(order_id, str(request.get_json(force=True)["status"]))
        return jsonify({"order_id": order_id, "ok": True})

    @app.get("/health")
    def health() -> Any:
        return jsonify({"ok": True})

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("storefront orders service", argv, database="sqlite:///path or postgresql://...",
                     broker="filesystem:///dir, amqp://... or redis://...")
    store = Store(args.database)
    store.create_schema()
    serve_wsgi(create_app(store, Publisher(args.broker)), args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
