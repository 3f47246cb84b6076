"""The lane's Ray Serve application: `VllmGateway`, an OpenAI chat-completions ingress around one
vLLM engine per replica.

Import paths for Ray Serve (`serve run`, a RayService's `import_path`):
- `serving.app:build`, an application builder, with the args `serve_config.serve_config` writes;
- `serving.app:deployment`, the first lane of the file named by `MAESTRO_LANE_CONFIG`.

Streaming: a replica writes one SSE event per engine output it picks up. vLLM merges the outputs
a slow reader has not collected yet, so under load an event carries several tokens; the optional
`stream.max_chunk_delay_ms` waits for more before each event. Ray Serve's streaming path costs per
message, not per token, so fewer, larger events keep it from capping throughput.

Shedding: a replica generates at most `max_ongoing_requests` at once, queues at most
`max_queued_requests` more, and answers the rest HTTP 503 at once (`admission.py`). The data plane
reads a 503 from a lane as "saturated" and spills over (or refuses PII work with
RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask

from serving.admission import Admission, Ticket
from serving.config import LaneSpec, load_config
from serving.engine import LaneEngine
from serving.serve_config import (
    GATEWAY,
    STATUS_APP,
    STATUS_DEPLOYMENT,
    deployment_options,
    engine_args,
)
from serving.telemetry import caller_context, lane_tracer
from serving.wire import (
    ChatRequest,
    ChatRequestError,
    Chunks,
    completion_body,
    parse_chat_request,
)

api = FastAPI(title="Maestro serving lane")
# Defined before the deployment class: Ray Serve pickles the class when it is decorated.
_FULL = {
    "error": {
        "message": "the lane is at capacity (running and queued requests); retry with backoff",
        "type": "server_overloaded",
        "param": None,
        "code": "lane_saturated",
    }
}


@serve.deployment(name=GATEWAY)
@serve.ingress(api)
class VllmGateway:
    def __init__(self, lane: dict[str, Any], status_interval_s: float = 0.25) -> None:
        self._lane = LaneSpec.model_validate(lane)
        self._engine = LaneEngine(self._lane)
        self._tracer = lane_tracer(self._lane.name)
        self._status_interval_s = status_interval_s
        self._chunk_delay_s = self._lane.stream.max_chunk_delay_ms / 1000
        self._admission = Admission(
            self._lane.serve.max_ongoing_requests, self._lane.serve.max_queued_requests
        )
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._reporter: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The light knobs (chunking, admission), applied to running replicas when the config
        is re-applied."""
        self._chunk_delay_s = float(user_config["max_chunk_delay_ms"]) / 1000
        self._admission.configure(
            int(user_config["max_ongoing_requests"]), int(user_config["max_queued_requests"])
        )
        if self._reporter is None:  # the first call, before the replica takes traffic
            await self._engine.warm_up()
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        with contextlib.suppress(Exception):
            self._engine.shutdown()

    def _figures(self) -> dict[str, Any]:
        admission = self._admission
        return {
            **self._engine.figures.snapshot(),
            "running": admission.running,
            "queued": admission.queued,
            "max_ongoing_requests": admission.max_ongoing,
            "max_queued_requests": admission.max_queued,
            "version": self._lane.version,
            "route_prefix": self._lane.route_prefix,
        }

    async def _report_loop(self) -> None:
        """Sends this replica's load to the lane-status application a few times a second;
        the status app forgets a replica that stops reporting."""
        handle: DeploymentHandle | None = None
        while True:
            await asyncio.sleep(self._status_interval_s)
            try:
                if handle is None:
                    handle = serve.get_deployment_handle(STATUS_DEPLOYMENT, app_name=STATUS_APP)
                await handle.report.remote(self._lane.name, self._replica, self._figures())
            except asyncio.CancelledError:
                raise
            except Exception:  # the status app may be (re)starting; report again next time
                handle = None

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self._lane.model_name, "object": "model", "owned_by": "maestro"}],
        }

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(ChatRequestError("the body is not JSON").body(), status_code=400)
        try:
            chat = parse_chat_request(body, self._lane.model_name)
            prompt_ids = self._engine.prompt_ids(chat)
        except ChatRequestError as error:
            return JSONResponse(error.body(), status_code=400)
        ticket = self._admission.admit()
        if ticket is None:
            return JSONResponse(_FULL, status_code=503, headers={"retry-after": "1"})
        try:
            await ticket.slot()
        except BaseException:  # the caller went away while queued
            ticket.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        span = self._tracer.start_span(
            "serve.vllm.request",
            context=caller_context(request.headers),
            kind=trace.SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "vllm",
                "gen_ai.request.model": chat.model,
                "gen_ai.response.model": self._lane.model_name,
                "gen_ai.system": "vllm",
                "server.address": request.url.hostname or "",
                "gen_ai.usage.input_tokens": len(prompt_ids),
                "maestro.lane": self._lane.name,
                "maestro.lane.version": self._lane.version,
                "maestro.lane.replica": self._replica,
            },
        )
        headers = {"x-maestro-lane-version": self._lane.version}
        outputs = self._engine.generate(prompt_ids, self._engine.sampling(chat), completion_id)
        if not chat.stream:
            try:
                return await self._whole(chat.model, completion_id, prompt_ids, outputs, span)
            finally:
                ticket.release()
        return StreamingResponse(
            self._events(chat, completion_id, len(prompt_ids), outputs, span, ticket),
            media_type="text/event-stream",
            headers=headers,
            # Also when the stream never starts (the caller left first); release is idempotent.
            background=BackgroundTask(ticket.release),
        )

    async def _events(
        self,
        chat: ChatRequest,
        completion_id: str,
        prompt_tokens: int,
        outputs: AsyncGenerator[Any, None],
        span: trace.Span,
        ticket: Ticket,
    ) -> AsyncGenerator[bytes, None]:
        chunks = Chunks(completion_id, chat.model)
        tokens = 0
        reason = "stop"
        first = True
        try:
            yield chunks.role()
            async with contextlib.aclosing(outputs):
                async for output in outputs:
                    piece = output.outputs[0]
                    tokens += len(piece.token_ids)
                    if first and piece.token_ids:
                        span.add_event("first_token")
                        first = False
                    if piece.finish_reason:
                        reason = piece.finish_reason
                    if piece.text:
                        yield chunks.text(piece.text)
                    if self._chunk_delay_s and not output.finished:
                        await asyncio.sleep(self._chunk_delay_s)
            yield chunks.finish(reason)
            if chat.include_usage:
                yield chunks.usage(prompt_tokens, tokens)
            yield chunks.done()
        except BaseException as error:  # cancelled: the caller went away; the engine aborts
            span.set_attribute("error.type", type(error).__name__)
            raise
        finally:
            ticket.release()
            span.set_attribute("gen_ai.usage.output_tokens", tokens)
            span.set_attribute("gen_ai.response.finish_reasons", (reason,))
            span.end()

    async def _whole(
        self,
        model: str,
        completion_id: str,
        prompt_ids: list[int],
        outputs: AsyncGenerator[Any, None],
        span: trace.Span,
    ) -> Response:
        texts: list[str] = []
        tokens = 0
        reason = "stop"
        try:
            async with contextlib.aclosing(outputs):
                async for output in outputs:
                    piece = output.outputs[0]
                    texts.append(piece.text)
                    tokens += len(piece.token_ids)
                    reason = piece.finish_reason or reason
        finally:
            span.set_attribute("gen_ai.usage.output_tokens", tokens)
            span.set_attribute("gen_ai.response.finish_reasons", (reason,))
            span.end()
        return JSONResponse(
            completion_body(completion_id, model, "".join(texts), reason, len(prompt_ids), tokens),
            headers={"x-maestro-lane-version": self._lane.version},
        )


def build(args: dict[str, Any]) -> Any:
    """Application builder for Ray Serve configs (a RayService's `import_path`): args
    `{"lane": {...}, "status_interval_s": 0.25}`, as `serve_config.serve_config` writes them.
    Deployment options come from the config's `deployments` entry, not from here."""
    lane = LaneSpec.model_validate(args["lane"])
    return VllmGateway.bind(  # type: ignore[attr-defined]
        engine_args(lane), float(args.get("status_interval_s", 0.25))
    )


def _from_environment() -> Any:
    path = os.environ.get("MAESTRO_LANE_CONFIG")
    if not path:
        return None
    config = load_config(path)
    lane = config.lane()
    return VllmGateway.options(**deployment_options(lane)).bind(  # type: ignore[attr-defined]
        engine_args(lane), config.status_report_interval_s
    )


deployment = _from_environment()
"""The seed's `serving.app:deployment`: the first lane of `$MAESTRO_LANE_CONFIG`, with its
deployment options."""
