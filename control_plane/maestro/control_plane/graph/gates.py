"""Deciding a gate: the request checked, and the transaction a decision writes.

APPROVE counts once per approver; EDIT patches the gate's snapshot (a JSON Merge Patch) or
replaces the proposed action, and earlier approvals stop counting (they were of another
version); BLOCK ends the run. A gate that reaches its required approvals writes the decision into
the run's state and, if the run was waiting there, sets it running again: when this replica will
drive it, its next step commits in the same transaction (`begin`).

Pure, like `steps`: `decide` runs inside the store's transaction (`RunStore.change_run`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from maestro.control_plane.graph.records import (
    AuditEntry,
    GateDecided,
    GateDecision,
    GateRecord,
    GateStatus,
    GateVerdict,
    NewEvent,
    Provenance,
    RunChange,
    RunRecord,
    RunStatus,
)
from maestro.control_plane.graph.steps import blocked_error, finish, state_changed
from maestro.control_plane.graph.store import RunStore, etag_of
from maestro.core.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

MAX_REASON = 2000


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision submitted on a gate; `verdict` is None when the request named none."""

    verdict: GateVerdict | None
    reason: str
    state_patch: dict[str, Any] | None
    edited_action: dict[str, Any] | None
    etag: str


@dataclass(frozen=True, slots=True)
class Decided:
    """What deciding wrote: the run's change, the gate after it, the decision recorded."""

    change: RunChange
    gate: GateRecord
    decision: GateDecision


Begin = Callable[[RunRecord], RunChange | None]
"""The next step of a run set running again, or None when this replica will not drive it."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_decision(decision: Decision) -> GateVerdict:
    """The decision's verdict; INVALID_ARGUMENT naming every bad field."""
    verdict = decision.verdict
    violations = []
    if verdict is None:
        violations.append(FieldViolation("verdict", "must be APPROVE, EDIT or BLOCK"))
    if verdict in (GateVerdict.EDIT, GateVerdict.BLOCK) and not decision.reason:
        violations.append(FieldViolation("reason", f"required for {verdict.name}"))
    if len(decision.reason) > MAX_REASON:
        violations.append(FieldViolation("reason", "at most 2,000 characters"))
    edits = decision.state_patch is not None or decision.edited_action is not None
    if verdict is GateVerdict.EDIT and not edits:
        violations.append(FieldViolation("state_patch", "EDIT needs state_patch or edited_action"))
    if verdict is not GateVerdict.EDIT and edits:
        violations.append(
            FieldViolation("state_patch", "only EDIT may carry state_patch or edited_action")
        )
    if violations or verdict is None:
        raise InvalidArgument(violations)
    return verdict


def decide(
    run: RunRecord,
    gate: GateRecord | None,
    name: str,
    decision: Decision,
    approver: str,
    now: float,
    lease: Callable[[], dict[str, Any]],
    begin: Begin,
) -> Decided:
    """Record `approver`'s decision on the gate `name` of `run`. `lease`: the columns that hand
    a resumed run to a replica; `begin`: its next step, taken in this transaction.

    `approver` is an identity, not a key: two keys of one principal count once, and the
    identity that started the run may block its gates but not approve or edit them (an edit
    counts as the editor's approval of the new version)."""
    verdict = check_decision(decision)
    if gate is None:
        raise NotFound(f"gate {name!r} not found", reason="GATE_NOT_FOUND")
    if gate.status is not GateStatus.OPEN:
        raise FailedPrecondition(f"the gate is {gate.status.name}", reason="GATE_NOT_OPEN")
    if decision.etag and decision.etag != gate.etag:
        raise Aborted("the gate changed since it was read; read it again", reason="ETAG_MISMATCH")
    if verdict is not GateVerdict.BLOCK and run.creator and approver == run.creator:
        raise PermissionDenied(
            f"{approver} started this run and cannot approve its gates; another principal must",
            reason="SELF_APPROVAL",
        )
    provenance = uuid.uuid4().hex
    decisions = list(gate.decisions)
    snapshot, proposed = gate.state_snapshot, gate.proposed_action
    if verdict is GateVerdict.EDIT:  # earlier approvals were of another version
        decisions = [replace(d, counted=False) for d in decisions]
        if decision.state_patch is not None:
            snapshot = merge_patch(snapshot, decision.state_patch)
        if decision.edited_action is not None:
            proposed = {**(proposed or {}), "arguments": decision.edited_action}
    counted_by = {d.approver for d in decisions if d.counted}
    counts = verdict is not GateVerdict.BLOCK and approver not in counted_by
    recorded = GateDecision(
        approver=approver,
        verdict=verdict,
        reason=decision.reason,
        counted=counts,
        provenance_id=provenance,
        decide_time=now,
        state_patch=decision.state_patch,
        edited_action=decision.edited_action,
    )
    decisions.append(recorded)
    approvers = sorted({d.approver for d in decisions if d.counted})
    if verdict is GateVerdict.BLOCK:
        status = GateStatus.BLOCKED
    elif sum(1 for d in decisions if d.counted) >= gate.required_approvals:
        status = GateStatus.APPROVED
    else:
        status = GateStatus.OPEN
    after = replace(
        gate,
        status=status,
        decisions=tuple(decisions),
        state_snapshot=snapshot,
        proposed_action=proposed,
        update_time=now,
        etag=etag_of(name, now, len(decisions)),
    )
    events = [
        NewEvent(
            GateDecided(name, recorded, status),
            gate.node_id,
            provenance=Provenance(provenance, approver),
        )
    ]
    updates: dict[str, Any] = {}
    opened: tuple[GateRecord, ...] = ()
    if status is GateStatus.BLOCKED:
        message = f"gate {gate.node_id} blocked by {approver}: {decision.reason}"
        error = blocked_error("GATE_BLOCKED", message, gate.node_id)
        updates = finish(RunStatus.BLOCKED, message, error=error)
        events.append(state_changed(run.status, RunStatus.BLOCKED, message))
    elif status is GateStatus.APPROVED:
        state = dict(snapshot)
        if proposed and "arguments" in proposed:
            state["tool_args"] = proposed["arguments"]
        state["gate"] = {"gate": name, "decision": "approve", "approvers": approvers}
        updates = {"state": state}
        if run.status is RunStatus.WAITING_FOR_APPROVAL:
            updates.update(
                {"status": RunStatus.RUNNING, "state_reason": "gate approved", **lease()}
            )
            reason = f"gate {gate.node_id} approved"
            events.append(state_changed(run.status, RunStatus.RUNNING, reason))
            step = begin(RunStore.applied(run, RunChange(updates)))
            if step is not None:  # this replica resumes it, in this transaction
                updates.update(step.updates)
                events.extend(step.events)
                opened = step.gates
    audit = AuditEntry(
        approver,
        f"gate.{verdict.value}",
        name,
        decision.reason,
        {"provenance_id": provenance, "counted": counts},
    )
    change = RunChange(updates, tuple(events), (after, *opened), audit=(audit,))
    return Decided(change, after, recorded)
