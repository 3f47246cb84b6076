"""A routing decision as RouteService's `RouteDecision`: the chosen deployment, its fallbacks and
the rationale (every candidate's verdict, scores and exclusion reasons), with the projected cost
and SLO forecast.

Shared by both planes: RouteService.Choose/StreamChoose/ExplainRoute answer with it over gRPC,
and the data plane's HTTP ingress answers `POST /route/choose` with the same message as JSON, so
the two faces cannot drift apart.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from maestro.routing.decider import Choice
from maestro.routing.engine import Decision, Exclusion, LaneSaturation
from maestro.routing.spec import OBJECTIVES
from maestro.v1 import common_pb2, route_service_pb2

CHOOSE_CANDIDATE_CAP = 16
"""Most candidates a Choose answer lists (ExplainRoute lists all)."""


def duration_ms(ms: float) -> duration_pb2.Duration:
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
                expected_p95_latency=duration_ms(signals.forecast_p95_ms),
                expected_time_to_first_token=duration_ms(signals.ttft_ms),
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
        expected_p95_latency=duration_ms(float(snapshot.p95_ms[index])),
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
