"""The decision engine: policy is never violated and the winner maximises the weighted score.

The property test draws 10,000 requests: random tags, message content (with and without PII,
tagged by the real detectors), weights, hints, budgets, jurisdictions and breaker states.

The oracle is independent of the engine: Rego verdicts come from regopy evaluating the policy
directly, and scores are recomputed in plain Python from the deployments' facts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
import regopy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maestro.routing.engine import (
    RouteRequest,
    RoutingSnapshot,
    UnknownModel,
    parse_objectives_header,
)
from maestro.routing.policy import ModelFacts, PolicyModule, compile_routing_policy
from maestro.routing.spec import OBJECTIVES, parse_route_config
from maestro.routing.tagging import ContentTagger, merge_tags

ROOT = Path(__file__).resolve().parent.parent
SEED_POLICY = (ROOT / "deploy/router/policies/routing.rego").read_text()
# A second, user-written policy: export-controlled steps may not use anthropic models.
EXPORT_POLICY = """package maestro.routing

deny_export {
  input.step_tags[_] == "export_ctrl"
  input.model.provider == "anthropic"
}
"""
SEED_WITH_EXPORT = SEED_POLICY.replace(
    'allow {\n  not input.step_tags[_] == "pii"\n}',
    'allow {\n  not input.step_tags[_] == "pii"\n  not deny_export\n}',
)
CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o}
    model_info: {id: gpt-4o-us, quality: 0.9, jurisdiction: us}
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_base: https://eu.example.test/v1}
    model_info: {id: gpt-4o-eu, quality: 0.9, jurisdiction: eu, expected_p95_latency_ms: 1400}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini}
    model_info: {id: mini, quality: 0.6, jurisdiction: us, expected_p95_latency_ms: 400}
  - model_name: sonnet-3.7
    litellm_params: {model: anthropic/claude-3.7-sonnet}
    model_info: {id: sonnet, quality: 0.92, jurisdiction: us, input_cost_per_token: 0.000003,
                 output_cost_per_token: 0.000015}
  - model_name: ig-local-70b
    litellm_params: {model: vllm/Meta-Llama-3.1-70B-Instruct, api_base: http://vllm:8000/v1}
    model_info: {id: local-a, quality: 0.7, max_input_tokens: 8192}
  - model_name: ig-local-70b
    litellm_params: {model: vllm/Meta-Llama-3.1-70B-Instruct, api_base: http://vllm-b:8000/v1}
    model_info: {id: local-b, quality: 0.7, max_input_tokens: 8192, expected_p95_latency_ms: 2500}
router:
  objectives: {quality: 0.4, p95_latency_ms: 0.2, cost_per_1k_tokens: 0.2, reliability: 0.1,
               sovereignty: 0.1}
  fallbacks:
    - primary: gpt-4o
      on_error: [sonnet-3.7, ig-local-70b]
policies:
  content_tags:
    pii: [ig-local-70b]
"""
TAGS = ["pii", "export_ctrl", "draft-notes", "customer", "pii.email"]


@cache
def _spec_and_facts() -> tuple[object, list[ModelFacts]]:
    spec = parse_route_config(CONFIG)
    facts = list(
        {
            d.model_name: ModelFacts(d.model_name, d.provider, d.jurisdiction, d.in_house)
            for d in spec.deployments
        }.values()
    )
    return spec, facts


def _snapshot() -> RoutingSnapshot:
    spec, facts = _spec_and_facts()
    table = compile_routing_policy(
        [
            PolicyModule("routing.rego", SEED_WITH_EXPORT),
            PolicyModule("export.rego", EXPORT_POLICY),
        ],
        facts,
        "alpha",
        known_tags=TAGS,
    )
    return RoutingSnapshot(spec, table, "1")  # type: ignore[arg-type]


@cache
def _rego() -> regopy.Interpreter:
    interpreter = regopy.Interpreter()
    interpreter.add_module("routing.rego", SEED_WITH_EXPORT)
    interpreter.add_module("export.rego", EXPORT_POLICY)
    return interpreter


@cache  # the domain is small; regopy takes about a millisecond per query
def _rego_allows(tags: frozenset[str], facts: ModelFacts) -> bool:
    interpreter = _rego()
    interpreter.set_input_term(
        json.dumps(
            {
                "step_tags": sorted(tags),
                "selected_model": facts.name,
                "model": {
                    "provider": facts.provider,
                    "jurisdiction": facts.jurisdiction,
                    "in_house": facts.in_house,
                },
                "project": "alpha",
            }
        )
    )
    result = json.loads(str(interpreter.query("data.maestro.routing")))
    return bool(result["expressions"][0].get("allow", False))


requests = st.builds(
    RouteRequest,
    tags=st.frozensets(st.sampled_from(TAGS), max_size=3),
    weights=st.one_of(
        st.none(),
        st.tuples(*[st.floats(0, 10, allow_nan=False) for _ in OBJECTIVES]),
    ),
    hint=st.sampled_from(["", "draft", "finalization"]),
    model=st.sampled_from(["", "gpt-4o", "gpt-4o-mini", "sonnet-3.7", "ig-local-70b"]),
    max_cost_usd=st.sampled_from([0.0, 0.0005, 0.01, 1.0]),
    prompt_tokens=st.sampled_from([0, 100, 5_000, 20_000]),
    completion_tokens=st.sampled_from([0, 200, 2_000]),
    allowed_jurisdictions=st.sampled_from(
        [frozenset(), frozenset({"us"}), frozenset({"eu", "internal"})]
    ),
    require_in_house=st.booleans(),
)
TAGGER = ContentTagger()
CLEAN = ["Summarise the attached memo.", "Draft a polite reply about the 3 open tickets.", ""]
PII = ["Write to jane.doe@example.com today.", "Card 4111 1111 1111 1111 was declined."]
# (message text, whether it carries PII): clean sentences, PII sentences, and mixtures.
contents = st.tuples(st.sampled_from(CLEAN), st.sampled_from(["", *PII])).map(
    lambda parts: (f"{parts[0]} {parts[1]}".strip(), bool(parts[1]))
)
breaker_states = st.dictionaries(
    st.sampled_from(["gpt-4o-us", "gpt-4o-eu", "mini", "sonnet", "local-a", "local-b"]),
    st.tuples(st.booleans(), st.floats(0, 0.5), st.floats(50, 5000)),
)


def _eligible_by_oracle(snapshot: RoutingSnapshot, request: RouteRequest, index: int) -> bool:
    deployment = snapshot.deployments[index]
    _, facts = _spec_and_facts()
    model_facts = next(f for f in facts if f.name == deployment.model_name)
    if not _rego_allows(request.tags, model_facts):
        return False
    for tag in request.tags:
        allowed = snapshot.spec.content_tags.get(tag)
        if allowed is not None and deployment.model_name not in allowed:
            return False
    signals = snapshot.signals(index)
    if signals.breaker_open or signals.saturated:
        return False
    if (
        request.allowed_jurisdictions
        and deployment.jurisdiction not in request.allowed_jurisdictions
    ):
        return False
    if request.require_in_house and not deployment.in_house:
        return False
    if request.max_cost_usd > 0:
        if deployment.input_cost_per_token is None or deployment.output_cost_per_token is None:
            return False
        cost = (
            deployment.input_cost_per_token * request.prompt_tokens
            + deployment.output_cost_per_token * request.completion_tokens
        )
        if cost > request.max_cost_usd:
            return False
    return not (
        request.prompt_tokens
        and deployment.max_input_tokens is not None
        and deployment.max_input_tokens < request.prompt_tokens
    )


def _score_by_oracle(snapshot: RoutingSnapshot, request: RouteRequest, index: int) -> float:
    weights = [float(w) for w in snapshot.effective_weights(request)]
    values = [float(v) for v in snapshot.values[:, index]]
    return sum(w * v for w, v in zip(weights, values, strict=True))


SNAPSHOT = None


def _shared_snapshot() -> RoutingSnapshot:
    global SNAPSHOT
    if SNAPSHOT is None:
        SNAPSHOT = _snapshot()
    return SNAPSHOT


@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(request=requests, states=breaker_states, content=contents)
def test_no_decision_violates_policy_and_winner_maximises_score(
    request: RouteRequest,
    states: dict[str, tuple[bool, float, float]],
    content: tuple[str, bool],
) -> None:
    text, carries_pii = content
    # Content is tagged first and merged with the caller's tags, as RouteService does.
    detected = TAGGER.tags([text])
    assert ("pii" in detected) == carries_pii
    request = replace(request, tags=merge_tags(detected, request.tags))
    snapshot = _shared_snapshot()
    for deployment in snapshot.deployments:
        broken, errors, p95 = states.get(deployment.deployment_id, (False, 0.01, 1000.0))
        snapshot.update_signals(
            deployment.deployment_id, breaker_open=broken, error_rate=errors, p95_ms=p95
        )
    decision = snapshot.decide(request)
    route = [snapshot.deployments[i].model_name for i in snapshot.candidate_indices(request)]
    groups = list(dict.fromkeys(route))
    eligible = {
        i for i in snapshot.candidate_indices(request) if _eligible_by_oracle(snapshot, request, i)
    }
    if decision.winner < 0:
        assert not eligible
        return
    assert decision.winner in eligible
    for fallback in decision.fallbacks:
        assert fallback in eligible
    if request.model:
        # The winner's group is the first group of the route with an eligible deployment, and
        # no eligible deployment of that group scores higher.
        first_group = next(
            g for g in groups if any(snapshot.deployments[i].model_name == g for i in eligible)
        )
        assert snapshot.deployments[decision.winner].model_name == first_group
        rivals = [i for i in eligible if snapshot.deployments[i].model_name == first_group]
    else:
        # No eligible deployment anywhere scores higher.
        rivals = list(eligible)
    best = max(_score_by_oracle(snapshot, request, i) for i in rivals)
    assert _score_by_oracle(snapshot, request, decision.winner) == pytest.approx(best)


def test_pii_tag_confines_the_seed_route_to_the_in_house_model() -> None:
    snapshot = _snapshot()
    decision = snapshot.decide(RouteRequest(tags=frozenset({"pii"}), model="gpt-4o"))
    assert snapshot.deployments[decision.winner].model_name == "ig-local-70b"
    assert all(snapshot.deployments[i].model_name == "ig-local-70b" for i in decision.fallbacks)


def test_open_breaker_moves_traffic_to_the_fallback_chain() -> None:
    snapshot = _snapshot()
    for deployment_id in ("gpt-4o-us", "gpt-4o-eu"):
        snapshot.update_signals(deployment_id, breaker_open=True)
    decision = snapshot.decide(RouteRequest(model="gpt-4o"))
    assert snapshot.deployments[decision.winner].model_name == "sonnet-3.7"


def test_draft_hint_shifts_weight_to_cost_and_latency() -> None:
    snapshot = _snapshot()
    neutral = snapshot.effective_weights(RouteRequest())
    draft = snapshot.effective_weights(RouteRequest(hint="draft"))
    final = snapshot.effective_weights(RouteRequest(hint="finalization"))
    quality, latency, cost = 0, 1, 2
    assert draft[cost] > neutral[cost]
    assert draft[latency] > neutral[latency]
    assert draft[quality] < neutral[quality]
    assert final[quality] > neutral[quality]
    assert final[cost] < neutral[cost]


def test_unknown_model_is_reported() -> None:
    with pytest.raises(UnknownModel):
        _snapshot().decide(RouteRequest(model="gpt-9"))


def test_budget_with_unknown_price_fails_closed() -> None:
    spec = parse_route_config(
        "model_list:\n  - model_name: mystery\n    litellm_params: {model: anthropic/claude-x}\n"
    )
    facts = [ModelFacts("mystery", "anthropic", "unspecified", False)]
    snapshot = RoutingSnapshot(spec, compile_routing_policy([], facts, "alpha"), "1")
    assert snapshot.decide(RouteRequest()).winner == 0
    assert snapshot.decide(RouteRequest(max_cost_usd=1.0, prompt_tokens=10)).winner == -1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("quality,latency,cost", (1.0, 1.0, 1.0, 0.0, 0.0)),
        ("cost=0.7, quality=0.3", (0.3, 0.0, 0.7, 0.0, 0.0)),
        ("p95_latency_ms", (0.0, 1.0, 0.0, 0.0, 0.0)),
    ],
)
def test_objectives_header_sets_weights(header: str, expected: tuple[float, ...]) -> None:
    assert parse_objectives_header(header) == expected


@pytest.mark.parametrize("header", ["speed", "cost=-1", "cost=abc", "quality=inf"])
def test_malformed_objectives_header_is_rejected(header: str) -> None:
    with pytest.raises(ValueError, match=r"objective|weight"):
        parse_objectives_header(header)
