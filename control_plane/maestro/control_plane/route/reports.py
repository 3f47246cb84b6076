"""ReportObservations sessions: batches of live signals a data plane sends, each counted once.

A data plane re-sends a batch it got no answer for (after a reconnect, say); the session
remembers the answers it gave and repeats them instead of counting the batch again. A key
reports only its own project's traffic. No gRPC here.

Observation times are bounded by this process's clock: an `end_time` more than
`MAX_CLOCK_SKEW_S` ahead of it, or already outside the live window (`DEFAULT_WINDOW_S`), is
dropped and counted in the receipt's `dropped`, and logged. Signals expire oldest first, so one
observation dated far ahead would otherwise stay in its window forever and keep every later one
from expiring (a window pinned at whatever it held). Dropped, not refused: a refused batch is
re-sent after the reconnect and refused again, so one node with a wrong clock would stop all of
its reports; a late batch (re-sent after an outage) is normal and simply no longer live. A
malformed time (unset, `start_time` after `end_time`, a window over 5 minutes) is still
INVALID_ARGUMENT, in `convert.observations`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import structlog

from maestro.control_plane.route.service import RouteService
from maestro.core import names
from maestro.core.auth import Principal, require_project
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.signals import DEFAULT_WINDOW_S, Observation

log = structlog.get_logger(__name__)

MAX_REMEMBERED_BATCHES = 1024
"""Batch ids remembered per stream, to ignore re-sent batches."""
MAX_CLOCK_SKEW_S = 30.0
"""How far ahead of this process's clock an observation's `end_time` may be (NTP-synchronised
hosts differ by milliseconds; 30 s tolerates a badly drifting one)."""


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


def timely(observations: Sequence[Observation], now: float) -> tuple[list[Observation], int, int]:
    """The observations whose `end_time` is in (now - DEFAULT_WINDOW_S, now + MAX_CLOCK_SKEW_S],
    and how many ended too late in the future and too long ago."""
    earliest, latest = now - DEFAULT_WINDOW_S, now + MAX_CLOCK_SKEW_S
    kept = [o for o in observations if earliest < o.end_time <= latest]
    if len(kept) == len(observations):
        return kept, 0, 0
    future = sum(1 for o in observations if o.end_time > latest)
    return kept, future, len(observations) - len(kept) - future


async def receive_reports(
    service: RouteService,
    principal: Principal,
    batches: AsyncIterator[ObservationBatch],
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[BatchReceipt, None]:
    """A receipt for each batch, in order; a batch id seen before gets its first receipt.
    `clock` is the wall clock observation times are checked against."""
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
        kept, future, stale = timely(batch.observations, clock())
        if future or stale:
            log.warning(
                "route.observations_untimely",
                node_id=node_id,
                batch_id=batch.batch_id,
                ahead_of_clock=future,
                outside_window=stale,
            )
        accepted, dropped = service.ingest_observations(kept)
        receipt = BatchReceipt(batch.batch_id, accepted, dropped + future + stale)
        if len(answered) >= MAX_REMEMBERED_BATCHES:
            answered.pop(next(iter(answered)))
        answered[batch.batch_id] = receipt
        yield receipt
