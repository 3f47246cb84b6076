"""A recipe ready to execute: nodes by id, outgoing edges with compiled conditions, and the cost
estimate of a node before it runs (the budget check and PreviewRunCost share it)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from maestro.control_plane.graph.expressions import compile_condition
from maestro.control_plane.graph.model_calls import DEFAULT_MAX_TOKENS
from maestro.control_plane.graph.recipe import END, NodeSpec, RecipeSpec, ToolSpec


@dataclass(frozen=True, slots=True)
class Edge:
    target: str
    holds: Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class CompiledRecipe:
    spec: RecipeSpec
    nodes: Mapping[str, NodeSpec]
    outgoing: Mapping[str, tuple[Edge, ...]]
    tools: Mapping[str, ToolSpec]

    def next_node(self, source: str, state: Mapping[str, Any], visits: Mapping[str, int]) -> str:
        """The target of the first outgoing edge whose condition holds; END if none does."""
        scope = {"state": state, "visits": visits}
        for edge in self.outgoing.get(source, ()):
            if edge.holds(scope):
                return edge.target
        return END


def compile_recipe(
    spec: RecipeSpec, side_effecting: Callable[[str], bool] = lambda name: False
) -> CompiledRecipe:
    """`side_effecting(name)`: what the tool registry says of a tool. A recipe may declare a
    read-only tool side-effecting (more gates), never the reverse: the implementation knows."""
    outgoing: dict[str, list[Edge]] = {}
    for edge in spec.edges:
        outgoing.setdefault(edge.source, []).append(Edge(edge.target, compile_condition(edge.when)))
    return CompiledRecipe(
        spec,
        {node.id: node for node in spec.nodes},
        {source: tuple(edges) for source, edges in outgoing.items()},
        {
            tool.name: tool.model_copy(
                update={"side_effects": tool.side_effects or side_effecting(tool.name)}
            )
            for tool in spec.tools
        },
    )


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-token prices and latency prior of the deployments a model node may be routed to."""

    input_per_token: float
    output_per_token: float
    p95_s: float
    deployment: str


@dataclass(frozen=True, slots=True)
class NodeEstimate:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    p95_s: float
    deployment: str


PriceLookup = Callable[[str], Prices | None]
"""Model group ("" for any) to the prices of the dearest deployment that could serve it."""


def estimate_node(node: NodeSpec, state: Mapping[str, Any], prices: PriceLookup) -> NodeEstimate:
    """What one visit of a node is expected to cost: prompt tokens from the state's size (four
    characters a token), completion tokens from the node's limit, priced at the dearest
    deployment the router could pick, so the budget check errs on the safe side."""
    if node.kind != "model":
        return NodeEstimate(0, 0, 0.0, (node.timeout_s or 1.0) if node.kind == "tool" else 0.0, "")
    chars = len(node.description) + len(json.dumps(state, separators=(",", ":")))
    prompt = chars // 4 + 16
    completion = node.max_tokens or DEFAULT_MAX_TOKENS
    price = prices(node.model)
    if price is None:
        return NodeEstimate(prompt, completion, 0.0, 1.0, "")
    cost = prompt * price.input_per_token + completion * price.output_per_token
    return NodeEstimate(prompt, completion, cost, price.p95_s, price.deployment)
