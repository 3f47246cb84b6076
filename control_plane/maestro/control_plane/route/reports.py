"""ReportObservations sessions: batches of live signals a data plane sends, each counted once.

A data plane re-sends a batch it got no answer for (after a reconnect, say); the session
remembers the answers it gave and repeats them instead of counting the batch again. A key
reports only its own project's traffic. No gRPC here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from maestro.control_plane.route.service import RouteService
from maestro.core import names
from maestro.core.auth import Principal, require_project
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.signals import Observation

MAX_REMEMBERED_BATCHES = 1024
"""Batch ids remembered per stream, to ignore re-sent batches."""


@dataclass(frozen=True, slots=True)
class ObservationBatch:
    node_id: str
    batch_id: str
    observations: list[Observation]


@dataclass(frozen=True, slots=True)
class BatchReceipt:
    batch_id: str
    accepted: int
    dropped: int


async def receive_reports(
    service: RouteService, principal: Principal, batches: AsyncIterator[ObservationBatch]
) -> AsyncGenerator[BatchReceipt, None]:
    """A receipt for each batch, in order; a batch id seen before gets its first receipt."""
    answered: dict[str, BatchReceipt] = {}
    node_id = ""
    async for batch in batches:
        if batch.batch_id in answered:
            yield answered[batch.batch_id]
            continue
        if node_id and batch.node_id != node_id:
            raise InvalidArgument(
                [FieldViolation("node_id", "must be the same in every message of the stream")]
            )
        node_id = batch.node_id
        # Until credentials carry roles, a key reports only its own project's traffic.
        for observation in batch.observations:
            require_project(principal, names.parse_project_name(observation.project, "project"))
        accepted, dropped = service.ingest_observations(batch.observations)
        receipt = BatchReceipt(batch.batch_id, accepted, dropped)
        if len(answered) >= MAX_REMEMBERED_BATCHES:
            answered.pop(next(iter(answered)))
        answered[batch.batch_id] = receipt
        yield receipt
