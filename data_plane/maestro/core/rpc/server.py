"""The grpc.aio server every Maestro process serves on, with its interceptors and limits.

Order matters: OpenTelemetry's interceptor wraps everything, so the span covers authentication
and error mapping too; the guard authenticates, maps domain errors to `google.rpc.Status` and
records `rpc.server.duration`.
"""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from maestro.core.quotas import UNLIMITED, Limiter
from maestro.core.rpc.interceptors import Authenticate, GuardInterceptor
from maestro.core.settings import ServerConfig
from maestro.core.telemetry import Telemetry

MAX_SEND_BYTES = 64 * 1024 * 1024


def build_grpc_server(
    config: ServerConfig,
    telemetry: Telemetry,
    authenticate: Authenticate,
    insecure_project: str | None,
    meter_name: str,
    limiter: Limiter = UNLIMITED,
) -> grpc.aio.Server:
    limit = config.max_message_bytes
    return grpc.aio.server(
        interceptors=[
            aio_server_interceptor(tracer_provider=telemetry.tracer_provider),
            GuardInterceptor(
                authenticate,
                insecure_project,
                telemetry.meter_provider.get_meter(meter_name),
                limiter,
            ),
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            # Requests stay bounded; a response may be larger (WatchConfig's snapshots carry
            # prompt versions), up to what clients accept.
            ("grpc.max_send_message_length", max(limit, MAX_SEND_BYTES)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
