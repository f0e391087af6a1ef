"""A Flask request served: ``GET /items/<int:item_id>`` through the app's WSGI callable, in process.

The server side of a call: our flask integration (the SERVER span named by the route, the server duration
histogram and active requests, W3C context extracted) against contrib's FlaskInstrumentor (a SERVER span,
its duration histogram and active requests). No socket and no HTTP server: the app is called with a
ready-made WSGI environ, so the figures are the instrumentation's CPU alone. Policies apply to outbound
calls only, so ``ours+bt`` is ``ours`` here (its target glob matches nothing a server does).
"""

from __future__ import annotations

from benchmarks.ops._base import Ctx, OpSpec

_ENVIRON = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/items/42", "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "127.0.0.1:8080", "HTTP_USER_AGENT": "bench/1",
    "HTTP_TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def _contrib():
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    return FlaskInstrumentor()


def _make(ctx: Ctx):
    import io
    import sys

    import flask

    app = flask.Flask("bench")  # made while its variant is active (contrib instruments the class it builds)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "ok"

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        pass

    def call() -> None:
        environ = {**_ENVIRON, "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
        body = app(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            body.close()  # as a WSGI server does: the request ends here

    return call


SPEC = OpSpec("flask", "Flask request served", ("flask",), _contrib, _make, "flask-server-side://none",
              calls=20)
