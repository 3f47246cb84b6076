"""OpenTelemetry set-up: traces for every RPC, metrics for Prometheus, logs over OTLP on request.

Every signal of a process carries one resource: `service.name`, `service.version`, and where
they apply `maestro.project` (a process serving one project: a `maestro data-plane` follower
serves its key's) and `jurisdiction` (`telemetry.jurisdiction`). A control plane serving many
projects has no `maestro.project`: each span names its project itself.

The Prometheus endpoint binds `telemetry.metrics_host` (loopback by default); bound anywhere
else it serves TLS and only to a scraper with a client certificate (config validation insists).

The providers are built once per process from config and passed to the gRPC interceptors
explicitly (tests pass their own with in-memory exporters) rather than installed as globals
behind the caller's back; `install_global` is for the server process only. A logger provider
exists only when logs are exported (`telemetry.otlp_logs` with an endpoint, or processors a
test passes): otherwise no log record is ever built for OpenTelemetry.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from maestro.core.settings import TelemetryConfig

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
    from prometheus_client import CollectorRegistry

PROJECT_ATTRIBUTE = "maestro.project"
JURISDICTION_ATTRIBUTE = "jurisdiction"


def service_version() -> str:
    try:
        return metadata.version("maestro")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider | None = None
    """Set only when logs are exported (see `maestro.core.logs.export_logs`)."""

    def install_global(self) -> None:
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        if self.logger_provider is not None:
            self.logger_provider.shutdown()


def resource_attributes(config: TelemetryConfig, project: str | None = None) -> dict[str, str]:
    """The attributes every signal of the process carries."""
    attributes = {"service.name": config.service_name, "service.version": service_version()}
    if project:
        attributes[PROJECT_ATTRIBUTE] = project
    if config.jurisdiction:
        attributes[JURISDICTION_ATTRIBUTE] = config.jurisdiction
    return attributes


def build_telemetry(
    config: TelemetryConfig,
    *,
    project: str | None = None,
    span_processors: tuple[SpanProcessor, ...] = (),
    metric_readers: tuple[MetricReader, ...] = (),
    log_processors: tuple[LogRecordProcessor, ...] = (),
) -> Telemetry:
    """`project`: the one project this process serves (its `maestro.project` resource
    attribute); None for a process serving many."""
    resource = Resource.create(resource_attributes(config, project))
    tracer_provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(config.trace_sampling_ratio))
    )
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    if config.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
    readers = list(metric_readers)
    if config.otlp_metrics and config.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=config.otlp_endpoint),
                export_interval_millis=config.otlp_metrics_interval_s * 1000,
            )
        )
    if config.metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        serve_metrics(config, config.metrics_port)
        readers.append(PrometheusMetricReader())
    return Telemetry(
        tracer_provider,
        MeterProvider(resource=resource, metric_readers=readers),
        _logger_provider(config, resource, log_processors),
    )


def _logger_provider(
    config: TelemetryConfig, resource: Resource, processors: tuple[LogRecordProcessor, ...]
) -> LoggerProvider | None:
    otlp = config.otlp_logs and bool(config.otlp_endpoint)
    if not (otlp or processors):
        return None
    from opentelemetry.sdk._logs import LoggerProvider

    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    for processor in processors:
        provider.add_log_record_processor(processor)
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=config.otlp_endpoint))
        )
    return provider


def serve_metrics(
    config: TelemetryConfig, port: int, registry: CollectorRegistry | None = None
) -> WSGIServer:
    """Serve Prometheus metrics on `config.metrics_host:port` in a daemon thread, over TLS
    (TLS 1.2 or newer) when `config.metrics_tls` is set, asking for a client certificate when
    it names a client CA. `shutdown()` on the result stops it."""
    from prometheus_client import REGISTRY, start_http_server

    tls = config.metrics_tls
    server, _ = start_http_server(
        port,
        addr=config.metrics_host,
        registry=registry or REGISTRY,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        client_cafile=str(tls.client_ca_file) if tls.client_ca_file else None,
        client_auth_required=tls.client_ca_file is not None,
        tls_min_version=ssl.TLSVersion.TLSv1_2,
    )
    return server
