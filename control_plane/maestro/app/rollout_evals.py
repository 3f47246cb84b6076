"""`eval-score-ok`: a rollout's eval gate, through EvalService.

The candidate version is scored on the template's suite against the stable version's latest
SUCCEEDED scorecard on the same suite and model group (the stable version is scored first when
it has none), and EvaluateGate (kind ROLLOUT_ANALYSIS) decides on the candidate's scorecard:
PASS is required; an INCONCLUSIVE scorecard pauses the rollout; anything else fails it. The
gate's checks become the analysis's measurements, and its decision id links the audit event to
the gate decision and both scorecards.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from maestro.control_plane.evals import gates
from maestro.control_plane.evals.assembly import EvalPlane
from maestro.control_plane.evals.records import ENDED, RunRecord, RunState, Target
from maestro.control_plane.evals.service import ArtifactPrompt, GateRequest, NewRun
from maestro.control_plane.rollouts.convert import parse_version
from maestro.control_plane.rollouts.records import (
    CONTROLLER,
    AnalysisResult,
    EvalGateSpec,
    Measurement,
    Outcome,
    RolloutRecord,
    TemplateSpec,
)
from maestro.control_plane.rollouts.service import RolloutService
from maestro.core.auth import Principal
from maestro.core.errors import FieldViolation, InvalidArgument, MaestroError
from maestro.routing.artifacts import compile_artifact

log = structlog.get_logger(__name__)
SCAN_LIMIT = 200
"""Newest SUCCEEDED runs of a suite searched for a reusable scorecard."""


class EvalGates:
    """The `EvalGateRunner` of the rollout analyst, over the EvalService beside it."""

    def __init__(self, evals: EvalPlane, poll_s: float = 0.5) -> None:
        self._evals = evals
        self._poll_s = poll_s

    async def __call__(
        self, rollout: RolloutRecord, template: TemplateSpec, step_index: int
    ) -> AnalysisResult:
        gate = template.eval_gate
        assert gate is not None
        start = time.time()
        principal = Principal(rollout.project, None, identity=CONTROLLER)
        candidate = rollout.version_name(rollout.spec.candidate_version)
        stable = rollout.version_name(rollout.spec.stable_version)

        def result(outcome: Outcome, message: str, **found: object) -> AnalysisResult:
            return AnalysisResult(
                step_index,
                False,
                template.name,
                outcome,
                message=message,
                start_time=start,
                end_time=time.time(),
                **found,  # type: ignore[arg-type]
            )

        try:
            baseline = await self._reusable(rollout.project, gate, stable, None)
            if baseline is None:
                run = await self._score(principal, gate, stable, "")
                if run.state != RunState.SUCCEEDED:
                    return result(
                        Outcome.INCONCLUSIVE,
                        f"the stable version's eval run {run.name} ended {run.state.name}: "
                        f"{run.state_message}",
                        eval_run=run.name,
                    )
                baseline = f"{run.name}/scorecard"
            scorecard = await self._reusable(
                rollout.project, gate, candidate, gate.max_scorecard_age_s
            )
            eval_run = scorecard.removesuffix("/scorecard") if scorecard else ""
            if scorecard is None:
                run = await self._score(principal, gate, candidate, baseline)
                eval_run = run.name
                if run.state != RunState.SUCCEEDED:
                    return result(
                        Outcome.INCONCLUSIVE,
                        f"the candidate's eval run ended {run.state.name}: {run.state_message}",
                        eval_run=run.name,
                        baseline_scorecard=baseline,
                    )
                scorecard = f"{run.name}/scorecard"
            decision, checks = await self._evals.service.evaluate_gate(
                principal,
                GateRequest(
                    scorecard,
                    gates.ROLLOUT_ANALYSIS,
                    candidate,
                    0,
                    0,
                    gates.GateInputs(gates.ROLLOUT_ANALYSIS),
                    "",
                ),
            )
        except MaestroError as error:  # a suite deleted, a quota reached: no verdict
            return result(Outcome.INCONCLUSIVE, f"eval gate could not run: {error.message}")
        card = await self._evals.service.get_scorecard(principal, scorecard)
        measurements = tuple(
            Measurement(f"gate:{c.check}", c.measured, c.limit, c.passed) for c in checks
        )
        failed = [c.message for c in checks if not c.passed]
        if decision.passed:
            outcome, message = Outcome.PASSED, f"scorecard {card.verdict}; every gate check passed"
        elif card.verdict == "INCONCLUSIVE":
            outcome, message = Outcome.INCONCLUSIVE, "scorecard INCONCLUSIVE: " + "; ".join(failed)
        else:
            outcome, message = Outcome.FAILED, "; ".join(failed)
        return result(
            outcome,
            message[:2000],
            measurements=measurements,
            eval_run=eval_run,
            scorecard=scorecard,
            baseline_scorecard=baseline,
            gate_decision_id=decision.decision_id,
        )

    async def _reusable(
        self, project: str, gate: EvalGateSpec, version: str, max_age_s: float | None
    ) -> str | None:
        """The newest SUCCEEDED scorecard of `version` on the gate's suite and model group,
        no older than `max_age_s` (None: any age; 0, the template's default: none, so a new
        run is started)."""
        if max_age_s is not None and max_age_s <= 0:
            return None
        store = self._evals.store
        runs = await store.aio(
            store.list_runs,
            project,
            None,
            SCAN_LIMIT,
            {"state": int(RunState.SUCCEEDED), "suite": gate.suite},
            False,
        )
        now = time.time()
        for run in runs:
            target = run.spec.target
            if target.artifact_version != version or target.model_group != gate.model_group:
                continue
            if max_age_s is not None and now - (run.end_time or run.create_time) > max_age_s:
                continue
            return f"{run.name}/scorecard"
        return None

    async def _score(
        self, principal: Principal, gate: EvalGateSpec, version: str, baseline: str
    ) -> RunRecord:
        service = self._evals.service
        run = await service.create_run(
            principal,
            f"projects/{principal.project_id}",
            "",
            NewRun(
                gate.suite,
                Target(model_group=gate.model_group, artifact_version=version),
                baseline,
                gate.repetitions,
                0,
                gate.max_cost_usd,
                gate.max_tokens,
                0,
                {"rollout-gate": "true"},
            ),
            "",
        )
        try:
            while run.state not in ENDED:
                await asyncio.sleep(self._poll_s)
                run = await service.get_run(principal, run.name)
        except asyncio.CancelledError:  # the step was skipped or the rollout aborted
            await asyncio.shield(service.cancel_run(principal, run.name, "rollout step ended"))
            raise
        return run


def artifact_prompt(rollouts: RolloutService) -> ArtifactPrompt:
    """EvalService's hook for artifact-version targets: the version's system text, rendered
    with its variables' defaults, and its content digest."""

    async def prompt(principal: Principal, name: str) -> tuple[str, str]:
        project, artifact_id, version_id = parse_version(name, "eval_run.target.artifact_version")
        view = await rollouts.get_version(principal, project, artifact_id, version_id, True)
        compiled = compile_artifact(view.record.media_type, view.content)
        try:
            rendered = compiled.render({})
        except InvalidArgument as error:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "eval_run.target.artifact_version",
                        f"{name} cannot be an eval target as it stands: "
                        + "; ".join(f"{v.field}: {v.description}" for v in error.violations),
                    )
                ]
            ) from None
        if any(role != "system" for role, _ in rendered.messages):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "eval_run.target.artifact_version",
                        "only versions whose messages are all system messages can be eval "
                        "targets (each task brings its own user message)",
                    )
                ]
            )
        return "\n\n".join(text for _, text in rendered.messages), view.record.digest

    return prompt
