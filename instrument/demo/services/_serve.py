"""Small helpers shared by the services: command line, a WSGI/ASGI server on loopback, clean exit."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any


def arguments(description: str, argv: Sequence[str] | None = None, **urls: str) -> argparse.Namespace:
    """``--port`` plus one ``--<name> URL`` option per keyword (the value is its help text)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    for name, text in urls.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=text)
    return parser.parse_args(argv)


def exit_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, so atexit handlers (the toolkit's telemetry flush) run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def serve_wsgi(app: Any, port: int) -> None:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    exit_on_sigterm()
    server = make_server("127.0.0.1", port, app, threaded=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def serve_asgi(app: Any, port: int) -> None:
    import uvicorn

    # uvicorn turns SIGTERM into a graceful shutdown and returns; atexit runs after. The app is handed
    # over as a factory: uvicorn then never probes the app object by calling it without arguments.
    uvicorn.run(lambda: app, factory=True, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")
