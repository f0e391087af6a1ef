"""The load generator: customers checking out through the gateway at a steady rate, with a flash sale.

Plain ``urllib`` from the demo's own (uninstrumented) process: the traces start at the gateway.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SKUS = ("book", "mug", "shirt", "poster", "sticker")


def request(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


class Load:
    def __init__(self, gateway: str, rate: float, *, workers: int = 32) -> None:
        self.gateway = gateway.rstrip("/")
        self.rate = rate
        self.multiplier = 1.0
        self.counts: Counter[str] = Counter()
        self.placed: deque[str] = deque(maxlen=5000)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="customer")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def checkout(self) -> None:
        self._count("sent")
        status, body = request("POST", f"{self.gateway}/checkout",
                               {"sku": random.choice(SKUS), "qty": random.randint(1, 3)})
        if status == 202 and isinstance(body, dict):
            self._count("accepted")
            self.placed.append(body["order_id"])
        elif status == 429:
            self._count("limited")
        else:
            self._count("unavailable")

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self.checkout)
            next_at += random.expovariate(self.rate * self.multiplier)
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def order_statuses(self, sample: int = 60) -> dict[str, int]:
        """Look up a sample of the placed orders through the gateway: how did they end?"""
        ids = list(self.placed)
        if len(ids) > sample:
            ids = random.sample(ids, sample)
        found: Counter[str] = Counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for status, body in pool.map(lambda oid: request("GET", f"{self.gateway}/orders/{oid}"), ids):
                found[body.get("status", "unknown") if status == 200 and isinstance(body, dict) else "unavailable"] += 1
        return dict(found)
