"""The blocking client, for scripts and the CLI.

Same stubs and behaviour as `AsyncMaestroClient`.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel as otel_intercept
from opentelemetry.trace import TracerProvider

from maestro.clients._channel import DEFAULT_TIMEOUT_S, ChannelSettings, resolve_credentials
from maestro.clients._interceptors import SyncClientInterceptor
from maestro.v1 import (
    eval_service_pb2_grpc,
    graph_service_pb2_grpc,
    inference_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    rollout_service_pb2_grpc,
    route_service_pb2_grpc,
)


class MaestroClient:
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
        if credentials is None:
            self._raw_channel = grpc.insecure_channel(target, options=settings.options())
        else:
            self._raw_channel = grpc.secure_channel(target, credentials, options=settings.options())
        # OpenTelemetry's sync interceptor has its own interface, applied by its own helper.
        traced = otel_intercept(
            self._raw_channel, client_interceptor(tracer_provider=tracer_provider)
        )
        self.channel = grpc.intercept_channel(
            traced, SyncClientInterceptor(settings.metadata(), settings.timeout_s)
        )
        self.projects = project_service_pb2_grpc.ProjectServiceStub(self.channel)
        self.routes = route_service_pb2_grpc.RouteServiceStub(self.channel)
        self.graphs = graph_service_pb2_grpc.GraphServiceStub(self.channel)
        self.evals = eval_service_pb2_grpc.EvalServiceStub(self.channel)
        self.rollouts = rollout_service_pb2_grpc.RolloutServiceStub(self.channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(self.channel)

    def get_project(self, name: str) -> project_service_pb2.Project:
        return self.projects.GetProject(project_service_pb2.GetProjectRequest(name=name)).project

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> MaestroClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
