"""Synthetic routing configs for the benchmarks, shared by `route_bench.py` and the
pytest-benchmark tests. Config-time only: nothing here is measured on the hot path.

A config of size N has N deployments in ONE model group `gpt-4o` (distinct `model_info.id` and
`api_base`, random quality, price tier and latency prior from a seeded RNG) plus a small in-house
group `ig-local-70b`, the seed's `router:` block (fallback gpt-4o -> ig-local-70b) and the seed's
`policies.content_tags.pii -> [ig-local-70b]`. With the seed Rego policy a decision therefore does
policy filtering (a `pii` step may not use gpt-4o) and multi-objective scoring over the whole group.

The text is parsed as a config file is (no size cap): ApplyConfig's 1 MiB cap
(`config.MAX_CONFIG_BYTES`) would refuse the 10,000-deployment config (about 3 MB).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

# LiteLLM fetches its price map over the network at import unless told not to; the catalog sets
# this too, but any bench module may import litellm first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from maestro.routing.engine import RouteRequest, RoutingSnapshot
from maestro.routing.policy import (
    ModelFacts,
    PolicyModule,
    compile_routing_policy,
)
from maestro.routing.spec import RouteConfigSpec, parse_route_config

ROOT = Path(__file__).resolve().parent.parent
SEED_CONFIG_PATH = ROOT / "deploy" / "router" / "litellm.yaml"
SEED_POLICY_PATH = ROOT / "deploy" / "router" / "policies" / "routing.rego"
PROJECT = "bench"
MAIN_GROUP = "gpt-4o"
LOCAL_GROUP = "ig-local-70b"
LOCAL_DEPLOYMENTS = 4
KNOWN_TAGS = ("pii", "export_ctrl", "pii.email", "pii.card")
SEED = 20250512

# (input, output) USD per token; a few realistic tiers, one drawn per deployment.
PRICE_TIERS = (
    (2.5e-6, 1.0e-5),
    (2.0e-6, 8.0e-6),
    (3.0e-6, 1.2e-5),
    (1.25e-6, 5.0e-6),
    (5.0e-6, 1.5e-5),
    (1.5e-6, 6.0e-6),
    (4.0e-6, 1.6e-5),
    (2.75e-6, 1.1e-5),
)
JURISDICTIONS = ("us", "eu", "uk")

PLAIN_REQUEST = RouteRequest(model=MAIN_GROUP, tags=frozenset())
PII_REQUEST = RouteRequest(model=MAIN_GROUP, tags=frozenset({"pii"}))


def synthetic_config_yaml(deployments: int, seed: int = SEED) -> str:
    """LiteLLM proxy YAML (block style, as people write it) with `deployments` replicas of
    gpt-4o and a small in-house group."""
    rng = random.Random(seed)
    lines = [
        f"# {deployments} deployments of {MAIN_GROUP} + {LOCAL_DEPLOYMENTS} of {LOCAL_GROUP}",
        "model_list:",
    ]
    for i in range(deployments):
        price_in, price_out = rng.choice(PRICE_TIERS)
        lines += [
            f"  - model_name: {MAIN_GROUP}",
            "    litellm_params:",
            "      model: openai/gpt-4o",
            f"      api_base: https://gpt-4o-{i}.openai.example.test/v1",
            "    model_info:",
            f"      id: gpt-4o-{i}",
            f"      quality: {rng.uniform(0.5, 0.95):.3f}",
            f"      jurisdiction: {rng.choice(JURISDICTIONS)}",
            f"      input_cost_per_token: {price_in * rng.uniform(0.8, 1.2):.4e}",
            f"      output_cost_per_token: {price_out * rng.uniform(0.8, 1.2):.4e}",
            f"      expected_p95_latency_ms: {rng.randrange(300, 3000)}",
        ]
    for k in range(LOCAL_DEPLOYMENTS):
        lines += [
            f"  - model_name: {LOCAL_GROUP}",
            "    litellm_params:",
            "      model: vllm/Meta-Llama-3.1-70B-Instruct",
            f"      api_base: http://vllm-{k}.internal:8000/v1",
            "    model_info:",
            f"      id: {LOCAL_GROUP}-{k}",
            "      quality: 0.7",
            "      in_house: true",
            f"      expected_p95_latency_ms: {rng.randrange(800, 2500)}",
        ]
    lines += [
        "router:",
        "  strategy: multi_objective",
        "  objectives: [quality, p95_latency_ms, cost_per_1k_tokens, reliability, sovereignty]",
        "  fallbacks:",
        f"    - primary: {MAIN_GROUP}",
        f"      on_error: [{LOCAL_GROUP}]",
        "policies:",
        "  content_tags:",
        f"    pii: [{LOCAL_GROUP}]",
        "",
    ]
    return "\n".join(lines)


def litellm_model_list(deployments: int) -> list[dict[str, Any]]:
    """The equivalent LiteLLM Router model list: the same N deployments in group gpt-4o."""
    return [
        {
            "model_name": MAIN_GROUP,
            "litellm_params": {
                "model": "openai/gpt-4o",
                "api_base": f"https://gpt-4o-{i}.openai.example.test/v1",
                "api_key": "sk-fake",
            },
            "model_info": {"id": f"gpt-4o-{i}"},
        }
        for i in range(deployments)
    ]


def seed_policy() -> list[PolicyModule]:
    return [PolicyModule(SEED_POLICY_PATH.name, SEED_POLICY_PATH.read_text())]


def model_facts(spec: RouteConfigSpec) -> list[ModelFacts]:
    """One `ModelFacts` per model group, as the registry builds them."""
    facts: dict[str, ModelFacts] = {}
    for d in spec.deployments:
        facts.setdefault(
            d.model_name, ModelFacts(d.model_name, d.provider, d.jurisdiction, d.in_house)
        )
    return list(facts.values())


@dataclass(frozen=True, slots=True)
class BuildTimes:
    """Seconds spent building one snapshot, by stage."""

    parse_s: float
    compile_s: float
    snapshot_s: float

    @property
    def total_s(self) -> float:
        return self.parse_s + self.compile_s + self.snapshot_s


def build_snapshot(yaml_text: str) -> tuple[RoutingSnapshot, BuildTimes]:
    """parse -> compile the seed Rego -> snapshot, timed per stage."""
    started = perf_counter()
    spec = parse_route_config(yaml_text)
    parsed = perf_counter()
    table = compile_routing_policy(seed_policy(), model_facts(spec), PROJECT, known_tags=KNOWN_TAGS)
    compiled = perf_counter()
    snapshot = RoutingSnapshot(spec, table, "1")
    built = perf_counter()
    return snapshot, BuildTimes(parsed - started, compiled - parsed, built - compiled)


def set_live_signals(snapshot: RoutingSnapshot, seed: int = SEED, open_share: float = 0.05) -> int:
    """Random live p95 and error rate for every deployment, breakers open on `open_share` of
    the gpt-4o replicas. Returns how many breakers are open."""
    rng = random.Random(seed + 1)
    opened = 0
    for deployment in snapshot.deployments:
        breaker = deployment.model_name == MAIN_GROUP and rng.random() < open_share
        opened += breaker
        snapshot.update_signals(
            deployment.deployment_id,
            p95_ms=rng.uniform(200.0, 4000.0),
            error_rate=rng.uniform(0.0, 0.05),
            breaker_open=breaker,
            samples=100,
        )
    return opened


def bench_snapshot(deployments: int) -> RoutingSnapshot:
    """A ready snapshot of size `deployments`, live signals set."""
    snapshot, _ = build_snapshot(synthetic_config_yaml(deployments))
    set_live_signals(snapshot)
    return snapshot
