"""The lane's traces: one `serve.vllm.request` span per chat completion, a child of the caller's
trace when the request carries W3C `traceparent`. Spans go to OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (the SDK's own environment variables apply), else nowhere."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER: DefaultGetter = DefaultGetter()
_tracer: trace.Tracer | None = None


def lane_tracer(lane: str) -> trace.Tracer:
    global _tracer
    if _tracer is None:
        provider = TracerProvider(
            resource=Resource.create({"service.name": "maestro-serving", "maestro.lane": lane})
        )
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _tracer = provider.get_tracer("maestro.serving")
    return _tracer


def caller_context(headers: Mapping[str, str]) -> Context:
    return _PROPAGATOR.extract(headers, getter=_GETTER)
