"""The `maestro up` process: the control plane's services and the data plane in one gRPC server.

One `grpc.aio` server carries every `maestro.v1` service, health and reflection. Services whose
capability is not built yet are still registered, so the whole contract reflects and answers
UNIMPLEMENTED with a clear message. Nothing here runs at import time.

Readiness: the ports open before the routing files are applied, and until they are (or, with no
routing file, until the stored configs are loaded and the start is done) health says NOT_SERVING
for `""` and every service and the HTTP ingress answers 503, from one `Readiness` flag. A start
that a signal interrupts (the flag already draining) never turns ready: the caller stops it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maestro.app.config import MaestroConfig
from maestro.app.eval_calls import DataPlaneTasks
from maestro.app.eval_graph_calls import GraphTasks
from maestro.app.graph_models import DataPlaneModels
from maestro.app.rollout_http import rollout_routes
from maestro.app.rollout_wiring import build_rollout_plane
from maestro.control_plane.evals.assembly import EvalPlane, build_evals
from maestro.control_plane.evals.runner import Embedder
from maestro.control_plane.graph.assembly import GraphPlane, build_graph
from maestro.control_plane.projects.service import ProjectService
from maestro.control_plane.projects.servicer import ProjectServicer
from maestro.control_plane.projects.store import ProjectStore
from maestro.control_plane.rollouts.assembly import RolloutPlane
from maestro.control_plane.route.files import RoutingFilesUnusable, apply_files, watch_files
from maestro.control_plane.route.service import RouteService
from maestro.control_plane.route.servicer import RouteServicer
from maestro.control_plane.route.store import RouteConfigStore
from maestro.control_plane.route.watch import ConfigWatches
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.opening import open_store
from maestro.control_plane.store.sql import Sql
from maestro.core.auth import Principal
from maestro.core.quotas import limiter_from
from maestro.core.readiness import Readiness
from maestro.core.rpc.health import NOT_SERVING, SERVING, HealthServicer
from maestro.core.rpc.reflection import enable_reflection
from maestro.core.rpc.server import build_grpc_server
from maestro.core.rpc.unimplemented import unimplemented_handler
from maestro.core.telemetry import Telemetry
from maestro.core.tls import bind, server_ssl_context
from maestro.data_plane.assembly import DataPlane, build_data_plane
from maestro.routing.snapshots import SnapshotRegistry
from maestro.routing.tagging import ContentTagger
from maestro.routing.tenancy import AllowedEndpoint
from maestro.v1 import (
    eval_service_pb2,
    graph_service_pb2,
    inference_service_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    rollout_service_pb2,
    route_service_pb2,
    route_service_pb2_grpc,
)

log = structlog.get_logger(__name__)

PROJECT_SERVICE = project_service_pb2.DESCRIPTOR.services_by_name["ProjectService"]
ROUTE_SERVICE = route_service_pb2.DESCRIPTOR.services_by_name["RouteService"]
# Services of the contract whose capability is not built yet, and what they are waiting for
# (none now: every service is built; a service turned off in the config is pending the same way).
GRAPH_SERVICE = graph_service_pb2.DESCRIPTOR.services_by_name["GraphService"]
EVAL_SERVICE = eval_service_pb2.DESCRIPTOR.services_by_name["EvalService"]
ROLLOUT_SERVICE = rollout_service_pb2.DESCRIPTOR.services_by_name["RolloutService"]
PENDING_SERVICES: tuple[tuple[Any, str], ...] = ()
INFERENCE_SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]


@dataclass
class ControlPlane:
    """A started server and what it owns; `stop()` releases all of it."""

    config: MaestroConfig
    server: grpc.aio.Server
    health: HealthServicer
    store: Sql
    projects: ProjectService
    routes: RouteService
    port: int
    stopping: asyncio.Event
    data: DataPlane | None = None
    graph: GraphPlane | None = None
    evals: EvalPlane | None = None
    rollouts: RolloutPlane | None = None
    readiness: Readiness = field(default_factory=Readiness)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: report NOT_SERVING and end health watches, refuse new calls, let in-flight
        calls finish within the grace period, then cancel what is left."""
        self.readiness.mark_draining()  # the ingress answers 503 from here on
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        log.info("server.stopping", grace_period_s=grace)
        self.stopping.set()  # long-lived streams (WatchConfig, ...) end themselves
        await self.health.shut_down()
        if self.data is not None:
            await self.data.stop_http()
        await self.server.stop(grace)
        if self.graph is not None:
            await self.graph.stop()
        if self.evals is not None:
            await self.evals.stop()
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.data is not None:
            await self.data.close()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.routes.stop_following()
        await self.store.stop_listening()
        await asyncio.to_thread(self.store.close)
        log.info("server.stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start_control_plane(
    config: MaestroConfig, telemetry: Telemetry, readiness: Readiness | None = None
) -> ControlPlane:
    """Start everything and return once ready, or once started if `readiness` turned draining
    meanwhile (a signal during the start: the caller stops what is returned)."""
    readiness = readiness or Readiness()
    # First: a certificate or key that does not load stops the start before anything is open.
    http_tls = server_ssl_context(config.server.tls) if config.server.tls.enabled else None
    store = await asyncio.to_thread(open_store, config.store, MIGRATIONS)
    projects = ProjectService(ProjectStore(store), key_cache_ttl_s=config.auth.key_cache_ttl_s)
    insecure_project = config.auth.insecure_project if config.auth.mode == "insecure" else None
    if insecure_project is not None:  # keyless dev mode acts for a project that exists
        await asyncio.to_thread(projects.create_project, insecure_project, "Development project")
    limiter = limiter_from(config.server.limits)  # one per process: gRPC and HTTP share it
    server = build_grpc_server(
        config.server,
        telemetry,
        projects.authenticate,
        insecure_project,
        "maestro.control_plane",
        limiter,
    )
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(ProjectServicer(projects), server)
    stopping = asyncio.Event()
    registry = SnapshotRegistry()
    routes = RouteService(
        RouteConfigStore(store),
        registry,
        ContentTagger(),
        tracer=telemetry.tracer_provider.get_tracer("maestro.route"),
        meter=telemetry.meter_provider.get_meter("maestro.route"),
        tenant_endpoints={
            project: [AllowedEndpoint(**e.model_dump()) for e in endpoints]
            for project, endpoints in config.routing.tenant_endpoints.items()
        },
    )
    routes.follow_replicas()
    await routes.load_all()
    route_service_pb2_grpc.add_RouteServiceServicer_to_server(
        RouteServicer(routes, ConfigWatches(registry, stopping)), server
    )
    pending = list(PENDING_SERVICES)
    data = None
    if config.data_plane.enabled:
        data = await build_data_plane(
            config.data_plane,
            routes,
            projects.authenticate,
            insecure_project,
            telemetry,
            limiter=limiter,
            readiness=readiness,
        )
        data.register(server, routes)
    else:
        pending.append((INFERENCE_SERVICE, "the data plane (data_plane.enabled is false)"))
    graph = None
    if config.graph.enabled:
        blob_dir = config.graph.blob_dir or config.store.sqlite_path.parent / "blobs"
        graph = await build_graph(
            config.graph,
            blob_dir,
            store,
            registry,
            routes,
            DataPlaneModels(data.service) if data else None,
            telemetry,
        )
        graph.register(server)
    else:
        pending.append((GRAPH_SERVICE, "agent graphs (graph.enabled is false)"))
    evals = None
    if data is not None:
        tasks = DataPlaneTasks(data.service, _deployments(registry))
        if graph is not None:
            tasks.graph = GraphTasks(graph.service)
        evals = build_evals(
            store,
            tasks,
            _embedder,
            f"{socket.gethostname()}-{os.getpid()}",
            _maestro_version(),
            telemetry.meter_provider.get_meter("maestro.evals"),
        )
        evals.register(server, stopping)
    else:
        pending.append((EVAL_SERVICE, "eval runs (they need the data plane)"))
    if graph is not None and evals is not None:
        evals.service.recipe_revision = _recipe_revision(graph)
        if config.graph.autonomy_gate:
            _gate_autonomy(graph, evals)
    rollouts = None
    if config.rollouts.enabled:
        rollouts = build_rollout_plane(
            config,
            store,
            registry,
            routes,
            graph,
            evals,
            telemetry.meter_provider.get_meter("maestro.rollouts"),
        )
        rollouts.register(server, stopping)
    else:
        pending.append((ROLLOUT_SERVICE, "progressive delivery (rollouts.enabled is false)"))
    for service, capability in pending:
        server.add_generic_rpc_handlers((unimplemented_handler(service, capability),))
    served = (
        PROJECT_SERVICE,
        ROUTE_SERVICE,
        *((INFERENCE_SERVICE,) if data else ()),
        *((GRAPH_SERVICE,) if graph else ()),
        *((EVAL_SERVICE,) if evals else ()),
        *((ROLLOUT_SERVICE,) if rollouts else ()),
    )
    service_names = [*(s.full_name for s in served), *(s.full_name for s, _ in pending)]
    health = HealthServicer()  # "" NOT_SERVING, and each service too until ready
    for name in service_names:
        await health.set(name, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(
        server, [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    )
    port = bind(server, config.server.host, config.server.port, config.server.tls)
    if port == 0:
        if graph is not None:
            await graph.stop()
        if evals is not None:
            await evals.stop()
        if data is not None:
            await data.close()
        await routes.stop_following()
        await store.stop_listening()
        store.close()
        raise OSError(f"cannot bind {config.server.host}:{config.server.port}")
    await server.start()
    plane = ControlPlane(
        config,
        server,
        health,
        store,
        projects,
        routes,
        port,
        stopping,
        data,
        graph,
        evals,
        rollouts,
        readiness,
    )
    if data is not None:
        if rollouts is not None:  # Argo's web metric provider reads verdicts here
            data.ingress.extra_routes.extend(
                rollout_routes(
                    rollouts,
                    projects.authenticate,
                    evals=evals.store if evals is not None else None,
                    insecure_project=insecure_project,
                    limiter=limiter,
                )
            )
        await data.start_http(http_tls)
    if config.routing.config_file is not None:
        log.info("server.applying_routing_files", file=str(config.routing.config_file))
        try:
            await apply_files(routes, config.routing, at_start=True)
        except RoutingFilesUnusable:
            await plane.stop(grace_s=0)
            raise
        if config.routing.watch:
            plane.background.append(
                asyncio.create_task(watch_files(routes, config.routing, stopping))
            )
    if readiness.draining:  # signalled during the start: never claim to be ready
        log.info("server.started_while_stopping", address=plane.address)
        return plane
    if rollouts is not None:
        await rollouts.start()  # the stored splits before any call; live rollouts resume
    # Per-service health, once the routing files are applied: implemented services SERVING;
    # pending ones stay NOT_SERVING, so a probe on a service name tells whether it can do its
    # job, not just whether the process is up.
    for service in served:
        await health.set(service.full_name, SERVING)
    await health.set("", SERVING)
    readiness.mark_ready()
    if graph is not None:
        graph.runtime.start()  # claims runs only now that models can be routed
    if evals is not None:
        evals.runner.start()  # resumes eval runs left by a stopped process
    log.info(
        "server.ready",
        address=plane.address,
        auth_mode=config.auth.mode,
        store=str(config.store.sqlite_path),
        tls=config.server.tls.enabled,
        mutual_tls=config.server.tls.client_ca_file is not None,
        openai_base_url=data.base_url if data is not None else None,
    )
    return plane


def _embedder() -> Embedder:
    """The sentence-embedding model of `semantic_sim`, loaded on first use (not at start)."""
    from maestro.control_plane.evals.embeddings import SentenceEmbedder

    return SentenceEmbedder()


def _maestro_version() -> str:
    try:
        return importlib.metadata.version("maestro")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _gate_autonomy(graph: GraphPlane, evals: EvalPlane) -> None:
    """Runs at L3 and above need a passing autonomy gate recorded by EvalService, and the gate
    binds its decision to the recipe revision current when it was decided."""
    recipes = graph.service.recipes
    store = evals.store

    async def revision_of(principal: Principal, recipe: str) -> str:
        return (await recipes.get(principal, recipe)).revision_id

    async def promotion(project: str, recipe: str, revision: str, level: int) -> str | None:
        found = await store.aio(store.passing_promotion, project, recipe, revision, level)
        return found.decision_id if found is not None else None

    evals.service.subject_revision = revision_of
    graph.service.autonomy_gate = promotion


def _deployments(registry: SnapshotRegistry) -> Callable[[str], list[tuple[str, str]]]:
    """(deployment id, model group) of a project's current routing snapshot, for pinned evals."""

    def of(project: str) -> list[tuple[str, str]]:
        published = registry.current(f"projects/{project}")
        if published is None:
            return []
        return [(d.deployment_id, d.model_name) for d in published.snapshot.deployments]

    return of


def _recipe_revision(graph: GraphPlane) -> Callable[[Principal, str], Awaitable[str]]:
    """A recipe name pinned to its current revision (`...@revision`) for an eval run's target."""

    async def pinned(principal: Principal, recipe: str) -> str:
        record = await graph.service.recipes.get(principal, recipe)
        return f"{recipe.split('@')[0]}@{record.revision_id}"

    return pinned
