"""Assembly of GraphService in a control-plane process: store, runtime, service, servicer."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from maestro.control_plane.config import GraphConfig
from maestro.control_plane.graph.blobs import FileBlobStore
from maestro.control_plane.graph.compiled import PriceLookup, Prices
from maestro.control_plane.graph.hub import RunHub
from maestro.control_plane.graph.model_calls import ModelCaller
from maestro.control_plane.graph.policy import GraphPolicy
from maestro.control_plane.graph.recipe_catalog import RecipeCatalog
from maestro.control_plane.graph.recipe_store import RecipeStore
from maestro.control_plane.graph.runtime import GraphRuntime, RuntimeSettings
from maestro.control_plane.graph.service import GraphService
from maestro.control_plane.graph.servicer import GraphServicer
from maestro.control_plane.graph.store import EVENTS_CHANNEL, RunStore
from maestro.control_plane.graph.tools import builtin_tools
from maestro.control_plane.store.sql import Sql
from maestro.core.telemetry import Telemetry
from maestro.routing.decider import Decider
from maestro.routing.snapshots import SnapshotRegistry
from maestro.v1 import graph_service_pb2_grpc


@dataclass
class GraphPlane:
    sql: Sql
    store: RunStore
    hub: RunHub
    runtime: GraphRuntime
    service: GraphService

    def register(self, server: grpc.aio.Server) -> None:
        graph_service_pb2_grpc.add_GraphServiceServicer_to_server(
            GraphServicer(self.service), server
        )

    async def stop(self) -> None:
        """Stop driving runs; the store belongs to the process and outlives this."""
        await self.runtime.stop()


def price_lookup(registry: SnapshotRegistry) -> Callable[[str], PriceLookup]:
    """Prices of the dearest deployment of a model group in a project's current snapshot."""

    def for_project(project: str) -> PriceLookup:
        def lookup(model: str) -> Prices | None:
            published = registry.current(f"projects/{project}")
            if published is None:
                return None
            candidates = [
                d
                for d in published.snapshot.deployments
                if not model or d.model_name == model or d.deployment_id == model
            ]
            if not candidates:
                return None
            dearest = max(
                candidates,
                key=lambda d: (d.input_cost_per_token or 0.0) + (d.output_cost_per_token or 0.0),
            )
            return Prices(
                dearest.input_cost_per_token or 0.0,
                dearest.output_cost_per_token or 0.0,
                max(d.expected_p95_latency_ms for d in candidates) / 1000,
                dearest.deployment_id,
            )

        return lookup

    return for_project


async def build_graph(
    config: GraphConfig,
    blob_dir: Path,
    sql: Sql,
    registry: SnapshotRegistry,
    routes: Decider,
    models: ModelCaller | None,
    telemetry: Telemetry,
) -> GraphPlane:
    store = RunStore(sql)
    hub = RunHub()
    replica = config.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    runtime = GraphRuntime(
        store,
        hub,
        RuntimeSettings(replica, config.lease_s, config.poll_s, config.max_runs),
        models=models,
        tools=builtin_tools(store),
        prices=price_lookup(registry),
        tracer=telemetry.tracer_provider.get_tracer("maestro.graph"),
        policy=GraphPolicy(registry),
        blobs=FileBlobStore(blob_dir),
        meter=telemetry.meter_provider.get_meter("maestro.graph"),
    )
    sql.listen(EVENTS_CHANNEL, hub.remote_change)
    recipes = RecipeCatalog(RecipeStore(sql))
    service = GraphService(store, recipes, hub, runtime, routes, config.max_active_runs_per_project)
    return GraphPlane(sql, store, hub, runtime, service)
