"""The answer of the ingress's `POST /route/choose`: a routing decision as JSON.

The seed's shape, `{model, provider, rationale, costs, SLO_forecast}`, plus `decision`: the same
`RouteDecision` RouteService.Choose answers with over gRPC (`maestro.routing.rationale`), in the
protobuf JSON mapping with proto field names, so an HTTP caller can read every candidate's
verdict, scores and exclusion reason, or parse it back into the message (`json_format.ParseDict`).
`costs` and `SLO_forecast` repeat the decision's projection and forecast as plain numbers
(milliseconds, not Duration strings) for callers that want one field, not the whole message.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from maestro.routing.decider import Choice
from maestro.routing.rationale import CHOOSE_CANDIDATE_CAP, decision_message
from maestro.routing.spec import OBJECTIVES
from maestro.v1 import route_service_pb2 as pb

_EXCLUDED = pb.ROUTE_CANDIDATE_VERDICT_EXCLUDED


def choice_json(choice: Choice) -> dict[str, Any]:
    """The `/route/choose` answer for a decision that chose a deployment."""
    message = decision_message(choice, CHOOSE_CANDIDATE_CAP)
    deployment = message.deployment
    cost = message.projected_cost
    slo = message.slo_forecast
    return {
        "model": deployment.model_group,
        "provider": deployment.provider,
        "deployment_id": deployment.deployment_id,
        "decision_id": message.decision_id,
        "snapshot_version": message.snapshot_version,
        "rationale": rationale_text(message),
        "costs": {
            "prompt_tokens": cost.prompt_tokens,
            "completion_tokens": cost.completion_tokens,
            "prompt_cost_usd": cost.prompt_cost_usd,
            "completion_cost_usd": cost.completion_cost_usd,
            "total_cost_usd": cost.total_cost_usd,
            "cost_per_1k_tokens_usd": cost.cost_per_1k_tokens_usd,
        },
        "SLO_forecast": {
            "expected_p95_latency_ms": slo.expected_p95_latency.ToNanoseconds() / 1e6,
            "expected_time_to_first_token_ms": (
                slo.expected_time_to_first_token.ToNanoseconds() / 1e6
            ),
            "expected_error_rate": slo.expected_error_rate,
            "meets_slo": slo.meets_slo,
        },
        # Every field, defaults included: a JSON reader sees the same keys on every answer.
        "decision": json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        ),
    }


def rationale_text(message: pb.RouteDecision) -> str:
    """One sentence for people (logs, a UI's tooltip): what was chosen, against how many, with
    which weights and tags. The structured why is `decision.candidates`."""
    deployment = message.deployment
    winner = message.candidates[0] if message.candidates else None
    listed = len(message.candidates)
    excluded = sum(1 for c in message.candidates if c.verdict == _EXCLUDED)
    weights = message.effective_weights
    weighted = ", ".join(f"{name} {getattr(weights, name):.2f}" for name in OBJECTIVES)
    text = (
        f"chose {deployment.deployment_id} ({deployment.model_group} on {deployment.provider})"
        f" with score {winner.score if winner else 0.0:.3f}: best of {listed - excluded}"
        f" eligible candidates listed, {excluded} excluded"
    )
    if message.omitted_candidate_count:
        text += f", {message.omitted_candidate_count} more not listed"
    tags = sorted({*message.supplied_tags, *message.detected_tags})
    if tags:
        text += f"; tags {', '.join(tags)}"
    if message.fallbacks:
        text += f"; fallbacks {', '.join(f.deployment_id for f in message.fallbacks)}"
    return f"{text}; weights {weighted}"
