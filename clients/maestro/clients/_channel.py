"""Channel construction shared by the async and sync clients."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata as importlib_metadata

import grpc

from maestro.clients.retry import service_config
from maestro.v1 import (
    eval_service_pb2,
    graph_service_pb2,
    inference_service_pb2,
    project_service_pb2,
    rollout_service_pb2,
    route_service_pb2,
)

API_FILES = (
    project_service_pb2.DESCRIPTOR,
    route_service_pb2.DESCRIPTOR,
    graph_service_pb2.DESCRIPTOR,
    eval_service_pb2.DESCRIPTOR,
    rollout_service_pb2.DESCRIPTOR,
    inference_service_pb2.DESCRIPTOR,
)
DEFAULT_TIMEOUT_S = 30.0


def _user_agent() -> str:
    try:
        return f"maestro-python/{importlib_metadata.version('maestro')}"
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover
        return "maestro-python"


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """What both clients need to open a channel.

    `credentials`: TLS channel credentials; None means plaintext (loopback and dev only).
    """

    target: str
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    credentials: grpc.ChannelCredentials | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),) if self.api_key else ()

    def options(self) -> list[tuple[str, object]]:
        return [
            ("grpc.service_config", service_config(API_FILES)),
            ("grpc.enable_retries", 1),
            ("grpc.primary_user_agent", _user_agent()),
        ]
