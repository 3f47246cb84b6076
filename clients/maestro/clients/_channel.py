"""Channel construction shared by the async and sync clients."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

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


MAX_RECEIVE_BYTES = 64 * 1024 * 1024
"""What a client accepts in one message (gRPC's default is 4 MiB)."""


def channel_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: `ca_file` is the CA the server's certificate
    must chain to (unset: the system's roots); `cert_file` and `key_file` are this client's
    certificate for a server that requires mutual TLS."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file are given together")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file is not None else None,
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )


def resolve_credentials(
    credentials: grpc.ChannelCredentials | None,
    ca_file: str | Path | None,
    cert_file: str | Path | None,
    key_file: str | Path | None,
) -> grpc.ChannelCredentials | None:
    """The clients' `credentials`, or TLS from the files when any is given; None: plaintext."""
    if credentials is not None:
        if ca_file is not None or cert_file is not None or key_file is not None:
            raise ValueError("give credentials or TLS files, not both")
        return credentials
    if ca_file is None and cert_file is None and key_file is None:
        return None
    return channel_credentials(ca_file, cert_file, key_file)


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
            # A data plane's WatchConfig responses carry every prompt version it serves.
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ]
