"""The OpenAI chat-completions wire format, as far as the lane speaks it.

`parse_chat_request` validates a request body into `ChatRequest` (400 with an OpenAI-style error
body otherwise); `Chunks` renders a stream's server-sent events. Text arrives in coalesced pieces,
so one SSE event carries whatever the engine produced since the previous event, not one token.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

_MAX_STOP = 4


class ChatRequestError(ValueError):
    """A request the lane refuses; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": "invalid_request_error",
                "param": self.param,
                "code": None,
            }
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    ignore_eos: bool


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ChatRequestError(f"'{name}' must be a number from {low} to {high}", name)
    return float(value)


def parse_chat_request(body: Any, served_model: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatRequestError("the request body must be a JSON object")
    model = body.get("model")
    if model != served_model:
        raise ChatRequestError(f"this lane serves model '{served_model}', not {model!r}", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("'messages' must be a non-empty list", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatRequestError(f"messages[{index}] needs a 'role'", f"messages[{index}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise ChatRequestError(
                f"messages[{index}].content must be text; this lane serves text models",
                f"messages[{index}].content",
            )
    if body.get("tools"):
        raise ChatRequestError("this lane does not serve tool calls", "tools")
    if body.get("n", 1) != 1:
        raise ChatRequestError("'n' must be 1", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ChatRequestError("'max_tokens' must be a positive integer", "max_tokens")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > _MAX_STOP
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ChatRequestError("'stop' must be a string or up to 4 non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ChatRequestError("'seed' must be an integer", "seed")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ChatRequestError("'stream_options' must be an object", "stream_options")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=body.get("stream") is True,
        include_usage=options.get("include_usage") is True,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stop,
        seed=seed,
        ignore_eos=body.get("ignore_eos") is True,
    )


class Chunks:
    """One stream's SSE events; every event shares the completion's id and creation time."""

    def __init__(self, completion_id: str, model: str) -> None:
        self._head = (
            '{"id":' + json.dumps(completion_id) + ',"object":"chat.completion.chunk","created":'
            f'{int(time.time())},"model":' + json.dumps(model) + ',"choices":'
        )

    def _event(self, choices: str, usage: str = "") -> bytes:
        tail = f',"usage":{usage}' if usage else ""
        return f"data: {self._head}{choices}{tail}}}\n\n".encode()

    def role(self) -> bytes:
        return self._event('[{"index":0,"delta":{"role":"assistant","content":""}}]')

    def text(self, text: str) -> bytes:
        return self._event('[{"index":0,"delta":{"content":' + json.dumps(text) + "}}]")

    def finish(self, reason: str) -> bytes:
        return self._event('[{"index":0,"delta":{},"finish_reason":' + json.dumps(reason) + "}]")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._event("[]", usage_json(prompt_tokens, completion_tokens))

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"


def usage_json(prompt_tokens: int, completion_tokens: int) -> str:
    return (
        f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
        f'"total_tokens":{prompt_tokens + completion_tokens}}}'
    )


def completion_body(
    completion_id: str, model: str, text: str, reason: str, prompt_tokens: int, tokens: int
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
            }
        ],
        "usage": json.loads(usage_json(prompt_tokens, tokens)),
    }
