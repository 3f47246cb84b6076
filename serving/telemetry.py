"""The lane's traces: one `serve.vllm.request` span per chat completion, a child of the caller's
trace when the request carries W3C `traceparent` (the data plane sends its call's context with
every lane request). Spans go to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the SDK's own
environment variables apply), else nowhere.

The resource names the lane as the other Maestro processes name themselves: `service.name`
`maestro-serving`, `service.version` (the installed `maestro` package's), `maestro.lane`, and
`jurisdiction` from `MAESTRO_JURISDICTION` when set (`telemetry.jurisdiction` of the planes).

Within the lane a request crosses no deployment handle: Ray Serve's proxy (or its HAProxy direct
ingress) hands the HTTP request, headers included, to the `VllmGateway` replica that runs the
engine, and the span is made there from the request's own `traceparent`. (The one handle call,
a replica's load report to the status application, belongs to no request.)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "maestro-serving"
JURISDICTION_ENV = "MAESTRO_JURISDICTION"
_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER: DefaultGetter = DefaultGetter()
_tracer: trace.Tracer | None = None


def service_version() -> str:
    """The `maestro` package's version; in the serving venv, which runs the checkout without
    installing it, the version its pyproject.toml declares."""
    try:
        return metadata.version("maestro")
    except metadata.PackageNotFoundError:
        try:
            with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as file:
                return str(tomllib.load(file)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


def lane_resource(lane: str, environ: Mapping[str, str] = os.environ) -> Resource:
    attributes = {
        "service.name": SERVICE_NAME,
        "service.version": service_version(),
        "maestro.lane": lane,
    }
    jurisdiction = environ.get(JURISDICTION_ENV, "").strip()
    if jurisdiction:
        attributes["jurisdiction"] = jurisdiction
    return Resource.create(attributes)


def lane_tracer(lane: str) -> trace.Tracer:
    global _tracer
    if _tracer is None:
        provider = TracerProvider(resource=lane_resource(lane))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _tracer = provider.get_tracer("maestro.serving")
    return _tracer


def caller_context(headers: Mapping[str, str]) -> Context:
    """The context a request's `traceparent` (and `tracestate`) names; empty without one."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)
