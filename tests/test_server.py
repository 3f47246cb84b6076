"""The server's contract-level behaviour: pending services, health, tracing, error hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from structlog.testing import capture_logs

from maestro.app.server import PROJECT_SERVICE
from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.v1 import rollout_service_pb2
from tests.conftest import RunningServer, start_server

ROLLOUT_SERVICE = rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"]
PENDING_METHODS = [
    pytest.param(method, id=f"{ROLLOUT_SERVICE.name}.{method.name}")
    for method in ROLLOUT_SERVICE.methods
]
"""A service turned off in the config (rollouts.enabled false) stays in the contract: its
methods answer UNIMPLEMENTED naming the capability, as a service not built yet would."""


@pytest.fixture
async def without_rollouts(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(tmp_path, **{"rollouts.enabled": False})
    yield running
    await running.plane.stop(grace_s=0)
    running.telemetry.shutdown()


async def _invoke(channel: grpc.aio.Channel, method: descriptor.MethodDescriptor) -> None:
    request = message_factory.GetMessageClass(method.input_type)()
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs: dict[str, Any] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    if method.client_streaming:
        requests = iter([request])
        if method.server_streaming:
            async for _ in channel.stream_stream(path, **kwargs)(requests):
                pass
        else:
            await channel.stream_unary(path, **kwargs)(requests)
    elif method.server_streaming:
        async for _ in channel.unary_stream(path, **kwargs)(request):
            pass
    else:
        await channel.unary_unary(path, **kwargs)(request)


@pytest.mark.parametrize("method", PENDING_METHODS)
async def test_a_disabled_services_method_answers_unimplemented_naming_the_capability(
    without_rollouts: RunningServer, method: descriptor.MethodDescriptor
) -> None:
    async with without_rollouts.client(without_rollouts.alpha_key) as alpha:
        with pytest.raises(MaestroRpcError) as caught:
            await _invoke(alpha.channel, method)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.reason == "CAPABILITY_NOT_AVAILABLE"
    assert error.metadata["method"] == method.name
    assert "rollouts.enabled is false" in error.message


async def test_a_disabled_services_method_still_requires_a_key(
    without_rollouts: RunningServer,
) -> None:
    async with without_rollouts.client(None) as anonymous:
        with pytest.raises(MaestroRpcError) as caught:
            await _invoke(anonymous.channel, ROLLOUT_SERVICE.methods[0])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_reports_per_service_status_without_a_key(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
        projects = await health.Check(
            health_pb2.HealthCheckRequest(service=PROJECT_SERVICE.full_name)
        )
        graphs = await health.Check(
            health_pb2.HealthCheckRequest(service="maestro.v1.GraphService")
        )
        evals = await health.Check(health_pb2.HealthCheckRequest(service="maestro.v1.EvalService"))
        rollouts = await health.Check(
            health_pb2.HealthCheckRequest(service="maestro.v1.RolloutService")
        )
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert projects.status == health_pb2.HealthCheckResponse.SERVING
    assert graphs.status == health_pb2.HealthCheckResponse.SERVING
    assert evals.status == health_pb2.HealthCheckResponse.SERVING
    assert rollouts.status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_ends_open_health_watch_cleanly_within_grace(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.plane.stop(grace_s=5))
        statuses = []
        while (response := await watch.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            statuses.append(response.status)
        await stopping
        assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert await watch.code() == grpc.StatusCode.OK


async def test_calls_beyond_the_concurrency_limit_are_resource_exhausted(tmp_path: Path) -> None:
    running = await start_server(tmp_path, **{"server.max_concurrent_rpcs": 1})
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            await watch.read()  # one call in flight: the limit is reached
            async with running.client(running.alpha_key) as client:
                with pytest.raises(MaestroRpcError) as caught:
                    await client.get_project("projects/alpha")
            watch.cancel()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await running.plane.stop(grace_s=0)


async def test_every_rpc_is_traced_with_its_method_and_project(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    await alpha.get_project("projects/alpha")
    spans = server.spans.get_finished_spans()
    server_spans = [
        s
        for s in spans
        if s.name == "/maestro.v1.ProjectService/GetProject" and s.kind.name == "SERVER"
    ]
    client_spans = [
        s
        for s in spans
        if s.name == "/maestro.v1.ProjectService/GetProject" and s.kind.name == "CLIENT"
    ]
    assert server_spans
    assert client_spans
    assert server_spans[0].attributes is not None
    assert server_spans[0].attributes["rpc.service"] == "maestro.v1.ProjectService"
    assert server_spans[0].attributes["maestro.project"] == "alpha"
    # The client span is the server span's parent: trace context crossed the wire.
    assert server_spans[0].context.trace_id == client_spans[0].context.trace_id


async def test_failed_rpc_span_records_the_status_code(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    with pytest.raises(MaestroRpcError):
        await alpha.get_project("projects/beta")
    span = next(s for s in server.spans.get_finished_spans() if s.kind.name == "SERVER")
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


async def test_every_rpc_records_its_duration_by_method_and_status(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    await alpha.get_project("projects/alpha")
    with pytest.raises(MaestroRpcError):
        await alpha.get_project("projects/beta")
    data = server.metrics.get_metrics_data()
    assert data is not None
    points = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "rpc.server.duration"
        for point in metric.data.data_points
    ]
    by_status = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.count
        for p in points
        if isinstance(p, HistogramDataPoint) and p.attributes is not None
    }
    assert by_status == {("GetProject", 0): 1, ("GetProject", 7): 1}


async def test_unexpected_exception_becomes_internal_without_traceback(
    server: RunningServer, alpha: AsyncMaestroClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(*_: object) -> None:
        raise RuntimeError("secret database password in a traceback")

    monkeypatch.setattr(server.plane.projects, "get_project", explode)
    with capture_logs() as logs, pytest.raises(MaestroRpcError) as caught:
        await alpha.get_project("projects/alpha")
    error = caught.value
    correlation_id = error.metadata["correlation_id"]
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    # The same fixed message as the HTTP ingress's 500 (one path: errors.internal_error).
    assert error.message == (
        f"internal error (correlation id {correlation_id}); the server log has details"
    )
    assert "secret" not in error.message
    assert "Traceback" not in error.message
    logged = [entry for entry in logs if entry["event"] == "rpc.unhandled_error"]
    assert [entry["correlation_id"] for entry in logged] == [correlation_id]
    assert logged[0]["exc_info"] is True  # the renderer writes the traceback to the log only
    assert logged[0]["method"] == "/maestro.v1.ProjectService/GetProject"
    monkeypatch.undo()
    assert (await alpha.get_project("projects/alpha")).name == "projects/alpha"
