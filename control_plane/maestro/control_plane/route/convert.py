"""RouteService messages <-> domain values: validation of requests, rationale of decisions."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from maestro.control_plane.route.reports import BatchReceipt, ObservationBatch
from maestro.control_plane.route.watch import RejectedSnapshot, WatchAck, WatchUpdate
from maestro.core import names
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.decider import Choice, ChooseInput
from maestro.routing.engine import Decision, Exclusion, LaneSaturation
from maestro.routing.policy import PolicyModule
from maestro.routing.signals import (
    Breaker,
    Histogram,
    Observation,
    SignalsView,
    histogram_from_buckets,
)
from maestro.routing.snapshots import Published, Revision
from maestro.routing.spec import OBJECTIVES, DeploymentSpec
from maestro.routing.texts import chat_message_texts
from maestro.routing.wire import route_request
from maestro.v1 import common_pb2, route_service_pb2

CHOOSE_CANDIDATE_CAP = 16
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)


def choose_input(
    request: route_service_pb2.ChooseRequest, objectives_header: str, prefix: str = ""
) -> ChooseInput:
    """Validate a ChooseRequest; every bad field is reported at once."""
    violations: list[FieldViolation] = []
    if request.messages and request.content_digest:
        violations.append(
            FieldViolation(f"{prefix}content_digest", "give either messages or content_digest")
        )
    for field in ("estimated_prompt_tokens", "estimated_completion_tokens"):
        if getattr(request, field) < 0:
            violations.append(FieldViolation(f"{prefix}{field}", "must not be negative"))
    route = route_request(
        request,
        violations,
        prefix,
        prompt_tokens=max(0, request.estimated_prompt_tokens),
        completion_tokens=max(0, request.estimated_completion_tokens),
        excluded_ids=frozenset(request.excluded_deployment_ids),
    )
    if violations:
        raise InvalidArgument(violations)
    return ChooseInput(
        parent=request.parent,
        route=route,
        texts=chat_message_texts(request.messages),
        supplied_tags=tuple(request.step_tags),
        objectives_header=objectives_header,
    )


def policy_modules(
    modules: list[route_service_pb2.RoutePolicyModule],
) -> tuple[PolicyModule, ...]:
    return tuple(PolicyModule(m.name, m.source) for m in modules)


def _duration_ms(ms: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(ms * 1e6))
    return duration


def deployment_ref(decision: Decision, index: int) -> common_pb2.DeploymentRef:
    deployment = decision.snapshot.deployments[index]
    return common_pb2.DeploymentRef(
        model_group=deployment.model_name,
        deployment_id=deployment.deployment_id,
        provider=deployment.provider,
        provider_model=deployment.litellm_model,
    )


def decision_message(choice: Choice, cap: int | None) -> route_service_pb2.RouteDecision:
    """The decision with its rationale: every candidate when `cap` is None, else the chosen
    ones first and then the best-scoring others, up to `cap`."""
    decision = choice.decision
    snapshot = decision.snapshot
    request = decision.request
    decided = timestamp_pb2.Timestamp()
    decided.FromDatetime(choice.decided_at)
    latency = duration_pb2.Duration()
    latency.FromNanoseconds(choice.latency_ns)
    message = route_service_pb2.RouteDecision(
        decision_id=choice.decision_id,
        supplied_tags=sorted(choice.supplied_tags),
        detected_tags=sorted(choice.detected_tags),
        content_tagged=bool(choice.detected_tags),
        effective_weights=common_pb2.ObjectiveWeights(
            **{name: float(w) for name, w in zip(OBJECTIVES, decision.weights, strict=True)}
        ),
        snapshot_version=choice.snapshot_version,
        dry_run=choice.dry_run,
        decide_time=decided,
        decision_latency=latency,
    )
    scores = decision.weights @ snapshot.values
    chosen = [decision.winner, *decision.fallbacks] if decision.winner >= 0 else []
    if decision.winner >= 0:
        message.deployment.CopyFrom(deployment_ref(decision, decision.winner))
        message.fallbacks.extend(deployment_ref(decision, i) for i in decision.fallbacks)
        winner = decision.winner
        prompt_cost = _finite(snapshot.price_in[winner] * request.prompt_tokens)
        completion_cost = _finite(snapshot.price_out[winner] * request.completion_tokens)
        per_1k = _finite((snapshot.price_in[winner] + snapshot.price_out[winner]) * 500)
        message.projected_cost.CopyFrom(
            route_service_pb2.RouteCostProjection(
                prompt_tokens=request.prompt_tokens,
                completion_tokens=request.completion_tokens,
                prompt_cost_usd=prompt_cost,
                completion_cost_usd=completion_cost,
                total_cost_usd=prompt_cost + completion_cost,
                cost_per_1k_tokens_usd=per_1k,
            )
        )
        signals = snapshot.signals(winner)
        message.slo_forecast.CopyFrom(
            route_service_pb2.RouteSloForecast(
                expected_p95_latency=_duration_ms(signals.forecast_p95_ms),
                expected_time_to_first_token=_duration_ms(signals.ttft_ms),
                expected_error_rate=signals.error_rate,
                meets_slo=not request.max_p95_ms or signals.forecast_p95_ms <= request.max_p95_ms,
            )
        )
    indices = snapshot.candidate_indices(request)
    if cap is not None and len(indices) > cap:
        # Vector work only: at 10,000 candidates a Python pass would cost more than the decision.
        others = indices[~np.isin(indices, chosen)]
        room = cap - len(chosen)
        top = others[np.argpartition(-scores[others], room - 1)[:room]] if room > 0 else others[:0]
        top = top[np.argsort(-scores[top], kind="stable")]
        selected = [*chosen, *(int(i) for i in top)]
    else:
        selected = [int(i) for i in indices]
    message.omitted_candidate_count = len(indices) - len(selected)
    key = snapshot.policy.tag_key(request.tags)
    entries = []
    for index in selected:
        entries.append((index, _candidate(decision, index, float(scores[index]), chosen, key)))
    # Chosen first (in order), then eligible by score, then excluded by score.
    ranked = sorted(
        entries,
        key=lambda e: (
            chosen.index(e[0]) if e[0] in chosen else len(chosen) + (e[1].exclusion_reason != 0),
            -e[1].score,
        ),
    )
    for rank, (_, candidate) in enumerate(ranked, start=1):
        if candidate.verdict != route_service_pb2.ROUTE_CANDIDATE_VERDICT_EXCLUDED:
            candidate.rank = rank
        message.candidates.append(candidate)
    return message


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


_VERDICT_TEXT = {
    Exclusion.POLICY_DENIED: "denied by policy",
    Exclusion.JURISDICTION: "outside the allowed jurisdictions",
    Exclusion.BREAKER_OPEN: "circuit breaker open",
    Exclusion.SATURATED: "saturated",
    Exclusion.BUDGET_EXCEEDED: "projected cost over the step budget (or price unknown)",
    Exclusion.CONTEXT_WINDOW: "prompt longer than the context window",
    Exclusion.EXCLUDED_BY_CALLER: "excluded by the caller",
    Exclusion.SLO_FORECAST_MISS: "expected p95 latency over the SLO target",
}


def _candidate(
    decision: Decision, index: int, score: float, chosen: list[int], key: int
) -> route_service_pb2.RouteCandidate:
    snapshot = decision.snapshot
    request = decision.request
    values = snapshot.values[:, index]
    projected = snapshot.price_in[index] * request.prompt_tokens + snapshot.price_out[index] * (
        request.completion_tokens
    )
    candidate = route_service_pb2.RouteCandidate(
        deployment=deployment_ref(decision, index),
        score=score,
        objective_scores=route_service_pb2.RouteObjectiveScores(
            **{name: float(v) for name, v in zip(OBJECTIVES, values, strict=True)}
        ),
        projected_cost_usd=_finite(projected),
        expected_p95_latency=_duration_ms(float(snapshot.p95_ms[index])),
    )
    lane = snapshot.signals(index).lane
    if lane is not None:
        candidate.saturation.CopyFrom(saturation_message(lane))
    if index == decision.winner:
        candidate.verdict = route_service_pb2.ROUTE_CANDIDATE_VERDICT_CHOSEN
        return candidate
    if index in chosen:
        candidate.verdict = route_service_pb2.ROUTE_CANDIDATE_VERDICT_FALLBACK
        return candidate
    reasons = snapshot.exclusions(request, index)
    if not reasons:
        candidate.verdict = route_service_pb2.ROUTE_CANDIDATE_VERDICT_NOT_SELECTED
        candidate.exclusion_detail = "eligible; a higher-scoring deployment was chosen"
        return candidate
    candidate.verdict = route_service_pb2.ROUTE_CANDIDATE_VERDICT_EXCLUDED
    candidate.exclusion_reason = int(reasons[0])  # type: ignore[assignment]
    candidate.exclusion_detail = "; ".join(_VERDICT_TEXT[r] for r in reasons)
    if Exclusion.SATURATED in reasons and lane is not None:
        busy = lane.running_requests + lane.queue_depth
        candidate.exclusion_detail += (
            f" ({busy} of {lane.max_ongoing_requests} slots busy, {lane.queue_depth} queued, "
            f"KV cache {lane.kv_cache_usage_ratio:.0%}, {lane.shed_count} shed)"
        )
    if reasons[0] == Exclusion.POLICY_DENIED:
        candidate.policy_rule = _policy_rule(decision, index, key)
    return candidate


def saturation_message(lane: LaneSaturation) -> route_service_pb2.DeploymentSaturation:
    return route_service_pb2.DeploymentSaturation(
        queue_depth=lane.queue_depth,
        running_requests=lane.running_requests,
        kv_cache_usage_ratio=lane.kv_cache_usage_ratio,
        max_ongoing_requests=lane.max_ongoing_requests,
        max_queued_requests=max(lane.max_queued_requests, 0),
        prefix_cache_hit_ratio=lane.prefix_cache_hit_ratio,
        shed_count=lane.shed_count,
    )


def _policy_rule(decision: Decision, index: int, key: int) -> str:
    snapshot = decision.snapshot
    group = int(snapshot.group_of[index])
    if not snapshot.policy.allowed_row(key)[group]:
        return "; ".join(snapshot.policy.reasons(key, group))
    tags = sorted(decision.request.tags & frozenset(snapshot.spec.content_tags))
    return "; ".join(
        f"policies.content_tags.{tag}: only {sorted(snapshot.spec.content_tags[tag])}"
        for tag in tags
    )


def route_config_message(
    name: str, revision: Revision | None, published: Published | None = None
) -> route_service_pb2.RouteConfig:
    message = route_service_pb2.RouteConfig(name=name, revision_id="0", snapshot_version="0")
    if published is not None:
        message.snapshot_version = published.snapshot_version
        if published.global_revision is not None:
            message.global_revision_id = str(published.global_revision.revision)
    if revision is None:
        return message
    message.revision_id = str(revision.revision)
    if published is None:
        message.snapshot_version = str(revision.revision)
    message.config_yaml = revision.config_yaml
    message.policy_modules.extend(module_message(m) for m in revision.policy_modules)
    message.etag = revision.digest
    message.update_time.FromDatetime(revision.create_time)
    return message


def module_message(module: PolicyModule) -> route_service_pb2.RoutePolicyModule:
    match = _PACKAGE.search(module.source)
    return route_service_pb2.RoutePolicyModule(
        name=module.name, source=module.source, rego_package=match.group(1) if match else ""
    )


def revision_message(revision: Revision) -> route_service_pb2.RouteConfigRevision:
    name = f"{revision.project}/routeConfig"
    message = route_service_pb2.RouteConfigRevision(
        name=f"{name}/revisions/{revision.revision}",
        revision_id=str(revision.revision),
        route_config=route_config_message(name, revision),
        description=revision.description,
        creator=revision.creator,
        digest=revision.digest,
    )
    message.create_time.FromDatetime(revision.create_time)
    return message


def snapshot_message(published: Published) -> route_service_pb2.RouteConfigSnapshot:
    revision = published.revision
    message = route_service_pb2.RouteConfigSnapshot(
        route_config=f"{revision.project}/routeConfig",
        snapshot_version=published.snapshot_version,
        revision_id=str(revision.revision),
        config_yaml=published.merged_yaml,
        policy_modules=[module_message(m) for m in revision.policy_modules],
    )
    if published.global_revision is not None:
        message.global_revision_id = str(published.global_revision.revision)
        message.global_policy_modules.extend(
            module_message(m) for m in published.global_revision.policy_modules
        )
    return message


MAX_OBSERVATIONS_PER_BATCH = 1000
MAX_OBSERVATION_WINDOW_S = 300
MAX_HISTOGRAM_BOUNDS = 64
_BREAKER_STATES = {
    common_pb2.CIRCUIT_BREAKER_STATE_UNSPECIFIED: Breaker.UNSPECIFIED,
    common_pb2.CIRCUIT_BREAKER_STATE_CLOSED: Breaker.CLOSED,
    common_pb2.CIRCUIT_BREAKER_STATE_OPEN: Breaker.OPEN,
    common_pb2.CIRCUIT_BREAKER_STATE_HALF_OPEN: Breaker.HALF_OPEN,
}


def _histogram(
    message: route_service_pb2.LatencyHistogram, field: str, violations: list[FieldViolation]
) -> Histogram:
    bounds, counts = list(message.bucket_upper_bounds_ms), list(message.bucket_counts)
    if not bounds and not counts:
        return Histogram()
    if len(bounds) > MAX_HISTOGRAM_BOUNDS:
        violations.append(FieldViolation(f"{field}.bucket_upper_bounds_ms", "at most 64 bounds"))
    if any(b <= a for a, b in itertools.pairwise(bounds)) or any(
        not math.isfinite(b) or b < 0 for b in bounds
    ):
        violations.append(
            FieldViolation(f"{field}.bucket_upper_bounds_ms", "must be finite, >= 0, increasing")
        )
    if len(counts) != len(bounds) + 1:
        violations.append(
            FieldViolation(f"{field}.bucket_counts", "needs one more entry than the bounds")
        )
    if any(c < 0 for c in counts):
        violations.append(FieldViolation(f"{field}.bucket_counts", "must not be negative"))
    return histogram_from_buckets(bounds, counts, message.sum_ms)


def observations(request: route_service_pb2.ReportObservationsRequest) -> list[Observation]:
    """Validate one ReportObservations batch; every bad field is reported at once."""
    violations: list[FieldViolation] = []
    if not request.node_id:
        violations.append(FieldViolation("node_id", "required"))
    if not request.batch_id or len(request.batch_id) > 64:
        violations.append(FieldViolation("batch_id", "required, at most 64 characters"))
    if len(request.observations) > MAX_OBSERVATIONS_PER_BATCH:
        violations.append(FieldViolation("observations", "at most 1,000 per batch"))
    out = []
    for index, item in enumerate(request.observations):
        where = f"observations[{index}]"
        if not item.deployment_id:
            violations.append(FieldViolation(f"{where}.deployment_id", "required"))
        try:
            names.parse_project_name(item.project, f"{where}.project")
        except InvalidArgument as error:
            violations.extend(error.violations)
        start, end = item.start_time.ToNanoseconds() / 1e9, item.end_time.ToNanoseconds() / 1e9
        if not item.HasField("end_time") or end < start or end - start > MAX_OBSERVATION_WINDOW_S:
            violations.append(
                FieldViolation(f"{where}.end_time", "required, after start_time, within 5 minutes")
            )
        counts = [item.request_count, item.prompt_tokens, item.completion_tokens]
        if any(c < 0 for c in counts) or any(v < 0 for v in item.error_counts.values()):
            violations.append(FieldViolation(where, "counts must not be negative"))
        if not math.isfinite(item.cost_usd) or item.cost_usd < 0:
            violations.append(FieldViolation(f"{where}.cost_usd", "must be a finite number >= 0"))
        out.append(
            Observation(
                deployment_id=item.deployment_id,
                project=item.project,
                end_time=end,
                request_count=item.request_count,
                latency=_histogram(item.latency, f"{where}.latency", violations),
                time_to_first_token=_histogram(
                    item.time_to_first_token, f"{where}.time_to_first_token", violations
                ),
                error_counts=dict(item.error_counts),
                prompt_tokens=item.prompt_tokens,
                completion_tokens=item.completion_tokens,
                cost_usd=item.cost_usd,
                breaker_state=_BREAKER_STATES.get(item.breaker_state, Breaker.UNSPECIFIED),
                node_id=request.node_id,
            )
        )
    if violations:
        raise InvalidArgument(violations)
    return out


_STATE_MESSAGES = {v: k for k, v in _BREAKER_STATES.items()}


def signals_message(
    parent: str, deployment: DeploymentSpec, view: SignalsView
) -> route_service_pb2.DeploymentSignals:
    message = route_service_pb2.DeploymentSignals(
        name=f"{parent}/deploymentSignals/{deployment.deployment_id}",
        deployment=common_pb2.DeploymentRef(
            model_group=deployment.model_name,
            deployment_id=deployment.deployment_id,
            provider=deployment.provider,
            provider_model=deployment.litellm_model,
        ),
        window=_duration_ms(view.window_s * 1000),
        sample_count=view.sample_count,
        error_rate=view.error_rate,
        requests_per_second=view.requests_per_second,
        cost_per_1k_tokens_usd=view.cost_per_1k_tokens_usd,
        breaker_state=_STATE_MESSAGES[view.breaker_state],
        reporting_node_count=view.reporting_node_count,
    )
    for field, value in (
        ("p50_latency", view.p50_latency_ms),
        ("p95_latency", view.p95_latency_ms),
        ("p95_time_to_first_token", view.p95_ttft_ms),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(_duration_ms(value))
    if view.update_time is not None:
        message.update_time.FromNanoseconds(round(view.update_time * 1e9))
    return message


def observation_batch(request: route_service_pb2.ReportObservationsRequest) -> ObservationBatch:
    return ObservationBatch(request.node_id, request.batch_id, observations(request))


def receipt_message(receipt: BatchReceipt) -> route_service_pb2.ReportObservationsResponse:
    return route_service_pb2.ReportObservationsResponse(
        batch_id=receipt.batch_id, accepted_count=receipt.accepted, dropped_count=receipt.dropped
    )


def watch_ack(request: route_service_pb2.WatchConfigRequest) -> WatchAck:
    return WatchAck(
        version_info=request.version_info,
        nonce=request.response_nonce,
        error=request.error_detail.message if request.HasField("error_detail") else None,
        rejected=tuple(
            RejectedSnapshot(r.route_config, r.snapshot_version, r.error.message)
            for r in request.rejected_route_configs
        ),
    )


def watch_response(update: WatchUpdate) -> route_service_pb2.WatchConfigResponse:
    return route_service_pb2.WatchConfigResponse(
        version_info=update.version_info,
        nonce=update.nonce,
        snapshots=[snapshot_message(p) for p in update.snapshots],
        full_state=update.full_state,
    )
