"""LiteLLM as a provider client, for providers that need translation (Anthropic, Bedrock, ...).

LiteLLM's stream is an async iterator that is not safe to cancel mid-read, so a reader task
drains it into a queue and `read()` waits on the queue: the relay's timeouts cancel only the
wait. LiteLLM costs about 0.9 ms per chunk here, so OpenAI-compatible endpoints use the native
client instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from maestro.data_plane.providers.types import (
    Batch,
    ProviderError,
    ProviderRequest,
    ToolCallPiece,
    failure_for_status,
)

_END = object()


def _error(error: Exception) -> ProviderError:
    status = getattr(error, "status_code", 0) or 0
    message = f"{type(error).__name__}: {error}"
    if isinstance(status, int) and status:
        return failure_for_status(status, message, None)
    return ProviderError(message)


def _batch(chunk: Any) -> Batch:
    batch = Batch()
    choices = getattr(chunk, "choices", None) or []
    if choices:
        choice = choices[0]
        delta = getattr(choice, "delta", None)
        if delta is not None:
            content = getattr(delta, "content", None)
            if content:
                batch.pieces.append(content)
            for call in getattr(delta, "tool_calls", None) or []:
                function = getattr(call, "function", None)
                batch.tool_calls.append(
                    ToolCallPiece(
                        index=int(getattr(call, "index", 0) or 0),
                        id=getattr(call, "id", None) or "",
                        name=getattr(function, "name", None) or "",
                        arguments=getattr(function, "arguments", None) or "",
                    )
                )
        if getattr(choice, "finish_reason", None):
            batch.finish_reason = choice.finish_reason
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        batch.prompt_tokens = getattr(usage, "prompt_tokens", None)
        batch.completion_tokens = getattr(usage, "completion_tokens", None)
    return batch


class LitellmStream:
    def __init__(self, response: Any) -> None:
        self._response = response
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._drain())
        self._ended = False

    async def _drain(self) -> None:
        try:
            async for chunk in self._response:
                self._queue.put_nowait(_batch(chunk))
                # LiteLLM hands out buffered chunks without awaiting the network, so a fast
                # stream would otherwise hold the loop until its buffer is empty: every other
                # call (their first tokens included) would wait, measured as first-token
                # timeouts at 32 concurrent streams.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._queue.put_nowait(_error(error))
            return
        self._queue.put_nowait(_END)

    async def read(self) -> Batch | None:
        if self._ended:
            return None
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            return None
        if isinstance(item, ProviderError):
            self._ended = True
            raise item
        assert isinstance(item, Batch)
        return item

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        close = getattr(self._response, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


class LitellmProvider:
    """Streams through `litellm.acompletion`."""

    name = "litellm"

    async def open(self, request: ProviderRequest) -> LitellmStream:
        from maestro.routing.catalog import litellm_module

        litellm = litellm_module()
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": list(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "num_retries": 0,
        }
        for name in ("api_base", "api_key", "temperature", "top_p", "seed"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.tools:
            kwargs["tools"] = list(request.tools)
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as error:
            raise _error(error) from None
        return LitellmStream(response)

    async def aclose(self) -> None:
        return None
