"""The async client: typed stubs for every maestro.v1 service on one channel.

    async with AsyncMaestroClient("127.0.0.1:50051", api_key=key) as client:
        project = await client.get_project("projects/demo")
        response = await client.projects.ListApiKeys(ListApiKeysRequest(parent=...), timeout=5)

Each stub attribute is the generated, fully typed stub; calls carry the API key, default to a
deadline, retry idempotent methods on UNAVAILABLE, and raise `MaestroRpcError` on failure.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from maestro.clients._channel import DEFAULT_TIMEOUT_S, ChannelSettings, resolve_credentials
from maestro.clients._interceptors import aio_interceptors
from maestro.v1 import (
    eval_service_pb2_grpc,
    graph_service_pb2_grpc,
    inference_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    rollout_service_pb2_grpc,
    route_service_pb2_grpc,
)


class AsyncMaestroClient:
    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        tracer_provider: TracerProvider | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        """`credentials`, or `ca_file` (the CA the server's certificate chains to) with an
        optional `cert_file` and `key_file` (mutual TLS), connect over TLS; neither: plaintext."""
        credentials = resolve_credentials(credentials, ca_file, cert_file, key_file)
        settings = ChannelSettings(target, api_key, timeout_s, credentials)
        interceptors: list[Any] = [
            *aio_client_interceptors(tracer_provider=tracer_provider),
            *aio_interceptors(settings.metadata(), settings.timeout_s),
        ]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=settings.options(), interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=settings.options(), interceptors=interceptors
            )
        self.projects = project_service_pb2_grpc.ProjectServiceStub(self.channel)
        self.routes = route_service_pb2_grpc.RouteServiceStub(self.channel)
        self.graphs = graph_service_pb2_grpc.GraphServiceStub(self.channel)
        self.evals = eval_service_pb2_grpc.EvalServiceStub(self.channel)
        self.rollouts = rollout_service_pb2_grpc.RolloutServiceStub(self.channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(self.channel)

    async def get_project(self, name: str) -> project_service_pb2.Project:
        response = await self.projects.GetProject(project_service_pb2.GetProjectRequest(name=name))
        return response.project

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncMaestroClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
