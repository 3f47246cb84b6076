"""PreviewRunCost's estimate of a run before it starts: each node's cost, tokens and latency,
how often it is expected to run, and whether the run fits its budget.

Pure: GraphService reads the recipe, the prices and the live signals, and this does the sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from maestro.control_plane.graph.compiled import NodeEstimate, PriceLookup, estimate_node
from maestro.control_plane.graph.recipe import RecipeSpec
from maestro.control_plane.graph.records import Budget
from maestro.routing.policy import cost_violations
from maestro.routing.signals import SignalsView
from maestro.routing.spec import DeploymentSpec

LiveSignals = Sequence[tuple[DeploymentSpec, SignalsView]]


@dataclass(frozen=True, slots=True)
class Preview:
    nodes: Sequence[tuple[str, str, NodeEstimate, float, bool]]
    """(node id, kind, estimate of one visit, expected visits, fits the node budget)."""
    budget: Budget
    violations: list[str]
    estimated_cost: float
    worst_case_cost: float
    prompt_tokens: int
    completion_tokens: int
    p50_s: float
    p95_s: float
    success_rate: float
    """From the candidate deployments' error rates in the live window (1.0 without traffic)."""


def estimate_run(
    spec: RecipeSpec,
    state: dict[str, Any],
    budget: Budget,
    prices: PriceLookup,
    live: LiveSignals,
) -> Preview:
    """The recipe's run over `state` within `budget`, at `prices`, with the project's
    deployments' live latency and error rates (`live`)."""
    rows = []
    total = worst = 0.0
    prompt = completion = 0
    p50 = p95 = 0.0
    success = 1.0
    for node in spec.nodes:
        estimate = estimate_node(node, state, prices)
        # A node a conditional edge leads back to is expected twice (a loop's usual run).
        looped = any(e.target == node.id and e.when for e in spec.edges)
        visits = 2.0 if looped else 1.0
        fits = not node.budget.max_cost_usd or estimate.cost_usd <= node.budget.max_cost_usd
        node_p50 = node_p95 = estimate.p95_s
        if node.kind == "model":
            candidates = [
                view
                for deployment, view in live
                if not node.model or node.model in (deployment.model_name, deployment.deployment_id)
            ]
            measured = [v for v in candidates if v.sample_count and v.p95_latency_ms]
            if measured:
                node_p95 = max(v.p95_latency_ms or 0.0 for v in measured) / 1000
                node_p50 = max(v.p50_latency_ms or 0.0 for v in measured) / 1000
            # The call fails only when every candidate it can fall back to fails.
            failing = math.prod(v.error_rate for v in candidates) if candidates else 0.0
            success *= (1.0 - failing) ** visits
        rows.append((node.id, node.kind, replace(estimate, p95_s=node_p95), visits, fits))
        total += estimate.cost_usd * visits
        worst += estimate.cost_usd * visits * 2 * node.retries.max_attempts
        prompt += int(estimate.prompt_tokens * visits)
        completion += int(estimate.completion_tokens * visits)
        p95 += node_p95 * visits
        p50 += node_p50 * visits
    violations = []
    if budget.max_cost_usd:
        violations += cost_violations(total, budget.max_cost_usd)
    if budget.max_tokens and prompt + completion > budget.max_tokens:
        violations.append(f"Run tokens {prompt + completion} exceed budget {budget.max_tokens}")
    violations += [f"Node {r[0]} exceeds its own budget" for r in rows if not r[4]]
    return Preview(rows, budget, violations, total, worst, prompt, completion, p50, p95, success)
