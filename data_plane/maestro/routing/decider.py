"""Routing decisions over published snapshots: choose, live signals. No grpc, no store.

The request path (`choose`) does dictionary look-ups, content tagging of the request's text and
the engine's vector arithmetic; everything else (YAML, Rego, LiteLLM's catalog) happened when
the snapshot was compiled. RouteService adds the config store on top; a data plane that follows
a remote control plane uses a Decider over the snapshots it receives.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.context import Context

from maestro.core import names
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from maestro.core.tallies import Labels, Tally
from maestro.routing.catalog import LANE_PROVIDERS
from maestro.routing.engine import (
    Decision,
    Exclusion,
    LaneSaturation,
    RouteRequest,
    RoutingSnapshot,
    UnknownModel,
    parse_objectives_header,
)
from maestro.routing.layers import GLOBAL_PROJECT
from maestro.routing.signals import Breaker, Observation, SignalsView, SignalWindow
from maestro.routing.snapshots import Published, SnapshotRegistry
from maestro.routing.spec import DeploymentSpec
from maestro.routing.tagging import ContentTagger, merge_tags

CHARS_PER_TOKEN = 4  # a rough prompt-size estimate when the caller gives none

OFF_LOOP_TAGGING_COST = 8 * 1024
"""Above this scan cost (`tagging_cost`, about characters) content tagging runs in the tagging
thread instead of on the event loop. Measured on this machine (2 cores, Python 3.11, best of 5):
prose ~500 MB/s (8 KiB in 12 us, 1 MiB in 2.2 ms), prose with PII 50-450 MB/s, digit-dense log
lines ~16-19 MB/s (8 KiB in 0.52 ms, 64 KiB in 3.6 ms, 1 MiB in 55 ms). Sized on the slowest
realistic text, so no inline scan holds the loop much past 0.5 ms; below it a thread hop
(tens of microseconds, plus waiting for the GIL) would cost more than the scan. Text crafted
against the detectors is slower still (runs of "1 1 1 ...": ~0.2 MB/s, so 8 KiB ~40 ms)."""
_COST_PER_TEXT = 20
"""Each text costs the tagger ~1 us however short (its prechecks), ~20 characters' worth of
digit-dense text: many tiny parts must not slip under the threshold."""
_TAGGING_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maestro-tagging")
"""One thread for the whole process (its thread starts on first use). The scan is Python and
`re` under the GIL, so more threads would add no throughput, only contention with the loop;
large scans queue here instead, and a flood of huge prompts delays only huge prompts."""

_log = structlog.get_logger(__name__)


OTHER_MODEL = "other"
"""The metric value of a requested model that is no group or alias of the caller's config."""
MAX_MODEL_LABEL = 128


def model_label(snapshot: RoutingSnapshot, model: str) -> str:
    """A requested model as a metric label (or span name): the name when `snapshot` routes it,
    "*" for none, else `OTHER_MODEL`. Labels are series: a caller's free text must never make
    one per distinct string (a random 10 KiB model name per call would grow memory and the
    metrics backend without bound)."""
    if not model:
        return "*"
    if len(model) <= MAX_MODEL_LABEL and snapshot.routes_model(model):
        return model
    return OTHER_MODEL


def tagging_cost(texts: Sequence[str]) -> int:
    """What scanning `texts` costs, in characters of digit-dense text (see OFF_LOOP_...)."""
    return sum(map(len, texts)) + _COST_PER_TEXT * len(texts)


@dataclass(frozen=True, slots=True)
class ChooseInput:
    """A routing request as the domain sees it (converted from ChooseRequest): the engine's
    request before content tagging, plus what tagging and weighting start from."""

    parent: str
    route: RouteRequest = RouteRequest()  # noqa: RUF009 - frozen, so one shared default is safe
    texts: tuple[str, ...] = ()
    supplied_tags: tuple[str, ...] = ()
    objectives_header: str = ""
    detected_tags: frozenset[str] | None = None
    """Content tags already detected (`Decider.detect_off_loop`); None: `choose` detects them."""


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


class Decider:
    def __init__(
        self,
        registry: SnapshotRegistry,
        tagger: ContentTagger,
        *,
        tracer: trace.Tracer,
        meter: metrics.Meter,
    ) -> None:
        self._registry = registry
        self._tagger = tagger
        self._tracer = tracer
        # Tallies, not synchronous OpenTelemetry counters: a decision costs microseconds, and
        # OpenTelemetry's add() hashes its attributes on every call (tallies.py).
        self._decisions = Tally(
            meter, "maestro.route.decisions", "Routing decisions by chosen model group."
        )
        self._policy_exclusions = Tally(
            meter,
            "maestro.route.policy_exclusions",
            "Candidate deployments excluded by policy, by model group requested.",
        )
        self._fallback_routes = Tally(
            meter,
            "maestro.route.fallback_routes",
            "Decisions that routed to a fallback group of the requested model.",
        )
        self._exclusions = Tally(
            meter,
            "maestro.route.exclusions",
            "Candidate deployments a decision excluded, by project, requested model group and "
            "reason (a candidate out for several reasons counts under each).",
        )
        self._lanes: dict[str, tuple[LaneSaturation, bool]] = {}
        """Each serving lane's latest load and whether it is saturated, by state key."""
        for name, unit, description, value in _LANE_GAUGES:
            meter.create_observable_gauge(
                name,
                callbacks=[functools.partial(self._observe_lanes, value)],
                unit=unit,
                description=description,
            )
        self._signals = SignalWindow()
        self.observation_listeners: list[Callable[[Observation, float], None]] = []
        """Also told of each accepted observation (RolloutService's per-version series)."""

    # -- decisions --------------------------------------------------------------------------

    def choose(
        self,
        principal: Principal,
        request: ChooseInput,
        *,
        dry_run: bool = False,
        deferred: list[Callable[[Context | None], None]] | None = None,
    ) -> Choice:
        """Decide. Synchronous on purpose: it never waits, so it never yields the loop.

        The decision's span and counters are made after the decision, with its real start and
        end times. With `deferred`, they are appended there instead, for the caller to run
        (with the parent context it chooses) once its own latency-critical work is done: the
        data plane sends the provider request first.
        """
        started_ns = time.time_ns()
        started = time.perf_counter_ns()
        project_id = names.parse_project_name(request.parent, "parent")
        require_project(principal, project_id)
        published = self._published(request.parent)
        route, supplied, detected = self._prepare(request)
        decision = self._decide(published.snapshot, route)
        latency = time.perf_counter_ns() - started

        def telemetry(parent: Context | None) -> None:
            span = self._tracer.start_span(
                "maestro.route.choose", context=parent, start_time=started_ns
            )
            self._record(span, project_id, published, decision, request, latency)
            span.end(end_time=started_ns + latency)

        if deferred is None:
            telemetry(None)
        else:
            deferred.append(telemetry)
        if decision.winner < 0 and not dry_run:
            raise _no_eligible(decision, published.snapshot_version)
        return choice_of(decision, published.snapshot_version, supplied, detected, latency, dry_run)

    def _prepare(self, request: ChooseInput) -> tuple[RouteRequest, frozenset[str], frozenset[str]]:
        """The engine's request: tags from content merged with the caller's, the header's
        weights when the request gives none, a prompt-size estimate when it gives none."""
        detected = request.detected_tags
        if detected is None:
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

    async def detect_off_loop(self, request: ChooseInput) -> ChooseInput:
        """`request` with its content tags detected in the tagging thread when scanning them
        inline would hold the event loop (`OFF_LOOP_TAGGING_COST`); else `request` as it is,
        for `choose` to scan inline. Async callers (the data plane's calls, RouteService's RPCs)
        await this before `choose`, which stays synchronous: it never waits."""
        if request.detected_tags is not None or (
            tagging_cost(request.texts) <= OFF_LOOP_TAGGING_COST
        ):
            return request
        loop = asyncio.get_running_loop()
        detected = await loop.run_in_executor(_TAGGING_POOL, self._tagger.tags, request.texts)
        return replace(request, detected_tags=detected)

    def model_label(self, parent: str, model: str) -> str:
        """`model` as a metric label for calls of `parent` (see `model_label`)."""
        if not model:
            return "*"
        published = self._registry.current(parent) or self._registry.current(GLOBAL_PROJECT)
        return OTHER_MODEL if published is None else model_label(published.snapshot, model)

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
            # Cut: the message travels in the status trailer, whose size the client limits
            # (a 10 KiB name made the answer RESOURCE_EXHAUSTED instead of NOT_FOUND).
            shown = request.model[:MAX_MODEL_LABEL]
            cut = "..." if len(request.model) > MAX_MODEL_LABEL else ""
            raise NotFound(
                f"model {shown!r}{cut} is not a model group or alias of this project's config",
                reason="MODEL_NOT_FOUND",
            ) from None

    def _record(
        self,
        span: trace.Span,
        project: str,
        published: Published,
        decision: Decision,
        request: ChooseInput,
        latency_ns: int,
    ) -> None:
        snapshot = decision.snapshot
        requested = model_label(snapshot, request.route.model)
        chosen = snapshot.deployments[decision.winner] if decision.winner >= 0 else None
        if span.is_recording():
            attributes: dict[str, Any] = {
                "maestro.project": project,
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
            self._policy_exclusions.add(denied, self._labels(project, requested))
        self._count_exclusions(project, requested, decision)
        if chosen is None:
            self._decisions.add(1, self._labels(project, requested, outcome="none"))
            return
        self._decisions.add(
            1,
            self._labels(project, requested, chosen.model_name, chosen.provider, outcome="chosen"),
        )
        if request.route.model and chosen.model_name != request.route.model:
            self._fallback_routes.add(1, self._labels(project, requested, chosen.model_name))

    def _count_exclusions(self, project: str, requested: str, decision: Decision) -> None:
        """Count the candidates the decision ruled out, by reason: one vectorised eligibility
        pass, and the explanation's reasons only for the candidates it excluded."""
        snapshot, request = decision.snapshot, decision.request
        candidates = snapshot.candidate_indices(request)
        if not len(candidates):
            return
        eligible = snapshot.eligible(request, slice(0, len(snapshot.deployments)))
        excluded = candidates[~eligible[candidates]]
        for index in excluded.tolist():
            for reason in snapshot.exclusions(request, index):
                self._exclusions.add(1, self._exclusion_labels(project, requested, reason))

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _exclusion_labels(project: str, requested: str, reason: Exclusion) -> Labels:
        return (
            ("maestro.project", project),
            ("gen_ai.request.model", requested),
            ("reason", reason.name.lower()),
        )

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the service lives as long as the process
    def _labels(
        self,
        project: str,
        requested: str,
        chosen: str = "",
        provider: str = "",
        outcome: str = "",
    ) -> Labels:
        """Metric attributes, built once per combination rather than once per decision."""
        labels = [("maestro.project", project), ("gen_ai.request.model", requested)]
        if chosen:
            labels.append(("gen_ai.response.model", chosen))
        if provider:
            labels.append(("gen_ai.provider.name", provider))
        if outcome:
            labels.append(("outcome", outcome))
        return tuple(labels)

    # -- live signals ----------------------------------------------------------------------

    def ingest_observations(self, observations: Iterable[Observation]) -> tuple[int, int]:
        """Fold data-plane observations into the live signals; (accepted, dropped). An
        observation of a deployment its project's snapshot lacks is dropped."""
        accepted = dropped = 0
        touched: set[tuple[str, str]] = set()
        failures: dict[int, tuple[Callable[[Observation, float], None], Exception, int]] = {}
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
            for listener in self.observation_listeners:
                try:
                    listener(observation, now)
                except Exception as failure:  # a listener must not cost the batch its signals
                    first = failures.get(id(listener))
                    failures[id(listener)] = (
                        listener,
                        first[1] if first else failure,
                        (first[2] if first else 0) + 1,
                    )
        for project, deployment_id in touched:
            self._refresh_signals(project, deployment_id, now)
        for listener, error, count in failures.values():
            _log.error(
                "route.observation_listener_failed",
                listener=getattr(listener, "__qualname__", repr(listener)),
                failures=count,
                error=repr(error),
                exc_info=error,
            )
        return accepted, dropped

    def _refresh_signals(self, project: str, deployment_id: str, now: float) -> None:
        """Only the project's own snapshot hears its traffic. A project routing with the global
        snapshot (no config of its own) keeps its signals in the store, not in that snapshot:
        one tenant's traffic must not steer everyone else's decisions."""
        published = self._registry.current(project)
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

    def lane_deployments(self) -> dict[str, str]:
        """Serving-lane deployments (provider `maestro_lane`) of every published snapshot: their
        `api_base` by state key (`DeploymentSpec.state_key`). Read off the request path (lane
        monitors poll it)."""
        return {
            deployment.state_key: deployment.api_base
            for published in self._registry.all(None)
            for deployment in published.snapshot.deployments
            if deployment.provider in LANE_PROVIDERS and deployment.api_base
        }

    def set_lane_load(self, state_key: str, lane: LaneSaturation, saturated: bool) -> None:
        """A lane's latest load: every project routing to it sees it, in its rationale, its
        latency forecast and, when saturated, its exclusion. `state_key`: an operator's lane is
        seen by every project, a tenant's only by its own. The `maestro.lane.*` gauges report
        it at collection."""
        self._lanes[state_key] = (lane, saturated)
        for published in self._registry.all(None):
            deployment_id = published.snapshot.id_of_state.get(state_key)
            if deployment_id is not None:
                published.snapshot.update_signals(deployment_id, lane=lane, saturated=saturated)

    def _observe_lanes(
        self, value: Callable[[LaneSaturation, bool], float], _: metrics.CallbackOptions
    ) -> Iterable[metrics.Observation]:
        """One lane gauge, at collection (the exporter's thread: a copy of the dict is read)."""
        return [
            metrics.Observation(value(lane, saturated), {"maestro.deployment_id": key})
            for key, (lane, saturated) in list(self._lanes.items())
        ]

    def keep_lanes(self, state_keys: Iterable[str]) -> None:
        """Forget the load of lanes no published snapshot routes to any more (the monitor's
        poll), so their gauges stop."""
        keep = set(state_keys)
        for gone in [key for key in self._lanes if key not in keep]:
            del self._lanes[gone]

    def set_breaker_open(self, state_key: str, is_open: bool) -> None:
        """A data plane's breaker opened or closed: every project routing to the deployment
        sees it. Breakers are per `state_key`: an operator's deployment has one breaker for
        all, a tenant's deployment its own, whatever id the tenant gave it."""
        for published in self._registry.all(None):
            deployment_id = published.snapshot.id_of_state.get(state_key)
            if deployment_id is not None:
                published.snapshot.update_signals(deployment_id, breaker_open=is_open)


_LANE_GAUGES: tuple[tuple[str, str, str, Callable[[LaneSaturation, bool], float]], ...] = (
    (
        "maestro.lane.queue_depth",
        "{request}",
        "Requests a serving lane holds waiting for its engine's scheduler (latest poll).",
        lambda lane, _: lane.queue_depth,
    ),
    (
        "maestro.lane.kv_cache_usage_ratio",
        "1",
        "KV-cache use of a serving lane's fullest replica, 0 to 1 (latest poll).",
        lambda lane, _: lane.kv_cache_usage_ratio,
    ),
    (
        "maestro.lane.batch_size",
        "{request}",
        "Requests a serving lane's engines are generating: their running batch (latest poll).",
        lambda lane, _: lane.running_requests,
    ),
    (
        "maestro.lane.saturated",
        "",
        "1 while routing treats a serving lane as saturated (shed recently, KV cache nearly "
        "full, or every slot busy with no queue), else 0.",
        lambda _, saturated: 1 if saturated else 0,
    ),
)


def _no_eligible(decision: Decision, snapshot_version: str) -> MaestroError:
    """FAILED_PRECONDITION when the request itself rules every candidate out (policy, budget,
    jurisdiction...). When some candidate is out only for its health, the same call may succeed
    later: RESOURCE_EXHAUSTED when every such candidate is a saturated lane (capacity, which
    frees up as streams end: retry with backoff), UNAVAILABLE when a breaker is open."""
    snapshot, request = decision.snapshot, decision.request
    health = {Exclusion.BREAKER_OPEN, Exclusion.SATURATED}
    healthless = [
        reasons
        for index in snapshot.candidate_indices(request)
        if (reasons := set(snapshot.exclusions(request, int(index)))) and reasons <= health
    ]
    if healthless:
        if all(reasons == {Exclusion.SATURATED} for reasons in healthless):
            return ResourceExhausted(
                "every deployment this step may use is a saturated serving lane; retry with "
                "backoff",
                reason="LANE_SATURATED",
                metadata={"snapshot_version": snapshot_version},
            )
        return Unavailable(
            "every deployment this step may use is unhealthy (circuit breaker open or lane "
            "saturated); retry with backoff",
            reason="NO_HEALTHY_DEPLOYMENT",
            metadata={"snapshot_version": snapshot_version},
        )
    return FailedPrecondition(
        "no deployment is eligible for this step; ExplainRoute lists why each was excluded",
        reason="NO_ELIGIBLE_DEPLOYMENT",
        metadata={"snapshot_version": snapshot_version},
    )


def choice_of(
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
