"""WatchConfig sessions, xDS-style: what a data plane following the control plane is sent.

A session answers the first request with everything changed since the version it already has
(or the full state when that version is unknown, stale or from another process: versions carry
a per-process epoch), then pushes each change, and reads ACKs and NACKs on the side (logged; a
NACKed snapshot stays NACKed on that data plane, which keeps its previous one). Sessions end when
the server stops. No gRPC here: the servicer converts messages to and from these values.

A project's snapshot carries its artifact traffic splits beside its config, so a change of either
resends the project (the config unchanged when only the splits changed: its version says so). A
project with splits and no config of its own is sent with its splits only (empty config_yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from maestro.control_plane.route.service import config_project
from maestro.core.auth import Principal, require_project
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.snapshots import Published, SnapshotRegistry
from maestro.routing.traffic import ProjectTraffic

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """One response of a session: the snapshots that changed, or all of them (`full_state`).

    `traffic` holds the current splits of each project sent: those of `snapshots` that have
    any, and those with splits and no config of their own (sent with their splits only)."""

    version_info: str
    nonce: str
    snapshots: list[Published]
    full_state: bool
    traffic: Mapping[str, ProjectTraffic] = field(default_factory=dict)

    @property
    def splits_only(self) -> list[ProjectTraffic]:
        """The splits of projects sent without a config."""
        configured = {p.project for p in self.snapshots}
        return [t for project, t in self.traffic.items() if project not in configured]


@dataclass(frozen=True, slots=True)
class RejectedSnapshot:
    route_config: str
    snapshot_version: str
    error: str


@dataclass(frozen=True, slots=True)
class WatchAck:
    """What a data plane says of a response: applied (ACK), the whole response refused (`error`,
    a NACK), or some of its snapshots refused."""

    version_info: str
    nonce: str
    error: str | None
    rejected: tuple[RejectedSnapshot, ...]


def watched_projects(
    principal: Principal, node_id: str, route_configs: Sequence[str]
) -> frozenset[str]:
    """The projects a session follows: those named, or the caller's own; each must be the
    caller's."""
    if not node_id:
        raise InvalidArgument([FieldViolation("node_id", "required")])
    projects = frozenset(
        config_project(name, f"route_configs[{i}]") for i, name in enumerate(route_configs)
    ) or frozenset({f"projects/{principal.project_id}"})
    for project in projects:
        require_project(principal, project.removeprefix("projects/"))
    return projects


class ConfigWatches:
    """The WatchConfig sessions of one process, over its snapshot registry."""

    def __init__(self, registry: SnapshotRegistry, stopping: asyncio.Event) -> None:
        self._registry = registry
        self._stopping = stopping
        # A new epoch per process: a version_info from before a restart means "resend all".
        self._epoch = secrets.token_hex(4)

    async def session(
        self,
        node_id: str,
        projects: frozenset[str],
        version_info: str,
        acks: AsyncIterator[WatchAck],
    ) -> AsyncGenerator[WatchUpdate, None]:
        """Updates for `projects` from `version_info` on, until the server stops; `acks` (the
        rest of the request stream) is read by a side task for as long as the session lasts."""
        generation = self._resume_point(version_info)
        reader = asyncio.create_task(_log_acks(node_id, acks))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            full_state = generation < 0
            while not self._stopping.is_set():
                current = self._registry.generation
                changed, traffic = self._changes(generation, projects, full_state)
                if changed or traffic or full_state:
                    yield WatchUpdate(
                        f"{self._epoch}:{current}",
                        secrets.token_hex(8),
                        changed,
                        full_state,
                        traffic,
                    )
                generation, full_state = current, False
                change = asyncio.create_task(self._registry.wait_for_change(generation))
                await asyncio.wait({change, stopping}, return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
        finally:
            reader.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _changes(
        self, generation: int, projects: frozenset[str], full_state: bool
    ) -> tuple[list[Published], dict[str, ProjectTraffic]]:
        """The configs to send (changed ones, and those of projects whose splits changed) and
        the current splits of every project sent."""
        registry = self._registry
        if full_state:
            configs = registry.all(projects)
            moved = registry.all_traffic(projects)
        else:
            configs = registry.changed_since(generation, projects)
            moved = registry.traffic_changed_since(generation, projects)
        sent = {p.project for p in configs}
        for traffic in moved:
            published = registry.current(traffic.project)
            if published is not None and traffic.project not in sent:
                configs.append(published)
                sent.add(traffic.project)
        traffic_of = {t.project: t for t in moved}
        for project in sent - traffic_of.keys():
            splits = registry.traffic(project)
            if splits is not None:
                traffic_of[project] = splits
        return configs, traffic_of

    def _resume_point(self, version_info: str) -> int:
        epoch, _, number = version_info.partition(":")
        if epoch == self._epoch and number.isdigit() and int(number) <= self._registry.generation:
            return int(number)
        return -1  # unknown, stale or from another process: send the full state


async def _log_acks(node_id: str, acks: AsyncIterator[WatchAck]) -> None:
    async for ack in acks:
        if ack.error is not None:
            log.warning("route.watch_nack", node=node_id, nonce=ack.nonce, error=ack.error)
        for rejected in ack.rejected:
            log.warning(
                "route.snapshot_rejected", node=node_id, config=rejected.route_config,
                version=rejected.snapshot_version, error=rejected.error,
            )  # fmt: skip
        if ack.error is None:
            log.debug("route.watch_ack", node=node_id, version=ack.version_info)
