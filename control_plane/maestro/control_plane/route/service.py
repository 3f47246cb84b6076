"""RouteService logic: choose, explain, apply and read configs. No grpc here.

The request path (`choose`) does dictionary look-ups, content tagging of the request's text and
the engine's vector arithmetic; everything else (YAML, Rego, LiteLLM's catalog) happens when a
config is applied, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import metrics, trace

from maestro.control_plane import names
from maestro.control_plane.auth import Principal, require_project
from maestro.control_plane.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
)
from maestro.control_plane.route.config import DeploymentSpec
from maestro.control_plane.route.engine import (
    Decision,
    RouteRequest,
    RoutingSnapshot,
    UnknownModel,
    parse_objectives_header,
)
from maestro.control_plane.route.layers import GLOBAL_PROJECT
from maestro.control_plane.route.policy import PolicyError, PolicyModule
from maestro.control_plane.route.registry import (
    Compiled,
    Published,
    SnapshotRegistry,
    compile_revision,
)
from maestro.control_plane.route.signals import Breaker, Observation, SignalsView, SignalWindow
from maestro.control_plane.route.store import Revision, RouteConfigStore, digest_of
from maestro.control_plane.route.tagging import ContentTagger, merge_tags
from maestro.control_plane.rpc import pagination

log = structlog.get_logger(__name__)
CHARS_PER_TOKEN = 4  # a rough prompt-size estimate when the caller gives none
MAX_POLICY_MODULES = 64
EXPLAIN_CACHE_SIZE = 8


@dataclass(frozen=True, slots=True)
class ChooseInput:
    """A routing request as the domain sees it (converted from ChooseRequest): the engine's
    request before content tagging, plus what tagging and weighting start from."""

    parent: str
    route: RouteRequest = RouteRequest()  # noqa: RUF009 - frozen, so one shared default is safe
    texts: tuple[str, ...] = ()
    supplied_tags: tuple[str, ...] = ()
    objectives_header: str = ""


@dataclass(frozen=True, slots=True)
class Choice:
    decision: Decision
    snapshot_version: str
    supplied_tags: frozenset[str]
    detected_tags: frozenset[str]
    decision_id: str
    decided_at: datetime
    latency_ns: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A project's config as GetConfig shows it; `revision` None before the first apply."""

    name: str
    revision: Revision | None
    published: Published | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    view: ConfigView
    snapshot: RoutingSnapshot
    created: bool


class RouteService:
    def __init__(
        self,
        store: RouteConfigStore,
        registry: SnapshotRegistry,
        tagger: ContentTagger,
        *,
        tracer: trace.Tracer,
        meter: metrics.Meter,
    ) -> None:
        self._store = store
        self._registry = registry
        self._tagger = tagger
        self._tracer = tracer
        self._decisions = meter.create_counter(
            "maestro.route.decisions", description="Routing decisions by chosen model group."
        )
        self._policy_exclusions = meter.create_counter(
            "maestro.route.policy_exclusions",
            description="Candidate deployments excluded by policy, by model group requested.",
        )
        self._fallback_routes = meter.create_counter(
            "maestro.route.fallback_routes",
            description="Decisions that routed to a fallback group of the requested model.",
        )
        self._explain_cache: OrderedDict[tuple[str, int], RoutingSnapshot] = OrderedDict()
        self._signals = SignalWindow()

    # -- start-up ---------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Compile and publish every project's latest stored revision (at server start), the
        global layer first since the others compile on top of it."""
        await asyncio.to_thread(self._store.ensure_project, GLOBAL_PROJECT)
        projects = await asyncio.to_thread(self._store.projects_with_config)
        for project in sorted(projects, key=lambda p: p != GLOBAL_PROJECT):
            revision = await asyncio.to_thread(self._store.latest, project)
            if revision is not None:
                await self._publish_compiled(revision)

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
        await self._registry.publish(revision, compiled)
        return True

    def _global_revision(self, project: str) -> Revision | None:
        if project == GLOBAL_PROJECT:
            return None
        published = self._registry.current(GLOBAL_PROJECT)
        return published.revision if published else None

    # -- decisions --------------------------------------------------------------------------

    def choose(
        self, principal: Principal, request: ChooseInput, *, dry_run: bool = False
    ) -> Choice:
        """Decide. Synchronous on purpose: it never waits, so it never yields the loop."""
        started = time.perf_counter_ns()
        project_id = names.parse_project_name(request.parent, "parent")
        require_project(principal, project_id)
        published = self._published(request.parent)
        with self._tracer.start_as_current_span("maestro.route.choose") as span:
            route, supplied, detected = self._prepare(request)
            decision = self._decide(published.snapshot, route)
            latency = time.perf_counter_ns() - started
            self._record(span, principal, published, decision, request, latency)
        if decision.winner < 0 and not dry_run:
            raise FailedPrecondition(
                "no deployment is eligible for this step; ExplainRoute lists why each was excluded",
                reason="NO_ELIGIBLE_DEPLOYMENT",
                metadata={"snapshot_version": published.snapshot_version},
            )
        return _choice(decision, published.snapshot_version, supplied, detected, latency, dry_run)

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
        return _choice(decision, snapshot.version, supplied, detected, latency, dry_run=True)

    def _prepare(self, request: ChooseInput) -> tuple[RouteRequest, frozenset[str], frozenset[str]]:
        """The engine's request: tags from content merged with the caller's, the header's
        weights when the request gives none, a prompt-size estimate when it gives none."""
        detected = self._tagger.tags(request.texts) if request.texts else frozenset()
        try:
            supplied = merge_tags(frozenset(), request.supplied_tags)
        except ValueError as error:
            raise InvalidArgument([FieldViolation("step_tags", str(error))]) from None
        route = request.route
        weights = route.weights
        if weights is None and request.objectives_header:
            try:
                weights = parse_objectives_header(request.objectives_header)
            except ValueError as error:
                raise InvalidArgument(
                    [FieldViolation("x-maestro-objectives", str(error))],
                    message=f"invalid x-maestro-objectives metadata: {error}",
                ) from None
        prompt_tokens = route.prompt_tokens or math.ceil(
            sum(len(t) for t in request.texts) / CHARS_PER_TOKEN
        )
        prepared = replace(
            route, tags=supplied | detected, weights=weights, prompt_tokens=prompt_tokens
        )
        return prepared, supplied, detected

    def published_for(self, principal: Principal, parent: str) -> Published:
        """The snapshot calls of `parent` route with (its own config, else the global one)."""
        require_project(principal, names.parse_project_name(parent, "parent"))
        return self._published(parent)

    def _published(self, parent: str) -> Published:
        # A project without a config of its own routes with the global config alone.
        published = self._registry.current(parent) or self._registry.current(GLOBAL_PROJECT)
        if published is None:
            raise FailedPrecondition(
                f"{parent} has no routing config yet; apply one with ApplyConfig",
                reason="NO_ROUTE_CONFIG",
            )
        return published

    @staticmethod
    def _decide(snapshot: RoutingSnapshot, request: RouteRequest) -> Decision:
        try:
            return snapshot.decide(request)
        except UnknownModel:
            raise NotFound(
                f"model {request.model!r} is not a model group or alias of this project's config",
                reason="MODEL_NOT_FOUND",
            ) from None

    def _record(
        self,
        span: trace.Span,
        principal: Principal,
        published: Published,
        decision: Decision,
        request: ChooseInput,
        latency_ns: int,
    ) -> None:
        snapshot = decision.snapshot
        requested = request.route.model or "*"
        chosen = snapshot.deployments[decision.winner] if decision.winner >= 0 else None
        if span.is_recording():
            attributes: dict[str, Any] = {
                "maestro.project": principal.project_id,
                "gen_ai.operation.name": "route",
                "gen_ai.request.model": requested,
                "maestro.route.snapshot_version": published.snapshot_version,
                "maestro.route.tags": sorted(decision.request.tags),
                "maestro.route.decision_latency_us": latency_ns / 1000,
                "maestro.route.outcome": "chosen" if chosen else "no_eligible_deployment",
                "maestro.route.fallback_count": len(decision.fallbacks),
            }
            if chosen is not None:
                attributes["gen_ai.response.model"] = chosen.model_name
                attributes["gen_ai.provider.name"] = chosen.provider
                attributes["maestro.route.deployment_id"] = chosen.deployment_id
            span.set_attributes(attributes)
        denied = snapshot.denied_count(snapshot.policy.tag_key(decision.request.tags))
        if denied:
            self._policy_exclusions.add(denied, self._labels(requested))
        if chosen is None:
            self._decisions.add(1, self._labels(requested, outcome="none"))
            return
        self._decisions.add(
            1, self._labels(requested, chosen.model_name, chosen.provider, outcome="chosen")
        )
        if request.route.model and chosen.model_name != request.route.model:
            self._fallback_routes.add(1, self._labels(requested, chosen.model_name))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the service lives as long as the process
    def _labels(
        self, requested: str, chosen: str = "", provider: str = "", outcome: str = ""
    ) -> dict[str, str]:
        """Metric attributes, built once per combination rather than once per decision."""
        labels = {"gen_ai.request.model": requested}
        if chosen:
            labels["gen_ai.response.model"] = chosen
        if provider:
            labels["gen_ai.provider.name"] = provider
        if outcome:
            labels["outcome"] = outcome
        return labels

    # -- live signals ----------------------------------------------------------------------

    def ingest_observations(self, observations: Iterable[Observation]) -> tuple[int, int]:
        """Fold data-plane observations into the live signals; (accepted, dropped). An
        observation of a deployment its project's snapshot lacks is dropped."""
        accepted = dropped = 0
        touched: set[tuple[str, str]] = set()
        now = time.time()
        for observation in observations:
            published = self._registry.current(observation.project) or self._registry.current(
                GLOBAL_PROJECT
            )
            if published is None or observation.deployment_id not in published.snapshot.index_of:
                dropped += 1
                continue
            self._signals.add(observation, now)
            touched.add((observation.project, observation.deployment_id))
            accepted += 1
        for project, deployment_id in touched:
            self._refresh_signals(project, deployment_id, now)
        return accepted, dropped

    def _refresh_signals(self, project: str, deployment_id: str, now: float) -> None:
        published = self._registry.current(project) or self._registry.current(GLOBAL_PROJECT)
        if published is None:
            return
        view = self._signals.view(project, deployment_id, now)
        published.snapshot.update_signals(
            deployment_id,
            p95_ms=view.p95_latency_ms,
            ttft_ms=view.p95_ttft_ms,
            error_rate=view.error_rate if view.sample_count else None,
            breaker_open=(
                view.breaker_state == Breaker.OPEN
                if view.breaker_state != Breaker.UNSPECIFIED
                else None
            ),
            samples=view.sample_count,
        )

    def deployment_signals(
        self, principal: Principal, parent: str, deployment_id: str | None = None
    ) -> list[tuple[DeploymentSpec, SignalsView]]:
        """Signals of the project's deployments (or of one), from its own traffic only."""
        published = self.published_for(principal, parent)
        snapshot = published.snapshot
        if deployment_id is not None:
            index = snapshot.index_of.get(deployment_id)
            if index is None:
                raise NotFound(
                    f"deployment {deployment_id!r} is not in {parent}'s routing snapshot",
                    reason="DEPLOYMENT_NOT_FOUND",
                )
            deployments: Iterable[DeploymentSpec] = (snapshot.deployments[index],)
        else:
            deployments = snapshot.deployments
        return [(d, self._signals.view(parent, d.deployment_id)) for d in deployments]

    def set_breaker_open(self, deployment_id: str, is_open: bool) -> None:
        """A data plane's breaker for the deployment opened or closed: every project routing
        to it sees it (breakers are per deployment, not per project)."""
        for published in self._registry.all(None):
            published.snapshot.update_signals(deployment_id, breaker_open=is_open)

    # -- config -----------------------------------------------------------------------------

    async def get_config(self, principal: Principal, name: str) -> ConfigView:
        project = config_project(name, "name")
        if project != GLOBAL_PROJECT:  # every project may read the global config
            require_project(principal, project.removeprefix("projects/"))
        published = self._registry.current(project)
        if published is not None:
            return ConfigView(name, published.revision, published)
        return ConfigView(name, await asyncio.to_thread(self._store.latest, project))

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
        require_project(principal, project.removeprefix("projects/"))
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
        candidate = Revision(
            project, (current.revision if current else 0) + 1, config_yaml, modules,
            description, principal.api_key or "", digest_of(config_yaml, modules),
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
            creator=principal.api_key or "",
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
        published = await self._registry.publish(revision, compiled)
        log.info("route.config_applied", project=project, revision=revision.revision)
        if project == GLOBAL_PROJECT:
            # Every project routes on top of the global layer: rebuild their snapshots.
            for other in await asyncio.to_thread(self._store.projects_with_config):
                latest = await asyncio.to_thread(self._store.latest, other)
                if other != GLOBAL_PROJECT and latest is not None:
                    await self._publish_compiled(latest)
        return Applied(ConfigView(name, revision, published), compiled.snapshot, created)

    def _append(
        self, project: str, config_yaml: str, modules: tuple[PolicyModule, ...], **kwargs: Any
    ) -> tuple[Revision, bool] | None:
        try:
            return self._store.append(project, config_yaml, modules, **kwargs)
        except sqlite3.IntegrityError:
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
    ) -> tuple[list[Revision], str]:
        project = config_project(parent, "parent")
        size = pagination.page_size(page_size)
        after = pagination.decode_token(page_token, parent)
        require_project(principal, project.removeprefix("projects/"))
        before = int(after[0]) if after and isinstance(after[0], int) else None
        rows = await asyncio.to_thread(self._store.page, project, size + 1, before)
        items = rows[:size]
        token = pagination.encode_token(parent, [items[-1].revision]) if len(rows) > size else ""
        return items, token

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


def _choice(
    decision: Decision,
    version: str,
    supplied: frozenset[str],
    detected: frozenset[str],
    latency_ns: int,
    dry_run: bool,
) -> Choice:
    return Choice(
        decision,
        version,
        supplied,
        detected,
        uuid.uuid4().hex,
        datetime.now(UTC),
        latency_ns,
        dry_run,
    )


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
