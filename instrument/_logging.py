"""Structured logs: structlog configured once, stdlib logging through the same processors, OTLP export.

Every processor decides what it can in ``__init__`` (structlog's TimeStamper style) and is a plain
callable. Inside a span, every event carries ``trace_id`` and ``span_id``; keys that look secret are
redacted; each event is also emitted as an OpenTelemetry log record correlated with its trace.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from instrument._settings import Settings

_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|authorization|api[_-]?key|cookie|credential|private[_-]?key",
                         re.IGNORECASE)
REDACTED = "REDACTED"


def add_trace_context(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Add ``trace_id``/``span_id`` of the current span, unless the event already names its span."""
    if "trace_id" not in event:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
            event["span_id"] = format(ctx.span_id, "016x")
    return event


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the values of keys that look secret (password, token, authorization, api_key ...)."""
    for key in event:
        if _SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


_SEVERITY = {"debug": 5, "info": 9, "warning": 13, "warn": 13, "error": 17, "exception": 17, "critical": 21}
_RESERVED = frozenset({"event", "level", "timestamp", "logger", "trace_id", "span_id", "exc_info", "_record",
                       "_from_structlog"})


class ExportToOtel:
    """Emit each event as an OpenTelemetry log record (body = event, attributes = the other keys)."""

    def __init__(self) -> None:
        from opentelemetry import _logs

        self._logger = _logs.get_logger("instrument")

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        try:
            self._emit(event)
        except Exception as exc:  # noqa: BLE001 - a broken exporter must not break logging
            from instrument._safety import report

            report("log export", exc)
        return event

    def _emit(self, event: dict[str, Any]) -> None:
        from opentelemetry._logs import SeverityNumber

        level = str(event.get("level", "info")).lower()
        attributes: dict[str, Any] = {}
        for key, value in event.items():
            if key in _RESERVED:
                continue
            attributes[key] = value if isinstance(value, (str, bool, int, float)) else repr(value)
        if "logger" in event:
            attributes["logger.name"] = str(event["logger"])
        context = None
        trace_id, span_id = event.get("trace_id"), event.get("span_id")
        if trace_id and span_id:
            try:
                span_context = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False,
                                           trace_flags=TraceFlags(TraceFlags.SAMPLED))
                context = trace.set_span_in_context(NonRecordingSpan(span_context))
            except ValueError:
                context = None
        self._logger.emit(
            context=context,
            severity_number=SeverityNumber(_SEVERITY.get(level, 9)),
            severity_text=level.upper(),
            body=str(event.get("event", "")),
            attributes=attributes,
        )


_configured = False


def _processors(settings: Settings) -> tuple[list[Any], list[Any], Any]:
    """(shared processors, exporting processors, renderer): built when structlog is first needed."""
    import structlog

    if settings.log_format == "console" or (settings.log_format == "auto" and sys.stderr.isatty()):
        renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
        redact_secrets,
    ]
    exporting: list[Any] = [] if settings.logs.kind == "none" or settings.sdk_disabled else [ExportToOtel()]
    return shared, exporting, renderer


class _LazyFormatter(logging.Formatter):
    """structlog's ProcessorFormatter, built on the first record: importing structlog (and the rich it may
    pull in) costs tens of milliseconds that a process which never logs should not pay at start-up."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._formatter: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._formatter is None:
            import structlog

            shared, exporting, renderer = _processors(self._settings)
            self._formatter = structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                            structlog.processors.format_exc_info, *exporting, renderer])
        return self._formatter.format(record)


def _configure_structlog(settings: Settings) -> None:
    """Route structlog through stdlib logging and our processors, unless the application configured it."""
    import structlog

    if structlog.is_configured():
        return
    shared, _exporting, _renderer = _processors(settings)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure_logging(settings: Settings) -> None:
    """Configure stdlib logging now and structlog when it is first imported (by the app or by us). Once.

    An application's own structlog configuration is kept.
    """
    global _configured
    if _configured:
        return
    _configured = True
    level = getattr(logging, settings.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LazyFormatter(settings))
    handler.set_name("instrument")
    root = logging.getLogger()
    if not any(h.get_name() == "instrument" for h in root.handlers):
        root.addHandler(handler)
    if root.level == logging.WARNING and not root.handlers[:-1]:
        root.setLevel(level)  # the application did not choose a level: use ours
    logging.getLogger("instrument").setLevel(level)
    import wrapt

    wrapt.register_post_import_hook(lambda _module: _configure_structlog(settings), "structlog")
