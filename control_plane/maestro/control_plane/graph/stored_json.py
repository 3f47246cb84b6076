"""The stored JSON form of the graph's events, gates and run errors, in Maestro's own names.

`run_events.body` holds one event: its payload under the payload's tag (`{"node_started":
{"kind": "model", ...}}`) and its provenance, if any, under `"provenance"`. `run_gates.body`
holds what a gate has beyond its columns (prompt, snapshot, proposal, decisions);
`agent_runs.error` and the errors inside events hold a `RunError`. Enumerations are stored by
Maestro's names (`"model"`, `"approve"`, `"waiting_for_approval"`), durations and times as
seconds.

This format belongs to the store, not to the API: `convert` alone knows `maestro.v1`, so the
wire can change without rewriting stored rows, and a change here needs a migration in
`schema.py` (migration 2 moved the bodies written in the API's JSON form to this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maestro.control_plane.graph.records import (
    Budget,
    BudgetExceeded,
    CostUpdate,
    ErrorCode,
    EventPayload,
    GateDecided,
    GateDecision,
    GateOpened,
    GateRecord,
    GateStatus,
    GateVerdict,
    NodeFinished,
    NodeKind,
    NodeStarted,
    Outcome,
    PolicyBlocked,
    Provenance,
    RunError,
    RunErrored,
    RunStateChanged,
    RunStatus,
    StepReplayed,
    Usage,
)

Json = dict[str, Any]


# -- small values ---------------------------------------------------------------------------------


def error_json(error: RunError) -> Json:
    return {
        "code": error.code.value,
        "reason": error.reason,
        "message": error.message,
        "node_id": error.node_id,
    }


def error_from_json(data: Json) -> RunError:
    return RunError(
        ErrorCode(data["code"]), data["reason"], data["message"], data.get("node_id", "")
    )


def _usage_json(usage: Usage) -> Json:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}


def _usage(data: Json) -> Usage:
    return Usage(int(data.get("prompt_tokens", 0)), int(data.get("completion_tokens", 0)))


def _budget(data: Json) -> Budget:
    return Budget(
        int(data.get("max_tokens", 0)),
        float(data.get("max_cost_usd", 0.0)),
        float(data.get("max_wall_time_s", 0.0)),
    )


def provenance_json(provenance: Provenance) -> Json:
    out: Json = {"id": provenance.id}
    if provenance.producer:
        out["producer"] = provenance.producer
    if provenance.input_digests:
        out["input_digests"] = list(provenance.input_digests)
    return out


def _provenance(data: Json) -> Provenance:
    return Provenance(
        data.get("id", ""), data.get("producer", ""), tuple(data.get("input_digests", ()))
    )


def _run_status(name: str) -> RunStatus:
    return RunStatus[name.upper()]


def _gate_status(name: str) -> GateStatus:
    return GateStatus[name.upper()]


# -- gates ----------------------------------------------------------------------------------------


def decision_json(decision: GateDecision) -> Json:
    out: Json = {
        "approver": decision.approver,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "counted": decision.counted,
        "provenance_id": decision.provenance_id,
        "decide_time": decision.decide_time,
    }
    if decision.state_patch is not None:
        out["state_patch"] = decision.state_patch
    if decision.edited_action is not None:
        out["edited_action"] = decision.edited_action
    return out


def decision_from_json(data: Json) -> GateDecision:
    return GateDecision(
        approver=data["approver"],
        verdict=GateVerdict(data["verdict"]),
        reason=data.get("reason", ""),
        counted=bool(data.get("counted", False)),
        provenance_id=data.get("provenance_id", ""),
        decide_time=float(data["decide_time"]),
        state_patch=data.get("state_patch"),
        edited_action=data.get("edited_action"),
    )


def gate_body(gate: GateRecord) -> Json:
    """What `run_gates.body` holds: the gate beyond its columns."""
    return {
        "prompt": gate.prompt,
        "required_approvals": gate.required_approvals,
        "autonomy": gate.autonomy,
        "state_snapshot": gate.state_snapshot,
        "proposed_action": gate.proposed_action,
        "decisions": [decision_json(d) for d in gate.decisions],
    }


def gate_from_row(
    body: Json,
    *,
    name: str,
    run: str,
    project: str,
    node_id: str,
    status: GateStatus,
    etag: str,
    create_time: float,
    update_time: float,
    opened_seq: int,
    expire_time: float | None,
) -> GateRecord:
    """A gate from its columns and its body."""
    return GateRecord(
        name=name,
        run=run,
        project=project,
        node_id=node_id,
        status=status,
        prompt=body["prompt"],
        required_approvals=int(body["required_approvals"]),
        autonomy=int(body["autonomy"]),
        state_snapshot=body["state_snapshot"],
        proposed_action=body.get("proposed_action"),
        decisions=tuple(decision_from_json(d) for d in body["decisions"]),
        etag=etag,
        create_time=create_time,
        update_time=update_time,
        opened_seq=opened_seq,
        expire_time=expire_time,
    )


def gate_json(gate: GateRecord) -> Json:
    """A whole gate (what a `gate_opened` event keeps of it): its columns and its body."""
    return {
        "name": gate.name,
        "run": gate.run,
        "project": gate.project,
        "node_id": gate.node_id,
        "status": gate.status.name.lower(),
        "etag": gate.etag,
        "create_time": gate.create_time,
        "update_time": gate.update_time,
        "opened_seq": gate.opened_seq,
        "expire_time": gate.expire_time,
        **gate_body(gate),
    }


def gate_from_json(data: Json) -> GateRecord:
    expire = data.get("expire_time")
    return gate_from_row(
        data,
        name=data["name"],
        run=data["run"],
        project=data["project"],
        node_id=data["node_id"],
        status=_gate_status(data["status"]),
        etag=data["etag"],
        create_time=float(data["create_time"]),
        update_time=float(data["update_time"]),
        opened_seq=int(data.get("opened_seq", 0)),
        expire_time=float(expire) if expire is not None else None,
    )


# -- events ---------------------------------------------------------------------------------------


def _payload_json(payload: EventPayload) -> tuple[str, Json]:
    """The payload's tag and fields."""
    match payload:
        case NodeStarted():
            return "node_started", {
                "kind": payload.kind.value,
                "estimated_cost_usd": payload.estimated_cost_usd,
                "idempotency_key": payload.idempotency_key,
            }
        case NodeFinished():
            out: Json = {
                "outcome": payload.outcome.value,
                "duration_s": payload.duration_s,
                "cost_usd": payload.cost_usd,
                "next_node_ids": list(payload.next_node_ids),
                "will_retry": payload.will_retry,
            }
            if payload.output is not None:
                out["output"] = payload.output
            if payload.usage is not None:
                out["usage"] = _usage_json(payload.usage)
            if payload.error is not None:
                out["error"] = error_json(payload.error)
            return "node_finished", out
        case CostUpdate():
            return "cost_update", {
                "usage": _usage_json(payload.usage),
                "cost_usd": payload.cost_usd,
                "budget_used_ratio": payload.budget_used_ratio,
            }
        case GateOpened():
            return "gate_opened", {"gate": gate_json(payload.gate)}
        case GateDecided():
            return "gate_decided", {
                "gate": payload.gate,
                "decision": decision_json(payload.decision),
                "gate_status": payload.gate_status.name.lower(),
            }
        case BudgetExceeded():
            return "budget_exceeded", {
                "rule": payload.rule,
                "reason": payload.reason,
                "budget": payload.budget.as_dict(),
                "estimated_cost_usd": payload.estimated_cost_usd,
                "spent_cost_usd": payload.spent_cost_usd,
            }
        case PolicyBlocked():
            return "policy_blocked", {"rule": payload.rule, "reason": payload.reason}
        case StepReplayed():
            return "step_replayed", {
                "previous_replica": payload.previous_replica,
                "replica": payload.replica,
                "idempotency_key": payload.idempotency_key,
            }
        case RunStateChanged():
            return "run_state_changed", {
                "previous_status": payload.previous.name.lower(),
                "status": payload.status.name.lower(),
                "reason": payload.reason,
            }
        case RunErrored():
            return "error", error_json(payload.error)


def _node_finished(data: Json) -> NodeFinished:
    usage, error = data.get("usage"), data.get("error")
    return NodeFinished(
        outcome=Outcome(data["outcome"]),
        duration_s=float(data.get("duration_s", 0.0)),
        output=data.get("output"),
        usage=_usage(usage) if usage is not None else None,
        cost_usd=float(data.get("cost_usd", 0.0)),
        next_node_ids=tuple(data.get("next_node_ids", ())),
        error=error_from_json(error) if error is not None else None,
        will_retry=bool(data.get("will_retry", False)),
    )


_READERS: dict[str, Callable[[Json], EventPayload]] = {
    "node_started": lambda d: NodeStarted(
        NodeKind(d["kind"]), float(d.get("estimated_cost_usd", 0.0)), d.get("idempotency_key", "")
    ),
    "node_finished": _node_finished,
    "cost_update": lambda d: CostUpdate(
        _usage(d.get("usage", {})), float(d.get("cost_usd", 0.0)), float(d["budget_used_ratio"])
    ),
    "gate_opened": lambda d: GateOpened(gate_from_json(d["gate"])),
    "gate_decided": lambda d: GateDecided(
        d["gate"], decision_from_json(d["decision"]), _gate_status(d["gate_status"])
    ),
    "budget_exceeded": lambda d: BudgetExceeded(
        d["rule"],
        d["reason"],
        _budget(d.get("budget", {})),
        float(d.get("estimated_cost_usd", 0.0)),
        float(d.get("spent_cost_usd", 0.0)),
    ),
    "policy_blocked": lambda d: PolicyBlocked(d["rule"], d["reason"]),
    "step_replayed": lambda d: StepReplayed(
        d["previous_replica"], d["replica"], d.get("idempotency_key", "")
    ),
    "run_state_changed": lambda d: RunStateChanged(
        _run_status(d["previous_status"]), _run_status(d["status"]), d.get("reason", "")
    ),
    "error": lambda d: RunErrored(error_from_json(d)),
}


def event_body(payload: EventPayload, provenance: Provenance | None) -> Json:
    """What `run_events.body` holds for one event."""
    tag, fields = _payload_json(payload)
    body: Json = {tag: fields}
    if provenance is not None:
        body["provenance"] = provenance_json(provenance)
    return body


def event_from_body(body: Json) -> tuple[EventPayload, Provenance | None]:
    """An event's payload and provenance from `run_events.body`; ValueError if the body holds
    no payload this code knows."""
    provenance = body.get("provenance")
    for tag, fields in body.items():
        reader = _READERS.get(tag)
        if reader is not None:
            return reader(fields), _provenance(provenance) if provenance is not None else None
    raise ValueError(f"a stored event with no known payload: {sorted(body)}")
