"""What a call produces, in order: Routed, then Delta and Fallback events, then Done.

The gRPC servicer, the OpenAI ingress and the unary path each render these their own way, so the
relay is written once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from maestro.core.errors import MaestroError
from maestro.data_plane.providers.types import FailureKind, ToolCallPiece
from maestro.routing.spec import DeploymentSpec


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    BUDGET_EXCEEDED = "budget_exceeded"
    ERROR = "error"
    TOOL_CALLS = "tool_calls"

    @classmethod
    def from_provider(cls, value: str | None) -> FinishReason:
        return _PROVIDER_FINISH.get(value or "stop", FinishReason.STOP)


_PROVIDER_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


@dataclass(frozen=True, slots=True)
class Routed:
    decision_id: str
    deployment: DeploymentSpec
    fallbacks: tuple[DeploymentSpec, ...]
    snapshot_version: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    index: int
    token_count: int
    tool_calls: tuple[ToolCallPiece, ...] = ()


@dataclass(frozen=True, slots=True)
class Fallback:
    from_deployment: DeploymentSpec
    to_deployment: DeploymentSpec
    reason: FailureKind
    detail: str
    after_tokens: int


@dataclass(frozen=True, slots=True)
class Timings:
    routing_s: float
    time_to_first_token_s: float | None
    total_s: float


@dataclass(frozen=True, slots=True)
class Done:
    completion_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    deployment: DeploymentSpec | None
    continued_after_failure: bool
    timings: Timings
    error: MaestroError | None = None
    fallbacks: tuple[Fallback, ...] = field(default=())


Event = Routed | Delta | Fallback | Done
