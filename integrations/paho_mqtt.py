"""paho-mqtt: ``send`` and ``process`` spans and messaging metrics for MQTT.

- ``Client.publish``: a PRODUCER span ``publish <topic>``. On an MQTT 5 connection ``traceparent`` (and
  ``tracestate``) travel as *user properties* of the PUBLISH packet (properties are created when
  absent). MQTT 3.1.1 has no headers, so nothing is injected and the consumer's span starts a new trace
  (the payload is never touched). ``publish`` does not raise: a result code other than success
  (``MQTT_ERR_NO_CONN`` ...) marks the span as an error with ``error.type`` = the code's name.
- ``Client._handle_on_message``: every delivery, to ``on_message`` or a ``message_callback_add``
  callback, runs as the CONSUMER span ``process <topic>``, child of the producer's span (MQTT 5).

Both use the actual topic as the destination: keep topic names bounded (no ids in topics) or
switch off with INSTRUMENT_DISABLED_INTEGRATIONS=paho_mqtt.
"""

from __future__ import annotations

import copy
from typing import Any

from opentelemetry.trace import Status, StatusCode
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from instrument import _messaging
from instrument._call import ClientErrors, Endpoint
from instrument.patching import Target, apply, revert

PUBLISH = (Target("paho.mqtt.client", "Client.publish"),)
DELIVER = (Target("paho.mqtt.client", "Client._handle_on_message"),)
TARGETS = PUBLISH + DELIVER

ERRORS = ClientErrors(catch=(OSError,), is_failure=lambda exc: isinstance(exc, (OSError, mqtt.WebsocketConnectionError)))


def _endpoint(client: Any) -> Endpoint:
    return _messaging.client_endpoint("mqtt", getattr(client, "_host", None) or "localhost",
                                      getattr(client, "_port", None) or 1883, ERRORS)


def _is_v5(client: Any) -> bool:
    return getattr(client, "_protocol", None) == mqtt.MQTTv5


def _user_properties(properties: Any) -> dict[str, str]:
    pairs = getattr(properties, "UserProperty", None) or ()
    return {str(k): v for k, v in pairs}


_ARGS = ("topic", "payload", "qos", "retain", "properties")


def _publish(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = dict(zip(_ARGS, args))
    bound.update(kwargs)
    topic = bound.get("topic") or ""
    ep = _endpoint(instance)
    carrier: dict[str, str] | None = None
    call: Any = wrapped
    if _is_v5(instance):
        carrier = {}
        call = _with_user_properties(wrapped, carrier)
    msg_id = _user_properties(bound.get("properties")).get("message-id")
    op = _messaging.publish_op(ep, topic, idempotent=bool(msg_id))
    attributes = {"messaging.message.id": str(msg_id)} if msg_id else None
    return ep.call(op, call, (), bound, attributes=attributes, carrier=carrier, on_result=_check_rc)


def _with_user_properties(wrapped: Any, carrier: dict[str, str]) -> Any:
    # The pipeline injects into `carrier` just before calling; copy it into the PUBLISH properties then.
    def publish(**bound: Any) -> Any:
        if carrier:
            # A copy: the caller may reuse its Properties, which must not pile up stale trace context.
            given = bound.get("properties")
            props = copy.deepcopy(given) if given is not None else Properties(PacketTypes.PUBLISH)
            kept = [(k, v) for k, v in getattr(props, "UserProperty", ()) if k not in carrier]
            # paho's setter appends to UserProperty; the whole list is replaced here.
            object.__setattr__(props, "UserProperty", kept + list(carrier.items()))
            bound["properties"] = props
        return wrapped(**bound)

    return publish


def _check_rc(span: Any, info: Any) -> None:
    rc = getattr(info, "rc", mqtt.MQTT_ERR_SUCCESS)
    if rc != mqtt.MQTT_ERR_SUCCESS and span.is_recording():
        try:
            code = mqtt.MQTTErrorCode(rc).name
        except ValueError:
            code = str(rc)
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, mqtt.error_string(rc)))


def _deliver(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    message = args[0] if args else kwargs["message"]
    headers = _user_properties(getattr(message, "properties", None)) if _is_v5(instance) else None
    attributes: dict[str, Any] = {}
    if headers and headers.get("message-id"):
        attributes["messaging.message.id"] = str(headers["message-id"])
    return _messaging.process(_endpoint(instance), message.topic, wrapped, args, kwargs, headers=headers,
                              attributes=attributes)


def patch() -> None:
    apply(PUBLISH, _publish)
    apply(DELIVER, _deliver)


def unpatch() -> None:
    revert(TARGETS)
