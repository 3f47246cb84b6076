"""`maestro data-plane`: the data plane as its own process, following a remote control plane.

It serves InferenceService (gRPC, with health and reflection) and the OpenAI-compatible ingress,
routes with snapshots it follows on WatchConfig, reports observations on ReportObservations and
checks callers' API keys with the control plane. Health says NOT_SERVING and the HTTP ingress
answers 503 (one `Readiness` flag) until the first snapshot arrived, so a load balancer sends
nothing before it can route.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maestro.app.config import MaestroConfig
from maestro.clients import AsyncMaestroClient, channel_credentials
from maestro.core.errors import MaestroError
from maestro.core.quotas import limiter_from
from maestro.core.readiness import Readiness
from maestro.core.rpc.health import NOT_SERVING, SERVING, HealthServicer
from maestro.core.rpc.reflection import enable_reflection
from maestro.core.rpc.server import build_grpc_server
from maestro.core.telemetry import Telemetry
from maestro.core.tls import bind, server_ssl_context
from maestro.data_plane.assembly import DataPlane, build_data_plane
from maestro.data_plane.remote import ObservationReporter, RemoteKeyVerifier, SnapshotFollower
from maestro.data_plane.settings import DataPlaneConfig
from maestro.routing.decider import Decider
from maestro.routing.snapshots import SnapshotRegistry
from maestro.routing.tagging import ContentTagger
from maestro.v1 import inference_service_pb2

log = structlog.get_logger(__name__)
INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
KEY_PROJECT_TIMEOUT_S = 5.0
"""How long a starting data plane waits to learn its key's project (its telemetry's
`maestro.project`) from the control plane."""


@dataclass
class DataPlaneServer:
    config: MaestroConfig
    server: grpc.aio.Server
    health: HealthServicer
    data: DataPlane
    decider: Decider
    follower: SnapshotFollower
    reporter: ObservationReporter
    client: AsyncMaestroClient
    verifier: RemoteKeyVerifier
    port: int
    readiness: Readiness = field(default_factory=Readiness)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        self.readiness.mark_draining()  # the ingress answers 503 from here on
        if self.stopped:
            return
        self.stopped = True
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        log.info("server.stopping", grace_period_s=grace)
        await self.health.shut_down()
        await self.data.stop_http()
        await self.server.stop(grace)
        await self.data.close()  # flushes the last observations to the reporter
        await self.reporter.drain(timeout_s=min(grace, 2.0))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()
        await self.verifier.close()
        log.info("server.stopped")


async def _serving_once_synced(
    follower: SnapshotFollower, health: HealthServicer, readiness: Readiness
) -> None:
    await follower.synced.wait()
    if readiness.draining:
        return
    await health.set(INFERENCE_SERVICE, SERVING)
    await health.set("", SERVING)
    readiness.mark_ready()
    log.info("server.serving", reason="first snapshot synced")


def _control_plane_credentials(settings: DataPlaneConfig) -> grpc.ChannelCredentials | None:
    tls = settings.control_plane_tls
    if not tls.enabled:
        return None
    return channel_credentials(tls.ca_file, tls.cert_file, tls.key_file)


async def key_project(
    config: MaestroConfig, timeout_s: float = KEY_PROJECT_TIMEOUT_S
) -> str | None:
    """The project of the data plane's key, the one it follows and serves (its telemetry's
    `maestro.project`), asked of the control plane. None when no key is set or the control
    plane does not say within `timeout_s`: the start goes on without it."""
    settings = config.data_plane
    target, api_key = settings.control_plane_target, settings.control_plane_api_key
    if not target or not api_key:
        return None
    verifier = RemoteKeyVerifier(target, 0.0, _control_plane_credentials(settings))
    try:
        async with asyncio.timeout(timeout_s):
            principal = await verifier.authenticate(api_key)
    except (TimeoutError, MaestroError):
        principal = None
    finally:
        await verifier.close()
    if principal is None:
        log.warning(
            "telemetry.project_unknown",
            control_plane=target,
            hint="the control plane did not name the project of data_plane.control_plane_api_key "
            f"within {timeout_s:g} s (unreachable, or the key refused): this process's traces, "
            "metrics and logs carry no maestro.project",
        )
        return None
    return principal.project_id


async def start_data_plane_server(
    config: MaestroConfig, telemetry: Telemetry, readiness: Readiness | None = None
) -> DataPlaneServer:
    """Start and return at once; it turns ready (health SERVING, the ingress open) when the
    first snapshot arrives. `readiness` already draining (a signal during the start) keeps it
    from turning ready: the caller stops what is returned."""
    readiness = readiness or Readiness()
    settings = config.data_plane
    target, api_key = settings.control_plane_target, settings.control_plane_api_key
    if not target or not api_key:
        raise ValueError(
            "a data plane needs data_plane.control_plane_target and control_plane_api_key"
        )
    # A certificate or key that does not load stops the start before anything is open.
    http_tls = server_ssl_context(config.server.tls) if config.server.tls.enabled else None
    node_id = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
    registry = SnapshotRegistry()
    decider = Decider(
        registry,
        ContentTagger(),
        tracer=telemetry.tracer_provider.get_tracer("maestro.route"),
        meter=telemetry.meter_provider.get_meter("maestro.route"),
    )
    credentials = _control_plane_credentials(settings)
    client = AsyncMaestroClient(
        target,
        api_key=api_key,
        credentials=credentials,
        tracer_provider=telemetry.tracer_provider,
    )
    verifier = RemoteKeyVerifier(
        target, config.auth.key_cache_ttl_s, credentials, telemetry.tracer_provider
    )
    follower = SnapshotFollower(client, registry, node_id)
    reporter = ObservationReporter(client, node_id)
    limiter = limiter_from(config.server.limits)
    data = await build_data_plane(
        settings,
        decider,
        verifier.authenticate,
        None,
        telemetry,
        node_id,
        forward=reporter,
        limiter=limiter,
        readiness=readiness,
    )
    server = build_grpc_server(
        config.server, telemetry, verifier.authenticate, None, "maestro.data_plane", limiter
    )
    data.register(server, decider)
    health = HealthServicer()  # "" NOT_SERVING until the first snapshot
    await health.set(INFERENCE_SERVICE, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(
        server, [INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    )
    port = bind(server, config.server.host, config.server.port, config.server.tls)
    if port == 0:
        await data.close()
        await client.close()
        await verifier.close()
        raise OSError(f"cannot bind {config.server.host}:{config.server.port}")
    await server.start()
    running = DataPlaneServer(
        config, server, health, data, decider, follower, reporter, client, verifier, port,
        readiness,
    )  # fmt: skip
    running.tasks = [
        asyncio.create_task(follower.run()),
        asyncio.create_task(reporter.run()),
        asyncio.create_task(_serving_once_synced(follower, health, readiness)),
    ]
    await data.start_http(http_tls)
    log.info(
        "server.ready",
        address=running.address,
        role="data_plane",
        control_plane=target,
        node_id=node_id,
        tls=config.server.tls.enabled,
        control_plane_tls=settings.control_plane_tls.enabled,
        openai_base_url=data.base_url,
    )
    return running
