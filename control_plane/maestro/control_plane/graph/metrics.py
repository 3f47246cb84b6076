"""GraphService's metrics: node attempts and their time, finished runs, replays, gate decisions.

Tallies (a dict increment on the step's path, reported by observable counters at collection),
as on the data plane's request path.
"""

from __future__ import annotations

from opentelemetry import metrics

from maestro.core.tallies import Tally


class GraphMetrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self.attempts = Tally(
            meter,
            "maestro.graph.node.attempts",
            "Node attempts by node kind and outcome (succeeded, failed, timed_out).",
        )
        self.seconds = Tally(
            meter,
            "maestro.graph.node.duration",
            "Time spent in node attempts, by node kind; divide by attempts for the mean.",
            unit="s",
        )
        self.finished = Tally(
            meter, "maestro.graph.runs.finished", "Runs that reached a final state, by state."
        )
        self.replayed = Tally(
            meter,
            "maestro.graph.steps.replayed",
            "Steps run again after their replica stopped (crash, lease lost, kill switch).",
        )
        self.decisions = Tally(
            meter, "maestro.graph.gate.decisions", "Gate decisions recorded, by verdict."
        )
