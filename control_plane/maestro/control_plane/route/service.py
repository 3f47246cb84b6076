"""RouteService logic: choose, explain, apply and read configs. No grpc here.

The request path (`choose`) does dictionary look-ups, content tagging of the request's text and
the engine's vector arithmetic; everything else (YAML, Rego, LiteLLM's catalog) happens when a
config is applied, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import metrics, trace

from maestro.control_plane.route.store import CHANGES_CHANNEL, RouteConfigStore, digest_of
from maestro.control_plane.store.errors import RowNotFound
from maestro.core import names, paging
from maestro.core.auth import OPERATOR, Principal, require_project, require_scope
from maestro.core.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
)
from maestro.core.paging import STRING, Kind, parse_filter
from maestro.routing.decider import Choice, ChooseInput, Decider, choice_of
from maestro.routing.engine import (
    RoutingSnapshot,
)
from maestro.routing.layers import GLOBAL_PROJECT
from maestro.routing.policy import PolicyError, PolicyModule
from maestro.routing.signals import Breaker, SignalsView
from maestro.routing.snapshots import (
    Compiled,
    Published,
    Revision,
    SnapshotRegistry,
    compile_revision,
)
from maestro.routing.spec import DeploymentSpec, load_yaml
from maestro.routing.tagging import ContentTagger
from maestro.routing.tenancy import (
    ANY_PROJECT,
    AllowedEndpoint,
    tenant_violations,
    without_endpoints,
)
from maestro.routing.traffic import ProjectTraffic

log = structlog.get_logger(__name__)
MAX_POLICY_MODULES = 64
EXPLAIN_CACHE_SIZE = 8


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A project's config as GetConfig shows it; `revision` None before the first apply."""

    name: str
    revision: Revision | None
    published: Published | None = None
    traffic: ProjectTraffic | None = None
    """The project's artifact traffic splits, part of its snapshot version."""


@dataclass(frozen=True, slots=True)
class Applied:
    view: ConfigView
    snapshot: RoutingSnapshot
    created: bool


class RouteService(Decider):
    """Decisions (see Decider) plus the config store behind them: apply, read, list, explain."""

    def __init__(
        self,
        store: RouteConfigStore,
        registry: SnapshotRegistry,
        tagger: ContentTagger,
        *,
        tracer: trace.Tracer,
        meter: metrics.Meter,
        tenant_endpoints: Mapping[str, Sequence[AllowedEndpoint]] | None = None,
    ) -> None:
        """`tenant_endpoints`: endpoints a project's own layer may name, by project id (`*`:
        all), besides the global layer's (`routing.tenancy`)."""
        super().__init__(registry, tagger, tracer=tracer, meter=meter)
        self._store = store
        self._tenant_endpoints = dict(tenant_endpoints or {})
        self._explain_cache: OrderedDict[tuple[str, int], RoutingSnapshot] = OrderedDict()
        self._changes: asyncio.Queue[str | None] = asyncio.Queue()
        self._follower: asyncio.Task[None] | None = None

    # -- start-up ---------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Compile and publish every project's latest stored revision (at server start), the
        global layer first since the others compile on top of it."""
        await asyncio.to_thread(self._store.ensure_project, GLOBAL_PROJECT)
        for project in await self._projects_global_first():
            revision = await asyncio.to_thread(self._store.latest, project)
            if revision is not None:
                await self._publish_compiled(revision)

    async def _projects_global_first(self) -> list[str]:
        """Projects with a stored config, the global layer first: the others compile on it."""
        projects = await asyncio.to_thread(self._store.projects_with_config)
        return sorted(projects, key=lambda p: p != GLOBAL_PROJECT)

    def follow_replicas(self) -> None:
        """On a store that replicas share, publish what the others apply: every append
        notifies the project's name, and each time listening (re)starts every project is
        re-read. One task applies them in order; stale ones are skipped (`newer_only`)."""
        if not self._store.sql.shared:
            return
        self._follower = asyncio.create_task(self._apply_changes(), name="route-follow-replicas")
        self._store.sql.listen(
            CHANGES_CHANNEL, self._changes.put_nowait, lambda: self._changes.put_nowait(None)
        )

    async def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    async def _apply_changes(self) -> None:
        while True:
            project = await self._changes.get()
            try:
                if project is None:
                    for each in await self._projects_global_first():
                        await self._catch_up(each)
                else:
                    await self._catch_up(project)
            except Exception:  # the next notification or reconnect tries again
                log.exception("route.follow_failed", project=project)

    async def _catch_up(self, project: str) -> None:
        latest = await asyncio.to_thread(self._store.latest, project)
        published = self._registry.current(project)
        if latest is None or (published and published.revision.revision >= latest.revision):
            return  # applied here, or already caught up
        if await self._publish_compiled(latest):
            log.info("route.config_followed", project=project, revision=latest.revision)
            if project == GLOBAL_PROJECT:
                await self._republish_on_global()

    async def _republish_on_global(self) -> None:
        """Every project routes on top of the global layer: rebuild their snapshots."""
        for other in await asyncio.to_thread(self._store.projects_with_config):
            latest = await asyncio.to_thread(self._store.latest, other)
            if other != GLOBAL_PROJECT and latest is not None:
                await self._publish_compiled(latest)

    async def _publish_compiled(self, revision: Revision) -> bool:
        """Compile a stored revision on the current global layer and publish it; on failure
        log and keep what is published (a global change can break a project's config)."""
        try:
            compiled = await asyncio.to_thread(
                compile_revision,
                revision,
                self._registry.board(revision.project),
                self._global_revision(revision.project),
            )
        except (MaestroError, PolicyError) as error:
            log.error("route.config_unloadable", project=revision.project, error=str(error))
            return False
        await self._registry.publish(revision, compiled, newer_only=True)
        return True

    def _global_revision(self, project: str) -> Revision | None:
        if project == GLOBAL_PROJECT:
            return None
        published = self._registry.current(GLOBAL_PROJECT)
        return published.revision if published else None

    # -- explain ---------------------------------------------------------------------------

    async def explain(
        self, principal: Principal, request: ChooseInput, config_revision: str
    ) -> Choice:
        """A dry run; with `config_revision`, against that stored revision of the config."""
        if not config_revision:
            return self.choose(principal, request, dry_run=True)
        project_id, revision_number = _parse_revision_name(config_revision, "config_revision")
        require_project(principal, project_id)
        if names.project_name(project_id) != request.parent:
            raise InvalidArgument(
                [FieldViolation("config_revision", "must be a revision of request.parent's config")]
            )
        snapshot = await self._revision_snapshot(request.parent, revision_number)
        started = time.perf_counter_ns()
        route, supplied, detected = self._prepare(request)
        decision = self._decide(snapshot, route)
        latency = time.perf_counter_ns() - started
        return choice_of(decision, snapshot.version, supplied, detected, latency, dry_run=True)

    # -- config -----------------------------------------------------------------------------

    async def get_config(self, principal: Principal, name: str) -> ConfigView:
        project = config_project(name, "name")
        if project != GLOBAL_PROJECT:  # every project may read the global config...
            require_project(principal, project.removeprefix("projects/"))
        published = self._registry.current(project)
        revision = published.revision if published else None
        if revision is None:
            revision = await asyncio.to_thread(self._store.latest, project)
        if project == GLOBAL_PROJECT and OPERATOR not in principal.scopes and revision:
            # ...to see the groups it may alias and weight, not where they live or what
            # secrets they use.
            revision = replace(revision, config_yaml=without_endpoints(revision.config_yaml))
        return ConfigView(name, revision, published, self._registry.traffic(project))

    async def apply_config(
        self,
        principal: Principal,
        name: str,
        config_yaml: str,
        modules: tuple[PolicyModule, ...],
        *,
        mask: tuple[str, ...],
        validate_only: bool,
        etag: str,
        request_id: str,
        description: str,
    ) -> Applied:
        project = config_project(name, "route_config.name")
        require_layer_owner(principal, project)
        _check_apply_fields(modules, mask, request_id, description)
        current = await asyncio.to_thread(self._store.latest, project)
        if etag and etag != (current.digest if current else digest_of("", ())):
            raise Aborted(
                "the config changed since it was read (etag mismatch); read it again and retry",
                reason="ETAG_MISMATCH",
            )
        if mask and current is not None:
            config_yaml = config_yaml if "config_yaml" in mask else current.config_yaml
            modules = modules if "policy_modules" in mask else current.policy_modules
        if not config_yaml:
            raise InvalidArgument([FieldViolation("route_config.config_yaml", "required")])
        if project != GLOBAL_PROJECT and OPERATOR not in principal.scopes:
            self._check_tenant_layer(project, config_yaml)
        candidate = Revision(
            project, (current.revision if current else 0) + 1, config_yaml, modules,
            description, principal.who, digest_of(config_yaml, modules),
            datetime.now(UTC),
        )  # fmt: skip
        compiled = await asyncio.to_thread(self._compile, candidate, project)
        if validate_only:
            return Applied(ConfigView(name, current), compiled.snapshot, created=False)
        stored = await asyncio.to_thread(
            self._append,
            project,
            config_yaml,
            modules,
            description=description,
            creator=principal.who,
            request_id=request_id or None,
            expected_revision=current.revision if current else 0,
        )
        if stored is None:
            raise Aborted(
                "another ApplyConfig won the race; read the config and retry",
                reason="CONCURRENT_APPLY",
            )
        revision, created = stored
        if not created:  # a retried request: the first call's revision, already published
            return Applied(ConfigView(name, revision), compiled.snapshot, created)
        published = await self._registry.publish(revision, compiled, newer_only=True)
        log.info("route.config_applied", project=project, revision=revision.revision)
        if project == GLOBAL_PROJECT:
            await self._republish_on_global()
        return Applied(ConfigView(name, revision, published), compiled.snapshot, created)

    def _check_tenant_layer(self, project: str, config_yaml: str) -> None:
        """INVALID_ARGUMENT for what a tenant may not say (see `routing.tenancy`)."""
        raw = load_yaml(config_yaml, "route_config.config_yaml")
        published = self._registry.current(GLOBAL_PROJECT)
        global_raw = load_yaml(published.revision.config_yaml) if published else None
        project_id = project.removeprefix("projects/")
        allowed = [
            *self._tenant_endpoints.get(project_id, ()),
            *self._tenant_endpoints.get(ANY_PROJECT, ()),
        ]
        violations = tenant_violations(raw, global_raw, allowed)
        if violations:
            raise InvalidArgument(violations)

    def _append(
        self, project: str, config_yaml: str, modules: tuple[PolicyModule, ...], **kwargs: Any
    ) -> tuple[Revision, bool] | None:
        try:
            return self._store.append(project, config_yaml, modules, **kwargs)
        except RowNotFound:
            raise NotFound(
                f"project {project!r} does not exist", reason="PROJECT_NOT_FOUND"
            ) from None

    def _compile(self, revision: Revision, project: str) -> Compiled:
        try:
            return compile_revision(
                revision, self._registry.board(project), self._global_revision(project)
            )
        except PolicyError as error:
            index = next(
                (i for i, m in enumerate(revision.policy_modules) if m.name == error.module), None
            )
            field = (
                f"route_config.policy_modules[{index}].source"
                if index is not None
                else "route_config.policy_modules"
            )
            where = f"{error.line}: " if error.line else ""
            raise InvalidArgument([FieldViolation(field, f"{where}{error.message}")]) from None
        except InvalidArgument as error:
            raise InvalidArgument(
                [FieldViolation(f"route_config.{v.field}", v.description) for v in error.violations]
            ) from None

    async def list_revisions(
        self, principal: Principal, parent: str, page_size: int, page_token: str
    ) -> paging.Page[Revision]:
        project = config_project(parent, "parent")
        size = paging.page_size(page_size)
        after = paging.decode_token(page_token, parent)
        require_layer_owner(principal, project)
        before = int(after[0]) if after and isinstance(after[0], int) else None
        rows = await asyncio.to_thread(self._store.page, project, size + 1, before)
        return paging.page_of(rows, size, parent, lambda r: [r.revision])

    async def _revision_snapshot(self, project: str, number: int) -> RoutingSnapshot:
        key = (project, number)
        cached = self._explain_cache.get(key)
        if cached is not None:
            self._explain_cache.move_to_end(key)
            return cached
        revision = await asyncio.to_thread(self._store.get, project, number)
        if revision is None:
            raise NotFound(
                f"{project}/routeConfig/revisions/{number} does not exist",
                reason="REVISION_NOT_FOUND",
            )
        # Compiled against a private signal board: explaining history must not disturb live state.
        compiled = await asyncio.to_thread(
            compile_revision, revision, None, self._global_revision(project)
        )
        snapshot = compiled.snapshot
        self._explain_cache[key] = snapshot
        if len(self._explain_cache) > EXPLAIN_CACHE_SIZE:
            self._explain_cache.popitem(last=False)
        return snapshot

    def list_deployment_signals(
        self, principal: Principal, parent: str, filter_text: str, page_size: int, page_token: str
    ) -> paging.Page[tuple[DeploymentSpec, SignalsView]]:
        """The project's deployments with their live signals, filtered, by model group then id."""
        checks = _signal_filter(filter_text)
        rows = sorted(
            (
                (d, v)
                for d, v in self.deployment_signals(principal, parent)
                if all(check(d, v) for check in checks)
            ),
            key=lambda row: (row[0].model_name, row[0].deployment_id),
        )
        return paging.page_in_memory(
            rows, page_size, page_token, f"signals:{parent}",
            lambda row: [row[0].model_name, row[0].deployment_id],
        )  # fmt: skip


def require_layer_owner(principal: Principal, project: str) -> None:
    """The global layer is the operator's (any project's key with `operator`); a project's
    layer is its own keys'."""
    if project == GLOBAL_PROJECT:
        require_scope(principal, OPERATOR)
    else:
        require_project(principal, project.removeprefix("projects/"))


def config_project(name: str, field: str) -> str:
    """`projects/{p}/routeConfig` -> `projects/{p}`; INVALID_ARGUMENT on `field` otherwise."""
    project, _, rest = name.rpartition("/")
    if rest != "routeConfig":
        raise InvalidArgument(
            [
                FieldViolation(
                    field,
                    f"{name!r} is not a route config name; "
                    "expected projects/{project}/routeConfig",
                )
            ]
        )
    names.parse_project_name(project, field)
    return project


def _parse_revision_name(value: str, field: str) -> tuple[str, int]:
    prefix, _, number = value.rpartition("/revisions/")
    project = config_project(prefix, field) if prefix else ""
    if not project or not number.isdigit() or int(number) < 1:
        raise InvalidArgument(
            [FieldViolation(field, "expected projects/{project}/routeConfig/revisions/{revision}")]
        )
    return project.removeprefix("projects/"), int(number)


def _check_apply_fields(
    modules: tuple[PolicyModule, ...], mask: tuple[str, ...], request_id: str, description: str
) -> None:
    violations: list[FieldViolation] = []
    unknown = [path for path in mask if path not in ("config_yaml", "policy_modules")]
    if unknown:
        violations.append(
            FieldViolation(
                "update_mask", f"unknown paths {unknown}; use config_yaml, policy_modules"
            )
        )
    if len(modules) > MAX_POLICY_MODULES:
        violations.append(
            FieldViolation("route_config.policy_modules", f"at most {MAX_POLICY_MODULES}")
        )
    seen: set[str] = set()
    for index, module in enumerate(modules):
        if not module.name:
            violations.append(
                FieldViolation(f"route_config.policy_modules[{index}].name", "required")
            )
        elif module.name in seen:
            violations.append(
                FieldViolation(f"route_config.policy_modules[{index}].name", "duplicate")
            )
        seen.add(module.name)
        if not module.source.strip():
            violations.append(
                FieldViolation(f"route_config.policy_modules[{index}].source", "required")
            )
    if len(request_id) > 64:
        violations.append(FieldViolation("request_id", "at most 64 characters (use a UUID)"))
    if len(description) > 1024:
        violations.append(FieldViolation("description", "at most 1024 characters"))
    if violations:
        raise InvalidArgument(violations)


_STATE_NAMES = {"OPEN": Breaker.OPEN, "CLOSED": Breaker.CLOSED, "HALF_OPEN": Breaker.HALF_OPEN}
_SIGNAL_FIELDS: dict[str, Kind] = {
    "model_group": STRING,
    "provider": STRING,
    "breaker_state": frozenset(_STATE_NAMES),
}
SignalCheck = Callable[[DeploymentSpec, SignalsView], bool]


def _signal_filter(text: str) -> list[SignalCheck]:
    """`model_group = "gpt-4o" AND provider = "vllm" AND breaker_state = OPEN`, any subset."""
    return [_signal_check(field, value) for field, value in parse_filter(text, _SIGNAL_FIELDS)]


def _signal_check(field: str, value: str | bool) -> SignalCheck:
    def check(deployment: DeploymentSpec, view: SignalsView) -> bool:
        if field == "breaker_state":
            return view.breaker_state == _STATE_NAMES[str(value)]
        if field == "model_group":
            return deployment.model_name == value
        return deployment.provider == value

    return check
