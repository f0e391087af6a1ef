"""The order queue through kombu: an embedded filesystem transport by default, RabbitMQ or Redis by URL.

``filesystem:///some/dir`` is this demo's spelling for kombu's filesystem transport with its folders
under ``/some/dir``: messages cross processes through files, no broker needed. Any other URL
(``amqp://guest:guest@127.0.0.1:5672//``, ``redis://127.0.0.1:6379/0``) is handed to kombu as is.
"""

from __future__ import annotations

import os
from typing import Any

from kombu import Connection, Exchange, Queue

EXCHANGE = Exchange("storefront", type="direct", durable=False)
ORDERS = Queue("storefront.orders", EXCHANGE, routing_key="order.placed", durable=False)


def connect(url: str) -> Connection:
    if url.startswith("filesystem://"):
        folder = url.removeprefix("filesystem://") or "."
        data = os.path.join(folder, "data")
        control = os.path.join(folder, "control")
        os.makedirs(data, exist_ok=True)
        os.makedirs(control, exist_ok=True)
        options: dict[str, Any] = {"data_folder_in": data, "data_folder_out": data, "control_folder": control,
                                   "polling_interval": 0.05}
        return Connection("filesystem://", transport_options=options)
    return Connection(url, transport_options={"polling_interval": 0.05}, heartbeat=0)
