"""The simulated provider's HTTP server: OpenAI Chat Completions plus an admin API, on aiohttp.

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /healthz`, `GET|PUT /admin/faults`,
`GET /admin/stats`, `POST /admin/stats/reset`. `SimProvider` runs it in-process (tests, the
embedded default); `run` runs it in the foreground for `maestro sim-provider`.

Every decision about a request (error, delays, cut, stall: `faults.py`; with an answer key, the
answer: `answers.py`) is drawn when it arrives and every chunk is encoded before the first is sent
(`wire.py`): the per-token path is a pacing sleep and a write; unpaced streams write their tokens
in bursts (same events, fewer syscalls).
A client going away is seen either as the handler's cancellation (aiohttp's
`handler_cancellation`, which also ends waits such as a stall) or as a `ConnectionError` from a
write; both count one disconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maestro.data_plane.sim.answers import AnswerBook
from maestro.data_plane.sim.faults import CompiledProfile, RequestPlan
from maestro.data_plane.sim.profile import (
    FaultProfile,
    ProfileError,
    field_errors,
    load_profile,
    parse_profile,
)
from maestro.data_plane.sim.stats import Counters, SimStats
from maestro.data_plane.sim.text import VOCABULARY, completion_ids, prompt_tokens
from maestro.data_plane.sim.wire import (
    DONE,
    INJECTED_ERRORS,
    ChunkEncoder,
    completion_body,
    error_body,
    tool_call_body,
)

log = structlog.get_logger(__name__)

DEFAULT_PORT = 8900
MAX_TOKENS_LIMIT = 1_000_000
"""The largest completion a request may ask for; its chunks are built before the first is sent."""

_BURST_TOKENS = 64
"""Unpaced tokens written together: about 10 KB, a few TCP segments."""

Clock = Callable[[], float]
_Write = Callable[[bytes], Awaitable[None]]


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = False


class ChatRequest(BaseModel):
    """The fields of a chat completion request the simulator reads; the rest are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def forced_tool(self) -> str | None:
        """The tool the simulated model calls: the one `tool_choice` names, or the first tool
        when it is "required". Otherwise (auto, none, no tools) it answers in text."""
        if not self.tools:
            return None
        choice = self.tool_choice
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return name if isinstance(name, str) else None
        if choice == "required":
            name = (self.tools[0].get("function") or {}).get("name")
            return name if isinstance(name, str) else None
        return None

    @field_validator("messages")
    @classmethod
    def _well_formed(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {index} needs a string `role`")
            if not isinstance(message.get("content"), str | list | None):
                raise ValueError(f"message {index}: `content` must be a string or a list of parts")
        return messages

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported")
        return n


@dataclass(frozen=True, slots=True)
class _Call:
    """One accepted chat completion, with its fate already drawn."""

    request: ChatRequest
    completion_id: str
    created: int
    n_tokens: int
    finish_reason: str
    plan: RequestPlan
    words: tuple[str, ...] | None = None
    """The answer key's answer, already cut to the token limit; None: the random words."""


class _Pacer:
    """Spaces tokens by interval plus jitter against a schedule, so sleeps do not drift."""

    __slots__ = ("_interval", "_jitter", "_loop", "_next", "_rng")

    def __init__(self, plan: RequestPlan) -> None:
        self._interval = plan.interval_s
        self._jitter = plan.jitter_s
        self._rng = plan.rng
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()

    def reset(self) -> None:
        """Count from now (after a stall), rather than catching up in a burst."""
        self._next = self._loop.time()

    async def wait(self) -> None:
        self._next += self._interval + (self._rng.random() * self._jitter if self._jitter else 0.0)
        delay = self._next - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


async def _send(
    write: _Write, chunks: Sequence[bytes], start: int, end: int, pacer: _Pacer | None
) -> None:
    if pacer is None:
        # Unpaced ("as fast as possible"), one write per token would cost a syscall per token and
        # cap the simulator near 150,000 tokens/s, under what relays are measured at. The events
        # and their order are the same whether they share a write (and an HTTP chunk) or not;
        # the first token still goes out alone, so time to first token is exact.
        if start == 0 < end:
            await write(chunks[0])
            start = 1
        for index in range(start, end, _BURST_TOKENS):
            await write(b"".join(chunks[index : min(index + _BURST_TOKENS, end)]))
        return
    for index in range(start, end):
        if index:
            await pacer.wait()
        await write(chunks[index])


async def _forever() -> None:
    """Wait until cancelled: a stall without end lasts until the client disconnects."""
    await asyncio.get_running_loop().create_future()


def _close_connection(request: web.BaseRequest) -> None:
    """Close the transport under the response: what was written is flushed, nothing follows."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _generation_s(plan: RequestPlan, n_tokens: int) -> float:
    """How long streaming `n_tokens` would take after the first: a non-stream response waits it."""
    gaps = max(0, n_tokens - 1)
    jitter = sum(plan.rng.random() for _ in range(gaps)) * plan.jitter_s if plan.jitter_s else 0.0
    return gaps * plan.interval_s + jitter


class _SimApp:
    """The routes' handlers and the state they share: profile, counters, in-flight handlers."""

    def __init__(self, profile: FaultProfile, clock: Clock) -> None:
        self.clock = clock
        self.counters = Counters()
        self.started_at = clock()
        self.stopping = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._completion_ids = itertools.count(1)
        self.set_profile(profile)

    def set_profile(self, profile: FaultProfile, answers: AnswerBook | None = None) -> None:
        """Apply `profile` to requests from now on; its request sequence starts again at 0.

        Its answer key is read from its key files here, unless `answers` brings it already read.
        """
        origin = self.started_at if profile.brownout_clock == "server" else self.clock()
        if answers is None and profile.answers is not None:
            answers = AnswerBook.load(profile.answers, profile.seed)
        self.profile = profile
        self.book = CompiledProfile(profile, origin)
        self.answers = answers
        self._sequence = itertools.count()

    def mark_started(self) -> None:
        self.started_at = self.clock()
        self.set_profile(self.profile, self.answers)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/admin/faults", self.get_faults)
        app.router.add_put("/admin/faults", self.put_faults)
        app.router.add_get("/admin/stats", self.get_stats)
        app.router.add_post("/admin/stats/reset", self.reset_stats)
        return app

    # --- OpenAI endpoints -------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.requests_started += 1
        counters.changed()
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            return await self._chat(request)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost; stop() cancels it too.
            if not self.stopping:
                counters.client_disconnects += 1
                counters.changed()
            raise
        except ConnectionError:
            # Gone before a response began (while the body was read); nothing will be sent.
            counters.client_disconnects += 1
            counters.changed()
            return web.Response(status=499)
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = ChatRequest.model_validate_json(await request.read())
        except ValidationError as error:
            field, problem = field_errors(error)[0]
            return self._error(
                400, f"Invalid request: {field}: {problem}", "invalid_request_error", param=field
            )
        book = self.book
        if not book.serves(body.model):
            return self._error(
                404,
                f"The model `{body.model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        limit = body.max_completion_tokens if body.max_completion_tokens else body.max_tokens
        n_tokens = limit or self.profile.default_max_tokens
        # A completion as long as the caller's limit stopped at it; the default length is the
        # completion's natural end.
        finish_reason = "stop" if limit is None else "length"
        sequence = next(self._sequence)
        answer = (
            None
            if self.answers is None
            else self.answers.decide(
                body.model,
                body.messages,
                tools=body.tools,
                tool_choice=body.tool_choice,
                seed=body.seed,
                sequence=sequence,
            )
        )
        words = None
        if answer is not None and answer.words is not None:
            # An answer ends where it ends, unless the limit cuts it; faults are drawn over its
            # length, so a cut or stall falls inside it.
            words = answer.words[:n_tokens]
            finish_reason = "length" if len(answer.words) > n_tokens else "stop"
            n_tokens = len(words)
        rng = book.request_rng(sequence)
        plan = book.faults_for(body.model, self.clock()).plan(rng, n_tokens)
        if plan.error_status is not None:
            return self._injected_error(plan)
        call = _Call(
            request=body,
            completion_id=f"chatcmpl-sim{next(self._completion_ids):012x}",
            created=int(time.time()),
            n_tokens=n_tokens,
            finish_reason=finish_reason,
            plan=plan,
            words=words,
        )
        if answer is not None and answer.tool_calls is not None:
            return await self._tool_calls(request, call, answer.tool_calls)
        tool = body.forced_tool()
        if tool is not None:
            arguments = " ".join(
                VOCABULARY[i] for i in completion_ids(body.model, body.messages, body.seed, 8)
            )
            return await self._tool_calls(request, call, [(tool, json.dumps({"input": arguments}))])
        if body.stream:
            return await self._stream(request, call)
        return await self._complete(request, call)

    async def _tool_calls(
        self, request: web.Request, call: _Call, tools: Sequence[tuple[str, str]]
    ) -> web.StreamResponse:
        """The model calls `tools`, (function name, arguments JSON) each: the forced tool with
        deterministic arguments (the completion's words), or the answer key's calls. Faults
        other than injected errors and the time to first token do not apply."""
        body = call.request
        calls = [
            (f"call_{call.completion_id[-12:]}" + (f"_{index}" if index else ""), name, arguments)
            for index, (name, arguments) in enumerate(tools)
        ]
        fragments = [
            [arguments[i : i + 8] for i in range(0, len(arguments), 8)] for _, _, arguments in calls
        ]
        n_fragments = sum(len(pieces) for pieces in fragments)
        if call.plan.ttft_s > 0:
            await asyncio.sleep(call.plan.ttft_s)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            encoder = ChunkEncoder(call.completion_id, call.created, body.model, include_usage)
            payload = b"".join(
                [
                    encoder.role(),
                    *(
                        event
                        for index, ((call_id, name, _), pieces) in enumerate(
                            zip(calls, fragments, strict=True)
                        )
                        for event in encoder.tool_call(call_id, name, pieces, index)
                    ),
                    encoder.finish("tool_calls"),
                    *(
                        [encoder.usage(prompt_tokens(body.messages), n_fragments)]
                        if include_usage
                        else []
                    ),
                    DONE,
                ]
            )
            response: web.StreamResponse = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8"}
            )
        else:
            payload = tool_call_body(
                call.completion_id, call.created, body.model, calls,
                prompt_tokens(body.messages), n_fragments,
            )  # fmt: skip
            # The body goes in the Response itself: written after `prepare`, it would follow a
            # `Content-Length: 0` header and never reach the client.
            response = web.Response(body=payload, content_type="application/json")
            payload = b""
        return await self._send_whole(request, response, payload)

    async def _send_whole(
        self, request: web.Request, response: web.StreamResponse, payload: bytes = b""
    ) -> web.StreamResponse:
        """Send a response in one go and count how it ended."""
        counters = self.counters
        try:
            await response.prepare(request)
            if payload:
                await response.write(payload)
            await response.write_eof()
            counters.requests_completed += 1
        except ConnectionError:
            counters.client_disconnects += 1
        counters.changed()
        return response

    async def _stream(self, request: web.Request, call: _Call) -> web.StreamResponse:
        counters, plan, body = self.counters, call.plan, call.request
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = ChunkEncoder(call.completion_id, call.created, body.model, include_usage)
        chunks = (
            encoder.tokens(completion_ids(body.model, body.messages, body.seed, call.n_tokens))
            if call.words is None
            else encoder.words(call.words)
        )
        events = sorted(
            [(at, False) for at in (plan.stall_at,) if at is not None]
            + [(at, True) for at in (plan.cut_at,) if at is not None]
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": call.completion_id,
            }
        )
        counters.open_streams += 1
        counters.changed()
        try:
            await response.prepare(request)
            if plan.ttft_s > 0:
                await asyncio.sleep(plan.ttft_s)
            write = response.write
            await write(encoder.role())
            pacer = _Pacer(plan) if plan.interval_s or plan.jitter_s else None
            sent = 0
            for at, is_cut in events:
                await _send(write, chunks, sent, at, pacer)
                sent = at
                if is_cut:
                    counters.streams_cut += 1
                    _close_connection(request)
                    return response
                counters.streams_stalled += 1
                counters.changed()
                if plan.stall_s is None:
                    await _forever()
                else:
                    await asyncio.sleep(plan.stall_s)
                if pacer is not None:
                    pacer.reset()
            await _send(write, chunks, sent, len(chunks), pacer)
            await write(encoder.finish(call.finish_reason))
            if include_usage:
                await write(encoder.usage(prompt_tokens(body.messages), len(chunks)))
            await write(DONE)
            await response.write_eof()
            counters.requests_completed += 1
        except ConnectionError:
            counters.client_disconnects += 1
        finally:
            counters.open_streams -= 1
            counters.changed()
        return response

    async def _complete(self, request: web.Request, call: _Call) -> web.StreamResponse:
        counters, plan, body = self.counters, call.plan, call.request
        if call.words is None:
            ids = completion_ids(body.model, body.messages, body.seed, call.n_tokens)
            words: Sequence[str] = [VOCABULARY[i] for i in ids]
        else:
            words = call.words
        delay = plan.ttft_s + _generation_s(plan, len(words))
        if plan.stall_at is not None:
            counters.streams_stalled += 1
            counters.changed()
            if plan.stall_s is None:
                await _forever()
            else:
                delay += plan.stall_s
        if delay > 0:
            await asyncio.sleep(delay)
        if plan.cut_at is not None:
            counters.streams_cut += 1
            counters.changed()
            _close_connection(request)
            return web.Response()  # never sent: its connection is closed
        response = web.Response(
            body=completion_body(
                call.completion_id,
                call.created,
                body.model,
                " ".join(words),
                call.finish_reason,
                prompt_tokens(body.messages),
                len(words),
            ),
            content_type="application/json",
            headers={"x-request-id": call.completion_id},
        )
        return await self._send_whole(request, response)

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "maestro-sim"}
            for name in self.profile.served_models
        ]
        return web.json_response({"object": "list", "data": data})

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.counters.failed_by_status[status] += 1
        self.counters.changed()
        return web.Response(
            status=status,
            body=error_body(message, type_, code, param),
            content_type="application/json",
            headers=headers,
        )

    def _injected_error(self, plan: RequestPlan) -> web.Response:
        assert plan.error_status is not None
        message, type_, code = INJECTED_ERRORS[plan.error_status]
        headers = None
        if plan.error_status == 429:
            headers = {
                "retry-after": str(math.ceil(plan.retry_after_s)),
                "retry-after-ms": str(round(plan.retry_after_s * 1000)),
            }
        return self._error(plan.error_status, message, type_, code=code, headers=headers)

    # --- health and admin -------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.profile.to_json())

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            profile = parse_profile(await request.read())
        except ProfileError as error:
            problems = "; ".join(f"{field}: {problem}" for field, problem in error.fields)
            return web.json_response(
                {
                    "error": {
                        "message": f"invalid fault profile: {problems}",
                        "type": "invalid_request_error",
                        "fields": [
                            {"field": field, "message": problem} for field, problem in error.fields
                        ],
                    }
                },
                status=400,
            )
        # The answer key is read off the event loop; the profile applies once it is ready.
        answers = (
            None
            if profile.answers is None
            else await asyncio.to_thread(AnswerBook.load, profile.answers, profile.seed)
        )
        self.set_profile(profile, answers)
        return web.json_response(profile.to_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters.snapshot().to_json())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.counters.reset()
        return web.json_response(self.counters.snapshot().to_json())


class SimProvider:
    """The simulated provider, served in-process on `host:port` (0 picks a free port).

    `clock` (seconds, monotonic) times brownout windows only, so tests can move through windows
    without sleeping; delays and pacing use the event loop's clock.

        async with SimProvider(profile) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim")
    """

    def __init__(
        self,
        profile: FaultProfile | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._app = _SimApp(profile if profile is not None else FaultProfile(), clock)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulated provider is already started")
        runner = web.AppRunner(
            self._app.application(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._app.stopping = False
        self._app.mark_started()

    async def stop(self) -> None:
        """Stop serving; open streams (stalled ones included) are cut off at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._app.stopping = True
        for task in list(self._app.tasks):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. http://127.0.0.1:PORT (admin API and /healthz live here)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"{self.url}/v1"

    @property
    def profile(self) -> FaultProfile:
        return self._app.profile

    def set_profile(self, profile: FaultProfile) -> None:
        """Replace the fault profile, as `PUT /admin/faults` does (reading its answer key files
        here); streams in flight keep theirs."""
        self._app.set_profile(profile)

    @property
    def stats(self) -> SimStats:
        return self._app.counters.snapshot()

    def reset_stats(self) -> None:
        self._app.counters.reset()

    async def wait_for_stats(
        self, predicate: Callable[[SimStats], bool], timeout_s: float = 10.0
    ) -> SimStats:
        """The first stats snapshot satisfying `predicate`; TimeoutError after `timeout_s`."""
        return await self._app.counters.wait_for(predicate, timeout_s)


async def serve(host: str, port: int, profile: FaultProfile) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with SimProvider(profile, host=host, port=port) as sim:
        log.info("sim_provider.ready", base_url=sim.base_url, models=profile.served_models)
        await stop.wait()
    log.info("sim_provider.stopped")


def run(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, profile_path: str | Path | None = None
) -> None:
    """Run the simulated provider in the foreground (`maestro sim-provider`), on uvloop if present.

    Raises `ProfileError` naming each bad field when the profile file does not validate.
    """
    profile = FaultProfile() if profile_path is None else load_profile(profile_path)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps other hosts working
        asyncio.run(serve(host, port, profile))
    else:
        uvloop.run(serve(host, port, profile))
