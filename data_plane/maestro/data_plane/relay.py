"""The relay: one call through its deployments in order, streamed as coalesced chunks.

For each deployment of the decision (winner, then fallbacks) the relay asks the deployment's
breaker, opens the provider stream, and reads it in batches under one deadline at a time: the
first-token timeout until output starts, then the stall timeout, and, while a chunk is waiting
to be sent, its coalescing deadline. A failure before any output reached the caller moves to the
next deployment; after output, the call fails with its partial output or continues on the next
deployment from it (PostFirstTokenFailurePolicy). Cancelling the consumer closes the provider
connection at once.

Per-token work is list operations only; everything per chunk or per attempt is counted there.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from maestro.core.errors import MaestroError, ResourceExhausted, Unavailable
from maestro.data_plane.events import Delta, Done, Event, Fallback, FinishReason, Routed, Timings
from maestro.data_plane.observations import Observer
from maestro.data_plane.providers.types import (
    FailureKind,
    ProviderError,
    ProviderRequest,
    ToolCallPiece,
)
from maestro.data_plane.retry_budget import RetryBudget
from maestro.data_plane.targets import TargetResolver
from maestro.routing.decider import Choice
from maestro.routing.spec import DeploymentSpec

log = structlog.get_logger(__name__)

CHARS_PER_TOKEN = 4
HTTP_SHED = 503
"""What a serving lane answers when it is at capacity (running and queued requests)."""
_NO_HEADERS: Mapping[str, str] = {}
_PROPAGATOR = TraceContextTextMapPropagator()
# Which deadline a read waits under.
_SILENCE, _FLUSH, _WALL = object(), object(), object()


@dataclass(frozen=True, slots=True)
class CallOptions:
    first_token_timeout_s: float
    stall_timeout_s: float
    continue_after_failure: bool
    max_chunk_tokens: int
    max_chunk_delay_s: float
    max_completion_tokens: int = 0
    """Budget.max_tokens: completion tokens across attempts; 0 = none."""
    max_cost_usd: float = 0.0
    wall_deadline: float | None = None
    """Budget.max_wall_time as an event-loop time; None = none."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallPlan:
    """A routed call, ready to run."""

    parent: str
    choice: Choice
    messages: tuple[Mapping[str, Any], ...]
    params: GenerationParams
    options: CallOptions
    received_at: float
    routed_at: float
    trace_parent: Context | None = None
    """The caller's trace context; None: the current one."""


class _Failed(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _BudgetReached(Exception):
    """The call's token, cost or wall-time budget ran out mid-generation."""


@dataclass(slots=True)
class _CallState:
    """What a call has produced so far, across attempts."""

    plan: CallPlan
    index: int = 0
    delivered: int = 0
    texts: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallPiece] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    first_token_at: float | None = None
    finish: str | None = None
    attempt_usage: tuple[int, int, float] = (0, 0, 0.0)
    """(prompt tokens, completion tokens, cost) of the latest attempt."""
    fallbacks: list[Fallback] = field(default_factory=list)

    def delta(self, pieces: Sequence[str], tool_calls: Sequence[ToolCallPiece] = ()) -> Delta:
        text = "".join(pieces)
        delta = Delta(text, self.index, len(pieces), tuple(tool_calls))
        self.index += 1
        self.delivered += len(pieces)
        if text:
            self.texts.append(text)
        if tool_calls:
            self.tool_calls.extend(tool_calls)
        return delta


class LaneSheds(Protocol):
    def shed(self, deployment_id: str) -> None: ...


class Relay:
    def __init__(
        self,
        targets: TargetResolver,
        observer: Observer,
        budget: RetryBudget,
        lanes: LaneSheds | None = None,
    ) -> None:
        self._targets = targets
        self._observer = observer
        self._budget = budget
        self._lanes = lanes

    async def run(self, plan: CallPlan) -> AsyncGenerator[Event, None]:
        """The call's events. Consume with `contextlib.aclosing` so an abandoned call closes
        its provider connection at once."""
        loop = asyncio.get_running_loop()
        decision = plan.choice.decision
        deployments = decision.snapshot.deployments
        order = [deployments[i] for i in (decision.winner, *decision.fallbacks)]
        yield Routed(
            plan.choice.decision_id,
            order[0],
            tuple(order[1:]),
            plan.choice.snapshot_version,
            tuple(sorted(decision.request.tags)),
        )
        state = _CallState(plan)
        skipped: list[tuple[DeploymentSpec, FailureKind, str]] = []
        tried = False
        holds_retry = False
        out_of_budget = False
        last: DeploymentSpec | None = None
        self._budget.calls += 1
        try:
            for deployment in order:
                breaker = self._observer.breaker(deployment.state_key)
                if not breaker.allow():
                    skipped.append((deployment, FailureKind.BREAKER_OPEN, "circuit breaker open"))
                    continue
                if tried and not holds_retry:
                    if not self._budget.try_acquire():
                        breaker.release()
                        out_of_budget = True
                        break
                    holds_retry = True
                for source, reason, detail in skipped:
                    fallback = Fallback(source, deployment, reason, detail, state.delivered)
                    state.fallbacks.append(fallback)
                    yield fallback
                skipped.clear()
                tried = True
                started = loop.time()
                attempt_ttft: list[float] = []
                try:
                    async for delta in self._attempt(state, deployment, attempt_ttft):
                        yield delta
                except _Failed as failure:
                    self._observe(state, deployment, failure.kind, started, attempt_ttft)
                    last = deployment
                    if state.delivered and not plan.options.continue_after_failure:
                        yield self._done(state, deployment, FinishReason.ERROR, failure.detail)
                        return
                    skipped.append((deployment, failure.kind, failure.detail))
                    continue
                except _BudgetReached:
                    self._observe(state, deployment, None, started, attempt_ttft)
                    yield self._done(state, deployment, FinishReason.BUDGET_EXCEEDED, None)
                    return
                except BaseException:
                    breaker.release()
                    raise
                self._observe(state, deployment, None, started, attempt_ttft)
                finish = FinishReason.from_provider(state.finish)
                yield self._done(state, deployment, finish, None)
                return
        finally:
            self._budget.calls -= 1
            if holds_retry:
                self._budget.release()
        detail = _caller_detail(skipped)
        if out_of_budget:
            detail = f"the retry budget is spent, no fallback was tried; {detail}"
        if state.delivered:
            yield self._done(state, last, FinishReason.ERROR, f"no deployment left: {detail}")
            return
        if tried and all(reason is FailureKind.SATURATED for _, reason, _ in skipped):
            # Capacity, not a fault: every lane this call may use is full (PII work that must
            # stay in house lands here rather than spilling to a hosted provider).
            raise ResourceExhausted(
                f"every serving lane this call may use shed it: {detail}; retry with backoff",
                reason="LANE_SATURATED",
                metadata={"decision_id": plan.choice.decision_id},
            )
        if out_of_budget:
            why = "RETRY_BUDGET_EXHAUSTED"
        elif tried:
            why = "ALL_DEPLOYMENTS_FAILED"
        else:
            why = "ALL_BREAKERS_OPEN"
        raise Unavailable(
            f"no deployment of the decision produced output: {detail}",
            reason=why,
            metadata={"decision_id": plan.choice.decision_id},
        )

    def _observe(
        self,
        state: _CallState,
        deployment: DeploymentSpec,
        failure: FailureKind | None,
        started: float,
        ttft: list[float],
    ) -> None:
        now = asyncio.get_running_loop().time()
        prompt_tokens, completion_tokens, cost = state.attempt_usage
        self._observer.observe(
            state.plan.parent,
            deployment.deployment_id,
            deployment.state_key,
            failure,
            duration_s=now - started,
            ttft_s=ttft[0] if ttft else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
        )

    async def _attempt(
        self, state: _CallState, deployment: DeploymentSpec, ttft_out: list[float]
    ) -> AsyncGenerator[Delta, None]:
        """Stream one deployment's output as deltas; raises _Failed or _BudgetReached."""
        loop = asyncio.get_running_loop()
        plan, options = state.plan, state.plan.options
        target = self._targets.target(deployment)
        messages = plan.messages
        if state.delivered:
            messages = (*messages, {"role": "assistant", "content": "".join(state.texts)})
        params = plan.params
        request = ProviderRequest(
            model=target.model,
            messages=messages,
            api_base=target.api_base,
            api_key=target.api_key,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
            seed=params.seed,
            tools=params.tools,
            tool_choice=params.tool_choice,
            extra_headers=_trace_headers(plan) if target.lane else _NO_HEADERS,
        )
        limit = self._token_limit(state, deployment)
        started = loop.time()
        wall = options.wall_deadline
        first_deadline = started + options.first_token_timeout_s
        if wall is not None:
            first_deadline = min(first_deadline, wall)
        chunk_tokens, chunk_delay = options.max_chunk_tokens, options.max_chunk_delay_s
        pending: list[str] = []
        pending_since = 0.0
        last_data = started
        got_first = False
        produced = 0
        prompt_tokens = completion_tokens = None
        stream = None
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    stream = await target.provider.open(request)
            except TimeoutError:
                if wall is not None and first_deadline >= wall:
                    raise _BudgetReached from None
                raise self._silence(options, got_first) from None
            while True:
                # One deadline at a time, and which one it is: uvloop's clock has millisecond
                # resolution, so a timer may fire a hair before the time it was set for, and
                # re-reading the clock could mistake a flush deadline for a stall.
                deadline = first_deadline if not got_first else last_data + options.stall_timeout_s
                expiry = _WALL if wall is not None and wall < deadline else _SILENCE
                if expiry is _WALL:
                    deadline = wall  # type: ignore[assignment]
                if pending and pending_since + chunk_delay < deadline:
                    deadline, expiry = pending_since + chunk_delay, _FLUSH
                try:
                    async with asyncio.timeout_at(deadline):
                        batch = await stream.read()
                except TimeoutError:
                    if expiry is _FLUSH:
                        yield state.delta(pending)
                        produced += len(pending)
                        pending = []
                        continue
                    if expiry is _WALL:
                        raise _BudgetReached from None
                    raise self._silence(options, got_first) from None
                if batch is None:
                    break
                if batch.pieces:
                    now = loop.time()
                    if not got_first:
                        got_first = True
                        ttft_out.append(now - started)
                        if state.first_token_at is None:
                            state.first_token_at = now
                    last_data = now
                    if not pending:
                        pending_since = now
                    pending.extend(batch.pieces)
                    if limit is not None and produced + len(pending) >= limit:
                        keep = max(0, limit - produced)
                        if keep:
                            yield state.delta(pending[:keep])
                        produced += keep
                        raise _BudgetReached
                    while len(pending) >= chunk_tokens:
                        yield state.delta(pending[:chunk_tokens])
                        produced += chunk_tokens
                        del pending[:chunk_tokens]
                    # The call's first output goes out at once: coalescing trades inter-token
                    # delay for throughput, never time to first token.
                    if pending and (not state.delivered or now - pending_since >= chunk_delay):
                        yield state.delta(pending)
                        produced += len(pending)
                        pending = []
                if batch.tool_calls:
                    if not got_first:
                        got_first = True
                        ttft_out.append(loop.time() - started)
                        if state.first_token_at is None:
                            state.first_token_at = loop.time()
                    yield state.delta(pending, batch.tool_calls)
                    produced += len(pending)
                    pending = []
                if batch.finish_reason:
                    state.finish = batch.finish_reason
                if batch.completion_tokens is not None:
                    completion_tokens = batch.completion_tokens
                    prompt_tokens = batch.prompt_tokens
            if pending:
                yield state.delta(pending)
                produced += len(pending)
                pending = []
        except ProviderError as error:
            if pending:
                yield state.delta(pending)
                produced += len(pending)
            kind = error.kind
            if target.lane and error.status == HTTP_SHED:
                kind = FailureKind.SATURATED
                if self._lanes is not None:
                    self._lanes.shed(deployment.state_key)
            raise _Failed(kind, _logged(deployment, kind, error)) from None
        finally:
            self._account(state, deployment, produced, prompt_tokens, completion_tokens)
            if stream is not None:
                await stream.aclose()

    @staticmethod
    def _silence(options: CallOptions, got_first: bool) -> _Failed:
        if got_first:
            return _Failed(
                FailureKind.STREAM_STALLED,
                f"no token for {options.stall_timeout_s:g} s mid-stream",
            )
        return _Failed(
            FailureKind.FIRST_TOKEN_TIMEOUT,
            f"no first token within {options.first_token_timeout_s:g} s",
        )

    @staticmethod
    def _token_limit(state: _CallState, deployment: DeploymentSpec) -> int | None:
        """Completion tokens this attempt may still produce under the call's budget."""
        options = state.plan.options
        limits = []
        if options.max_completion_tokens:
            limits.append(options.max_completion_tokens - state.delivered)
        if options.max_cost_usd and deployment.output_cost_per_token:
            prompt_cost = _estimate_prompt_tokens(state.plan) * (
                deployment.input_cost_per_token or 0.0
            )
            left = options.max_cost_usd - state.cost_usd - prompt_cost
            limits.append(int(left / deployment.output_cost_per_token))
        return max(0, min(limits)) if limits else None

    @staticmethod
    def _account(
        state: _CallState,
        deployment: DeploymentSpec,
        produced: int,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """Usage and cost of one attempt: the provider's counts when it sent them, else the
        tokens seen and a prompt estimate."""
        prompt = prompt_tokens if prompt_tokens is not None else _estimate_prompt_tokens(state.plan)
        completion = completion_tokens if completion_tokens is not None else produced
        cost = prompt * (deployment.input_cost_per_token or 0.0) + completion * (
            deployment.output_cost_per_token or 0.0
        )
        state.prompt_tokens += prompt
        state.completion_tokens += completion
        state.cost_usd += cost
        state.attempt_usage = (prompt, completion, cost)

    @staticmethod
    def _done(
        state: _CallState,
        deployment: DeploymentSpec | None,
        finish: FinishReason,
        error_detail: str | None,
    ) -> Done:
        loop_time = asyncio.get_running_loop().time()
        plan = state.plan
        error: MaestroError | None = None
        if error_detail is not None:
            error = Unavailable(
                f"the call stopped after producing output: {error_detail}",
                reason="FAILED_AFTER_FIRST_TOKEN",
                metadata={"decision_id": plan.choice.decision_id},
            )
        return Done(
            completion_id=f"chatcmpl-{uuid.uuid4().hex}",
            finish_reason=finish,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            cost_usd=state.cost_usd,
            deployment=deployment,
            continued_after_failure=any(f.after_tokens for f in state.fallbacks),
            timings=Timings(
                routing_s=plan.routed_at - plan.received_at,
                time_to_first_token_s=(
                    state.first_token_at - plan.received_at if state.first_token_at else None
                ),
                total_s=loop_time - plan.received_at,
            ),
            error=error,
            fallbacks=tuple(state.fallbacks),
        )


def _trace_headers(plan: CallPlan) -> dict[str, str]:
    """W3C trace context for a lane call (its `serve.vllm.request` span joins the caller's
    trace); built per lane attempt only."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=plan.trace_parent)
    return carrier


def _estimate_prompt_tokens(plan: CallPlan) -> int:
    chars = sum(len(m.get("content") or "") for m in plan.messages)
    return max(1, -(-chars // CHARS_PER_TOKEN))


def _caller_detail(skipped: list[tuple[DeploymentSpec, FailureKind, str]]) -> str:
    return "; ".join(f"{d.deployment_id}: {kind.value} ({text})" for d, kind, text in skipped)


def _logged(deployment: DeploymentSpec, kind: FailureKind, error: ProviderError) -> str:
    """What the caller learns of a provider's failure: its kind and HTTP status, and a
    correlation id. The provider's own text may come from any URL a config names (an internal
    service's error page, say), so it goes only to the log, under that id."""
    correlation_id = uuid.uuid4().hex[:16]
    log.warning(
        "inference.attempt_failed",
        correlation_id=correlation_id,
        deployment_id=deployment.deployment_id,
        failure=kind.value,
        status=error.status,
        detail=str(error),
    )
    status = f"HTTP {error.status}, " if error.status else ""
    return f"{status}provider details logged under correlation id {correlation_id}"
