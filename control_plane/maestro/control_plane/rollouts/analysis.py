"""Running a rollout's analysis templates: SLO burn from live traffic, eval gates from
EvalService (through an interface the wiring provides).

A step's `slo_burn` analysis measures until the candidate has served `min_request_count`
requests in its longest window (checking every `measure_interval_s`) or until `max_wait_s`
passes; then the judge (judges.py) gives its verdict: the candidate's burn rate over each window
pair, compared with the stable version's traffic in the same seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

from maestro.control_plane.rollouts.judges import (
    BurnWindow,
    SloBurnTemplate,
    VersionSeries,
    judge_slo_burn,
)
from maestro.control_plane.rollouts.records import (
    AnalysisResult,
    Outcome,
    RolloutRecord,
    SloBurnSpec,
    TemplateSpec,
)

_OUTCOMES = {
    "passed": Outcome.PASSED,
    "failed": Outcome.FAILED,
    "inconclusive": Outcome.INCONCLUSIVE,
}


class EvalGateRunner(Protocol):
    async def __call__(
        self, rollout: RolloutRecord, template: TemplateSpec, step_index: int
    ) -> AnalysisResult:
        """Score the candidate on the template's suite and gate it against the stable
        version's scorecard (EvalService.EvaluateGate, kind ROLLOUT_ANALYSIS)."""
        ...


def burn_template(spec: SloBurnSpec) -> SloBurnTemplate:
    indicator: Literal["errors", "latency"] = "latency" if spec.indicator == "latency" else "errors"
    return SloBurnTemplate(
        indicator,
        spec.objective_ratio,
        tuple(BurnWindow(w.long_s, w.short_s, w.max_burn_rate) for w in spec.windows),
        spec.latency_threshold_ms,
        spec.min_request_count,
    )


class Analyst:
    def __init__(
        self,
        series: VersionSeries,
        eval_gate: EvalGateRunner | None = None,
        *,
        measure_interval_s: float = 1.0,
        max_wait_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.series = series
        self.eval_gate = eval_gate
        self._measure_interval_s = measure_interval_s
        self._max_wait_s = max_wait_s
        self._clock = clock

    async def run(
        self, rollout: RolloutRecord, template: TemplateSpec, step_index: int, background: bool
    ) -> AnalysisResult:
        start = self._clock()
        if template.eval_gate is not None:
            if self.eval_gate is None:
                return AnalysisResult(
                    step_index,
                    background,
                    template.name,
                    Outcome.INCONCLUSIVE,
                    message="eval gates need EvalService, which this server does not run",
                    start_time=start,
                    end_time=self._clock(),
                )
            return await self.eval_gate(rollout, template, step_index)
        assert template.slo_burn is not None
        burn = burn_template(template.slo_burn)
        candidate = rollout.version_name(rollout.spec.candidate_version)
        stable = rollout.version_name(rollout.spec.stable_version)
        deadline = start + (0.0 if background else self._max_wait_s)
        while True:
            now = self._clock()
            verdict = judge_slo_burn(self.series, candidate, stable, burn, now)
            enough = verdict.outcome != "inconclusive" or not _too_few(verdict.measurements)
            if enough or now >= deadline:
                break
            await asyncio.sleep(self._measure_interval_s)
        return AnalysisResult(
            step_index,
            background,
            template.name,
            _OUTCOMES[verdict.outcome],
            verdict.measurements,
            verdict.message,
            start_time=start,
            end_time=self._clock(),
        )


def _too_few(measurements: tuple[object, ...]) -> bool:
    """Whether an inconclusive verdict came from too few candidate requests (worth waiting
    for), not from a comparison that could not blame the candidate."""
    return any(
        getattr(m, "metric", "") == "request_count" and not getattr(m, "passed", True)
        for m in measurements
    )
