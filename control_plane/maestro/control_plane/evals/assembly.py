"""Assembly of EvalService in a control-plane process: store, hub, runner, service, servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from opentelemetry import metrics

from maestro.control_plane.evals.metrics import EvalMetrics
from maestro.control_plane.evals.runner import Embedder, EvalRunner, TaskCaller
from maestro.control_plane.evals.service import EvalService
from maestro.control_plane.evals.servicer import EvalServicer
from maestro.control_plane.evals.store import EvalStore
from maestro.control_plane.evals.watch import EvalHub
from maestro.control_plane.store.sql import Sql
from maestro.v1 import eval_service_pb2_grpc


@dataclass
class EvalPlane:
    store: EvalStore
    hub: EvalHub
    runner: EvalRunner
    service: EvalService

    def register(self, server: grpc.aio.Server, stopping: asyncio.Event) -> None:
        eval_service_pb2_grpc.add_EvalServiceServicer_to_server(
            EvalServicer(self.service, self.hub, stopping), server
        )

    async def stop(self) -> None:
        """Stop running evals here; their leases lapse and a replica (or a restart) resumes
        them from their stored results."""
        await self.runner.stop()


def build_evals(
    sql: Sql,
    caller: TaskCaller,
    embedder: Callable[[], Embedder],
    owner: str,
    maestro_version: str,
    meter: metrics.Meter,
) -> EvalPlane:
    store = EvalStore(sql)
    hub = EvalHub()
    runner = EvalRunner(
        store, caller, embedder, owner, hub.changed, maestro_version, EvalMetrics(meter)
    )
    return EvalPlane(store, hub, runner, EvalService(store, runner))
