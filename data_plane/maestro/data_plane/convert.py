"""InferenceService messages <-> domain values: request validation and event rendering."""

from __future__ import annotations

import math
import uuid
from typing import Any

from google.protobuf import duration_pb2, json_format

from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.data_plane.events import Delta, Done, Fallback, FinishReason, Routed, Timings
from maestro.data_plane.providers.types import FailureKind
from maestro.data_plane.relay import GenerationParams
from maestro.data_plane.service import CallInput, PostFirstTokenPolicy, artifact_violations
from maestro.routing.decider import ChooseInput
from maestro.routing.spec import DeploymentSpec
from maestro.routing.texts import wire_texts
from maestro.routing.wire import route_request
from maestro.v1 import common_pb2, route_service_pb2
from maestro.v1 import inference_service_pb2 as pb

ROLES = {
    common_pb2.CHAT_ROLE_SYSTEM: "system",
    common_pb2.CHAT_ROLE_USER: "user",
    common_pb2.CHAT_ROLE_ASSISTANT: "assistant",
    common_pb2.CHAT_ROLE_TOOL: "tool",
}
MAX_STOP = 4
MAX_TOOLS = 128
MAX_TIMEOUT_S = 600.0
MAX_CHUNK_TOKENS = 1024
MAX_CHUNK_DELAY_S = 1.0
_POLICIES: dict[int, PostFirstTokenPolicy | None] = {
    pb.POST_FIRST_TOKEN_FAILURE_POLICY_UNSPECIFIED: None,
    pb.POST_FIRST_TOKEN_FAILURE_POLICY_FAIL: "fail",
    pb.POST_FIRST_TOKEN_FAILURE_POLICY_CONTINUE_ON_FALLBACK: "continue_on_fallback",
}
_FINISH: dict[FinishReason, pb.ChatCompletionFinishReason.ValueType] = {
    FinishReason.STOP: pb.CHAT_COMPLETION_FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.CHAT_COMPLETION_FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.CHAT_COMPLETION_FINISH_REASON_CONTENT_FILTER,
    FinishReason.BUDGET_EXCEEDED: pb.CHAT_COMPLETION_FINISH_REASON_BUDGET_EXCEEDED,
    FinishReason.ERROR: pb.CHAT_COMPLETION_FINISH_REASON_ERROR,
    FinishReason.TOOL_CALLS: pb.CHAT_COMPLETION_FINISH_REASON_TOOL_CALLS,
}
_FALLBACK_REASONS: dict[FailureKind, pb.ChatCompletionFallbackReason.ValueType] = {
    FailureKind.PROVIDER_ERROR: pb.CHAT_COMPLETION_FALLBACK_REASON_PROVIDER_ERROR,
    FailureKind.RATE_LIMITED: pb.CHAT_COMPLETION_FALLBACK_REASON_RATE_LIMITED,
    FailureKind.FIRST_TOKEN_TIMEOUT: pb.CHAT_COMPLETION_FALLBACK_REASON_FIRST_TOKEN_TIMEOUT,
    FailureKind.STREAM_STALLED: pb.CHAT_COMPLETION_FALLBACK_REASON_STREAM_STALLED,
    FailureKind.SATURATED: pb.CHAT_COMPLETION_FALLBACK_REASON_SATURATED,
    FailureKind.BREAKER_OPEN: pb.CHAT_COMPLETION_FALLBACK_REASON_BREAKER_OPEN,
    FailureKind.REQUEST_REJECTED: pb.CHAT_COMPLETION_FALLBACK_REASON_REQUEST_REJECTED,
    FailureKind.ATTEMPT_TIMEOUT: pb.CHAT_COMPLETION_FALLBACK_REASON_ATTEMPT_TIMEOUT,
    FailureKind.DEPLOYMENT_LIMIT: pb.CHAT_COMPLETION_FALLBACK_REASON_DEPLOYMENT_LIMIT,
}

ChatRequest = pb.CreateChatCompletionRequest | pb.StreamChatCompletionRequest


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _wire_message(message: common_pb2.ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": ROLES.get(message.role, "user"), "content": message.content}
    if message.name:
        wire["name"] = message.name
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in message.tool_calls
        ]
    return wire


def _tools(request: ChatRequest, violations: list[FieldViolation]) -> tuple[dict[str, Any], ...]:
    if len(request.tools) > MAX_TOOLS:
        violations.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    seen: set[str] = set()
    tools = []
    for index, tool in enumerate(request.tools):
        if not tool.name:
            violations.append(FieldViolation(f"tools[{index}].name", "required"))
        elif tool.name in seen:
            violations.append(FieldViolation(f"tools[{index}].name", "duplicate tool name"))
        seen.add(tool.name)
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        if tool.HasField("parameters_json_schema"):
            function["parameters"] = json_format.MessageToDict(tool.parameters_json_schema)
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def _tool_choice(
    request: ChatRequest, names: set[str], violations: list[FieldViolation]
) -> str | dict[str, Any] | None:
    choice = request.tool_choice
    if not choice:
        return None
    if choice in ("auto", "none", "required"):
        return choice
    if choice in names:
        return {"type": "function", "function": {"name": choice}}
    violations.append(
        FieldViolation("tool_choice", "must be auto, none, required or the name of a tool")
    )
    return None


def _check_range(
    violations: list[FieldViolation], field: str, value: float, low: float, high: float
) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        violations.append(FieldViolation(field, f"must be between {low:g} and {high:g}"))


def call_input(
    request: ChatRequest, objectives_header: str, deadline_s: float | None = None
) -> CallInput:
    """Validate a chat completion request; every bad field is reported at once."""
    violations: list[FieldViolation] = []
    if not request.messages and not request.artifact:  # an artifact's prompt may be all of it
        violations.append(FieldViolation("messages", "at least one message is required"))
    route = route_request(request, violations)
    if request.max_tokens < 0:
        violations.append(FieldViolation("max_tokens", "must not be negative"))
    if request.HasField("temperature"):
        _check_range(violations, "temperature", request.temperature, 0, 2)
    if request.HasField("top_p"):
        _check_range(violations, "top_p", request.top_p, 0, 1)
    if len(request.stop) > MAX_STOP:
        violations.append(FieldViolation("stop", f"at most {MAX_STOP} sequences"))
    if request.idempotency_key:
        try:
            uuid.UUID(request.idempotency_key)
        except ValueError:
            violations.append(FieldViolation("idempotency_key", "must be a UUID"))
    if request.post_first_token_failure_policy not in _POLICIES:
        violations.append(FieldViolation("post_first_token_failure_policy", "unknown value"))
    first_token: float | None = None
    if request.HasField("first_token_timeout"):
        first_token = _seconds(request.first_token_timeout)
        if not 0 < first_token <= MAX_TIMEOUT_S:
            violations.append(
                FieldViolation(
                    "first_token_timeout", f"must be above 0 and at most {MAX_TIMEOUT_S:g} s"
                )
            )
    wall: float | None = None
    if request.budget.HasField("max_wall_time"):
        wall = _seconds(request.budget.max_wall_time)
        if wall <= 0:
            violations.append(FieldViolation("budget.max_wall_time", "must be above 0"))
    if request.budget.max_tokens < 0:
        violations.append(FieldViolation("budget.max_tokens", "must not be negative"))
    chunk_tokens: int | None = None
    chunk_delay: float | None = None
    if isinstance(request, pb.StreamChatCompletionRequest) and request.HasField("coalescing"):
        coalescing = request.coalescing
        if not 0 <= coalescing.max_chunk_tokens <= MAX_CHUNK_TOKENS:
            violations.append(
                FieldViolation("coalescing.max_chunk_tokens", f"must be 0 to {MAX_CHUNK_TOKENS}")
            )
        chunk_tokens = coalescing.max_chunk_tokens or None
        if coalescing.HasField("max_chunk_delay"):
            chunk_delay = _seconds(coalescing.max_chunk_delay)
            if not 0 <= chunk_delay <= MAX_CHUNK_DELAY_S:
                violations.append(
                    FieldViolation("coalescing.max_chunk_delay", "must be 0 to 1 second")
                )
            chunk_delay = chunk_delay or None
    tools = _tools(request, violations)
    tool_choice = _tool_choice(request, {t.name for t in request.tools}, violations)
    variables = dict(request.artifact_variables)
    violations += artifact_violations(
        request.parent, request.artifact, variables, request.traffic_key
    )
    if violations:
        raise InvalidArgument(violations)
    messages = tuple(_wire_message(m) for m in request.messages)
    return CallInput(
        choose=ChooseInput(
            parent=request.parent,
            route=route,
            texts=wire_texts(messages, tools, request.stop),  # all the provider will see
            supplied_tags=tuple(request.step_tags),
            objectives_header=objectives_header,
        ),
        messages=messages,
        params=GenerationParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            stop=tuple(request.stop),
            seed=request.seed if request.HasField("seed") else None,
            tools=tools,
            tool_choice=tool_choice,
        ),
        first_token_timeout_s=first_token,
        post_first_token_policy=_POLICIES.get(request.post_first_token_failure_policy),
        max_chunk_tokens=chunk_tokens,
        max_chunk_delay_s=chunk_delay,
        budget_max_tokens=request.budget.max_tokens,
        budget_max_cost_usd=request.budget.max_cost_usd,
        budget_max_wall_s=wall,
        idempotency_key=request.idempotency_key,
        deadline_s=deadline_s,
        artifact=request.artifact,
        artifact_variables=variables,
        traffic_key=request.traffic_key,
    )


# -- events -> messages -----------------------------------------------------------------------


def deployment_ref(deployment: DeploymentSpec) -> common_pb2.DeploymentRef:
    return common_pb2.DeploymentRef(
        model_group=deployment.model_name,
        deployment_id=deployment.deployment_id,
        provider=deployment.provider,
        provider_model=deployment.litellm_model,
    )


def routed_message(routed: Routed) -> route_service_pb2.RouteDecisionSummary:
    return route_service_pb2.RouteDecisionSummary(
        decision_id=routed.decision_id,
        deployment=deployment_ref(routed.deployment),
        fallbacks=[deployment_ref(d) for d in routed.fallbacks],
        snapshot_version=routed.snapshot_version,
        tags=routed.tags,
    )


def delta_message(delta: Delta) -> pb.ChatCompletionDelta:
    message = pb.ChatCompletionDelta(
        text=delta.text, index=delta.index, token_count=delta.token_count
    )
    for piece in delta.tool_calls:
        message.tool_calls.add(
            index=piece.index, id=piece.id, name=piece.name, arguments_json=piece.arguments
        )
    return message


def fallback_message(fallback: Fallback) -> pb.ChatCompletionFallback:
    return pb.ChatCompletionFallback(
        from_deployment=deployment_ref(fallback.from_deployment),
        to_deployment=deployment_ref(fallback.to_deployment),
        reason=_FALLBACK_REASONS[fallback.reason],
        detail=fallback.detail[:1000],
        after_tokens=fallback.after_tokens,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def timings_message(timings: Timings) -> pb.ChatCompletionTimings:
    message = pb.ChatCompletionTimings(
        routing=_duration(timings.routing_s), total=_duration(timings.total_s)
    )
    if timings.time_to_first_token_s is not None:
        message.time_to_first_token.CopyFrom(_duration(timings.time_to_first_token_s))
    return message


def done_message(done: Done, artifact_version: str = "") -> pb.ChatCompletionDone:
    """The stream's last event; `artifact_version` the call's (`CallInput.artifact_version`)."""
    message = pb.ChatCompletionDone(
        completion_id=done.completion_id,
        finish_reason=_FINISH[done.finish_reason],
        usage=common_pb2.Usage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.prompt_tokens + done.completion_tokens,
        ),
        cost_usd=done.cost_usd,
        deployment=deployment_ref(done.deployment) if done.deployment else None,
        continued_after_failure=done.continued_after_failure,
        timings=timings_message(done.timings),
        artifact_version=artifact_version,
    )
    if done.error is not None:
        message.error.CopyFrom(done.error.to_status())
    return message


def finish_reason_value(reason: FinishReason) -> pb.ChatCompletionFinishReason.ValueType:
    return _FINISH[reason]
