"""The current compiled snapshot of each project, and change notification for WatchConfig.

Decisions read `current()` (a dict look-up); publishing swaps the entry atomically, so a decision
in flight finishes on the snapshot it started with and the next one sees the new version.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from maestro.control_plane.route.config import parse_route_config
from maestro.control_plane.route.engine import RoutingSnapshot, SignalBoard
from maestro.control_plane.route.policy import ModelFacts, compile_routing_policy
from maestro.control_plane.route.store import Revision
from maestro.control_plane.route.tagging import KINDS, PII_TAG

# Tags content tagging can produce; the policy compiler must know them as its domain.
DETECTOR_TAGS = (PII_TAG, *(f"{PII_TAG}.{kind}" for kind in KINDS))


@dataclass(frozen=True, slots=True)
class Published:
    """A project's snapshot as published: `generation` orders every publish of the registry."""

    project: str
    revision: Revision
    snapshot: RoutingSnapshot
    generation: int

    @property
    def snapshot_version(self) -> str:
        return str(self.revision.revision)


def compile_revision(revision: Revision, board: SignalBoard | None = None) -> RoutingSnapshot:
    """Parse, resolve and compile a stored revision (CPU-bound: run it off the event loop).

    Raises InvalidArgument for a bad config and PolicyError for a bad policy.
    """
    spec = parse_route_config(revision.config_yaml)
    facts = [
        ModelFacts(d.model_name, d.provider, d.jurisdiction, d.in_house)
        for d in {d.model_name: d for d in spec.deployments}.values()
    ]
    project_id = revision.project.removeprefix("projects/")
    table = compile_routing_policy(
        revision.policy_modules, facts, project_id, known_tags=[*DETECTOR_TAGS, *spec.content_tags]
    )
    return RoutingSnapshot(spec, table, str(revision.revision), board)


class SnapshotRegistry:
    def __init__(self) -> None:
        self._current: dict[str, Published] = {}
        self._boards: dict[str, SignalBoard] = {}
        self._generation = 0
        self._changed = asyncio.Condition()

    @property
    def generation(self) -> int:
        return self._generation

    def current(self, project: str) -> Published | None:
        return self._current.get(project)

    def board(self, project: str) -> SignalBoard:
        """Live signals of a project's deployments, shared by its successive snapshots."""
        return self._boards.setdefault(project, SignalBoard())

    async def publish(self, revision: Revision, snapshot: RoutingSnapshot) -> Published:
        async with self._changed:
            self._generation += 1
            published = Published(revision.project, revision, snapshot, self._generation)
            self._current[revision.project] = published
            self._changed.notify_all()
        return published

    def changed_since(self, generation: int, projects: frozenset[str] | None) -> list[Published]:
        return [
            p
            for p in self._current.values()
            if p.generation > generation and (projects is None or p.project in projects)
        ]

    def all(self, projects: frozenset[str] | None) -> list[Published]:
        return [p for p in self._current.values() if projects is None or p.project in projects]

    async def wait_for_change(self, generation: int) -> None:
        """Return once something was published after `generation`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._generation > generation)
