"""End to end in a fresh interpreter: ``import instrument.auto``, an HTTP request to a WSGI app (wrapped
in ``instrument.wsgi``) publishes with pika; a consumer processes it; the OTLP receiver gets one trace
SERVER -> PRODUCER -> CONSUMER and the messaging metrics."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import need, run_python

pytest.importorskip("pika")
pytest.importorskip("instrument.wsgi")

APP = """
import instrument.auto
import threading, pika, requests
from wsgiref.simple_server import make_server, WSGIRequestHandler
from instrument.wsgi import InstrumentMiddleware

QUEUE = {queue!r}
params = pika.ConnectionParameters("127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"))

def app(environ, start_response):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", QUEUE, b"order", pika.BasicProperties(message_id="e2e-1"))
    conn.close()
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    return [b"queued"]

class Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass

consumer = pika.BlockingConnection(params)
cch = consumer.channel()
cch.queue_declare(QUEUE, auto_delete=True)
done = []
def on_message(ch, method, properties, body):
    done.append(properties.message_id)
    ch.basic_ack(method.delivery_tag)
cch.basic_consume(QUEUE, on_message)

server = make_server("127.0.0.1", 0, InstrumentMiddleware(app), handler_class=Quiet)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("status", requests.post(f"http://127.0.0.1:{{server.server_address[1]}}/orders").status_code)
while not done:
    consumer.process_data_events(time_limit=0.1)
consumer.close()
print("done", done[0])
instrument.shutdown(5)
"""


def test_import_auto_traces_http_to_queue_to_consumer(receiver) -> None:  # type: ignore[no-untyped-def]
    need("rabbitmq")
    queue = f"instrument-test-e2e-{uuid.uuid4().hex[:8]}"
    env = {**receiver.env(), "INSTRUMENT_SERVICE_NAME": "storefront"}
    code = "import instrument\n" + APP.format(queue=queue)
    result = run_python(code, env=env, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "status 202" in result.stdout and "done e2e-1" in result.stdout

    process = receiver.wait_for_span(lambda s: s.name == f"process {queue}")
    spans = {s.span_id: s for s in receiver.spans() if s.trace_id == process.trace_id}
    send = spans[process.parent_span_id]
    assert send.name == f"publish {queue}" and send.kind == "PRODUCER"
    server = spans[send.parent_span_id]
    assert server.kind == "SERVER"
    assert process.kind == "CONSUMER" and process.attributes["messaging.system"] == "rabbitmq"
    assert process.attributes["messaging.message.id"] == "e2e-1"
    for name in ("messaging.client.sent.messages", "messaging.client.consumed.messages",
                 "messaging.process.duration", "messaging.client.operation.duration"):
        receiver.wait_for(lambda name=name: [p for p in receiver.metric_points(name)
                                             if p.attributes.get("messaging.destination.name") == queue])
