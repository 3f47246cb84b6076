"""InferenceService as the domain sees it: admit, route, relay, remember.

Both ingresses (gRPC and OpenAI-compatible HTTP) turn their request into a `CallInput` and
consume the same event stream, so admission, routing, idempotency, telemetry and the relay are
written once. A call that names an artifact (a prompt or agent) gets a version from the project's
traffic split, sticky per traffic key, and that version's messages and settings (`resolve`):
compiled when the split was published, only rendered here.

Admission is a counter, not a queue: past `max_inflight_calls` a call is refused at once
(RESOURCE_EXHAUSTED), because queueing in front of a saturated relay only turns overload into
latency for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from google.rpc import code_pb2
from opentelemetry import metrics, trace
from opentelemetry.context import Context

from maestro.core import names
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
    ResourceExhausted,
)
from maestro.core.tallies import (
    DEPLOYMENT_SERIES_PER_PROJECT,
    LabelCap,
    Tally,
    deployment_group,
)
from maestro.data_plane.events import Delta, Done, Event, Fallback, FinishReason, Routed
from maestro.data_plane.observations import CALL_ARTIFACT_VERSION
from maestro.data_plane.relay import CallOptions, CallPlan, GenerationParams, Relay
from maestro.data_plane.settings import DataPlaneConfig
from maestro.routing.artifacts import Rendered
from maestro.routing.decider import ChooseInput, Decider
from maestro.routing.snapshots import SnapshotRegistry
from maestro.routing.spec import DeploymentSpec
from maestro.routing.texts import wire_texts

IDEMPOTENCY_TTL_S = 24 * 3600
MAX_TRAFFIC_KEY = 256
MAX_ARTIFACT_VARIABLES = 64
MAX_VARIABLE_BYTES = 64 * 1024
ARTIFACT_VERSION_ATTRIBUTE = "maestro.artifact.version"
_INPUT = ("gen_ai.token.type", "input")
_OUTPUT = ("gen_ai.token.type", "output")

# Histogram buckets in seconds (the SDK's default boundaries are for milliseconds). The GenAI
# semantic conventions' advice for client operation duration, time to first token and time per
# output token.
OPERATION_DURATION_BUCKETS_S = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

StatusClass = Literal["ok", "client_error", "server_error", "refused"]
_CLIENT_CODES = frozenset(
    {
        code_pb2.INVALID_ARGUMENT,
        code_pb2.NOT_FOUND,
        code_pb2.ALREADY_EXISTS,
        code_pb2.PERMISSION_DENIED,
        code_pb2.UNAUTHENTICATED,
        code_pb2.FAILED_PRECONDITION,
        code_pb2.ABORTED,
        code_pb2.OUT_OF_RANGE,
        code_pb2.CANCELLED,
    }
)
"""Codes that say the request itself cannot be served as asked: the caller's to fix."""
SHED_REASONS = frozenset({"DATA_PLANE_OVERLOADED", "LANE_SATURATED", "DEPLOYMENT_LIMITS_REACHED"})
"""RESOURCE_EXHAUSTED reasons that are load shedding (full: this process, every serving lane or
every deployment at its configured limits), retried with backoff; other RESOURCE_EXHAUSTED
(the caller's quota or budget) are the caller's."""
_FINISH_CLASSES: dict[FinishReason, StatusClass] = {
    FinishReason.ERROR: "server_error",  # failed after the first token, no fallback finished it
    FinishReason.BUDGET_EXCEEDED: "client_error",  # stopped at the caller's own budget
}


def status_class(error: MaestroError) -> StatusClass:
    """Whose doing a failed call was, for error-budget burn: `client_error` (the caller's:
    bad input, unknown model, permission, quota or budget), `refused` (shed while full),
    `server_error` (everything else: providers failing after fallbacks, timeouts, internal)."""
    if error.code == code_pb2.RESOURCE_EXHAUSTED:
        return "refused" if error.reason in SHED_REASONS else "client_error"
    return "client_error" if error.code in _CLIENT_CODES else "server_error"


@functools.lru_cache(maxsize=4096)
def _labels(requested: str, response_model: str, provider: str) -> dict[str, str]:
    """Metric attributes, built once per combination rather than once per call."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": requested,
        "gen_ai.response.model": response_model,
        "gen_ai.provider.name": provider,
    }


@functools.lru_cache(maxsize=4096)
def _token_labels(requested: str, response_model: str, provider: str) -> dict[str, str]:
    """The time-per-output-token histogram's attributes (no operation name)."""
    return {
        "gen_ai.request.model": requested,
        "gen_ai.response.model": response_model,
        "gen_ai.provider.name": provider,
    }


@functools.lru_cache(maxsize=4096)
def _call_labels(
    project: str, requested: str, response_model: str, outcome: str, status: str
) -> tuple[tuple[str, str], ...]:
    """A call's tally labels; the response model only when a deployment answered."""
    labels = [("maestro.project", project), ("gen_ai.request.model", requested)]
    if response_model:
        labels.append(("gen_ai.response.model", response_model))
    labels += [("outcome", outcome), ("status_class", status)]
    return tuple(labels)


@functools.lru_cache(maxsize=4096)
def _project_labels(project: str, *pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("maestro.project", project), *pairs)


PostFirstTokenPolicy = Literal["fail", "continue_on_fallback"]


@dataclass(frozen=True, slots=True)
class CallInput:
    """A validated chat completion request, whichever ingress it came from. None or 0 means
    "the config's default" (or "no limit" for budgets)."""

    choose: ChooseInput
    messages: tuple[Mapping[str, Any], ...]
    params: GenerationParams = GenerationParams()  # noqa: RUF009 - frozen, one shared default is safe
    first_token_timeout_s: float | None = None
    """Over the deployment's LiteLLM `stream_timeout`/`timeout` and the data plane's default."""
    post_first_token_policy: PostFirstTokenPolicy | None = None
    """Over the failing deployment's (`model_info`, then the project's `router:`) and the
    data plane's default."""
    max_chunk_tokens: int | None = None
    max_chunk_delay_s: float | None = None
    budget_max_tokens: int = 0
    budget_max_cost_usd: float = 0.0
    budget_max_wall_s: float | None = None
    idempotency_key: str = ""
    deadline_s: float | None = None
    """Time left before the caller's deadline; caps the first-token wait."""
    trace_parent: Context | None = None
    """The caller's trace context (HTTP `traceparent`); None: the current context."""
    artifact: str = ""
    """`projects/{project}/artifacts/{artifact}`, the parent's own (`artifact_violations`)."""
    artifact_variables: Mapping[str, str] = field(default_factory=dict)
    traffic_key: str = ""
    artifact_version: str = ""
    """The version picked, once `InferenceService.resolve` rendered it into the call."""


def artifact_violations(
    parent: str, artifact: str, variables: Mapping[str, str], traffic_key: str
) -> list[FieldViolation]:
    """What is wrong with a call's artifact fields, for both ingresses. The artifact must be
    the calling project's own: a key of one project never reaches another's prompt, whatever
    the other's splits say."""
    violations = []
    if artifact:
        prefix = f"{parent}/artifacts/"
        artifact_id = artifact.removeprefix(prefix)
        if (
            not artifact.startswith(prefix)
            or not artifact_id
            or "/" in artifact_id
            or len(artifact_id) > 128
        ):
            violations.append(
                FieldViolation("artifact", f"must be {parent[:200]}/artifacts/{{artifact}}")
            )
    elif variables or traffic_key:
        field_name = "artifact_variables" if variables else "traffic_key"
        violations.append(FieldViolation(field_name, "only with an artifact"))
    if len(traffic_key) > MAX_TRAFFIC_KEY:
        violations.append(FieldViolation("traffic_key", f"at most {MAX_TRAFFIC_KEY} characters"))
    if len(variables) > MAX_ARTIFACT_VARIABLES:
        violations.append(
            FieldViolation("artifact_variables", f"at most {MAX_ARTIFACT_VARIABLES} variables")
        )
    for name, value in variables.items():
        if len(value.encode()) > MAX_VARIABLE_BYTES:
            violations.append(FieldViolation(f"artifact_variables[{name[:64]}]", "at most 64 KiB"))
    return violations


def with_artifact(call: CallInput, rendered: Rendered, version: str) -> CallInput:
    """`call` with its artifact version's messages before its own and the version's settings
    where the call set none: model, temperature, top_p, max_tokens, and (an agent's) tools when
    the call brings none. Content tagging reads the rendered messages too."""
    messages = (*({"role": r, "content": t} for r, t in rendered.messages), *call.messages)
    if not messages:
        raise InvalidArgument([FieldViolation("messages", "at least one message is required")])
    params = call.params
    params = replace(
        params,
        max_tokens=params.max_tokens or rendered.max_tokens,
        temperature=params.temperature if params.temperature is not None else rendered.temperature,
        top_p=params.top_p if params.top_p is not None else rendered.top_p,
        tools=params.tools or rendered.tools,
    )
    choose = call.choose
    route = choose.route
    if not route.model and rendered.model:
        route = replace(route, model=rendered.model)
    choose = replace(
        choose,
        route=route,
        texts=wire_texts(messages, params.tools, params.stop),
        detected_tags=None,
    )
    return replace(call, choose=choose, messages=messages, params=params, artifact_version=version)


class _CallTrace:
    """A call's `chat` span, started with the call's real start time (not
    start_as_current_span: a generator's steps may run in different contexts, and a context
    attached in one step cannot be detached in another), and the routing decision's deferred
    telemetry, parented to it.

    `open` starts the span once the decision is made: its context goes out with the provider
    request (the attempt spans and a lane's spans are its children). The decision's own spans
    wait for `start`, on the loop's next turn, when the request is on the wire."""

    __slots__ = (
        "_artifact_version",
        "_opened",
        "_parent",
        "_requested",
        "_started_ns",
        "_tracer",
        "deferred",
    )

    def __init__(
        self,
        tracer: trace.Tracer,
        requested: str,
        started_ns: int,
        parent: Context | None,
        artifact_version: str = "",
    ) -> None:
        self._tracer = tracer
        self._parent = parent
        self._requested = requested
        self._started_ns = started_ns
        self._artifact_version = artifact_version
        self._opened: tuple[trace.Span, Context] | None = None
        self.deferred: list[Callable[[Context | None], None]] = []

    def _open(self) -> tuple[trace.Span, Context]:
        if self._opened is None:
            span = self._tracer.start_span(
                f"chat {self._requested}",
                context=self._parent,
                kind=trace.SpanKind.CLIENT,
                start_time=self._started_ns,
            )
            if self._artifact_version:
                span.set_attribute(ARTIFACT_VERSION_ATTRIBUTE, self._artifact_version)
            self._opened = (span, trace.set_span_in_context(span, self._parent))
        return self._opened

    def open(self) -> Context:
        """The context of the `chat` span, started now if it is not yet."""
        return self._open()[1]

    def start(self) -> trace.Span:
        """The `chat` span, with the decision's deferred spans made under it."""
        span, context = self._open()
        if self.deferred:
            # Taken first: each runs once, and one that raises cannot keep the span from ending.
            deferred, self.deferred = self.deferred, []
            for telemetry in deferred:
                telemetry(context)
        return span

    def end(self) -> None:
        self.start().end()


@dataclass(frozen=True, slots=True)
class Replay:
    """A finished call kept for idempotency_key retries."""

    routed: Routed
    text: str
    tokens: int
    done: Done


class _Running:
    """Marks an idempotency key whose first call is still running."""


class InferenceService:
    def __init__(
        self,
        routes: Decider,
        relay: Relay,
        config: DataPlaneConfig,
        *,
        tracer: trace.Tracer,
        meter: metrics.Meter,
        registry: SnapshotRegistry | None = None,
        deployment_series: LabelCap | None = None,
    ) -> None:
        """`registry`: where the projects' traffic splits are published; None: the one
        `routes` decides from (the same registry in every composition). `deployment_series`:
        the deployments whose gauges are reported (the observer's, so attempts, breakers and
        calls in flight name the same ones); None: a cap of its own."""
        self._routes = routes
        self._registry = registry if registry is not None else routes._registry
        self._relay = relay
        self._config = config
        self._tracer = tracer
        self._inflight = 0
        self._replays: OrderedDict[tuple[str, str], tuple[float, Replay | _Running]] = OrderedDict()
        self._calls = Tally(
            meter,
            "maestro.inference.calls",
            "Chat completions by requested model group, deployment's group and outcome.",
        )
        self._fallbacks = Tally(
            meter,
            "maestro.inference.fallbacks",
            "Moves to another deployment, or retries of the same one, by reason.",
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of chat completions through the data plane.",
            explicit_bucket_boundaries_advisory=OPERATION_DURATION_BUCKETS_S,
        )
        self._ttft = meter.create_histogram(
            "maestro.inference.time_to_first_token",
            unit="s",
            description="Time from request to the first token sent to the caller.",
            explicit_bucket_boundaries_advisory=TIME_TO_FIRST_TOKEN_BUCKETS_S,
        )
        self._tpot = meter.create_histogram(
            "maestro.inference.time_per_output_token",
            unit="s",
            description="Mean time between output tokens after the first, once per call that "
            "produced at least two: (end of the stream - first token) / (output tokens - 1).",
            explicit_bucket_boundaries_advisory=TIME_PER_OUTPUT_TOKEN_BUCKETS_S,
        )
        self._tokens = Tally(
            meter,
            "maestro.inference.tokens",
            "Tokens used, by project, requested model group and type.",
            unit="{token}",
        )
        self._cost = Tally(
            meter,
            "maestro.inference.cost.usd",
            "What calls cost in US dollars (as priced for budgets), by project, requested model "
            "group and the answering deployment's group.",
            unit="{USD}",
        )
        self._refused = Tally(
            meter, "maestro.inference.refused", "Calls refused because the process was full."
        )
        self._series = (
            deployment_series
            if deployment_series is not None
            else LabelCap(DEPLOYMENT_SERIES_PER_PROJECT)
        )
        self._in_flight: dict[str, int] = {}
        """Calls whose current attempt is on a deployment, by its state key."""
        self._parallel_limit: dict[str, int | None] = {}
        """Each of those deployments' `max_parallel_requests`, as last seen."""
        meter.create_observable_gauge(
            "maestro.inference.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{call}",
            description="Calls in flight on each deployment (by state key).",
        )
        meter.create_observable_gauge(
            "maestro.inference.saturation_ratio",
            callbacks=[self._observe_saturation],
            unit="1",
            description="Calls in flight on each deployment over its max_parallel_requests; "
            "0 when it has no such limit.",
        )

    @property
    def inflight(self) -> int:
        return self._inflight

    async def stream(self, principal: Principal, call: CallInput) -> AsyncGenerator[Event, None]:
        """The call's events; raises MaestroError before the first event when it cannot run."""
        # Before anything else, the idempotency look-up included: a replay must not show one
        # project's result to another's key.
        project = names.parse_project_name(call.choose.parent, "parent")
        require_project(principal, project)
        # Counted only from here on: the project is the caller's own (no metric series for a
        # project named by someone who may not call it).
        try:
            if self._inflight >= self._config.max_inflight_calls:
                self._refused.add(1, ())
                raise ResourceExhausted(
                    f"the data plane is at its limit of {self._config.max_inflight_calls} calls "
                    "in progress; retry with backoff",
                    reason="DATA_PLANE_OVERLOADED",
                    metadata={"max_inflight_calls": str(self._config.max_inflight_calls)},
                )
            key = (call.choose.parent, call.idempotency_key) if call.idempotency_key else None
            replay = self._replay(key) if key is not None else None
            if replay is None:
                call = self.resolve(principal, call)
        except MaestroError as error:
            requested = self._routes.model_label(call.choose.parent, call.choose.route.model)
            self._count_error(project, requested, error)
            raise
        if replay is not None:
            yield replay.routed
            yield Delta(replay.text, 0, replay.tokens)
            yield replay.done
            return
        self._inflight += 1
        try:
            async for event in self._run(principal, call, key, project):
                yield event
        finally:
            self._inflight -= 1
            if key is not None:
                entry = self._replays.get(key)
                if entry is not None and isinstance(entry[1], _Running):
                    del self._replays[key]

    async def _run(
        self, principal: Principal, call: CallInput, key: tuple[str, str] | None, project: str
    ) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        received = loop.time()
        # A label, not the caller's string: an unknown model is "other" (metric series).
        requested = self._routes.model_label(call.choose.parent, call.choose.route.model)
        trace_ = _CallTrace(
            self._tracer, requested, time.time_ns(), call.trace_parent, call.artifact_version
        )
        if key is not None:  # before the first await: a retry meanwhile gets ABORTED
            self._replays[key] = (time.monotonic(), _Running())
        on: DeploymentSpec | None = None
        """The deployment the call's current attempt is on (`in_flight`)."""
        try:
            # A large prompt is scanned for content tags in the tagging thread, not on the loop.
            choose = await self._routes.detect_off_loop(call.choose)
            choice = self._routes.choose(principal, choose, deferred=trace_.deferred)
            plan = CallPlan(
                parent=call.choose.parent,
                choice=choice,
                messages=call.messages,
                params=call.params,
                options=self._options(call, received),
                received_at=received,
                routed_at=loop.time(),
                trace_parent=trace_.open(),
            )
            # The decision's spans are made on the loop's next turn: by then the provider
            # request is on the wire, so the time to first token does not include them.
            loop.call_soon(trace_.start)
            texts: list[str] = []
            routed: Routed | None = None
            tokens = 0
            relay = self._relay.run(plan)
            if call.artifact_version:
                relay = _in_version(relay, call.artifact_version)
            async with contextlib.aclosing(relay) as events:
                async for event in events:
                    if isinstance(event, Delta):
                        tokens += event.token_count
                        if key is not None and event.text:
                            texts.append(event.text)
                    elif isinstance(event, Fallback):
                        self._fallbacks.add(
                            1, _project_labels(project, ("reason", event.reason.value))
                        )
                        # The relay tells of each move just before the attempt it moves to.
                        self._leave(on)
                        on = self._enter(event.to_deployment)
                    elif isinstance(event, Routed):
                        routed = event
                        on = self._enter(event.deployment)
                    elif isinstance(event, Done):
                        self._leave(on)
                        on = None
                        self._finished(trace_.start(), project, requested, event)
                        if key is not None and routed is not None:
                            self._remember(key, Replay(routed, "".join(texts), tokens, event))
                    yield event
        except MaestroError as error:
            span = trace_.start()
            span.set_status(trace.StatusCode.ERROR, error.reason)
            span.set_attribute("error.type", error.reason)
            self._count_error(project, requested, error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            trace_.start().set_attribute("error.type", "cancelled")
            raise
        except Exception as error:
            span = trace_.start()
            span.set_status(trace.StatusCode.ERROR, "INTERNAL")
            span.set_attribute("error.type", type(error).__qualname__)
            self._calls.add(1, _call_labels(project, requested, "", "INTERNAL", "server_error"))
            raise
        finally:
            self._leave(on)
            trace_.end()

    def _count_error(self, project: str, requested: str, error: MaestroError) -> None:
        self._calls.add(1, _call_labels(project, requested, "", error.reason, status_class(error)))

    # -- calls in flight per deployment: a dict increment per attempt, read at collection -------

    def _enter(self, deployment: DeploymentSpec) -> DeploymentSpec:
        key = deployment.state_key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._parallel_limit[key] = deployment.calls.max_parallel_requests
        return deployment

    def _leave(self, deployment: DeploymentSpec | None) -> None:
        if deployment is not None:
            key = deployment.state_key
            self._in_flight[key] -= 1

    def _reported(self) -> list[tuple[str, int]]:
        """The in-flight counts with series of their own (a copy: read in the exporter's
        thread)."""
        return [
            (key, count)
            for key, count in list(self._in_flight.items())
            if self._series.admits(deployment_group(key), key)
        ]

    def _observe_in_flight(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(count, {"maestro.deployment_id": key})
            for key, count in self._reported()
        ]

    def _observe_saturation(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        limits = self._parallel_limit
        return [
            metrics.Observation(
                count / limit if (limit := limits.get(key)) else 0.0,
                {"maestro.deployment_id": key},
            )
            for key, count in self._reported()
        ]

    def resolve(self, principal: Principal, call: CallInput) -> CallInput:
        """`call` with its artifact's version picked (sticky by `traffic_key`) and rendered in;
        `call` itself when it names no artifact or is resolved already. An ingress calls this
        before `stream` to learn the version it reports; `stream` does it for one that did not.

        NOT_FOUND when the project serves no version of the artifact; INVALID_ARGUMENT for the
        variables (missing, undeclared, too large a result) or a recipe artifact."""
        if not call.artifact or call.artifact_version:
            return call
        parent = call.choose.parent
        require_project(principal, names.parse_project_name(parent, "parent"))
        violations = artifact_violations(
            parent, call.artifact, call.artifact_variables, call.traffic_key
        )
        if violations:
            raise InvalidArgument(violations)
        traffic = self._registry.traffic(parent)
        split = traffic.split(call.artifact) if traffic is not None else None
        if split is None:
            raise NotFound(
                f"artifact {call.artifact} has no serving version: start a rollout or promote a "
                "version with RolloutService",
                reason="ARTIFACT_NOT_SERVING",
                metadata={"artifact": call.artifact},
            )
        share = split.pick(call.traffic_key)
        compiled = self._registry.artifact(share)
        if compiled is None:  # publish_traffic compiles every version it publishes
            raise FailedPrecondition(
                f"{share.version} is not compiled on this data plane",
                reason="ARTIFACT_NOT_COMPILED",
            )
        return with_artifact(call, compiled.render(call.artifact_variables), share.version)

    def _options(self, call: CallInput, received: float) -> CallOptions:
        """The data plane's defaults and the request's own settings; the relay puts each
        deployment's config between them per attempt."""
        config = self._config
        return CallOptions(
            first_token_timeout_s=config.first_token_timeout_s,
            stall_timeout_s=config.stall_timeout_s,
            requested_first_token_timeout_s=call.first_token_timeout_s,
            first_token_cap_s=call.deadline_s,
            post_first_token_policy=call.post_first_token_policy,
            default_post_first_token_policy=config.post_first_token_failure_policy,
            num_retries=config.num_retries,
            max_chunk_tokens=call.max_chunk_tokens or config.max_chunk_tokens,
            max_chunk_delay_s=(
                call.max_chunk_delay_s
                if call.max_chunk_delay_s is not None
                else config.max_chunk_delay_ms / 1000
            ),
            max_completion_tokens=call.budget_max_tokens,
            max_cost_usd=call.budget_max_cost_usd,
            wall_deadline=(
                received + call.budget_max_wall_s if call.budget_max_wall_s is not None else None
            ),
        )

    def _finished(self, span: trace.Span, project: str, requested: str, done: Done) -> None:
        deployment = done.deployment
        response_model = deployment.model_name if deployment else ""
        provider = deployment.provider if deployment else ""
        labels = _labels(requested, response_model, provider)
        status = _FINISH_CLASSES.get(done.finish_reason, "ok")
        self._calls.add(
            1, _call_labels(project, requested, response_model, done.finish_reason.value, status)
        )
        timings = done.timings
        # In the call's span, so a sampled call's values carry exemplars naming its trace.
        context = trace.set_span_in_context(span)
        self._duration.record(timings.total_s, labels, context)
        ttft = timings.time_to_first_token_s
        if ttft is not None:
            self._ttft.record(ttft, labels, context)
            # Once per call, never per token: the stream's end stands for the last token's time
            # (the relay ends the call as the provider's stream ends).
            if status == "ok" and done.completion_tokens >= 2:
                self._tpot.record(
                    max(timings.total_s - ttft, 0.0) / (done.completion_tokens - 1),
                    _token_labels(requested, response_model, provider),
                    context,
                )
        model = ("gen_ai.request.model", requested)
        self._tokens.add(done.prompt_tokens, _project_labels(project, model, _INPUT))
        self._tokens.add(done.completion_tokens, _project_labels(project, model, _OUTPUT))
        # The relay's price of the call (what budgets and observations use), not priced again.
        self._cost.add(
            done.cost_usd,
            _project_labels(project, model, ("gen_ai.response.model", response_model)),
        )
        if span.is_recording():
            span.set_attributes(
                {
                    **labels,
                    "gen_ai.usage.input_tokens": done.prompt_tokens,
                    "gen_ai.usage.output_tokens": done.completion_tokens,
                    "gen_ai.response.finish_reasons": (done.finish_reason.value,),
                    "maestro.inference.fallback_count": len(done.fallbacks),
                    "maestro.inference.cost_usd": done.cost_usd,
                    "maestro.deployment_id": deployment.deployment_id if deployment else "",
                }
            )

    # -- idempotency --------------------------------------------------------------------------

    def _replay(self, key: tuple[str, str]) -> Replay | None:
        entry = self._replays.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if time.monotonic() - stored_at > IDEMPOTENCY_TTL_S:
            del self._replays[key]
            return None
        if isinstance(value, _Running):
            raise Aborted(
                "a call with this idempotency_key is still running; retry after it ends",
                reason="IDEMPOTENCY_KEY_IN_USE",
            )
        return value

    def _remember(self, key: tuple[str, str], replay: Replay) -> None:
        size = self._config.idempotency_cache_size
        if not size:
            self._replays.pop(key, None)
            return
        self._replays[key] = (time.monotonic(), replay)
        self._replays.move_to_end(key)
        while len(self._replays) > size:
            self._replays.popitem(last=False)


async def _in_version(
    events: AsyncGenerator[Event, None], artifact_version: str
) -> AsyncGenerator[Event, None]:
    """`events`, with `CALL_ARTIFACT_VERSION` set while each is made: the relay's attempt
    observations then carry the call's version. Set and reset inside one step of the consumer's
    task, so it never outlives the step or reaches another call. Closing this closes `events`."""
    try:
        while True:
            token = CALL_ARTIFACT_VERSION.set(artifact_version)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            finally:
                CALL_ARTIFACT_VERSION.reset(token)
            yield event
    finally:
        await events.aclose()


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole completion, from the event stream (CreateChatCompletion, non-stream HTTP)."""

    routed: Routed
    text: str
    tool_calls: tuple[tuple[str, str, str], ...]
    """(id, name, arguments JSON) per call, in order."""
    done: Done


async def collect(events: AsyncGenerator[Event, None]) -> Completion:
    """Gather a call's events into one completion."""
    routed: Routed | None = None
    texts: list[str] = []
    calls: dict[int, list[str]] = {}
    for_index: dict[int, tuple[str, str]] = {}
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, Routed):
                routed = event
            elif isinstance(event, Delta):
                if event.text:
                    texts.append(event.text)
                for piece in event.tool_calls:
                    calls.setdefault(piece.index, []).append(piece.arguments)
                    known = for_index.get(piece.index, ("", ""))
                    for_index[piece.index] = (known[0] or piece.id, known[1] or piece.name)
            elif isinstance(event, Done):
                if routed is None:
                    raise FailedPrecondition("the call ended without routing", reason="INTERNAL")
                tool_calls = tuple(
                    (*for_index[index], "".join(parts)) for index, parts in sorted(calls.items())
                )
                done = event
                if tool_calls and done.finish_reason is FinishReason.STOP:
                    done = replace(done, finish_reason=FinishReason.TOOL_CALLS)
                return Completion(routed, "".join(texts), tool_calls, done)
    raise FailedPrecondition("the call ended without a result", reason="INTERNAL")
