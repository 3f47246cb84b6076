"""Routing fields on the wire, read the same way by both planes.

`route_request` turns the routing fields a ChooseRequest and the InferenceService requests share
into the engine's RouteRequest; `observation_message` is how a data plane reports what it saw.
"""

from __future__ import annotations

import math

from maestro.core.errors import FieldViolation
from maestro.routing.engine import RouteRequest
from maestro.routing.signals import LATENCY_BOUNDS_MS, Observation
from maestro.routing.spec import OBJECTIVES
from maestro.v1 import common_pb2, inference_service_pb2, route_service_pb2

_HINTS = {
    common_pb2.STEP_HINT_UNSPECIFIED: "",
    common_pb2.STEP_HINT_DRAFT: "draft",
    common_pb2.STEP_HINT_FINALIZATION: "finalization",
}

RoutingRequest = (
    route_service_pb2.ChooseRequest
    | inference_service_pb2.CreateChatCompletionRequest
    | inference_service_pb2.StreamChatCompletionRequest
)
"""The requests that carry routing fields (model, messages, hint, weights, budget, ...)."""


def route_request(
    request: RoutingRequest,
    violations: list[FieldViolation],
    prefix: str = "",
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    excluded_ids: frozenset[str] = frozenset(),
) -> RouteRequest:
    """The engine's request from the shared routing fields; bad fields go to `violations`."""
    for index, message in enumerate(request.messages):
        if message.role == common_pb2.CHAT_ROLE_UNSPECIFIED:
            violations.append(FieldViolation(f"{prefix}messages[{index}].role", "required"))
    weights: tuple[float, float, float, float, float] | None = None
    if request.HasField("objective_weights"):
        values = tuple(getattr(request.objective_weights, name) for name in OBJECTIVES)
        for name, value in zip(OBJECTIVES, values, strict=True):
            if not math.isfinite(value) or value < 0:
                violations.append(
                    FieldViolation(
                        f"{prefix}objective_weights.{name}", "must be a finite number >= 0"
                    )
                )
        if any(values):
            weights = (values[0], values[1], values[2], values[3], values[4])
    if request.step_hint not in _HINTS:
        violations.append(FieldViolation(f"{prefix}step_hint", "unknown value"))
    budget = request.budget
    if not math.isfinite(budget.max_cost_usd) or budget.max_cost_usd < 0:
        violations.append(
            FieldViolation(f"{prefix}budget.max_cost_usd", "must be a finite number >= 0")
        )
    max_p95 = request.slo_target.max_p95_latency
    if max_p95.seconds < 0 or max_p95.nanos < 0:
        violations.append(
            FieldViolation(f"{prefix}slo_target.max_p95_latency", "must not be negative")
        )
    return RouteRequest(
        weights=weights,
        hint=_HINTS.get(request.step_hint, ""),
        model=request.model,
        max_cost_usd=budget.max_cost_usd if math.isfinite(budget.max_cost_usd) else 0.0,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        allowed_jurisdictions=frozenset(request.jurisdiction.allowed_jurisdictions),
        require_in_house=request.jurisdiction.require_in_house,
        excluded_ids=excluded_ids,
        max_p95_ms=max_p95.seconds * 1000 + max_p95.nanos / 1e6,
    )


def observation_message(observation: Observation) -> route_service_pb2.DeploymentObservation:
    """An observation as a data plane sends it (the inverse of `observations`)."""
    message = route_service_pb2.DeploymentObservation(
        deployment_id=observation.deployment_id,
        project=observation.project,
        request_count=observation.request_count,
        error_counts=observation.error_counts,
        prompt_tokens=observation.prompt_tokens,
        completion_tokens=observation.completion_tokens,
        cost_usd=observation.cost_usd,
        breaker_state=observation.breaker_state,  # type: ignore[arg-type]
    )
    message.start_time.FromNanoseconds(round((observation.end_time - 1) * 1e9))
    message.end_time.FromNanoseconds(round(observation.end_time * 1e9))
    for target, histogram in (
        (message.latency, observation.latency),
        (message.time_to_first_token, observation.time_to_first_token),
    ):
        target.bucket_upper_bounds_ms.extend(LATENCY_BOUNDS_MS)
        target.bucket_counts.extend(histogram.counts)
        target.count = histogram.count
        target.sum_ms = histogram.sum_ms
    return message
