"""EvalService's metrics, so dashboards can trend scorecards: the latest scorecard's figures per
suite and target, the verdicts, and the task executions scored.

Gauges report the latest value of each (project, suite, target, metric) when metrics are
collected; the series are bounded by the suites and targets a project runs.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics

from maestro.control_plane.evals.records import Scorecard
from maestro.core.tallies import Labels, Tally

VERDICT_VALUE = {"PASS": 1.0, "INCONCLUSIVE": 0.0, "FAIL": -1.0}


def target_label(card: Scorecard) -> str:
    """What was measured, in one short label: a prompt version, else the model group."""
    target = card.target
    if target.prompt_version:
        return f"prompt:{target.prompt_name or 'inline'}@{target.prompt_version}"
    return f"model_group:{target.model_group or 'router'}"


class EvalMetrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self._scores: dict[Labels, float] = {}
        self._verdicts: dict[Labels, float] = {}
        meter.create_observable_gauge(
            "maestro.eval.scorecard.score",
            callbacks=[self._observe_scores],
            description="The latest scorecard's mean of each metric over all its tasks, by "
            "project, suite, target and metric.",
        )
        meter.create_observable_gauge(
            "maestro.eval.scorecard.verdict",
            callbacks=[self._observe_verdicts],
            description="The latest scorecard's verdict by project, suite and target: "
            "1 PASS, 0 INCONCLUSIVE, -1 FAIL.",
        )
        self.scorecards = Tally(
            meter, "maestro.eval.scorecards", "Scorecards written, by suite and verdict."
        )
        self.executions = Tally(
            meter,
            "maestro.eval.task_executions",
            "Task executions scored, by outcome (passed, failed, errored).",
        )

    def record(self, project: str, card: Scorecard) -> None:
        base: Labels = (("project", project), ("suite", card.suite), ("target", target_label(card)))
        for score in card.metrics:
            if not score.dataset and not score.slice:
                self._scores[(*base, ("metric", score.metric))] = score.mean
        self._verdicts[base] = VERDICT_VALUE[card.verdict]
        self.scorecards.add(1, (("suite", card.suite), ("verdict", card.verdict)))

    def _observe_scores(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        # Copies: collection runs in the exporter's thread while the loop may record a card.
        return [metrics.Observation(v, dict(k)) for k, v in list(self._scores.items())]

    def _observe_verdicts(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(v, dict(k)) for k, v in list(self._verdicts.items())]
