"""Assembly of the data plane inside a Maestro process: providers, breakers, relay, the
InferenceService servicer and the OpenAI-compatible HTTP ingress (and, in the embedded default,
the simulated provider every deployment without an `api_base` is sent to)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
import structlog
from aiohttp import web

from maestro.core.quotas import UNLIMITED, Limiter
from maestro.core.readiness import ALWAYS_READY, Readiness
from maestro.core.rpc.interceptors import Authenticate
from maestro.core.telemetry import Telemetry
from maestro.data_plane.admission import Admission
from maestro.data_plane.breaker import BreakerSettings, Clock
from maestro.data_plane.http_ingress import OpenAIIngress
from maestro.data_plane.lanes import LaneMonitor
from maestro.data_plane.observations import ObservationSink, Observer
from maestro.data_plane.providers.litellm_adapter import LitellmProvider
from maestro.data_plane.providers.openai_compat import OpenAICompatProvider
from maestro.data_plane.relay import Relay
from maestro.data_plane.retry_budget import RetryBudget
from maestro.data_plane.service import InferenceService
from maestro.data_plane.servicer import InferenceServicer
from maestro.data_plane.settings import DataPlaneConfig
from maestro.data_plane.sim import SimProvider, load_profile
from maestro.data_plane.targets import TargetResolver
from maestro.routing.decider import Decider
from maestro.routing.signals import Observation
from maestro.v1 import inference_service_pb2_grpc

log = structlog.get_logger(__name__)
DEMO_PROFILE = "demo-profile.yaml"


def _both(first: ObservationSink, second: ObservationSink) -> ObservationSink:
    def sink(batch: list[Observation]) -> None:
        first(batch)
        second(batch)

    return sink


def breaker_settings(config: DataPlaneConfig) -> BreakerSettings:
    return BreakerSettings(
        window=config.breaker_window,
        min_calls=config.breaker_min_calls,
        failure_ratio=config.breaker_failure_ratio,
        open_s=config.breaker_open_s,
        probes=config.breaker_probes,
        close_after=config.breaker_close_after,
    )


@dataclass
class DataPlane:
    config: DataPlaneConfig
    service: InferenceService
    observer: Observer
    native: OpenAICompatProvider
    translating: LitellmProvider
    ingress: OpenAIIngress
    simulator: SimProvider | None = None
    runner: web.AppRunner | None = None
    http_port: int | None = None
    tls: bool = False
    """Whether the ingress serves TLS."""
    flusher: asyncio.Task[None] | None = None
    """Folds observations into live signals every `report_interval_s`."""
    lanes: LaneMonitor | None = None
    lane_poller: asyncio.Task[None] | None = None
    """Reads serving lanes' load every `lane_poll_interval_s`."""

    def register(self, server: grpc.aio.Server, routes: Decider) -> None:
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.service, routes), server
        )

    @property
    def base_url(self) -> str | None:
        """The OpenAI-compatible base URL of the ingress once started, https when it serves
        TLS; None while it is not serving."""
        if self.runner is None or self.http_port is None:
            return None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.config.http_host}:{self.http_port}/v1"

    async def start_http(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve the ingress; with `ssl_context`, TLS only (a plaintext request fails its
        handshake)."""
        if self.config.http_port is None:
            return
        self.runner = web.AppRunner(
            self.ingress.application(), handler_cancellation=True, access_log=None
        )
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, self.config.http_host, self.config.http_port, ssl_context=ssl_context
        )
        self.tls = ssl_context is not None
        await site.start()
        server = site._server  # aiohttp tells the bound port (for port 0) nowhere else
        sockets = getattr(server, "sockets", None) or ()
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http_port
        log.info(
            "data_plane.http_ready",
            address=f"{self.config.http_host}:{self.http_port}",
            tls=self.tls,
        )

    async def stop_http(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def close(self) -> None:
        await self.stop_http()
        for task in (self.flusher, self.lane_poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.lanes is not None:
            await self.lanes.aclose()
        self.observer.close()
        await self.native.aclose()
        await self.translating.aclose()
        if self.simulator is not None:
            await self.simulator.stop()


async def build_data_plane(
    config: DataPlaneConfig,
    routes: Decider,
    authenticate: Authenticate,
    insecure_project: str | None,
    telemetry: Telemetry,
    node_id: str = "",
    forward: ObservationSink | None = None,
    clock: Clock = time.monotonic,
    limiter: Limiter = UNLIMITED,
    readiness: Readiness = ALWAYS_READY,
) -> DataPlane:
    """The data plane of this process. `node_id` names it in the observations it reports
    (default: host and pid); `forward` also receives them (a remote control plane); `clock`
    times the breakers (a fake one in tests); `limiter` is the process's, shared with gRPC."""
    node_id = node_id or f"{socket.gethostname()}-{os.getpid()}"
    simulator = None
    if config.simulated_provider:
        profile = load_profile(
            config.simulated_profile
            or Path(str(resources.files("maestro.data_plane.sim") / DEMO_PROFILE))
        )
        simulator = SimProvider(profile, host="127.0.0.1")
        await simulator.start()
        log.info("data_plane.simulated_provider", base_url=simulator.base_url)
    meter = telemetry.meter_provider.get_meter("maestro.data_plane")
    observer = Observer(
        breaker_settings(config),
        meter,
        node_id=node_id,
        sink=_both(routes.ingest_observations, forward) if forward else routes.ingest_observations,
        on_breaker=routes.set_breaker_open,
        clock=clock,
    )
    native = OpenAICompatProvider()
    translating = LitellmProvider()
    targets = TargetResolver(native, translating, simulator.base_url if simulator else None)
    lanes = LaneMonitor(
        routes,
        interval_s=config.lane_poll_interval_s,
        shed_hold_s=config.lane_shed_hold_s,
        kv_cache_saturation=config.lane_kv_cache_saturation,
    )
    relay = Relay(
        targets,
        observer,
        RetryBudget(config.retry_budget_ratio, config.retry_budget_min),
        lanes,
        Admission(clock),
        tracer=telemetry.tracer_provider.get_tracer("maestro.data_plane"),
    )
    service = InferenceService(
        routes,
        relay,
        config,
        tracer=telemetry.tracer_provider.get_tracer("maestro.data_plane"),
        meter=meter,
        deployment_series=observer.series,
    )
    ingress = OpenAIIngress(
        service,
        routes,
        authenticate,
        insecure_project,
        max_body_bytes=config.http_max_body_bytes,
        limiter=limiter,
        readiness=readiness,
        tracer=telemetry.tracer_provider.get_tracer("maestro.ingress"),
    )
    plane = DataPlane(config, service, observer, native, translating, ingress, simulator)
    plane.flusher = asyncio.create_task(observer.report_forever(config.report_interval_s))
    plane.lanes = lanes
    plane.lane_poller = asyncio.create_task(lanes.run_forever())
    return plane
