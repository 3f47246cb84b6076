"""WatchRollout's loop: the rollout at each new revision with the audit events since the last
message, until the rollout ends or the server stops.

Changes made in this process wake the loop at once (`RolloutService.changes`); a change made by
another replica is seen within `poll_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from maestro.control_plane.rollouts.records import AuditEvent, RolloutRecord
from maestro.control_plane.rollouts.service import RolloutService
from maestro.core.auth import Principal


@dataclass(frozen=True, slots=True)
class RolloutUpdate:
    rollout: RolloutRecord
    events: list[AuditEvent]


async def watch_rollout(
    service: RolloutService,
    principal: Principal,
    project: str,
    rollout_id: str,
    after_revision: int,
    stopping: asyncio.Event,
    poll_s: float = 1.0,
) -> AsyncIterator[RolloutUpdate]:
    store = service.store
    seen = service.generation
    rollout = await service.get_rollout(principal, project, rollout_id)
    sent = after_revision
    if after_revision <= 0:
        yield RolloutUpdate(rollout, [])
        sent = rollout.revision
    while not stopping.is_set():
        if rollout.revision > sent:
            events = await store.aio(store.events_after_revision, project, rollout_id, sent)
            yield RolloutUpdate(rollout, events)
            sent = rollout.revision
        if rollout.ended:
            return
        async with service.changes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.changes.wait_for(_newer(service, seen)), poll_s)
            seen = service.generation
        rollout = await store.aio(store.get_rollout, project, rollout_id)


def _newer(service: RolloutService, seen: int) -> Callable[[], bool]:
    return lambda: service.generation > seen
