"""How a rollout changes: each transition is a pure function from the rollout as stored to the
rollout after it and the audit events that say what happened. The verbs (service.py) and the
controller (controller.py) apply them inside `RolloutStore.change_rollout`, so every change is
checked against the rollout as it stands in the same transaction.
"""

from __future__ import annotations

from dataclasses import replace

from maestro.control_plane.rollouts.records import (
    Action,
    AnalysisResult,
    AuditEvent,
    Hold,
    Outcome,
    RolloutRecord,
    State,
)

Change = tuple[RolloutRecord, list[AuditEvent]]


def bump(record: RolloutRecord, now: float, **changes: object) -> RolloutRecord:
    """`record` at its next revision with `changes`."""
    return replace(record, revision=record.revision + 1, update_time=now, **changes)  # type: ignore[arg-type]


def event(
    before: RolloutRecord,
    after: RolloutRecord,
    action: Action,
    actor: str,
    candidate_digest: str,
    *,
    reason: str = "",
    request_id: str = "",
    analysis: AnalysisResult | None = None,
) -> AuditEvent:
    return AuditEvent(
        project=after.project,
        rollout_id=after.rollout_id,
        action=action,
        actor=actor,
        revision=after.revision,
        state_before=before.state,
        state_after=after.state,
        step_index=before.step_index,
        weight_before=before.weight,
        weight_after=after.weight,
        stable_version=after.version_name(after.spec.stable_version),
        candidate_version=after.version_name(after.spec.candidate_version),
        candidate_digest=candidate_digest,
        reason=reason[:2000],
        request_id=request_id,
        analysis_template=analysis.template if analysis else "",
        eval_run=analysis.eval_run if analysis else "",
        scorecard=analysis.scorecard if analysis else "",
        gate_decision_id=analysis.gate_decision_id if analysis else "",
        measurements=analysis.measurements if analysis else (),
    )


def set_weight(
    r: RolloutRecord, weight: int, now: float, actor: str, digest: str, reason: str
) -> Change:
    after = bump(r, now, weight=weight, step_index=r.step_index + 1, state=State.PROGRESSING)
    return after, [event(r, after, Action.WEIGHT_CHANGED, actor, digest, reason=reason)]


def pause(
    r: RolloutRecord,
    now: float,
    actor: str,
    digest: str,
    *,
    hold: Hold,
    until: float | None,
    reason: str,
    request_id: str = "",
) -> Change:
    after = bump(r, now, state=State.PAUSED, hold=hold, pause_end=until, state_reason=reason)
    return after, [
        event(r, after, Action.PAUSED, actor, digest, reason=reason, request_id=request_id)
    ]


def resume(
    r: RolloutRecord, now: float, actor: str, digest: str, *, reason: str, request_id: str = ""
) -> Change:
    """A finished hold: a pause step or an inconclusive analysis counts as done; a manual pause
    goes on with the same step."""
    step = r.step_index + 1 if r.hold == Hold.STEP else r.step_index
    after = bump(
        r,
        now,
        state=State.PROGRESSING,
        hold=Hold.NONE,
        pause_end=None,
        step_index=step,
        state_reason="",
    )
    return after, [
        event(r, after, Action.RESUMED, actor, digest, reason=reason, request_id=request_id)
    ]


def start_analysis(r: RolloutRecord, now: float, digest: str, names: list[str]) -> Change:
    after = bump(r, now, state=State.ANALYZING, state_reason="", analysis_attempt=r.revision + 1)
    return after, [
        event(r, after, Action.ANALYSIS_STARTED, "system:rollout-controller", digest, reason=name)
        for name in names
    ]


def to_zero(
    r: RolloutRecord,
    now: float,
    actor: str,
    digest: str,
    *,
    state: State,
    action: Action,
    reason: str,
    request_id: str = "",
    results: tuple[AnalysisResult, ...] = (),
) -> Change:
    """The candidate to weight 0 and the rollout to an ended state: a rollback, an abort, a
    failure."""
    after = bump(
        r,
        now,
        state=state,
        weight=0,
        hold=Hold.NONE,
        pause_end=None,
        state_reason=reason,
        analyses=(*r.analyses, *results),
    )
    said = {
        Outcome.FAILED: Action.ANALYSIS_FAILED,
        Outcome.INCONCLUSIVE: Action.ANALYSIS_INCONCLUSIVE,
    }
    events = [
        event(r, after, said[a.outcome], actor, digest, reason=a.message, analysis=a)
        for a in results
        if a.outcome in said
    ]
    events.append(event(r, after, action, actor, digest, reason=reason, request_id=request_id))
    if r.weight != 0:
        events.append(event(r, after, Action.WEIGHT_CHANGED, actor, digest, reason=reason))
    return after, events


def promote(
    r: RolloutRecord, now: float, actor: str, digest: str, *, reason: str, request_id: str = ""
) -> Change:
    after = bump(
        r,
        now,
        state=State.PROMOTED,
        weight=100,
        step_index=len(r.spec.strategy.steps),
        hold=Hold.NONE,
        pause_end=None,
        state_reason=reason,
    )
    events = []
    if r.weight != 100:
        events.append(event(r, after, Action.WEIGHT_CHANGED, actor, digest, reason=reason))
    events.append(
        event(r, after, Action.PROMOTED, actor, digest, reason=reason, request_id=request_id)
    )
    return after, events


def analysed(
    r: RolloutRecord,
    now: float,
    digest: str,
    results: tuple[AnalysisResult, ...],
) -> Change:
    """A step's analysis finished: every template passed (next step), one failed (rollback),
    or one was inconclusive and none failed (pause; resuming counts it as passed). A rollout
    paused by PauseRollout meanwhile stays paused after a pass."""
    actor = "system:rollout-controller"
    failed = [a for a in results if a.outcome == Outcome.FAILED]
    if failed:
        reason = "; ".join(f"analysis {a.template} failed: {a.message}" for a in failed)
        return to_zero(
            r,
            now,
            actor,
            digest,
            state=State.ROLLED_BACK,
            action=Action.ROLLED_BACK,
            reason=reason,
            results=results,
        )
    inconclusive = [a for a in results if a.outcome == Outcome.INCONCLUSIVE]
    analyses = (*r.analyses, *results)
    if inconclusive:
        reason = "; ".join(f"analysis {a.template} inconclusive: {a.message}" for a in inconclusive)
        if r.spec.automated:  # nobody would resume it: no verdict is not a pass
            return to_zero(
                r,
                now,
                actor,
                digest,
                state=State.ROLLED_BACK,
                action=Action.ROLLED_BACK,
                reason=f"{reason} (an automated rollout does not wait for a person)",
                results=results,
            )
        after = bump(
            r,
            now,
            state=State.PAUSED,
            hold=Hold.STEP,
            pause_end=None,
            analyses=analyses,
            state_reason=reason,
            analysis_attempt=0,
        )
        events = [
            event(
                r, after, Action.ANALYSIS_INCONCLUSIVE, actor, digest, reason=a.message, analysis=a
            )
            for a in inconclusive
        ]
        events += [
            event(r, after, Action.ANALYSIS_PASSED, actor, digest, reason=a.message, analysis=a)
            for a in results
            if a.outcome == Outcome.PASSED
        ]
        events.append(event(r, after, Action.PAUSED, actor, digest, reason=reason))
        return after, events
    manual = r.state == State.PAUSED
    after = bump(
        r,
        now,
        analyses=analyses,
        analysis_attempt=0,
        step_index=r.step_index + 1,
        state=State.PAUSED if manual else State.PROGRESSING,
        state_reason=r.state_reason if manual else "",
    )
    return after, [
        event(r, after, Action.ANALYSIS_PASSED, actor, digest, reason=a.message, analysis=a)
        for a in results
    ]
