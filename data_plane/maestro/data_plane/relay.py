"""The relay: one call through its deployments in order, streamed as coalesced chunks.

For each deployment of the decision (winner, then fallbacks) the relay asks the deployment's
breaker and its admission (the config's `rpm`, `tpm`, `max_parallel_requests`), opens the
provider stream, and reads it in batches under one deadline at a time: the first-token timeout
until output starts, then the stall timeout, and, while a chunk is waiting to be sent, its
coalescing deadline; the attempt's own `timeout` and the call's wall-time budget bound them all.
Each timeout is resolved once per attempt: the request's, else the deployment's LiteLLM config
(`DeploymentSpec.calls`), else the data plane's. A failure before any output reached the caller
is retried on the same deployment as the config's `num_retries` / `retry_policy` allow, then
moves to the next deployment; after output, the call fails with its partial output or continues
on the next deployment from it (the post-first-token policy: the request's, else the failing
deployment's, else the data plane's). Cancelling the consumer closes the provider connection at
once.

Per-token work is list operations only; everything per chunk or per attempt is counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from maestro.core.errors import MaestroError, ResourceExhausted, Unavailable
from maestro.data_plane.admission import Admission, Ticket
from maestro.data_plane.breaker import CircuitBreaker
from maestro.data_plane.events import Delta, Done, Event, Fallback, FinishReason, Routed, Timings
from maestro.data_plane.observations import Observer
from maestro.data_plane.providers.types import (
    FailureKind,
    ProviderError,
    ProviderRequest,
    ToolCallPiece,
    failure_class,
)
from maestro.data_plane.retry_budget import RetryBudget
from maestro.data_plane.targets import Target, TargetResolver
from maestro.routing.decider import Choice
from maestro.routing.spec import DeploymentSpec, PostFirstTokenPolicy

log = structlog.get_logger(__name__)

CHARS_PER_TOKEN = 4
HTTP_SHED = 503
"""What a serving lane answers when it is at capacity (running and queued requests)."""
_NO_HEADERS: Mapping[str, str] = {}
_PROPAGATOR = TraceContextTextMapPropagator()
# Which deadline a read waits under: silence (first token or stall), a chunk's flush, the
# call's wall-time budget, the attempt's own timeout.
_SILENCE, _FLUSH, _WALL, _ATTEMPT = object(), object(), object(), object()
_NEVER_RETRIED = frozenset(
    (FailureKind.SATURATED, FailureKind.BREAKER_OPEN, FailureKind.DEPLOYMENT_LIMIT)
)
"""Capacity and skips: a retry would be refused the same way (and add load where there is no
room)."""
_CAPACITY = frozenset((FailureKind.SATURATED, FailureKind.DEPLOYMENT_LIMIT))
_BACKOFF = wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05)
"""The wait before retrying a deployment that sent no Retry-After: 50 ms, 100 ms, 200 ms... at
most 1 s, each plus up to 50 ms of jitter so the calls a hiccup failed do not come back at once.
Shorter than LiteLLM's (0.5 s doubling): a retry here happens before any output, on the
caller's time to first token."""
_RETRYING = Retrying()
"""Only to hand `_BACKOFF` the RetryCallState it reads the retry's number from."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How one call runs: the data plane's defaults and the request's own settings. The
    deployment's LiteLLM config (`DeploymentSpec.calls`) sits between them, resolved once per
    attempt (`_Limits`, `_continues`, `_allowed_retries`)."""

    first_token_timeout_s: float
    """The data plane's default wait for a first token."""
    stall_timeout_s: float
    """The data plane's default longest gap between tokens."""
    max_chunk_tokens: int
    max_chunk_delay_s: float
    requested_first_token_timeout_s: float | None = None
    """The request's own first-token timeout: over the deployment's and the default."""
    first_token_cap_s: float | None = None
    """Time the caller's deadline left when the call arrived: caps every first-token wait."""
    post_first_token_policy: PostFirstTokenPolicy | None = None
    """The request's policy for a failure after output; None: the failing deployment's."""
    default_post_first_token_policy: PostFirstTokenPolicy = "continue_on_fallback"
    """When neither the request nor the deployment's config says."""
    num_retries: int = 0
    """Retries on one deployment when its config does not say (`data_plane.num_retries`)."""
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


@dataclass(frozen=True, slots=True)
class _Limits:
    """One attempt's timeouts, resolved when it starts (never per read)."""

    first_token_s: float
    stall_s: float
    attempt_s: float | None
    """The deployment's `timeout`: the most the whole attempt may take; None: no limit."""

    @classmethod
    def of(cls, options: CallOptions, deployment: DeploymentSpec) -> _Limits:
        """The request's first-token timeout, else the deployment's config's, else the data
        plane's, capped by the caller's deadline; the config's stall timeout, else the data
        plane's."""
        calls = deployment.calls
        first = (
            options.requested_first_token_timeout_s
            or calls.first_token_timeout_s
            or options.first_token_timeout_s
        )
        if options.first_token_cap_s is not None:
            first = min(first, options.first_token_cap_s)
        stall = calls.stall_timeout_s or options.stall_timeout_s
        return cls(first, stall, calls.attempt_timeout_s)


class _Failed(Exception):
    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        litellm_class: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.litellm_class = litellm_class
        """The LiteLLM exception class (`spec.FAILURE_CLASSES`) retries and breakers key on."""
        self.retry_after_s = retry_after_s
        """The provider's Retry-After, if it sent one."""


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
        admission: Admission | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """`admission`: the deployments' rpm/tpm/parallel limits; None: a fresh one.
        `tracer`: makes each attempt's `provider.attempt` span; None: the global tracer."""
        self._tracer = tracer if tracer is not None else trace.get_tracer("maestro.data_plane")
        self._targets = targets
        self._observer = observer
        self._budget = budget
        self._lanes = lanes
        self._admission = admission if admission is not None else Admission()

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
        limited: list[DeploymentSpec] = []
        tried = False
        holds_retry = False
        out_of_budget = False
        last: DeploymentSpec | None = None
        estimate = _estimate_prompt_tokens(plan) + plan.params.max_tokens
        self._budget.calls += 1
        try:
            for deployment in order:
                retries = 0
                pause = 0.0
                while True:  # an attempt on the deployment, then its retries
                    if pause:
                        await asyncio.sleep(pause)
                    admitted = self._admit(deployment, estimate, skipped, limited)
                    if admitted is None:
                        break
                    breaker, ticket = admitted
                    if tried and not holds_retry:
                        if not self._budget.try_acquire():
                            ticket.release(0)
                            breaker.release()
                            out_of_budget = True
                            break
                        holds_retry = True
                    try:
                        for source, reason, detail in skipped:
                            fallback = Fallback(source, deployment, reason, detail, state.delivered)
                            state.fallbacks.append(fallback)
                            yield fallback
                    except BaseException:  # the consumer left
                        ticket.release(0)
                        breaker.release()
                        raise
                    skipped.clear()
                    tried = True
                    limits = _Limits.of(plan.options, deployment)
                    started = loop.time()
                    attempt_ttft: list[float] = []
                    state.attempt_usage = (0, 0, 0.0)
                    span = self._tracer.start_span(
                        _ATTEMPT_SPAN, plan.trace_parent, trace.SpanKind.CLIENT
                    )
                    try:
                        try:
                            async with contextlib.aclosing(
                                self._attempt(state, deployment, limits, attempt_ttft, span)
                            ) as deltas:
                                async for delta in deltas:
                                    yield delta
                        except _Failed as failure:
                            _attempt_failed(span, failure)
                            raise
                        except (asyncio.CancelledError, GeneratorExit):
                            span.set_attribute("error.type", "cancelled")
                            raise
                        except _BudgetReached:
                            raise
                        except BaseException as error:
                            span.set_status(trace.Status(trace.StatusCode.ERROR, "INTERNAL"))
                            span.set_attribute("error.type", type(error).__qualname__)
                            raise
                        finally:
                            ticket.release(state.attempt_usage[0] + state.attempt_usage[1])
                            span.end()
                    except _Failed as failure:
                        self._observe(state, deployment, failure, started, attempt_ttft)
                        last = deployment
                        if state.delivered and not _continues(plan.options, deployment):
                            yield self._done(state, deployment, FinishReason.ERROR, failure.detail)
                            return
                        skipped.append((deployment, failure.kind, failure.detail))
                        wait = _retry_wait(state, deployment, limits, failure, retries)
                        if wait is None:
                            break
                        retries += 1
                        pause = wait
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
                if out_of_budget:
                    break
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
        reasons = {f.reason for f in state.fallbacks} | {reason for _, reason, _ in skipped}
        if reasons and reasons <= _CAPACITY:
            # Capacity, not a fault: every deployment this call may use is full (PII work that
            # must stay in house lands here rather than spilling to a hosted provider).
            raise self._exhausted(plan, limited, estimate, detail)
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

    def _admit(
        self,
        deployment: DeploymentSpec,
        estimate: int,
        skipped: list[tuple[DeploymentSpec, FailureKind, str]],
        limited: list[DeploymentSpec],
    ) -> tuple[CircuitBreaker, Ticket] | None:
        """The deployment's breaker and an admission ticket for one attempt on it (of about
        `estimate` tokens); None, noted in `skipped` (and `limited`), when its breaker is open
        or it is at its rpm, tpm or parallel limit. Neither is charged to its breaker."""
        breaker = self._observer.breaker(deployment.state_key, deployment.calls)
        if not breaker.allow():
            skipped.append((deployment, FailureKind.BREAKER_OPEN, "circuit breaker open"))
            return None
        ticket = self._admission.enter(deployment, estimate)
        if ticket is None:
            breaker.release()
            limited.append(deployment)
            skipped.append((deployment, FailureKind.DEPLOYMENT_LIMIT, _limit_detail(deployment)))
            return None
        return breaker, ticket

    def _exhausted(
        self, plan: CallPlan, limited: list[DeploymentSpec], estimate: int, detail: str
    ) -> ResourceExhausted:
        """Every deployment was full: lanes shed the call, or deployments were at their rpm,
        tpm or parallel limit (then with when the first of them expects room again)."""
        metadata = {"decision_id": plan.choice.decision_id}
        if not limited:
            return ResourceExhausted(
                f"every serving lane this call may use shed it: {detail}; retry with backoff",
                reason="LANE_SATURATED",
                metadata=metadata,
            )
        retry_after = min(
            self._admission.retry_after_s(d, estimated_tokens=estimate) for d in limited
        )
        metadata["retry_after_s"] = f"{retry_after:.3g}"
        return ResourceExhausted(
            f"every deployment this call may use is at its limit: {detail}; retry after "
            f"{retry_after:.3g} s",
            reason="DEPLOYMENT_LIMITS_REACHED",
            metadata=metadata,
            retry_delay_s=retry_after,
        )

    def _observe(
        self,
        state: _CallState,
        deployment: DeploymentSpec,
        failure: _Failed | None,
        started: float,
        ttft: list[float],
    ) -> None:
        now = asyncio.get_running_loop().time()
        prompt_tokens, completion_tokens, cost = state.attempt_usage
        self._observer.observe(
            state.plan.parent,
            deployment.deployment_id,
            deployment.state_key,
            failure.kind if failure is not None else None,
            duration_s=now - started,
            ttft_s=ttft[0] if ttft else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            failure_class=failure.litellm_class if failure is not None else None,
            calls=deployment.calls,
        )

    async def _attempt(
        self,
        state: _CallState,
        deployment: DeploymentSpec,
        limits: _Limits,
        ttft_out: list[float],
        span: trace.Span,
    ) -> AsyncGenerator[Delta, None]:
        """Stream one deployment's output as deltas; raises _Failed or _BudgetReached.
        `span` is the attempt's; its context travels with the request of a traced target."""
        loop = asyncio.get_running_loop()
        plan, options = state.plan, state.plan.options
        target = self._targets.target(deployment)
        if span.is_recording():
            span.set_attributes(_attempt_attributes(deployment, target))
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
            extra_headers=_trace_headers(span) if target.traced else _NO_HEADERS,
        )
        limit = self._token_limit(state, deployment)
        started = loop.time()
        first_deadline = started + limits.first_token_s
        stall_s = limits.stall_s
        # The attempt's hard end, whatever it is doing: the call's wall-time budget or the
        # deployment's `timeout`, whichever comes first (the budget on a tie: it ends the call).
        hard, hard_expiry = options.wall_deadline, _WALL
        if limits.attempt_s is not None and (hard is None or started + limits.attempt_s < hard):
            hard, hard_expiry = started + limits.attempt_s, _ATTEMPT
        chunk_tokens, chunk_delay = options.max_chunk_tokens, options.max_chunk_delay_s
        pending: list[str] = []
        pending_since = 0.0
        last_data = started
        got_first = False
        produced = 0
        prompt_tokens = completion_tokens = None
        stream = None
        try:
            deadline, expiry = first_deadline, _SILENCE
            if hard is not None and hard < deadline:
                deadline, expiry = hard, hard_expiry
            try:
                async with asyncio.timeout_at(deadline):
                    stream = await target.provider.open(request)
            except TimeoutError:
                raise _expired(expiry, limits, got_first) from None
            while True:
                # One deadline at a time, and which one it is: uvloop's clock has millisecond
                # resolution, so a timer may fire a hair before the time it was set for, and
                # re-reading the clock could mistake a flush deadline for a stall.
                deadline = first_deadline if not got_first else last_data + stall_s
                expiry = _SILENCE
                if hard is not None and hard < deadline:
                    deadline, expiry = hard, hard_expiry
                if pending and pending_since + chunk_delay < deadline:
                    deadline, expiry = pending_since + chunk_delay, _FLUSH
                try:
                    async with asyncio.timeout_at(deadline):
                        batch = await stream.read()
                except TimeoutError:
                    if pending:  # a flush, or what arrived before the attempt ended
                        yield state.delta(pending)
                        produced += len(pending)
                        pending = []
                    if expiry is _FLUSH:
                        continue
                    raise _expired(expiry, limits, got_first) from None
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
            raise _Failed(
                kind,
                _logged(deployment, kind, error),
                failure_class(kind, error.status, str(error)),
                error.retry_after_s,
            ) from None
        finally:
            self._account(state, deployment, produced, prompt_tokens, completion_tokens)
            if stream is not None:
                await stream.aclose()

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


def _expired(expiry: object, limits: _Limits, got_first: bool) -> Exception:
    """What a read's deadline passing means; the detail names the timeout that applied."""
    if expiry is _WALL:
        return _BudgetReached()
    if expiry is _ATTEMPT:
        return _Failed(
            FailureKind.ATTEMPT_TIMEOUT,
            f"the attempt ran past its {limits.attempt_s:g} s timeout",
            "TimeoutError",
        )
    if got_first:
        return _Failed(
            FailureKind.STREAM_STALLED,
            f"no token for {limits.stall_s:g} s mid-stream",
            "TimeoutError",
        )
    return _Failed(
        FailureKind.FIRST_TOKEN_TIMEOUT,
        f"no first token within {limits.first_token_s:g} s",
        "TimeoutError",
    )


def _continues(options: CallOptions, deployment: DeploymentSpec) -> bool:
    """Whether a failure of `deployment` after output continues on the next deployment: the
    request's policy, else the deployment's config's (`model_info`, else the project's
    `router:`), else the data plane's."""
    policy = (
        options.post_first_token_policy
        or deployment.calls.post_first_token_failure_policy
        or options.default_post_first_token_policy
    )
    return policy == "continue_on_fallback"


def _allowed_retries(options: CallOptions, deployment: DeploymentSpec, failure: _Failed) -> int:
    """Retries of `deployment` the failure's class allows: the config's `retry_policy` for
    it, else `num_retries`, else the data plane's; a request the provider refused (4xx) only
    as `retry_policy` says, as it would most likely be refused again."""
    calls = deployment.calls
    by_class = calls.retries_by_class.get(failure.litellm_class or "")
    if by_class is not None:
        return by_class
    if failure.kind is FailureKind.REQUEST_REJECTED:
        return 0
    return calls.num_retries if calls.num_retries is not None else options.num_retries


def _retry_wait(
    state: _CallState, deployment: DeploymentSpec, limits: _Limits, failure: _Failed, retries: int
) -> float | None:
    """The wait before retrying `deployment` after its attempt failed with `failure`, having
    retried it `retries` times; None: move on to the next deployment now. Never once output
    reached the caller (a retry would repeat it), nor for a shed, an open breaker or a reached
    limit. The wait is the provider's Retry-After, else a short backoff; one that does not fit
    in the first-token timeout (or the call's wall-time budget) moves on instead: the next
    deployment serves the caller sooner."""
    if state.index or failure.kind in _NEVER_RETRIED:
        return None
    if retries >= _allowed_retries(state.plan.options, deployment, failure):
        return None
    if failure.retry_after_s is not None:
        wait = failure.retry_after_s
    else:
        retry = RetryCallState(_RETRYING, None, (), {})
        retry.attempt_number = retries + 1
        wait = _BACKOFF(retry)
    if wait >= limits.first_token_s:
        return None
    wall = state.plan.options.wall_deadline
    if wall is not None and asyncio.get_running_loop().time() + wait >= wall:
        return None
    return wait


def _limit_detail(deployment: DeploymentSpec) -> str:
    """Which limits a deployment that refused an attempt has (not which one was reached:
    admission does not say)."""
    calls = deployment.calls
    limits = [
        f"{name} {value}"
        for name, value in (
            ("rpm", calls.rpm),
            ("tpm", calls.tpm),
            ("max_parallel_requests", calls.max_parallel_requests),
        )
        if value is not None
    ]
    return f"at its limit ({', '.join(limits) or 'none configured'}); not tried"


def _trace_headers(span: trace.Span) -> dict[str, str]:
    """W3C trace context for an OpenAI-compatible call, naming the attempt's span, so the
    server's spans (a lane's `serve.vllm.request`) join the call's tree under it. Built per
    attempt, for traced targets only."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


_ATTEMPT_SPAN = "provider.attempt"
"""One attempt on one deployment, a child of the call's `chat` span: a call that falls back
or retries has one per try, each with its deployment, endpoint and failure."""


def _attempt_attributes(deployment: DeploymentSpec, target: Target) -> dict[str, str | int | bool]:
    attributes: dict[str, str | int | bool] = {
        "maestro.deployment_id": deployment.deployment_id,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": target.model,
    }
    if target.api_base:
        attributes.update(_endpoint_attributes(target.api_base))
    if target.lane:
        attributes["maestro.lane"] = True
    return attributes


@functools.lru_cache(maxsize=1024)
def _endpoint_attributes(api_base: str) -> tuple[tuple[str, str | int], ...]:
    """`server.address` and `server.port` of an endpoint, parsed once per endpoint rather than
    once per attempt."""
    endpoint = urlsplit(api_base)
    pairs: list[tuple[str, str | int]] = []
    if endpoint.hostname:
        pairs.append(("server.address", endpoint.hostname))
    if endpoint.port:
        pairs.append(("server.port", endpoint.port))
    return tuple(pairs)


def _attempt_failed(span: trace.Span, failure: _Failed) -> None:
    span.set_attribute("error.type", failure.kind.value)
    span.set_status(trace.Status(trace.StatusCode.ERROR, failure.kind.value))


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
