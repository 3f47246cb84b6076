"""Log lines name the span they were written in (`trace_id`, `span_id`, W3C hex), and with
`telemetry.otlp_logs` go out over OTLP too, redacted as on stderr; off, no logger provider
exists at all."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from maestro.core.logs import configure_logging, export_logs
from maestro.core.settings import LoggingConfig, TelemetryConfig
from maestro.core.telemetry import build_telemetry
from tests.inference_support import events, profile, stack, stream_request

KEY = "mk_0123456789ab_c2VjcmV0LXBhcnQtb2YtdGhlLWtleS1ub2JvZHktc2hvdWxkLXNlZQ"
SECRET_PART = KEY.rsplit("_", 1)[1]


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What `configure_logging` writes to stderr, as JSON lines. Loggers are not cached here:
    module loggers used in one test must not keep writing to its stream in the next."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(LoggingConfig(level="info", format="json"))
    structlog.configure(cache_logger_on_first_use=False)
    yield stream
    export_logs(None)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_span_names_it_and_one_outside_names_none(
    json_logs: io.StringIO,
) -> None:
    tracer = TracerProvider().get_tracer("t")
    log = structlog.get_logger("tests.logs")
    log.info("before")
    with tracer.start_as_current_span("work") as span:
        log.info("inside", api_key=KEY)
    log.info("after")
    before, inside, after = _lines(json_logs)
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["api_key"] == "***"
    assert "trace_id" not in before
    assert "span_id" not in before
    assert "trace_id" not in after


def test_logs_go_out_over_otlp_redacted_with_their_span(json_logs: io.StringIO) -> None:
    exported = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    telemetry = build_telemetry(
        TelemetryConfig(jurisdiction="eu"),
        project="alpha",
        log_processors=(SimpleLogRecordProcessor(exported),),
    )
    assert telemetry.logger_provider is not None
    export_logs(telemetry.logger_provider)
    tracer = telemetry.tracer_provider.get_tracer("t")
    log = structlog.get_logger("tests.logs")
    try:
        with tracer.start_as_current_span("work") as span:
            log.warning(
                "store.opened",
                dsn="host=db password=hunter2",
                detail=f"key {KEY} rejected",
                attempts=3,
                tags=["a", "b"],
                extra={"nested": True},
                nothing=None,
            )
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError:
            log.exception("call.failed")
        export_logs(None)
        log.info("not.exported")
    finally:
        telemetry.shutdown()
    records = [data.log_record for data in exported.get_finished_logs()]
    assert [r.body for r in records] == ["store.opened", "call.failed"]
    opened, failed = records
    context = span.get_span_context()
    assert (opened.trace_id, opened.span_id) == (context.trace_id, context.span_id)
    assert opened.severity_text == "WARN"
    attributes = dict(opened.attributes or {})
    assert attributes["dsn"] == "host=db password=***"
    assert attributes["detail"] == "key mk_0123456789ab_*** rejected"
    assert attributes["attempts"] == 3
    assert attributes["tags"] == ("a", "b")
    assert json.loads(str(attributes["extra"])) == {"nested": True}
    assert "nothing" not in attributes
    assert "event" not in attributes
    assert failed.severity_text == "ERROR"
    assert "ValueError: bad key mk_0123456789ab_***" in str(
        (failed.attributes or {})["exception.stacktrace"]
    )
    assert SECRET_PART not in json.dumps([str(r.attributes) for r in records])
    resource = exported.get_finished_logs()[0].resource.attributes
    assert resource["maestro.project"] == "alpha"
    assert resource["jurisdiction"] == "eu"
    assert [line["event"] for line in _lines(json_logs)] == [
        "store.opened",
        "call.failed",
        "not.exported",
    ]  # stderr has every line either way


def test_no_logger_provider_unless_logs_are_exported() -> None:
    assert build_telemetry(TelemetryConfig()).logger_provider is None
    assert build_telemetry(TelemetryConfig(otlp_logs=True)).logger_provider is None  # no endpoint
    assert (
        build_telemetry(TelemetryConfig(otlp_endpoint="http://127.0.0.1:4317")).logger_provider
        is None
    )
    telemetry = build_telemetry(
        TelemetryConfig(otlp_logs=True, otlp_endpoint="http://127.0.0.1:4317")
    )
    try:
        assert telemetry.logger_provider is not None
    finally:
        telemetry.shutdown()


async def test_a_line_logged_during_a_call_carries_the_calls_trace(
    tmp_path: Path, json_logs: io.StringIO
) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    async with stack(tmp_path, primary=broken) as s:
        await events(s.client, stream_request())
        spans = s.server.spans.get_finished_spans()
    [failed] = [line for line in _lines(json_logs) if line["event"] == "inference.attempt_failed"]
    [chat] = [span for span in spans if span.name == "chat primary"]
    assert failed["trace_id"] == f"{chat.context.trace_id:032x}"
    assert chat.parent is not None
    assert failed["span_id"] == f"{chat.parent.span_id:016x}"  # the RPC's span, current then
