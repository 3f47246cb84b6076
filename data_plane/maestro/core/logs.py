"""Structured logging (structlog): one JSON object per line on stderr, or a console renderer.

A line written inside a span carries its `trace_id` and `span_id` (lower-case hex, as in W3C
`traceparent`), so a log search and a trace find each other. With `telemetry.otlp_logs` every
line also goes out over OTLP (`export_logs`), after redaction like the stderr line: a secret is
masked before anything leaves the process. Off, the export step is one global read per line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber

from maestro.core.redact import redact_event
from maestro.core.settings import LoggingConfig

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.sdk._logs import LoggerProvider

_SEVERITY = {
    "debug": (SeverityNumber.DEBUG, "DEBUG"),
    "info": (SeverityNumber.INFO, "INFO"),
    "warning": (SeverityNumber.WARN, "WARN"),
    "warn": (SeverityNumber.WARN, "WARN"),
    "error": (SeverityNumber.ERROR, "ERROR"),
    "exception": (SeverityNumber.ERROR, "ERROR"),
    "critical": (SeverityNumber.FATAL, "FATAL"),
}
_NATIVE = frozenset({"event", "level", "timestamp", "trace_id", "span_id"})
"""Fields an OTLP log record has slots of its own for (the trace ids come from the context)."""
_RENAMED = {"exception": "exception.stacktrace"}
_otlp: Logger | None = None


def configure_logging(config: LoggingConfig) -> None:
    level = getattr(logging, config.level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_context,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,  # after exceptions became text, so keys in them are masked too
            export_otlp,  # after redaction: nothing unmasked leaves the process
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def export_logs(provider: LoggerProvider | None) -> None:
    """Send every log line to `provider` too (the process's, `Telemetry.logger_provider`);
    None stops that. Loggers already in use pick it up: the export step reads it per line."""
    global _otlp
    _otlp = provider.get_logger("maestro") if provider is not None else None


def add_trace_context(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's `trace_id` and `span_id`, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def export_otlp(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the (redacted) line as an OTLP log record, when `export_logs` set a
    provider; the event goes on to the renderer unchanged."""
    target = _otlp
    if target is not None:
        severity, text = _SEVERITY.get(str(event.get("level", method)), _SEVERITY["info"])
        target.emit(
            timestamp=time.time_ns(),
            severity_number=severity,
            severity_text=text,
            body=str(event.get("event", "")),
            attributes={
                _RENAMED.get(key, key): _attribute(value)
                for key, value in event.items()
                if key not in _NATIVE and value is not None
            },
        )
    return event


def _attribute(value: Any) -> Any:
    """A log field as an OTLP attribute value: scalars as they are, anything else as JSON."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return orjson.dumps(value, default=str).decode()
