"""The order queue through kombu: an embedded filesystem transport by default, RabbitMQ or Redis by URL.

``filesystem:///some/dir`` is this demo's spelling for kombu's filesystem transport with its folders
under ``/some/dir``: messages cross processes through files, no broker needed. Any other URL
(``amqp://guest:guest@127.0.0.1:5672//``, ``redis://127.0.0.1:6379/0``) is handed to kombu as is.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

EXCHANGE = Exchange("storefront", type="direct", durable=False)
ORDERS = Queue("storefront.orders", EXCHANGE, routing_key="order.placed", durable=False)


class _AtomicChannel(filesystem.Channel):  # type: ignore[misc]
    """kombu's filesystem channel, except that a message file appears only once it is fully written.

    The stock ``_put`` creates the file and then writes it; a consumer polling in between moves it away
    and reads it empty (a JSONDecodeError, the message lost). Writing a ``.tmp`` name (which consumers
    ignore) and renaming it is atomic on the same filesystem.
    """

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        with open(final + ".tmp", "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(final + ".tmp", final)


class AtomicFilesystemTransport(filesystem.Transport):  # type: ignore[misc]
    Channel = _AtomicChannel


def connect(url: str) -> Connection:
    if url.startswith("filesystem://"):
        folder = url.removeprefix("filesystem://") or "."
        data = os.path.join(folder, "data")
        control = os.path.join(folder, "control")
        os.makedirs(data, exist_ok=True)
        os.makedirs(control, exist_ok=True)
        options: dict[str, Any] = {"data_folder_in": data, "data_folder_out": data, "control_folder": control,
                                   "polling_interval": 0.05}
        return Connection(transport=AtomicFilesystemTransport, transport_options=options)
    return Connection(url, transport_options={"polling_interval": 0.05}, heartbeat=0)
