"""What every provider client speaks: one request shape, batches of output, one error type.

A provider stream is read in *batches*: one network read's worth of parsed output. Reading per
batch rather than per token keeps the relay's per-token cost to list operations, and `read()` is
safe to cancel (the relay puts a timeout around it for first-token, stall and coalescing
deadlines), so a timed-out read loses nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class FailureKind(enum.Enum):
    """Why an attempt on a deployment failed; maps to ChatCompletionFallbackReason."""

    PROVIDER_ERROR = "provider_error"
    RATE_LIMITED = "rate_limited"
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"
    STREAM_STALLED = "stream_stalled"
    SATURATED = "saturated"
    BREAKER_OPEN = "breaker_open"
    REQUEST_REJECTED = "request_rejected"
    """The provider refused this request (HTTP 4xx but 408 and 429): the caller's doing, so the
    deployment's breaker is not charged (a tenant could otherwise open a shared breaker with
    requests made to fail)."""
    ATTEMPT_TIMEOUT = "attempt_timeout"
    """The attempt ran past the deployment's `timeout` (LiteLLM: the most the complete
    response may take), output or not."""
    DEPLOYMENT_LIMIT = "deployment_limit"
    """The deployment is at its `rpm`, `tpm` or `max_parallel_requests` limit: not tried, and
    its breaker is not charged (a full deployment is not a failing one)."""


class ProviderError(Exception):
    """An attempt failed on the provider's side (HTTP error, connection lost, bad stream)."""

    def __init__(
        self,
        message: str,
        *,
        kind: FailureKind = FailureKind.PROVIDER_ERROR,
        status: int = 0,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s


def failure_for_status(status: int, message: str, retry_after_s: float | None) -> ProviderError:
    """The error for an HTTP status the provider answered: 429 is a rate limit, another 4xx
    (but a 408 timeout) a rejected request, the rest provider errors."""
    if status == 429:
        kind = FailureKind.RATE_LIMITED
    elif 400 <= status < 500 and status != 408:
        kind = FailureKind.REQUEST_REJECTED
    else:
        kind = FailureKind.PROVIDER_ERROR
    return ProviderError(message, kind=kind, status=status, retry_after_s=retry_after_s)


_TIMEOUT_KINDS = frozenset(
    (FailureKind.FIRST_TOKEN_TIMEOUT, FailureKind.STREAM_STALLED, FailureKind.ATTEMPT_TIMEOUT)
)
_CONTENT_POLICY_MARKERS = ("content_policy", "content management policy")
"""How OpenAI (`content_policy_violation`) and Azure word a refusal for content."""


def failure_class(kind: FailureKind, status: int = 0, message: str = "") -> str | None:
    """The LiteLLM exception class (`routing.spec.FAILURE_CLASSES`) a failure would raise
    there, which its `retry_policy` and `allowed_fails_policy` are keyed by; None for what
    LiteLLM has no class for here (a shed, a skip, a 4xx other than 400, 401, 403 and 422).
    `message` is read only on a 400, for a content-policy refusal."""
    if kind in _TIMEOUT_KINDS or status == 408:
        return "TimeoutError"
    if kind is FailureKind.RATE_LIMITED:
        return "RateLimitError"
    if kind is FailureKind.REQUEST_REJECTED:
        if status in (401, 403):
            return "AuthenticationError"
        if status == 400 and any(m in message.lower() for m in _CONTENT_POLICY_MARKERS):
            return "ContentPolicyViolationError"
        return "BadRequestError" if status in (400, 422) else None
    if kind is FailureKind.PROVIDER_ERROR:
        return "InternalServerError"
    return None


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One chat completion as sent to a deployment, already in the OpenAI wire shape."""

    model: str
    messages: Sequence[Mapping[str, Any]]
    api_base: str | None = None
    api_key: str | None = None
    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ToolCallPiece:
    """A fragment of a tool call, as OpenAI streams them."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class Batch:
    """Output parsed from one read: text pieces (one per provider token event), tool-call
    fragments, and what the stream's end carried when it is in this batch."""

    pieces: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallPiece] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderStream(Protocol):
    """An open streamed completion."""

    async def read(self) -> Batch | None:
        """The next batch; None once the stream ended cleanly. Raises ProviderError when the
        stream breaks. Cancel-safe: cancelling a read loses no output."""
        ...

    async def aclose(self) -> None:
        """Close the connection (idempotent); the provider sees the client go away."""
        ...


class Provider(Protocol):
    """A way of calling deployments: the native OpenAI-compatible client or LiteLLM."""

    name: str

    async def open(self, request: ProviderRequest) -> ProviderStream:
        """Send the request; return once the provider accepted it (headers received).
        Raises ProviderError when it refused."""
        ...

    async def aclose(self) -> None: ...
