"""The inventory service (WSGI, Flask): reserves stock.

    POST /reserve   {"order_id", "sku", "qty"} -> 200 {"reserved": true}; 409 when out of stock
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

from flask import Flask, jsonify, request

from instrument.demo.services._serve import arguments, serve_wsgi

CATALOG = {"book": 100_000, "mug": 100_000, "shirt": 100_000, "poster": 100_000, "sticker": 100_000}


def create_app() -> Flask:
    app = Flask("inventory")
    stock = dict(CATALOG)
    lock = threading.Lock()

    @app.post("/reserve")
    def reserve() -> Any:
        item = request.get_json(force=True)
        sku, qty = str(item["sku"]), int(item.get("qty", 1))
        with lock:
            if stock.get(sku, 0) < qty:
                return jsonify({"reserved": False, "message": f"{sku} is out of stock"}), 409
            stock[sku] -= qty
        return jsonify({"reserved": True, "sku": sku, "left": stock[sku]})

    @app.get("/health")
    def health() -> Any:
        return jsonify({"ok": True})

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("storefront inventory service", argv)
    serve_wsgi(create_app(), args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
