"""The benchmarks' OTLP receiver (`bench/_otlp_receiver.py`) fed by the SDK's real OTLP/gRPC
exporters: spans keep their ids, parents, kinds, resource and attributes; logs and metrics
exports are accepted and counted."""

from __future__ import annotations

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench._otlp_receiver import OtlpReceiver, StoredSpan


def test_spans_sent_by_the_otlp_exporter_arrive_with_their_tree_and_attributes() -> None:
    with OtlpReceiver() as receiver:
        provider = TracerProvider(
            resource=Resource.create({"service.name": "svc-a", "maestro.project": "demo"})
        )
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
        )
        tracer = provider.get_tracer("test")
        with (
            tracer.start_as_current_span("outer", kind=trace.SpanKind.SERVER) as outer,
            tracer.start_as_current_span(
                "inner", kind=trace.SpanKind.CLIENT, attributes={"n": 3, "tags": ["a", "b"]}
            ) as inner,
        ):
            pass
        provider.shutdown()
        spans = {s.name: s for s in receiver.wait_for(lambda got: len(got) >= 2, timeout_s=10)}
        assert receiver.counts.spans == 2
        assert receiver.counts.services == {"svc-a": 2}
    got_outer, got_inner = spans["outer"], spans["inner"]
    assert got_outer.trace_id == f"{outer.get_span_context().trace_id:032x}"
    assert got_inner.trace_id == got_outer.trace_id
    assert got_outer.parent_span_id == ""
    assert (
        got_inner.parent_span_id == got_outer.span_id == f"{outer.get_span_context().span_id:016x}"
    )
    assert got_inner.span_id == f"{inner.get_span_context().span_id:016x}"
    assert (got_outer.kind, got_inner.kind) == ("server", "client")
    assert got_inner.attributes == {"n": 3, "tags": ("a", "b")}
    assert got_inner.service == "svc-a"
    assert got_inner.resource["maestro.project"] == "demo"
    assert got_inner.scope == "test"


def test_metrics_exports_are_accepted_and_counted() -> None:
    with OtlpReceiver() as receiver:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=receiver.endpoint, insecure=True),
            export_interval_millis=60_000,
        )
        provider = MeterProvider(metric_readers=[reader])
        provider.get_meter("test").create_counter("calls").add(2, {"k": "v"})
        assert reader.force_flush(timeout_millis=10_000)
        provider.shutdown()
        assert receiver.counts.metric_requests >= 1
        assert receiver.counts.metric_points >= 1


def test_logs_exports_are_accepted_and_counted() -> None:
    request = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord()] * 2)]
            )
        ]
    )
    with OtlpReceiver() as receiver:
        with grpc.insecure_channel(f"{receiver.host}:{receiver.port}") as channel:
            stub = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.Export(request, timeout=10)
        assert (receiver.counts.log_requests, receiver.counts.log_records) == (1, 2)


def test_spans_past_the_bound_are_counted_not_kept() -> None:
    with OtlpReceiver(max_spans=1) as receiver:
        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
        )
        tracer = provider.get_tracer("test")
        for name in ("a", "b", "c"):
            tracer.start_span(name).end()
        provider.shutdown()
        assert receiver.span_count() == 1
        assert receiver.counts.spans == 3
        assert receiver.counts.spans_dropped == 2


def _span(
    name: str,
    span_id: str,
    parent: str = "",
    *,
    kind: str = "internal",
    service: str = "maestro-data-plane",
) -> StoredSpan:
    return StoredSpan(
        trace_id="ab" * 16,
        span_id=span_id * 16,
        parent_span_id=parent * 16 if parent else "",
        name=name,
        kind=kind,
        start_ns=0,
        end_ns=1,
        service=service,
        resource={"service.name": service},
        attributes={},
        scope="test",
        status_code=0,
    )


def test_the_linkage_bench_tells_a_linked_tree_from_broken_ones() -> None:
    from bench.trace_linkage_bench import check_trace, trace_roles

    expected = [("caller",), ("ingress",), ("route",), ("chat",), ("provider",)]
    caller = _span("bench.request", "1", kind="client", service="maestro-bench")
    ingress = _span("POST /v1/chat/completions", "2", "1", kind="server")
    chat = _span("chat steady", "3", "2", kind="client")
    route = _span("maestro.route.choose", "4", "3")
    provider = _span("POST", "5", "3", kind="client")
    # The simulator's own span under the call: the provider's side of the hop, not an ingress.
    sim = _span("POST /v1/chat/completions", "6", "3", kind="server", service="maestro-sim")
    linked = [caller, ingress, chat, route, provider]
    assert check_trace(linked, expected, "caller") == []
    assert check_trace([caller, ingress, chat, route, sim], expected, "caller") == []
    assert trace_roles([chat, sim])[sim.span_id] == "provider"
    assert check_trace([caller, ingress, chat, route], expected, "caller") == [
        "missing provider span"
    ]
    orphan = _span("agent.node.run", "7", "9")
    assert check_trace([*linked, orphan], expected, "caller") == [
        "orphan: agent.node.run (parent not in the trace) x1"
    ]
    lane = _span("serve.vllm.request", "8", kind="server", service="maestro-serving")
    assert check_trace([*linked, lane], expected, "caller") == [
        "2 roots: bench.request, serve.vllm.request"
    ]
    server_root = _span("POST /v1/chat/completions", "2", kind="server")
    assert check_trace([server_root, chat, route, provider], expected[1:], "caller") == [
        "root is 'POST /v1/chat/completions' (ingress), not the caller span"
    ]
