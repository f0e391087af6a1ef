"""Django through the registry: WSGI (werkzeug) and ASGI (uvicorn) handlers, route names from the resolver."""

from __future__ import annotations

from typing import Any

import pytest
from http_helpers import wait_spans
from http_servers import serve_asgi, serve_wsgi
from opentelemetry.trace import SpanKind, StatusCode
from test_middleware import CALLER_SPAN, TRACEPARENT, fetch


def _view(request: Any, item_id: int) -> Any:
    from django.http import HttpResponse

    if item_id == 0:
        raise ValueError("no item 0")
    return HttpResponse(f"item {item_id}")


urlpatterns: list[Any] = []


@pytest.fixture(scope="module")
def django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test",
                           MIDDLEWARE=[], INSTALLED_APPS=[], LOGGING_CONFIG=None)
    import django
    from django.urls import path

    django.setup()
    urlpatterns[:] = [path("items/<int:item_id>/", _view)]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_django_route_status_and_parent(tel, patched, django_settings, interface):  # type: ignore[no-untyped-def]
    patched("django")
    if interface == "wsgi":
        from django.core.handlers.wsgi import WSGIHandler

        serve, app = serve_wsgi, WSGIHandler()
    else:
        from django.core.handlers.asgi import ASGIHandler

        serve, app = serve_asgi, ASGIHandler()
    with serve(app) as port:
        assert fetch(port, "/items/4/", headers={"traceparent": TRACEPARENT})[0] == 200
        (span,) = wait_spans(tel, 1, SpanKind.SERVER)
        assert span.name == "GET /items/<int:item_id>/"
        assert span.attributes["http.route"] == "/items/<int:item_id>/"
        assert f"{span.parent.span_id:016x}" == CALLER_SPAN
        tel.clear()
        assert fetch(port, "/items/0/")[0] == 500
        (span,) = wait_spans(tel, 1, SpanKind.SERVER)
        assert span.attributes["error.type"] == "500" and span.status.status_code == StatusCode.ERROR
        tel.clear()
        assert fetch(port, "/nowhere")[0] == 404
        (span,) = wait_spans(tel, 1, SpanKind.SERVER)
        assert span.name == "GET" and span.status.status_code == StatusCode.UNSET
