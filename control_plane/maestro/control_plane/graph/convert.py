"""Conversion between GraphService's `maestro.v1` messages and the graph domain's values.

The one module of the slice that knows the API's names: its enumerations (`GRAPH_NODE_KIND_...`,
`GATE_VERDICT_...`, `STATE_...`, `AUTONOMY_LEVEL_...`), a run error as a `google.rpc.Status` with
its ErrorInfo, durations and timestamps as messages. Requests come in as domain values (`NewRun`,
`Decision`, session commands); records go out as messages. Nothing here reads or writes state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from maestro.control_plane.graph.cost_preview import Preview
from maestro.control_plane.graph.follow import LiveChunk
from maestro.control_plane.graph.gates import Decision
from maestro.control_plane.graph.interaction import (
    CancelRun,
    Command,
    CommandResult,
    DecideGate,
    Refused,
    SessionItem,
    Snapshot,
)
from maestro.control_plane.graph.recipe import RecipeSpec
from maestro.control_plane.graph.records import (
    Budget,
    BudgetExceeded,
    CostUpdate,
    ErrorCode,
    EventPayload,
    EventRecord,
    GateDecided,
    GateDecision,
    GateOpened,
    GateRecord,
    GateStatus,
    GateVerdict,
    KillSwitchRecord,
    NodeFinished,
    NodeKind,
    NodeStarted,
    Outcome,
    PolicyBlocked,
    Provenance,
    RecipeRecord,
    RunError,
    RunErrored,
    RunRecord,
    RunStateChanged,
    RunStatus,
    StepReplayed,
    Usage,
)
from maestro.control_plane.graph.service import AUTONOMY, NewRun
from maestro.core.errors import ERROR_DOMAIN, FieldViolation, InvalidArgument
from maestro.core.rpc.request_checks import check_request
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as pb

NODE_KINDS: dict[NodeKind, pb.GraphNodeKind.ValueType] = {
    NodeKind.MODEL: pb.GRAPH_NODE_KIND_MODEL,
    NodeKind.TOOL: pb.GRAPH_NODE_KIND_TOOL,
    NodeKind.GATE: pb.GRAPH_NODE_KIND_HUMAN_GATE,
    NodeKind.ROUTER: pb.GRAPH_NODE_KIND_ROUTER,
    NodeKind.SUBGRAPH: pb.GRAPH_NODE_KIND_SUBGRAPH,
}
VERDICTS: dict[GateVerdict, pb.GateVerdict.ValueType] = {
    GateVerdict.APPROVE: pb.GATE_VERDICT_APPROVE,
    GateVerdict.EDIT: pb.GATE_VERDICT_EDIT,
    GateVerdict.BLOCK: pb.GATE_VERDICT_BLOCK,
}
_VERDICTS_IN = {wire: verdict for verdict, wire in VERDICTS.items()}
OUTCOMES: dict[Outcome, pb.RunEvent.NodeFinished.Outcome.ValueType] = {
    Outcome.SUCCEEDED: pb.RunEvent.NodeFinished.OUTCOME_SUCCEEDED,
    Outcome.FAILED: pb.RunEvent.NodeFinished.OUTCOME_FAILED,
    Outcome.TIMED_OUT: pb.RunEvent.NodeFinished.OUTCOME_TIMED_OUT,
}
RUN_STATES = {status: pb.Run.State.Value(f"STATE_{status.name}") for status in RunStatus}
GATE_STATES = {status: pb.Gate.State.Value(f"STATE_{status.name}") for status in GateStatus}
ERROR_CODES = {
    ErrorCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    ErrorCode.INTERNAL: code_pb2.INTERNAL,
}
AUTONOMY_LEVELS: dict[int, common_pb2.AutonomyLevel.ValueType] = {
    1: common_pb2.AUTONOMY_LEVEL_L1,
    2: common_pb2.AUTONOMY_LEVEL_L2,
    3: common_pb2.AUTONOMY_LEVEL_L3,
    4: common_pb2.AUTONOMY_LEVEL_L4,
}
_STEP_HINTS = {
    "draft": common_pb2.STEP_HINT_DRAFT,
    "finalization": common_pb2.STEP_HINT_FINALIZATION,
}


def _autonomy(level: int) -> common_pb2.AutonomyLevel.ValueType:
    return AUTONOMY_LEVELS.get(level, common_pb2.AUTONOMY_LEVEL_UNSPECIFIED)


# -- small values ---------------------------------------------------------------------------------


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def budget_message(budget: Budget) -> common_pb2.Budget:
    out = common_pb2.Budget(max_tokens=budget.max_tokens, max_cost_usd=budget.max_cost_usd)
    if budget.max_wall_time_s:
        out.max_wall_time.FromNanoseconds(int(budget.max_wall_time_s * 1e9))
    return out


def budget_from(message: common_pb2.Budget) -> Budget:
    return Budget(
        message.max_tokens, message.max_cost_usd, message.max_wall_time.ToNanoseconds() / 1e9
    )


def usage_message(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def status_message(error: RunError) -> status_pb2.Status:
    """A run error as the `google.rpc.Status` the API carries, with its ErrorInfo."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=ERROR_DOMAIN,
        metadata={"node_id": error.node_id} if error.node_id else {},
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    return status_pb2.Status(code=ERROR_CODES[error.code], message=error.message, details=[packed])


def provenance_message(provenance: Provenance) -> common_pb2.Provenance:
    return common_pb2.Provenance(
        id=provenance.id,
        producer=provenance.producer,
        input_digests=provenance.input_digests,
    )


# -- recipes, runs, gates, kill switches ----------------------------------------------------------


def recipe_message(record: RecipeRecord, spec: RecipeSpec) -> pb.Recipe:
    recipe = pb.Recipe(
        name=record.name,
        display_name=record.display_name,
        source_yaml=record.source_yaml,
        description=spec.description,
        autonomy_level=_autonomy(AUTONOMY[spec.autonomy]),
        budget=budget_message(
            Budget(spec.budget.max_tokens, spec.budget.max_cost_usd, spec.budget.max_wall_time_s)
        ),
        revision_id=record.revision_id,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=record.revision_id,
    )
    for node in spec.nodes:
        out = recipe.nodes.add(
            id=node.id,
            kind=NODE_KINDS[NodeKind(node.kind)],
            description=node.description,
            max_attempts=node.retries.max_attempts,
            tags=node.tags,
        )
        out.retry_backoff.FromNanoseconds(int(node.retries.backoff_s * 1e9))
        if node.timeout_s:
            out.timeout.FromNanoseconds(int(node.timeout_s * 1e9))
        if node.kind == "model":
            out.model_step.model = node.model
            out.model_step.step_hint = _STEP_HINTS.get(node.hint, common_pb2.STEP_HINT_UNSPECIFIED)
        elif node.kind == "tool":
            out.tool_step.tool = node.tool
        elif node.kind == "gate" and node.gate is not None:
            out.gate_step.required_approvals = node.gate.approvals
            out.gate_step.prompt = node.gate.prompt
        elif node.kind == "subgraph":
            out.subgraph_step.recipe = node.recipe
    for edge in spec.edges:
        recipe.edges.add(
            from_node_id=edge.source, to_node_id=edge.target, condition=edge.when, label=edge.label
        )
    for tool in spec.tools:
        recipe.tools.add(
            name=tool.name,
            description=tool.description,
            parameters_schema=struct(tool.parameters),
            side_effects=tool.side_effects,
        )
    return recipe


def run_message(run: RunRecord) -> pb.Run:
    message = pb.Run(
        name=run.name,
        recipe=run.recipe,
        recipe_revision_id=run.recipe_revision_id,
        input_state=struct(run.input_state),
        graph_state=struct(run.state),
        state=RUN_STATES[run.status],
        state_reason=run.state_reason,
        current_node_ids=(
            [run.in_flight.node_id]
            if run.in_flight
            else ([run.next_node] if run.next_node and not run.status.final else [])
        ),
        usage=usage_message(Usage(run.prompt_tokens, run.completion_tokens)),
        cost_usd=run.cost_usd,
        budget=budget_message(run.budget),
        autonomy_level=_autonomy(run.autonomy),
        kill_switch=run.kill_switch,
        open_gates=run.open_gates,
        last_event_sequence=run.last_seq,
        owner_replica=run.owner,
        trace_id=run.trace_id,
        create_time=timestamp(run.create_time),
        update_time=timestamp(run.update_time),
        end_time=timestamp(run.end_time),
        artifact=run.recipe if run.artifact_version else "",
        artifact_version=run.artifact_version,
    )
    if run.owner:
        message.lease_expire_time.FromDatetime(datetime.fromtimestamp(run.lease_expire, UTC))
    if run.error is not None:
        message.error.CopyFrom(status_message(run.error))
    return message


def decision_message(decision: GateDecision) -> pb.GateDecision:
    return pb.GateDecision(
        approver=decision.approver,
        verdict=VERDICTS[decision.verdict],
        reason=decision.reason,
        state_patch=struct(decision.state_patch),
        edited_action=struct(decision.edited_action),
        counted=decision.counted,
        provenance_id=decision.provenance_id,
        decide_time=timestamp(decision.decide_time),
    )


def gate_message(gate: GateRecord) -> pb.Gate:
    return pb.Gate(
        name=gate.name,
        node_id=gate.node_id,
        prompt=gate.prompt,
        proposed_action=struct(gate.proposed_action),
        state_snapshot=struct(gate.state_snapshot),
        autonomy_level=_autonomy(gate.autonomy),
        required_approvals=gate.required_approvals,
        approvals_counted=gate.approvals_counted,
        decisions=[decision_message(d) for d in gate.decisions],
        state=GATE_STATES[gate.status],
        create_time=timestamp(gate.create_time),
        update_time=timestamp(gate.update_time),
        expire_time=timestamp(gate.expire_time),
        etag=gate.etag,
    )


def switch_message(switch: KillSwitchRecord, in_effect: bool) -> pb.KillSwitch:
    return pb.KillSwitch(
        name=switch.name,
        engaged=switch.engaged,
        in_effect=in_effect,
        reason=switch.reason,
        updated_by=switch.updated_by,
        update_time=timestamp(switch.update_time),
        etag=switch.etag,
    )


# -- events ---------------------------------------------------------------------------------------


def _node_finished(payload: NodeFinished) -> pb.RunEvent.NodeFinished:
    out = pb.RunEvent.NodeFinished(
        outcome=OUTCOMES[payload.outcome],
        output=struct(payload.output),
        usage=usage_message(payload.usage) if payload.usage is not None else None,
        cost_usd=payload.cost_usd,
        next_node_ids=payload.next_node_ids,
        error=status_message(payload.error) if payload.error is not None else None,
        will_retry=payload.will_retry,
    )
    out.duration.FromNanoseconds(round(payload.duration_s * 1e9))
    return out


def _set_payload(message: pb.RunEvent, payload: EventPayload) -> None:
    match payload:
        case NodeStarted():
            message.node_started.CopyFrom(
                pb.RunEvent.NodeStarted(
                    kind=NODE_KINDS[payload.kind],
                    estimated_cost_usd=payload.estimated_cost_usd,
                    idempotency_key=payload.idempotency_key,
                )
            )
        case NodeFinished():
            message.node_finished.CopyFrom(_node_finished(payload))
        case CostUpdate():
            message.cost_update.CopyFrom(
                pb.RunEvent.CostUpdate(
                    usage=usage_message(payload.usage),
                    cost_usd=payload.cost_usd,
                    budget_used_ratio=payload.budget_used_ratio,
                )
            )
        case GateOpened():
            message.gate_opened.gate.CopyFrom(gate_message(payload.gate))
        case GateDecided():
            message.gate_decided.CopyFrom(
                pb.RunEvent.GateDecided(
                    gate=payload.gate,
                    decision=decision_message(payload.decision),
                    gate_state=GATE_STATES[payload.gate_status],
                )
            )
        case BudgetExceeded():
            message.budget_exceeded.CopyFrom(
                pb.RunEvent.BudgetExceeded(
                    rule=payload.rule,
                    reason=payload.reason,
                    budget=budget_message(payload.budget),
                    estimated_cost_usd=payload.estimated_cost_usd,
                    spent_cost_usd=payload.spent_cost_usd,
                )
            )
        case PolicyBlocked():
            message.policy_blocked.CopyFrom(
                pb.RunEvent.PolicyBlocked(rule=payload.rule, reason=payload.reason)
            )
        case StepReplayed():
            message.step_replayed.CopyFrom(
                pb.RunEvent.StepReplayed(
                    previous_replica=payload.previous_replica,
                    replica=payload.replica,
                    idempotency_key=payload.idempotency_key,
                )
            )
        case RunStateChanged():
            message.run_state_changed.CopyFrom(
                pb.RunEvent.RunStateChanged(
                    previous_state=RUN_STATES[payload.previous],
                    state=RUN_STATES[payload.status],
                    reason=payload.reason,
                )
            )
        case RunErrored():
            message.error.CopyFrom(status_message(payload.error))


def event_message(event: EventRecord | LiveChunk) -> pb.RunEvent:
    """A stored event, or a live token chunk, as a `RunEvent`."""
    if isinstance(event, LiveChunk):
        return pb.RunEvent(
            run=event.run,
            sequence=event.seq,
            node_id=event.node_id,
            attempt=event.attempt,
            token_chunk=pb.RunEvent.TokenChunk(text=event.text, index=event.index),
        )
    message = pb.RunEvent(
        run=event.run,
        sequence=event.seq,
        event_time=timestamp(event.event_time),
        node_id=event.node_id,
        attempt=event.attempt,
    )
    if event.provenance is not None:
        message.provenance.CopyFrom(provenance_message(event.provenance))
    _set_payload(message, event.payload)
    return message


# -- requests -------------------------------------------------------------------------------------


def new_run_from(request: pb.CreateRunRequest) -> NewRun:
    run = request.run
    return NewRun(
        recipe=run.recipe,
        input_state=json_format.MessageToDict(run.input_state),
        budget=budget_from(run.budget) if run.HasField("budget") else None,
        autonomy=int(run.autonomy_level),
        run_id=request.run_id,
        request_id=request.request_id,
        gate_override_reason=request.autonomy_gate_override_reason,
        artifact=run.artifact,
    )


def decision_from(request: pb.SubmitGateDecisionRequest | pb.InteractRunRequest.Decide) -> Decision:
    return Decision(
        verdict=_VERDICTS_IN.get(request.verdict),
        reason=request.reason,
        state_patch=(
            json_format.MessageToDict(request.state_patch)
            if request.HasField("state_patch")
            else None
        ),
        edited_action=(
            json_format.MessageToDict(request.edited_action)
            if request.HasField("edited_action")
            else None
        ),
        etag=request.etag,
    )


def session_command(message: pb.InteractRunRequest) -> Command:
    """A message of an InteractRun session after its `start`, as the command it carries."""
    try:
        check_request(message)
    except InvalidArgument as error:
        return Refused(message.request_id, error)
    kind = message.WhichOneof("command")
    if kind == "decide":
        return DecideGate(message.request_id, message.decide.gate, decision_from(message.decide))
    if kind == "cancel":
        return CancelRun(message.request_id, message.cancel.reason)
    violation = FieldViolation("command", "`start` only opens the session; send decide or cancel")
    return Refused(message.request_id, InvalidArgument([violation]))


# -- responses ------------------------------------------------------------------------------------


def _result_message(result: CommandResult) -> pb.InteractRunResponse.CommandResult:
    out = pb.InteractRunResponse.CommandResult(request_id=result.request_id)
    if result.error is not None:
        out.status.CopyFrom(result.error.to_status())
    else:
        out.status.code = code_pb2.OK
    if result.gate is not None:
        out.gate.CopyFrom(gate_message(result.gate))
    if result.run is not None:
        out.run.CopyFrom(run_message(result.run))
    return out


def session_response(item: SessionItem) -> pb.InteractRunResponse:
    match item:
        case Snapshot():
            return pb.InteractRunResponse(
                snapshot=pb.InteractRunResponse.Snapshot(
                    run=run_message(item.run),
                    open_gates=[gate_message(g) for g in item.open_gates],
                )
            )
        case CommandResult():
            return pb.InteractRunResponse(result=_result_message(item))
        case _:
            return pb.InteractRunResponse(event=event_message(item))


def preview_response(preview: Preview) -> pb.PreviewRunCostResponse:
    out = pb.PreviewRunCostResponse(
        estimated_usage=usage_message(Usage(preview.prompt_tokens, preview.completion_tokens)),
        estimated_cost_usd=preview.estimated_cost,
        worst_case_cost_usd=preview.worst_case_cost,
        budget=budget_message(preview.budget),
        fits_budget=not preview.violations,
        budget_violations=preview.violations,
    )
    for node_id, kind, estimate, visits, fits in preview.nodes:
        row = out.nodes.add(
            node_id=node_id,
            kind=NODE_KINDS[NodeKind(kind)],
            deployment=estimate.deployment,
            expected_visits=visits,
            estimated_usage=usage_message(
                Usage(
                    int(estimate.prompt_tokens * visits), int(estimate.completion_tokens * visits)
                )
            ),
            estimated_cost_usd=estimate.cost_usd * visits,
            fits_budget=fits,
        )
        row.p95_latency.FromNanoseconds(int(estimate.p95_s * 1e9))
    forecast = out.slo_forecast
    forecast.p50_wall_time.FromNanoseconds(int(preview.p50_s * 1e9))
    forecast.p95_wall_time.FromNanoseconds(int(preview.p95_s * 1e9))
    forecast.success_rate = preview.success_rate
    wall = preview.budget.max_wall_time_s
    forecast.within_slo = not wall or preview.p95_s <= wall
    return out
