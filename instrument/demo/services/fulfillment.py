"""The fulfillment worker (a kombu consumer): reserves stock and charges the card for each placed order.

Per order message: ``POST inventory/reserve``, then ``POST billing/charge``, then the outcome goes
back to orders. When billing fails or its breaker (the toolkit's, from ``INSTRUMENT_POLICIES``)
rejects the call, the order becomes "payment pending" and is charged again later; nothing is lost.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests

from instrument.demo.services._queue import ORDERS, connect
from instrument.demo.services._serve import arguments

STOP_GRACE = 5.0  # seconds from SIGTERM to exit, at most

PRICES = {"book": 1800, "mug": 1200, "shirt": 2500, "poster": 900, "sticker": 300}


class Fulfillment:
    def __init__(self, inventory: str, billing: str, orders: str) -> None:
        self.inventory = inventory.rstrip("/")
        self.billing = billing.rstrip("/")
        self.orders = orders.rstrip("/")
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        self.stopping = threading.Event()
        self._http = threading.local()

    @property
    def http(self) -> requests.Session:
        session = getattr(self._http, "session", None)
        if session is None:
            session = self._http.session = requests.Session()
        return session

    def report(self, order: dict[str, Any], status: str) -> None:
        try:
            self.http.post(f"{self.orders}/orders/{order['order_id']}/status", json={"status": status}, timeout=5)
        except requests.RequestException:
            pass  # orders is down: the status catches up with the next report

    def charge(self, order: dict[str, Any]) -> bool:
        amount = PRICES.get(order["sku"], 1000) * int(order.get("qty", 1))
        try:
            response = self.http.post(f"{self.billing}/charge", json={"order_id": order["order_id"], "amount": amount},
                                      timeout=5)
        except requests.RequestException:  # timeouts, resets, and an open breaker's fast rejection
            return False
        return response.status_code < 400

    def handle(self, order: dict[str, Any]) -> None:
        try:
            reserved = self.http.post(f"{self.inventory}/reserve", json=order, timeout=5)
        except requests.RequestException:
            self.pending.append(order)
            self.report(order, "payment_pending")
            return
        if reserved.status_code == 409:
            self.report(order, "out_of_stock")
            return
        if self.charge(order):
            self.report(order, "paid")
        else:
            self.pending.append(order)
            self.report(order, "payment_pending")

    def retry_pending(self) -> None:
        """Charge "payment pending" orders again, a few at a time, until they go through."""
        while not self.stopping.wait(0.25):
            for _ in range(min(20, len(self.pending))):
                order = self.pending.popleft()
                if self.charge(order):
                    self.report(order, "paid")
                else:
                    self.pending.append(order)
                    break

    def run(self, broker: str) -> None:
        def on_message(body: Any, message: Any) -> None:
            try:
                self.handle(body)
            finally:
                message.ack()

        threading.Thread(target=self.retry_pending, name="retry-pending", daemon=True).start()
        with connect(broker) as conn, conn.Consumer([ORDERS], callbacks=[on_message], accept=["json"]) as consumer:
            consumer.qos(prefetch_count=10)
            while not self.stopping.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    continue
                except OSError:
                    time.sleep(0.2)
                    conn.ensure_connection(max_retries=3)
                    consumer.revive(conn.channel())
                    consumer.consume()


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("storefront fulfillment worker", argv, broker="filesystem:///dir, amqp://... or redis://...",
                     inventory="inventory base URL", billing="billing base URL", orders="orders base URL")
    worker = Fulfillment(args.inventory, args.billing, args.orders)

    def stop(*_: Any) -> None:
        worker.stopping.set()
        # The order in flight may be waiting on services that are stopping too (up to its request timeouts):
        # finish it if it can, but leave within the grace period (a demo killed outright leaves no worker)
        timer = threading.Timer(STOP_GRACE, os._exit, (128 + signal.SIGTERM,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, stop)
    try:
        worker.run(args.broker)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
