"""RolloutService's metrics, told of every committed change (a `RolloutService` listener): the
candidate's weight of each live rollout, and counters of changes and analysis outcomes, so a
dashboard shows a canary's progress and an alert can fire on a rollback."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics

from maestro.control_plane.rollouts.records import Action, AuditEvent, RolloutRecord
from maestro.core.tallies import Labels, Tally

_ANALYSIS = {
    Action.ANALYSIS_PASSED: "passed",
    Action.ANALYSIS_FAILED: "failed",
    Action.ANALYSIS_INCONCLUSIVE: "inconclusive",
}


class RolloutMetrics:
    def __init__(self, meter: metrics.Meter) -> None:
        self._weights: dict[Labels, int] = {}
        meter.create_observable_gauge(
            "maestro.rollout.canary_weight",
            callbacks=[self._observe_weights],
            unit="%",
            description="The candidate's share of its artifact's traffic, by project, artifact "
            "and rollout, while the rollout is live.",
        )
        self.changes = Tally(
            meter,
            "maestro.rollout.changes",
            "Rollout audit events, by project and action (ROLLED_BACK, PROMOTED, ...).",
        )
        self.analyses = Tally(
            meter,
            "maestro.rollout.analyses",
            "Analysis verdicts, by project, template and outcome.",
        )

    def listen(self, record: RolloutRecord, events: list[AuditEvent]) -> None:
        project = ("project", record.project)
        labels: Labels = (project, ("artifact", record.artifact), ("rollout", record.name))
        if record.ended:
            self._weights.pop(labels, None)
        else:
            self._weights[labels] = record.weight
        for event in events:
            self.changes.add(1, (project, ("action", event.action.name)))
            outcome = _ANALYSIS.get(event.action)
            if outcome is not None:
                self.analyses.add(
                    1, (project, ("template", event.analysis_template), ("outcome", outcome))
                )

    def _observe_weights(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        # A copy: collection runs in the exporter's thread while the loop may add a rollout.
        weights = list(self._weights.items())
        return [metrics.Observation(w, dict(labels)) for labels, w in weights]
