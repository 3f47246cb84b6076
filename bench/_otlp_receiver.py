"""An OTLP/gRPC receiver for benchmarks: what the processes under test export lands here.

Built on the official protocol definitions (`opentelemetry-proto`): TraceService, LogsService and
MetricsService on one loopback gRPC server, so any OTLP exporter pointed at `endpoint` succeeds.
Spans are kept, flattened (`StoredSpan`: ids as hex, resource and span attributes as plain
values); logs and metrics are only counted. Bounded: past `max_spans` spans are counted as
dropped, not kept.

    receiver = OtlpReceiver()
    receiver.start()                       # serves on 127.0.0.1:<free port>
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    ...
    receiver.wait_quiet(quiet_s=2, timeout_s=30)
    spans = receiver.spans()
    receiver.stop()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}


def any_value(value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value (arrays as tuples, kvlists as dicts)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass(frozen=True, slots=True)
class StoredSpan:
    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits."""
    parent_span_id: str
    """16 hex digits; empty for a root span."""
    name: str
    kind: str
    """internal, server, client, producer, consumer or unspecified."""
    start_ns: int
    end_ns: int
    service: str
    """The resource's `service.name` ("" when it has none)."""
    resource: Mapping[str, Any]
    attributes: Mapping[str, Any]
    scope: str
    status_code: int
    """0 unset, 1 ok, 2 error."""


def stored_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[StoredSpan]:
    out: list[StoredSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                out.append(
                    StoredSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_KINDS.get(span.kind, "unspecified"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        service=service,
                        resource=resource,
                        attributes=attributes(span.attributes),
                        scope=scope,
                        status_code=span.status.code,
                    )
                )
    return out


def _data_points(metric: metrics_pb2.Metric) -> int:
    which = metric.WhichOneof("data")
    if which is None:
        return 0
    return len(getattr(metric, which).data_points)


@dataclass
class Counts:
    trace_requests: int = 0
    spans: int = 0
    spans_dropped: int = 0
    log_requests: int = 0
    log_records: int = 0
    traced_log_records: int = 0
    """Log records that carry a trace id (written inside a span)."""
    metric_requests: int = 0
    metric_points: int = 0
    services: dict[str, int] = field(default_factory=dict)
    """Spans received per `service.name`."""


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._add_spans(stored_spans(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        records = [
            record
            for logs in request.resource_logs
            for scope in logs.scope_logs
            for record in scope.log_records
        ]
        traced = sum(1 for record in records if any(record.trace_id))
        with self._receiver._lock:
            self._receiver.counts.log_requests += 1
            self._receiver.counts.log_records += len(records)
            self._receiver.counts.traced_log_records += traced
            self._receiver._last_export = time.monotonic()
        return logs_service_pb2.ExportLogsServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        points = sum(
            _data_points(metric)
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
        with self._receiver._lock:
            self._receiver.counts.metric_requests += 1
            self._receiver.counts.metric_points += points
            self._receiver._last_export = time.monotonic()
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """OTLP/gRPC on `host:port` (0: a free port), in a thread pool of its own."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, max_spans: int = 2_000_000
    ) -> None:
        self.host = host
        self.port = port
        self.max_spans = max_spans
        self.counts = Counts()
        self._spans: list[StoredSpan] = []
        self._lock = threading.Lock()
        self._last_export = time.monotonic()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        """What an exporter's `endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT) should be."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> int:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self.port

    def stop(self, grace_s: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait(timeout=(grace_s or 0) + 5)
            self._server = None

    def _add_spans(self, spans: list[StoredSpan]) -> None:
        with self._lock:
            counts = self.counts
            counts.trace_requests += 1
            counts.spans += len(spans)
            room = max(0, self.max_spans - len(self._spans))
            counts.spans_dropped += max(0, len(spans) - room)
            self._spans.extend(spans[:room])
            for span in spans:
                counts.services[span.service] = counts.services.get(span.service, 0) + 1
            self._last_export = time.monotonic()

    def spans(self) -> list[StoredSpan]:
        """A copy of the spans received so far."""
        with self._lock:
            return list(self._spans)

    def span_count(self) -> int:
        with self._lock:
            return len(self._spans)

    def wait_quiet(self, quiet_s: float = 2.0, timeout_s: float = 30.0) -> bool:
        """Until nothing arrived for `quiet_s` (True), or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = time.monotonic() - self._last_export
            if idle >= quiet_s:
                return True
            time.sleep(min(0.1, quiet_s / 4))
        return False

    def wait_for(
        self,
        predicate: Callable[[list[StoredSpan]], object],
        timeout_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> list[StoredSpan]:
        """Until `predicate(spans)` is truthy; the spans then (bounded by `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the OTLP receiver did not see that in {timeout_s} s")
            time.sleep(poll_s)

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
