"""GraphService's metrics: node attempts, retries and their time, finished runs and what they
cost, replays, gate decisions and how long gates waited for them.

Counters are tallies (a dict increment on the step's path, reported by observable counters at
collection), as on the data plane's request path; the two histograms record once per node attempt
and once per gate decision.
"""

from __future__ import annotations

import functools

from opentelemetry import metrics

from maestro.core.tallies import LabelCap, Labels, Tally

NODE_DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip
"""A tool call in milliseconds to a subgraph or a long generation in minutes, up to an hour."""
GATE_LATENCY_BUCKETS_S = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0, 259200.0, 604800.0,
)  # fmt: skip
"""People answer in seconds to days: up to a week."""
MAX_RECIPES_PER_PROJECT = 100
"""Recipes a project's run series are labelled with; its later recipes count as `other`
(recipes are a tenant's to create)."""


@functools.lru_cache(maxsize=4096)
def run_labels(project: str, recipe: str, *pairs: tuple[str, str]) -> Labels:
    """A run's labels: its project id and recipe (the recipe's resource name), then `pairs`."""
    return (("maestro.project", project), ("recipe", recipe), *pairs)


class GraphMetrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self.attempts = Tally(
            meter,
            "maestro.graph.node.attempts",
            "Node attempts by node kind and outcome (succeeded, failed, timed_out).",
        )
        self.retries = Tally(
            meter,
            "maestro.graph.node.retries",
            "Node attempts after the first of a step (retries), by node kind.",
        )
        self.duration = meter.create_histogram(
            "maestro.graph.node.duration",
            unit="s",
            description="Time of node attempts, by node kind and outcome.",
            explicit_bucket_boundaries_advisory=NODE_DURATION_BUCKETS_S,
        )
        self.finished = Tally(
            meter,
            "maestro.graph.runs.finished",
            "Runs that reached a final state, by project, recipe and state.",
        )
        self.cost = Tally(
            meter,
            "maestro.graph.runs.cost.usd",
            "What runs' model nodes cost in US dollars, by project and recipe: each run's own "
            "nodes (a subgraph's cost is its child run's, under the child's recipe).",
            unit="{USD}",
        )
        self.replayed = Tally(
            meter,
            "maestro.graph.steps.replayed",
            "Steps run again after their replica stopped (crash, lease lost, kill switch).",
        )
        self.decisions = Tally(
            meter, "maestro.graph.gate.decisions", "Gate decisions recorded, by verdict."
        )
        self.gate_latency = meter.create_histogram(
            "maestro.graph.gate.decision_latency",
            unit="s",
            description="Time from a gate opening (the run waiting for approval) to each "
            "decision recorded on it, by verdict.",
            explicit_bucket_boundaries_advisory=GATE_LATENCY_BUCKETS_S,
        )
        self._recipes = LabelCap(MAX_RECIPES_PER_PROJECT)

    def node_attempt(self, kind: str, outcome: str, attempt: int, elapsed_s: float) -> None:
        """One node attempt ended (`attempt`: its number within the step, 1 for the first)."""
        self.attempts.add(1, _node_labels(kind, outcome))
        if attempt > 1:
            self.retries.add(1, _node_labels(kind))
        self.duration.record(elapsed_s, _node_attributes(kind, outcome))

    def run_finished(self, project: str, recipe: str, state: str) -> None:
        self.finished.add(1, run_labels(project, self._recipes(project, recipe), ("state", state)))

    def run_cost(self, project: str, recipe: str, cost_usd: float) -> None:
        self.cost.add(cost_usd, run_labels(project, self._recipes(project, recipe)))


@functools.lru_cache(maxsize=256)
def _node_labels(kind: str, outcome: str = "") -> Labels:
    return (("kind", kind), ("outcome", outcome)) if outcome else (("kind", kind),)


@functools.lru_cache(maxsize=256)
def _node_attributes(kind: str, outcome: str) -> dict[str, str]:
    return {"kind": kind, "outcome": outcome}
