"""The native streaming client for OpenAI-compatible endpoints (vLLM, OpenAI, most hosts).

One aiohttp session per process keeps connections pooled. A stream is parsed per network read:
the read's complete SSE events are joined into one JSON array and decoded by a single
`orjson.loads`, so the Python work per token is a few dict look-ups. LiteLLM's relay is kept for
providers that need translation; see `litellm_adapter.py`.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import aiohttp
import orjson
import yarl

from maestro.data_plane.providers.types import (
    Batch,
    ProviderError,
    ProviderRequest,
    ToolCallPiece,
    failure_for_status,
)

_EVENT_END = b"\n\n"
_DATA = b"data:"
_DONE = b"[DONE]"
_ERROR_BODY_LIMIT = 4096
_LARGE_BODY = 1024 * 1024
"""Bodies above this go out as a BytesIO, which aiohttp writes in 64 KiB chunks with a yield
to the loop between them (a multi-MiB prompt); raw bytes this large make it warn."""


def request_body(request: ProviderRequest) -> dict[str, Any]:
    """The `/chat/completions` body for a streamed call, usage included at the end."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.tools:
        body["tools"] = list(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
    return body


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class SseBatchParser:
    """Turns raw SSE bytes into Batches; holds the unfinished tail between reads."""

    __slots__ = ("_tail", "done")

    def __init__(self) -> None:
        self._tail = b""
        self.done = False

    def feed(self, data: bytes) -> Batch:
        buffer = self._tail + data if self._tail else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        cut = buffer.rfind(_EVENT_END)
        if cut < 0:
            self._tail = buffer
            return Batch()
        self._tail = buffer[cut + 2 :]
        payloads = []
        for event in buffer[:cut].split(_EVENT_END):
            for line in event.split(b"\n"):
                if line.startswith(_DATA):
                    payload = line[5:].strip()
                    if payload == _DONE:
                        self.done = True
                    elif payload:
                        payloads.append(payload)
        if not payloads:
            return Batch()
        try:
            objects = orjson.loads(b"[" + b",".join(payloads) + b"]")
        except orjson.JSONDecodeError:
            raise ProviderError("the provider sent an event that is not JSON") from None
        return _batch(objects)


def _batch(objects: list[Any]) -> Batch:
    batch = Batch()
    pieces = batch.pieces
    for chunk in objects:
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                content = delta.get("content")
                if content:
                    pieces.append(content)
                calls = delta.get("tool_calls")
                if calls:
                    batch.tool_calls.extend(_tool_pieces(calls))
            finish = choice.get("finish_reason")
            if finish:
                batch.finish_reason = finish
        elif "error" in chunk:
            error = chunk["error"]
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise ProviderError(f"the provider reported an error mid-stream: {message}")
        usage = chunk.get("usage")
        if usage:
            batch.prompt_tokens = usage.get("prompt_tokens")
            batch.completion_tokens = usage.get("completion_tokens")
    return batch


def _tool_pieces(calls: list[Any]) -> list[ToolCallPiece]:
    pieces = []
    for call in calls:
        function = call.get("function") or {}
        pieces.append(
            ToolCallPiece(
                index=int(call.get("index", 0)),
                id=call.get("id") or "",
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
            )
        )
    return pieces


class OpenAICompatStream:
    __slots__ = ("_content", "_parser", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self._parser = SseBatchParser()

    async def read(self) -> Batch | None:
        parser = self._parser
        while not parser.done:
            try:
                data = await self._content.readany()
            except (aiohttp.ClientError, OSError) as error:
                raise ProviderError(f"the connection to the provider failed: {error}") from None
            if not data:
                raise ProviderError("the provider closed the stream before it finished")
            batch = parser.feed(data)
            if batch.pieces or batch.tool_calls or batch.finish_reason or batch.completion_tokens:
                return batch
        return None

    async def aclose(self) -> None:
        # close(), not release(): an unfinished stream must drop the connection so the provider
        # stops generating; a finished one could be reused, but the pool refills cheaply.
        if self._parser.done:
            self._response.release()
        else:
            self._response.close()


class OpenAICompatProvider:
    """Calls `{api_base}/chat/completions` with `stream: true` over a pooled session."""

    name = "openai_compat"

    def __init__(self, *, connect_timeout_s: float = 5.0, pool_size: int = 0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def open(self, request: ProviderRequest) -> OpenAICompatStream:
        if not request.api_base:
            raise ProviderError("the deployment has no api_base")
        url, headers = self._endpoint(request.api_base, request.api_key)
        if request.extra_headers:
            headers = {**headers, **request.extra_headers}
        try:
            payload = orjson.dumps(request_body(request))
            data = payload if len(payload) <= _LARGE_BODY else io.BytesIO(payload)
            response = await self._client().post(url, data=data, headers=headers)
        except (aiohttp.ClientError, OSError) as error:
            raise ProviderError(f"cannot reach the provider: {error}") from None
        if response.status != 200:
            try:
                body = (await response.content.read(_ERROR_BODY_LIMIT)).decode(errors="replace")
            except (aiohttp.ClientError, OSError):
                body = ""
            finally:
                response.close()
            raise failure_for_status(
                response.status,
                f"the provider answered HTTP {response.status}: {body[:500]}",
                _retry_after(response.headers),
            )
        return OpenAICompatStream(response)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one provider per process
    def _endpoint(self, api_base: str, api_key: str | None) -> tuple[yarl.URL, dict[str, str]]:
        """The parsed URL and headers of a deployment, once, not per call."""
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return yarl.URL(api_base.rstrip("/") + "/chat/completions"), headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
