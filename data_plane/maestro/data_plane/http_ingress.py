"""OpenAI-compatible HTTP ingress: `POST /v1/chat/completions` and `GET /v1/models`, plus
`POST /route/choose` (RouteService.Choose as JSON) and the probes `/healthz` and `/readyz`.

The official `openai` client works against it unchanged: `base_url=http://host:port/v1` and a
Maestro API key as `api_key`. `model` names a model group or alias ("" or "auto" lets the router
choose among all). Maestro's own options ride in the body's `maestro` object (the client's
`extra_body`): step tags, hint, objective weights, budget, jurisdiction, failure policy,
first-token timeout and coalescing. Streamed chunks carry `maestro.token_count`; a fallback is a
chunk with no choices and a `maestro.fallback` object; a failure after output is an SSE `error`
event, which the `openai` client raises as an APIError.

A call may name a prompt or agent artifact of its project in the same object:
`{"maestro": {"prompt": "projects/p/artifacts/support-answer", "variables": {...}, "key":
"user-123"}}` (`agent` or `artifact` name it as well; one of the three). `key` picks the version
stickily, OpenAI's `user` field when absent. The version served is in the response's (or the
last chunk's) `maestro.artifact_version` and the `x-maestro-artifact-version` header.

Response headers are sent with the first event, so a call that fails before producing anything
gets a real HTTP status (429 when the data plane is full, 503 when every deployment failed).

`X-Maestro-Objectives` (`quality,latency,cost` or `cost=0.7,quality=0.3`) biases the routing of a
chat completion or a `/route/choose` exactly as the gRPC metadata of the same name does: the
Decider parses both, and weights in the body (`objective_weights`) win over the header, as a
request's weights win over the metadata on gRPC. Until the process is ready (`Readiness`: its
first routing snapshot applied; not draining) every route but the probes answers 503
`NOT_READY` with `Retry-After`, before authentication or reading the body.

Every request but the probes is one SERVER span (`POST /v1/chat/completions`), in the caller's
trace when it sends W3C `traceparent`, else the root of a new one; the call's `chat` and
`maestro.route.choose` spans are its descendants, and the provider or lane request carries the
trace on (`traceparent`).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from google.rpc import code_pb2
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from maestro.core.auth import Principal
from maestro.core.errors import (
    FieldViolation,
    InvalidArgument,
    MaestroError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    internal_error,
)
from maestro.core.quotas import UNLIMITED, Limiter
from maestro.core.readiness import ALWAYS_READY, Readiness
from maestro.core.rpc.interceptors import Authenticate
from maestro.core.rpc.metadata import OBJECTIVES_HEADER
from maestro.core.rpc.scopes import METHOD_SCOPES, check_scope
from maestro.data_plane.events import Delta, Done, Fallback, FinishReason, Routed
from maestro.data_plane.model_groups import model_groups
from maestro.data_plane.relay import GenerationParams
from maestro.data_plane.route_http import choice_json
from maestro.data_plane.service import (
    CallInput,
    InferenceService,
    artifact_violations,
    collect,
)
from maestro.routing.decider import Choice, ChooseInput, Decider
from maestro.routing.engine import RouteRequest
from maestro.routing.spec import OBJECTIVES
from maestro.routing.texts import wire_texts

_HTTP_STATUS: dict[int, int] = {
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ABORTED: 409,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.INTERNAL: 500,
}
_AUTO_MODELS = ("", "auto")
MAX_IDEMPOTENCY_KEY = 128
"""Longest `maestro.idempotency_key` (gRPC's is a UUID, 36 characters): room for a UUID, a
ULID or a caller's own prefixed id, while the replay cache (`idempotency_cache_size` entries,
kept a day) stays small."""
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]*")
RETRY_AFTER_KEY = "retry_after_s"
"""ErrorInfo metadata key of a retry hint in seconds (a decimal string). Any error carrying it is
answered with `Retry-After` (rounded up, at least 1), as a ResourceExhausted's `retry_delay_s`
is; over gRPC it reaches the caller in the ErrorInfo as it is."""
NOT_READY_RETRY_AFTER_S = 1
"""Readiness comes with the first routing snapshot, normally within a second of start-up."""
_PROBES = frozenset({"/healthz", "/readyz"})
# The scopes of the gRPC method each route is the HTTP face of (one access model for both).
# StreamChatCompletion accepts the same scopes as CreateChatCompletion; the body says which.
_CHAT_SCOPES = METHOD_SCOPES["/maestro.v1.InferenceService/CreateChatCompletion"]
_MODELS_SCOPES = METHOD_SCOPES["/maestro.v1.InferenceService/ListModels"]
_CHOOSE_SCOPES = METHOD_SCOPES["/maestro.v1.RouteService/Choose"]
_NOT_READY = Unavailable(
    "the server is starting and has no routing config applied yet; retry shortly",
    reason="NOT_READY",
    metadata={RETRY_AFTER_KEY: str(NOT_READY_RETRY_AFTER_S)},
)
_DRAINING = Unavailable(
    "the server is shutting down; retry on another replica",
    reason="NOT_READY",
    metadata={RETRY_AFTER_KEY: str(NOT_READY_RETRY_AFTER_S), "draining": "true"},
)
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Budget(_Strict):
    max_cost_usd: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_tokens: int = Field(0, ge=0)
    max_wall_time_ms: float | None = Field(None, gt=0)


class _Jurisdiction(_Strict):
    allowed_jurisdictions: list[str] = Field(default_factory=list)
    require_in_house: bool = False


_Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Weights = dict[Literal[*OBJECTIVES], _Weight]  # type: ignore[valid-type]
"""Objective weights by name (`quality`, `latency`, `cost`, `reliability`, `sovereignty`)."""


class MaestroOptions(_Strict):
    """The body's `maestro` object."""

    step_tags: list[str] = Field(default_factory=list)
    step_hint: Literal["", "draft", "finalization"] = ""
    objective_weights: _Weights | None = None
    budget: _Budget = _Budget()
    jurisdiction: _Jurisdiction = _Jurisdiction()
    post_first_token_failure_policy: Literal["fail", "continue_on_fallback"] | None = None
    first_token_timeout_ms: float | None = Field(None, gt=0, le=600_000)
    max_chunk_tokens: int | None = Field(None, ge=1, le=1024)
    max_chunk_delay_ms: float | None = Field(None, ge=0, le=1000)
    idempotency_key: str = ""
    prompt: str = ""
    agent: str = ""
    artifact: str = ""
    variables: dict[str, str] = Field(default_factory=dict)
    key: str | None = None

    @model_validator(mode="after")
    def _one_artifact(self) -> MaestroOptions:
        if sum(map(bool, (self.prompt, self.agent, self.artifact))) > 1:
            raise ValueError("name the artifact once: prompt, agent or artifact")
        return self

    @property
    def artifact_field(self) -> tuple[str, str]:
        """(the key the body named the artifact by, the artifact)."""
        for name in ("prompt", "agent", "artifact"):
            if getattr(self, name):
                return name, str(getattr(self, name))
        return "artifact", ""

    @field_validator("idempotency_key")
    @classmethod
    def _bounded_key(cls, key: str) -> str:
        # Keys are compared byte for byte and kept a day: printable ASCII, no spaces.
        if len(key) > MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ValueError(
                f"must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces"
            )
        return key


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatBody(BaseModel):
    """The OpenAI request fields Maestro reads; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = ""
    messages: list[_Message] = Field(default_factory=list)
    """At least one, unless `maestro` names an artifact whose messages lead the call."""
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    n: Literal[1] | None = None
    user: str | None = None
    maestro: MaestroOptions | None = None


class _SloTarget(_Strict):
    max_p95_latency_ms: float = Field(0.0, ge=0, allow_inf_nan=False)


class ChooseBody(_Strict):
    """`POST /route/choose`: RouteService's ChooseRequest in JSON, field for field (proto names),
    except that `messages` take OpenAI's form (or a plain `prompt` instead), `parent` defaults to
    the caller's project, `slo_target` takes milliseconds and `model` may be "auto" (every model
    group). Unknown fields are refused: this is Maestro's own API, a typo must not be ignored."""

    parent: str = ""
    model: str = ""
    messages: list[_Message] = Field(default_factory=list)
    prompt: str = ""
    step_tags: list[str] = Field(default_factory=list)
    step_hint: Literal["", "draft", "finalization"] = ""
    objective_weights: _Weights | None = None
    budget: _Budget = _Budget()
    estimated_prompt_tokens: int = Field(0, ge=0)
    estimated_completion_tokens: int = Field(0, ge=0)
    jurisdiction: _Jurisdiction = _Jurisdiction()
    excluded_deployment_ids: list[str] = Field(default_factory=list, max_length=1024)
    slo_target: _SloTarget = _SloTarget()


_NO_OPTIONS = MaestroOptions()
_NO_CHOICE = ChooseBody()


def _violations(error: ValidationError) -> list[FieldViolation]:
    out = []
    for problem in error.errors(include_url=False):
        path = ""
        for part in problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        out.append(FieldViolation(path or "(body)", problem["msg"]))
    return out


def _weights(given: dict[str, float] | None) -> tuple[float, float, float, float, float] | None:
    """The request's weights in OBJECTIVES order; None (the header's, else the configured ones)
    when absent or all zero, as on gRPC."""
    if not given or not any(given.values()):
        return None
    w = tuple(float(given.get(name, 0.0)) for name in OBJECTIVES)
    return (w[0], w[1], w[2], w[3], w[4])


def choose_input(body: ChooseBody, project_id: str, objectives_header: str = "") -> ChooseInput:
    """The domain request of a `/route/choose` body, as `convert.choose_input` makes it of a
    ChooseRequest: content tagging reads the messages (or the prompt)."""
    if body.messages and body.prompt:
        raise InvalidArgument([FieldViolation("prompt", "give either messages or prompt")])
    if body.messages:
        texts = wire_texts(m.model_dump(exclude_none=True) for m in body.messages)
    else:
        texts = (body.prompt,) if body.prompt else ()
    route = RouteRequest(
        weights=_weights(body.objective_weights),
        hint=body.step_hint,
        model="" if body.model in _AUTO_MODELS else body.model,
        max_cost_usd=body.budget.max_cost_usd,
        prompt_tokens=body.estimated_prompt_tokens,
        completion_tokens=body.estimated_completion_tokens,
        allowed_jurisdictions=frozenset(body.jurisdiction.allowed_jurisdictions),
        require_in_house=body.jurisdiction.require_in_house,
        excluded_ids=frozenset(body.excluded_deployment_ids),
        max_p95_ms=body.slo_target.max_p95_latency_ms,
    )
    return ChooseInput(
        parent=body.parent or f"projects/{project_id}",
        route=route,
        texts=texts,
        supplied_tags=tuple(body.step_tags),
        objectives_header=objectives_header,
    )


def call_input(body: ChatBody, parent: str, objectives_header: str = "") -> CallInput:
    """The domain request from an OpenAI body (and its `X-Maestro-Objectives` header)."""
    options = body.maestro or _NO_OPTIONS
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    if len(stop) > 4:
        raise InvalidArgument([FieldViolation("stop", "at most 4 sequences")])
    weights = _weights(options.objective_weights)
    messages = tuple(m.model_dump(exclude_none=True) for m in body.messages)
    texts = wire_texts(messages, body.tools or (), stop)  # all the provider will see
    model = "" if body.model in _AUTO_MODELS else body.model
    name_key, artifact = options.artifact_field
    if not messages and not artifact:
        raise InvalidArgument([FieldViolation("messages", "at least one message is required")])
    traffic_key = options.key if options.key is not None else (body.user or "") if artifact else ""
    violations = artifact_violations(parent, artifact, options.variables, traffic_key)
    if violations:
        raise _body_fields(InvalidArgument(violations), name_key)
    route = RouteRequest(
        weights=weights,
        hint=options.step_hint,
        model=model,
        max_cost_usd=options.budget.max_cost_usd,
        allowed_jurisdictions=frozenset(options.jurisdiction.allowed_jurisdictions),
        require_in_house=options.jurisdiction.require_in_house,
    )
    return CallInput(
        choose=ChooseInput(
            parent=parent,
            route=route,
            texts=texts,
            supplied_tags=tuple(options.step_tags),
            objectives_header=objectives_header,
        ),
        messages=messages,
        params=GenerationParams(
            max_tokens=body.max_completion_tokens or body.max_tokens or 0,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(stop),
            seed=body.seed,
            tools=tuple(body.tools or ()),
            tool_choice=body.tool_choice,
        ),
        first_token_timeout_s=(
            options.first_token_timeout_ms / 1000 if options.first_token_timeout_ms else None
        ),
        post_first_token_policy=options.post_first_token_failure_policy,
        max_chunk_tokens=options.max_chunk_tokens,
        max_chunk_delay_s=(
            options.max_chunk_delay_ms / 1000 if options.max_chunk_delay_ms is not None else None
        ),
        budget_max_tokens=options.budget.max_tokens,
        budget_max_cost_usd=options.budget.max_cost_usd,
        budget_max_wall_s=(
            options.budget.max_wall_time_ms / 1000 if options.budget.max_wall_time_ms else None
        ),
        idempotency_key=options.idempotency_key,
        artifact=artifact,
        artifact_variables=options.variables,
        traffic_key=traffic_key,
    )


_ARTIFACT_FIELDS = {"artifact_variables": "maestro.variables", "traffic_key": "maestro.key"}


def _body_fields(error: InvalidArgument, name_key: str) -> InvalidArgument:
    """`error` with the call's artifact fields named as the body names them
    (`artifact_variables[x]` -> `maestro.variables[x]`, `artifact` -> `maestro.prompt`)."""

    def renamed(field: str) -> str:
        if field == "artifact":
            return f"maestro.{name_key}"
        for ours, theirs in _ARTIFACT_FIELDS.items():
            if field.startswith(ours):
                return theirs + field.removeprefix(ours)
        return field

    violations = [FieldViolation(renamed(v.field), v.description) for v in error.violations]
    return InvalidArgument(violations, reason=error.reason)


def error_response(error: MaestroError) -> web.Response:
    body: dict[str, Any] = {
        "error": {
            "message": error.message,
            "type": error.reason.lower(),
            "code": error.reason,
            "param": None,
        }
    }
    if isinstance(error, InvalidArgument):
        body["error"]["param"] = error.violations[0].field
        body["error"]["field_violations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    headers = {}
    retry_after = _retry_after(error)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.Response(
        status=_HTTP_STATUS.get(error.code, 500),
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _retry_after(error: MaestroError) -> str | None:
    """`Retry-After` in whole seconds (at least 1): a ResourceExhausted's `retry_delay_s`, else
    the `retry_after_s` hint of the error's metadata; None when neither is a finite number."""
    delay = error.retry_delay_s if isinstance(error, ResourceExhausted) else None
    if delay is None:
        hint = error.metadata.get(RETRY_AFTER_KEY)
        if hint is None:
            return None
        try:
            delay = float(hint)
        except ValueError:
            return None
    if not math.isfinite(delay):
        return None
    return str(max(1, math.ceil(delay)))


def _deployment_json(routed: Routed, done: Done, artifact_version: str = "") -> dict[str, Any]:
    deployment = done.deployment or routed.deployment
    out = {
        "decision_id": routed.decision_id,
        "snapshot_version": routed.snapshot_version,
        "deployment_id": deployment.deployment_id,
        "model_group": deployment.model_name,
        "provider": deployment.provider,
        "cost_usd": done.cost_usd,
        "continued_after_failure": done.continued_after_failure,
        "fallbacks": [_fallback_json(f) for f in done.fallbacks],
    }
    if artifact_version:
        out["artifact_version"] = artifact_version
    return out


def _fallback_json(fallback: Fallback) -> dict[str, Any]:
    return {
        "from_deployment_id": fallback.from_deployment.deployment_id,
        "to_deployment_id": fallback.to_deployment.deployment_id,
        "reason": fallback.reason.value,
        "detail": fallback.detail,
        "after_tokens": fallback.after_tokens,
    }


def _finish(reason: FinishReason) -> str:
    return "length" if reason is FinishReason.BUDGET_EXCEEDED else reason.value


_ADMITTED = web.RequestKey("maestro_admitted_project", str)


async def http_caller(
    request: web.Request,
    authenticate: Authenticate,
    insecure_project: str | None,
    limiter: Limiter,
    scopes: frozenset[str],
) -> Principal:
    """The caller of an HTTP route: `Authorization: Bearer <key>` or `x-api-key`, checked as a
    gRPC call's key is (failed attempts limited per peer), with one of `scopes`."""
    header = request.headers.get("Authorization", "")
    secret = header[7:].strip() if header.startswith("Bearer ") else ""
    if not secret:
        secret = request.headers.get("x-api-key", "")
    if not secret:
        if insecure_project is not None:
            return Principal(insecure_project, None)
        raise Unauthenticated(
            "missing API key: send `Authorization: Bearer <key>`", reason="API_KEY_MISSING"
        )
    peer = request.remote or ""
    limiter.check_peer(peer)
    principal = await authenticate(secret)
    if principal is None:
        raise limiter.failed(
            peer, Unauthenticated("API key is invalid or revoked", reason="API_KEY_INVALID")
        )
    check_scope(principal, scopes)
    return principal


class OpenAIIngress:
    def __init__(
        self,
        service: InferenceService,
        routes: Decider,
        authenticate: Authenticate,
        insecure_project: str | None,
        *,
        max_body_bytes: int = 8 * 1024 * 1024,
        limiter: Limiter = UNLIMITED,
        readiness: Readiness = ALWAYS_READY,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._service = service
        self._readiness = readiness
        self._routes = routes
        self._authenticate = authenticate
        self._insecure_project = insecure_project
        self._max_body_bytes = max_body_bytes
        self._limiter = limiter
        self._tracer = tracer or trace.get_tracer("maestro.ingress")
        """Makes each request's SERVER span."""
        self.extra_routes: list[web.AbstractRouteDef] = []
        """Routes the process adds beside the OpenAI ones (the control plane's read-only
        rollout analysis routes), behind the same readiness gate."""

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_body_bytes,
            middlewares=[self._traced, self._gate, self._release],
        )
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/route/choose", self.route_choose)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_routes(self.extra_routes)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 whenever the process answers, ready or not."""
        return web.json_response(
            {
                "status": "serving",
                "inflight": self._service.inflight,
                "ready": self._readiness.ready,
            }
        )

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 once the first routing snapshot is applied, 503 before and while
        draining (a load balancer sends no traffic here then)."""
        if not self._readiness.ready:
            return self._not_ready()
        return web.json_response({"status": "ready"})

    def _not_ready(self) -> web.Response:
        return error_response(_DRAINING if self._readiness.draining else _NOT_READY)

    @web.middleware
    async def _traced(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The request's SERVER span, current while it is handled (a streamed answer to its
        end): a child of the caller's span when it sent `traceparent`, else a new trace."""
        if request.path in _PROBES:
            return await handler(request)
        parent = propagate.extract(request.headers) if "traceparent" in request.headers else None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        span = self._tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
            },
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                response = await handler(request)
            except web.HTTPException as error:
                _answered(span, error.status)
                raise
            except BaseException as error:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                raise
            _answered(span, response.status)
            return response

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """503 with `Retry-After` on every route but the probes until the process is ready:
        before authentication and the body, so a starting process never answers 400
        `NO_ROUTE_CONFIG` (or spends a key look-up) for a call it could serve a moment later."""
        if self._readiness.ready or request.path in _PROBES:
            return await handler(request)
        return self._not_ready()

    @web.middleware
    async def _release(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A call `_principal` admitted leaves its project's concurrency when it ends."""
        try:
            return await handler(request)
        finally:
            project = request.get(_ADMITTED)
            if project is not None:
                self._limiter.leave(project)

    async def _principal(self, request: web.Request, scopes: frozenset[str]) -> Principal:
        """The caller, holding one of `scopes` and admitted under its project's limits
        (released by `_release`)."""
        principal = await self._caller(request, scopes)
        self._limiter.enter(principal.project_id)
        request[_ADMITTED] = principal.project_id
        return principal

    async def _caller(self, request: web.Request, scopes: frozenset[str]) -> Principal:
        return await http_caller(
            request, self._authenticate, self._insecure_project, self._limiter, scopes
        )

    async def models(self, request: web.Request) -> web.Response:
        try:
            principal = await self._principal(request, _MODELS_SCOPES)
            parent = f"projects/{principal.project_id}"
            published = self._routes.published_for(principal, parent)
            groups = model_groups(published, parent, "")
        except MaestroError as error:
            return error_response(error)
        created = int(published.revision.create_time.timestamp())
        data = [
            {"id": g.model, "object": "model", "created": created, "owned_by": "maestro"}
            for g in groups
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            principal = await self._principal(request, _CHAT_SCOPES)
            try:
                body = ChatBody.model_validate_json(await request.read())
            except ValidationError as error:
                raise InvalidArgument(_violations(error)) from None
            call = call_input(
                body,
                f"projects/{principal.project_id}",
                request.headers.get(OBJECTIVES_HEADER, ""),
            )
            try:
                call = self._service.resolve(principal, call)
            except InvalidArgument as error:
                raise _body_fields(error, (body.maestro or _NO_OPTIONS).artifact_field[0]) from None
            if not body.stream:
                completion = await collect(self._service.stream(principal, call))
                return self._completion_response(body, completion, call.artifact_version)
            return await self._stream(request, body, principal, call)
        except MaestroError as error:
            return error_response(error)
        except ConnectionError:
            raise  # the caller went away; nothing to answer
        except Exception:  # an answer without internals, and a log line to find it by
            return error_response(internal_error("ingress.unhandled_error"))

    async def route_choose(self, request: web.Request) -> web.Response:
        """RouteService.Choose over HTTP: the same decision, for the caller's project."""
        try:
            principal = await self._principal(request, _CHOOSE_SCOPES)
            raw = await request.read()
            try:
                body = ChooseBody.model_validate_json(raw) if raw.strip() else _NO_CHOICE
            except ValidationError as error:
                raise InvalidArgument(_violations(error)) from None
            choose = await self._routes.detect_off_loop(
                choose_input(body, principal.project_id, request.headers.get(OBJECTIVES_HEADER, ""))
            )
            answer = choice_json(self._choose(principal, choose))
            return web.Response(
                body=orjson.dumps(answer),
                content_type="application/json",
                headers={
                    "x-maestro-decision-id": answer["decision_id"],
                    "x-maestro-deployment-id": answer["deployment_id"],
                    "x-maestro-snapshot-version": answer["snapshot_version"],
                },
            )
        except MaestroError as error:
            return error_response(error)
        except Exception:  # an answer without internals, and a log line to find it by
            return error_response(internal_error("ingress.unhandled_error"))

    def _choose(self, principal: Principal, choose: ChooseInput) -> Choice:
        """Decide; the decision's span is a child of the request's (recorded whether or not a
        deployment was eligible), made after the decision."""
        deferred: list[Callable[[Context | None], None]] = []
        try:
            return self._routes.choose(principal, choose, deferred=deferred)
        finally:
            for record in deferred:
                record(None)  # the current context: the request's span

    def _completion_response(
        self, body: ChatBody, completion: Any, artifact_version: str = ""
    ) -> web.Response:
        done: Done = completion.done
        routed: Routed = completion.routed
        message: dict[str, Any] = {"role": "assistant", "content": completion.text}
        if completion.tool_calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in completion.tool_calls
            ]
        payload: dict[str, Any] = {
            "id": done.completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": (done.deployment or routed.deployment).model_name,
            "choices": [
                {"index": 0, "message": message, "finish_reason": _finish(done.finish_reason)}
            ],
            "usage": {
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            },
            "maestro": _deployment_json(routed, done, artifact_version),
        }
        if done.error is not None:
            payload["maestro"]["error"] = {"message": done.error.message, "code": done.error.reason}
        return web.Response(
            body=orjson.dumps(payload),
            content_type="application/json",
            headers=self._route_headers(routed, artifact_version),
        )

    @staticmethod
    def _route_headers(routed: Routed, artifact_version: str = "") -> dict[str, str]:
        headers = {
            "x-maestro-decision-id": routed.decision_id,
            "x-maestro-deployment-id": routed.deployment.deployment_id,
            "x-maestro-snapshot-version": routed.snapshot_version,
        }
        if artifact_version:
            headers["x-maestro-artifact-version"] = artifact_version
        return headers

    async def _stream(
        self, request: web.Request, body: ChatBody, principal: Principal, call: CallInput
    ) -> web.StreamResponse:
        """Relay the call as SSE. Writes are merged where the protocol allows (the headers, the
        role chunk and the first delta; the last chunks and the end of the body): each write is
        a send on the socket, and a short call is otherwise mostly sends."""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        response: web.StreamResponse | None = None
        routed: Routed | None = None
        head = b""
        held: list[bytes] = []  # chunks before the first output, sent with it
        tail = b""
        events = self._service.stream(principal, call)
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    if isinstance(event, Delta):
                        chunk = _delta_chunk(head, event)
                    elif isinstance(event, Routed):
                        routed = event
                        head = _chunk_head(event)
                        held.append(
                            head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                            b'"finish_reason":null}]}\n\n'
                        )
                        continue
                    elif isinstance(event, Fallback):
                        chunk = (
                            head
                            + b'],"maestro":{"fallback":'
                            + orjson.dumps(_fallback_json(event))
                            + b"}}\n\n"
                        )
                        if response is None:
                            held.append(chunk)
                            continue
                    else:
                        assert routed is not None
                        tail = _done_chunks(
                            head, routed, event, include_usage, call.artifact_version
                        )
                        break
                    if response is None:
                        assert routed is not None
                        response = web.StreamResponse(
                            headers={
                                **_SSE_HEADERS,
                                **self._route_headers(routed, call.artifact_version),
                            }
                        )
                        await response.prepare(request)
                        held.append(chunk)
                        chunk = b"".join(held)
                    await response.write(chunk)
        except MaestroError as error:
            if response is None:
                raise
            tail = _error_event(error.message, error.reason) + _DONE
        except ConnectionError:
            raise
        except Exception:  # the stream has begun: end it with an error event
            if response is None:
                raise
            internal = internal_error("ingress.unhandled_error")
            tail = _error_event(internal.message, internal.reason) + _DONE
        if response is None:
            assert routed is not None
            response = web.StreamResponse(
                headers={**_SSE_HEADERS, **self._route_headers(routed, call.artifact_version)}
            )
            await response.prepare(request)
            tail = b"".join(held) + tail
        await response.write_eof(tail)
        return response


def _answered(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)


def _chunk_head(routed: Routed) -> bytes:
    """Everything of a chunk before its choices: constant for the call, so built once."""
    return (
        b'data: {"id":"chatcmpl-'
        + routed.decision_id.encode()
        + b'","object":"chat.completion.chunk","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + orjson.dumps(routed.deployment.model_name)
        + b',"choices":['
    )


def _error_event(message: str, code: str) -> bytes:
    return b"data: " + orjson.dumps({"error": {"message": message, "code": code}}) + b"\n\n"


def _delta_chunk(head: bytes, delta: Delta) -> bytes:
    payload: dict[str, Any] = {"content": delta.text}
    if delta.tool_calls:
        payload["tool_calls"] = [
            {
                "index": p.index,
                **({"id": p.id, "type": "function"} if p.id else {}),
                "function": {
                    **({"name": p.name} if p.name else {}),
                    "arguments": p.arguments,
                },
            }
            for p in delta.tool_calls
        ]
    return (
        head
        + b'{"index":0,"delta":'
        + orjson.dumps(payload)
        + b',"finish_reason":null}],"maestro":{"token_count":'
        + str(delta.token_count).encode()
        + b"}}\n\n"
    )


def _done_chunks(
    head: bytes, routed: Routed, done: Done, include_usage: bool, artifact_version: str = ""
) -> bytes:
    if done.finish_reason is FinishReason.ERROR and done.error is not None:
        return _error_event(done.error.message, done.error.reason) + _DONE
    out = (
        head
        + b'{"index":0,"delta":{},"finish_reason":'
        + orjson.dumps(_finish(done.finish_reason))
        + b'}],"maestro":'
        + orjson.dumps(_deployment_json(routed, done, artifact_version))
        + b"}\n\n"
    )
    if include_usage:
        usage = {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }
        out += head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"
    return out + _DONE
