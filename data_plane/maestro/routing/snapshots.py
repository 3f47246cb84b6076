"""The current compiled snapshot of each project, and change notification for WatchConfig.

Decisions read `current()` (a dict look-up); publishing swaps the entry atomically, so a decision
in flight finishes on the snapshot it started with and the next one sees the new version.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maestro.routing.artifacts import CompiledArtifact
from maestro.routing.engine import PolicyView, RoutingSnapshot, SignalBoard
from maestro.routing.layers import (
    GLOBAL_PROJECT,
    LayeredPolicy,
    merge_layers,
    merged_yaml,
    own_entries,
)
from maestro.routing.policy import ModelFacts, PolicyModule, compile_routing_policy
from maestro.routing.spec import DeploymentSpec, load_yaml, resolve_route_config
from maestro.routing.tagging import KINDS, PII_TAG
from maestro.routing.traffic import (
    ProjectTraffic,
    VersionShare,
    check_traffic,
    compile_versions,
)

# Tags content tagging can produce; the policy compiler must know them as its domain.
DETECTOR_TAGS = (PII_TAG, *(f"{PII_TAG}.{kind}" for kind in KINDS))


@dataclass(frozen=True, slots=True)
class Revision:
    """One stored version of a project's routing config and its Rego modules."""

    project: str  # 'projects/{project}'
    revision: int
    config_yaml: str
    policy_modules: tuple[PolicyModule, ...]
    description: str
    creator: str
    digest: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Published:
    """A project's snapshot as published: `generation` orders every publish of the registry.

    `global_revision` is the global layer merged in (None for the global config itself, or when
    operators have not configured one).
    """

    project: str
    revision: Revision
    snapshot: RoutingSnapshot
    generation: int
    global_revision: Revision | None = None
    merged_yaml: str = ""

    @property
    def snapshot_version(self) -> str:
        return self.snapshot.version


@dataclass(frozen=True, slots=True)
class Compiled:
    snapshot: RoutingSnapshot
    global_revision: Revision | None
    merged_yaml: str


def compile_revision(
    revision: Revision, board: SignalBoard | None = None, global_revision: Revision | None = None
) -> Compiled:
    """Parse, resolve and compile a stored revision, on top of the global layer when given
    (CPU-bound: run it off the event loop). The version is `{revision}` alone, or
    `{revision}.{global revision}` for a layered snapshot.

    Raises InvalidArgument for a bad config and PolicyError for a bad policy.
    """
    layered = global_revision is not None and revision.project != GLOBAL_PROJECT
    raw = load_yaml(revision.config_yaml)
    version = str(revision.revision)
    if layered:
        assert global_revision is not None
        raw = merge_layers(load_yaml(global_revision.config_yaml), raw)
        version = f"{revision.revision}.{global_revision.revision}"
    elif revision.project != GLOBAL_PROJECT:
        raw = merge_layers({}, raw)  # no global layer: the project's own entries, unmarked
    snapshot = compile_layers(
        revision.project,
        raw,
        revision.policy_modules,
        global_revision.policy_modules if layered and global_revision else None,
        version,
        board,
    )
    return Compiled(
        snapshot,
        global_revision if layered else None,
        merged_yaml(raw) if layered else revision.config_yaml,
    )


def compile_layers(
    project: str,
    raw: Any,
    modules: tuple[PolicyModule, ...],
    global_modules: tuple[PolicyModule, ...] | None,
    version: str,
    board: SignalBoard | None = None,
) -> RoutingSnapshot:
    """A snapshot from merged config YAML (parsed) and the two layers' policy modules: the
    project's, ANDed under the global ones when there are any. A data plane following
    WatchConfig compiles what it receives with this."""
    spec = resolve_route_config(own_entries(raw, project))
    project_id = project.removeprefix("projects/")
    known_tags = [*DETECTOR_TAGS, *spec.content_tags]

    def compiled(layer: tuple[PolicyModule, ...]) -> PolicyView:
        """Rego sees one model's facts at a time, and a group's deployments may differ (an
        in-house and a hosted one): a group is allowed only if allowed with every deployment's
        facts, so each distinct set of facts in a group is evaluated and the tables ANDed."""
        tables = [
            compile_routing_policy(layer, facts, project_id, known_tags=known_tags)
            for facts in _fact_variants(spec.deployments)
        ]
        view: PolicyView = tables[0]
        for table in tables[1:]:
            view = LayeredPolicy(view, table, outer_label="")
        return view

    policy = compiled(modules)
    if global_modules is not None:
        policy = LayeredPolicy(compiled(global_modules), policy)
    return RoutingSnapshot(spec, policy, version, board)


def _fact_variants(deployments: tuple[DeploymentSpec, ...]) -> list[list[ModelFacts]]:
    """Facts per model group, as few lists as cover every deployment's facts: list i holds
    each group's i-th distinct facts (its last ones where it has fewer)."""
    by_group: dict[str, list[ModelFacts]] = {}
    for d in deployments:
        facts = ModelFacts(d.model_name, d.provider, d.jurisdiction, d.in_house)
        variants = by_group.setdefault(d.model_name, [])
        if facts not in variants:
            variants.append(facts)
    depth = max((len(v) for v in by_group.values()), default=1)
    return [[v[min(i, len(v) - 1)] for v in by_group.values()] for i in range(depth)]


class SnapshotRegistry:
    def __init__(self) -> None:
        self._current: dict[str, Published] = {}
        self._boards: dict[str, SignalBoard] = {}
        self._traffic: dict[str, tuple[ProjectTraffic, int]] = {}
        """Each project's artifact traffic splits and the generation that published them; kept
        apart from `_current` since a project without a config of its own has splits too."""
        self._artifacts: dict[tuple[str, str], CompiledArtifact] = {}
        """Compiled versions by (media type, digest), shared by the splits that list them."""
        self._generation = 0
        self._changed = asyncio.Condition()

    @property
    def generation(self) -> int:
        return self._generation

    def current(self, project: str) -> Published | None:
        return self._current.get(project)

    def traffic(self, project: str) -> ProjectTraffic | None:
        """A project's artifact traffic splits (a dict look-up: on the request path)."""
        entry = self._traffic.get(project)
        return entry[0] if entry is not None else None

    def artifact(self, share: VersionShare) -> CompiledArtifact | None:
        """The compiled content of a version a published split lists (a dict look-up: calls
        render it, they never parse it)."""
        return self._artifacts.get((share.media_type, share.digest))

    def traffic_changed_since(
        self, generation: int, projects: frozenset[str] | None
    ) -> list[ProjectTraffic]:
        return [
            t
            for t, g in self._traffic.values()
            if g > generation and (projects is None or t.project in projects)
        ]

    def all_traffic(self, projects: frozenset[str] | None) -> list[ProjectTraffic]:
        return [t for t, _ in self._traffic.values() if projects is None or t.project in projects]

    async def publish_traffic(self, traffic: ProjectTraffic) -> bool:
        """Make `traffic` the project's splits unless the current ones are as new or newer (by
        revision): replicas and followers that learn of changes out of order never go back.
        Returns whether it was published.

        Each version's content is compiled here, once per digest (off the event loop), so a
        call only renders. Raises InvalidArgument, publishing nothing, for a split that is not
        the project's own or a version whose content does not compile or match its digest."""
        check_traffic(traffic)
        if not self._newer_traffic(traffic):
            return False
        known = dict(self._artifacts)
        compiled = await asyncio.to_thread(compile_versions, traffic, known)
        async with self._changed:
            if not self._newer_traffic(traffic):
                return False
            self._generation += 1
            self._traffic[traffic.project] = (traffic, self._generation)
            self._artifacts.update(compiled)
            self._prune_artifacts()
            self._changed.notify_all()
        return True

    async def remove_traffic(self, project: str) -> None:
        """Drop a project's splits (a data plane told the project is gone)."""
        async with self._changed:
            if self._traffic.pop(project, None) is not None:
                self._generation += 1
                self._prune_artifacts()
                self._changed.notify_all()

    def _newer_traffic(self, traffic: ProjectTraffic) -> bool:
        current = self._traffic.get(traffic.project)
        return current is None or current[0].revision < traffic.revision

    def _prune_artifacts(self) -> None:
        """Keep the compiled versions some published split still lists."""
        used = {
            (share.media_type, share.digest)
            for published, _ in self._traffic.values()
            for split in published.splits.values()
            for share in split.shares
        }
        for key in [k for k in self._artifacts if k not in used]:
            del self._artifacts[key]

    def board(self, project: str) -> SignalBoard:
        """Live signals of a project's deployments, shared by its successive snapshots."""
        return self._boards.setdefault(project, SignalBoard())

    async def publish(
        self, revision: Revision, compiled: Compiled, *, newer_only: bool = False
    ) -> Published:
        """Make `compiled` the project's current snapshot. With `newer_only`, a snapshot that is
        not newer than the current one (by project revision, then global revision) is not
        published and the current one is returned: replicas that learn of revisions out of
        order never go back, and the same revision published twice (an ApplyConfig and the
        follower that its own NOTIFY woke, compiling at once) is one change, not two."""
        async with self._changed:
            current = self._current.get(revision.project)
            if (
                newer_only
                and current is not None
                and _order(current) >= _order_of(revision, compiled.global_revision)
            ):
                return current
            self._generation += 1
            published = Published(
                revision.project,
                revision,
                compiled.snapshot,
                self._generation,
                compiled.global_revision,
                compiled.merged_yaml,
            )
            self._current[revision.project] = published
            self._changed.notify_all()
        return published

    async def remove(self, project: str) -> None:
        """Drop a project's snapshot (a data plane told the project's config is gone)."""
        async with self._changed:
            if self._current.pop(project, None) is not None:
                self._generation += 1
                self._changed.notify_all()

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


def _order_of(revision: Revision, global_revision: Revision | None) -> tuple[int, int]:
    return revision.revision, global_revision.revision if global_revision else 0


def _order(published: Published) -> tuple[int, int]:
    return _order_of(published.revision, published.global_revision)
