"""`grpc.health.v1.Health` with per-service status, whose Watch streams end on shutdown.

grpcio-health-checking's servicer keeps Watch streams open until the server cancels them when the
grace period runs out. Here `shut_down()` sets every service NOT_SERVING, each watcher sends
that status and then ends its stream with OK, so clients see a clean end well inside the grace
period and load balancers drain first.

Nothing is SERVING until the server says so: the overall status `""` starts NOT_SERVING, and the
server sets it (with each service's) once its first routing snapshot is applied, when
`maestro.core.readiness.Readiness` turns ready too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ServingStatus = int  # health_pb2.HealthCheckResponse.ServingStatus values
SERVING: ServingStatus = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: ServingStatus = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: ServingStatus = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": NOT_SERVING}
        self._changed = asyncio.Condition()
        self._stopping = False

    async def set(self, service: str, status: ServingStatus) -> None:
        async with self._changed:
            if not self._stopping:
                self._status[service] = status
                self._changed.notify_all()

    async def shut_down(self) -> None:
        """Every service NOT_SERVING, for good; open Watch streams send it and end."""
        async with self._changed:
            self._stopping = True
            self._status = dict.fromkeys(self._status, NOT_SERVING)
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # An async generator rather than `context.write`: interceptors that wrap streaming
        # handlers (OpenTelemetry's included) iterate the handler's responses.
        last: ServingStatus | None = None
        while True:
            async with self._changed:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                stopping = self._stopping
                if status == last and not stopping:
                    await self._changed.wait()
                    continue
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if stopping:
                return
