"""OpenAI Chat Completions wire format: SSE chunks, completion bodies and error bodies.

A `ChunkEncoder` is built once per streamed request; every chunk it hands out is ready-made bytes
(the request's constant prefix, one vocabulary word, the constant suffix), so the per-token path
is a list index and a write, with no JSON encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from maestro.data_plane.sim.text import VOCABULARY

SYSTEM_FINGERPRINT = "fp_maestro_sim"
DONE = b"data: [DONE]\n\n"
_FIRST_WORDS = tuple(json.dumps(word) for word in VOCABULARY)
_NEXT_WORDS = tuple(json.dumps(" " + word) for word in VOCABULARY)
# Beyond this many tokens, building one chunk per vocabulary word up front is cheaper than one
# per token.
_TABLE_FROM = len(VOCABULARY)


def _usage(prompt_tokens: int, completion_tokens: int) -> str:
    return (
        f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
        f'"total_tokens":{prompt_tokens + completion_tokens}}}'
    )


class ChunkEncoder:
    """The `chat.completion.chunk` SSE events of one streamed completion, as bytes."""

    __slots__ = ("_head", "_tail")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            f'data: {{"id":{json.dumps(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{json.dumps(model)},'
            f'"system_fingerprint":"{SYSTEM_FINGERPRINT}","choices":['
        )
        # With stream_options.include_usage, OpenAI sends "usage":null on every chunk but the last.
        self._tail = (',"usage":null' if include_usage else "") + "}\n\n"

    def _choice(self, delta: str, finish_reason: str | None = None) -> bytes:
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        return (
            f'{self._head}{{"index":0,"delta":{delta},"logprobs":null,'
            f'"finish_reason":{finish}}}]{self._tail}'
        ).encode()

    def role(self) -> bytes:
        """The first event: the assistant role with empty content."""
        return self._choice('{"role":"assistant","content":"","refusal":null}')

    def tokens(self, ids: Sequence[int]) -> list[bytes]:
        """One event per token; every word after the first carries its leading space."""
        if not ids:
            return []
        first = self._choice(f'{{"content":{_FIRST_WORDS[ids[0]]}}}')
        if len(ids) > _TABLE_FROM:
            table = [self._choice(f'{{"content":{word}}}') for word in _NEXT_WORDS]
            return [first, *(table[i] for i in ids[1:])]
        return [first, *(self._choice(f'{{"content":{_NEXT_WORDS[i]}}}') for i in ids[1:])]

    def words(self, words: Sequence[str]) -> list[bytes]:
        """One event per word of an arbitrary text (an answer from the answer key); every word
        after the first carries its leading space."""
        return [
            self._choice(f'{{"content":{json.dumps(word if index == 0 else " " + word)}}}')
            for index, word in enumerate(words)
        ]

    def tool_call(
        self, call_id: str, name: str, fragments: Sequence[str], index: int = 0
    ) -> list[bytes]:
        """One streamed tool call, as OpenAI sends it: the first event carries its index, id and
        name with empty arguments, the next ones the argument fragments."""
        head = json.dumps(
            [{"index": index, "id": call_id, "type": "function",
              "function": {"name": name, "arguments": ""}}]
        )  # fmt: skip
        events = [self._choice(f'{{"tool_calls":{head}}}')]
        for fragment in fragments:
            piece = json.dumps([{"index": index, "function": {"arguments": fragment}}])
            events.append(self._choice(f'{{"tool_calls":{piece}}}'))
        return events

    def finish(self, reason: str) -> bytes:
        """The event closing the choice: empty delta and the finish reason."""
        return self._choice("{}", reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The include_usage event: no choices, the request's token counts."""
        return f'{self._head}],"usage":{_usage(prompt_tokens, completion_tokens)}}}\n\n'.encode()


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A non-streamed `chat.completion` response body."""
    return (
        f'{{"id":{json.dumps(completion_id)},"object":"chat.completion","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"message":{{"role":"assistant",'
        f'"content":{json.dumps(text)},"refusal":null}},"logprobs":null,'
        f'"finish_reason":{json.dumps(finish_reason)}}}],'
        f'"usage":{_usage(prompt_tokens, completion_tokens)},'
        f'"system_fingerprint":"{SYSTEM_FINGERPRINT}"}}'
    ).encode()


def tool_call_body(
    completion_id: str,
    created: int,
    model: str,
    calls: Sequence[tuple[str, str, str]],
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A non-streamed `chat.completion` whose message calls tools: `calls` are
    (call id, function name, arguments JSON)."""
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ],
    }
    return (
        f'{{"id":{json.dumps(completion_id)},"object":"chat.completion","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"message":{json.dumps(message)},'
        f'"logprobs":null,"finish_reason":"tool_calls"}}],'
        f'"usage":{_usage(prompt_tokens, completion_tokens)},'
        f'"system_fingerprint":"{SYSTEM_FINGERPRINT}"}}'
    ).encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


INJECTED_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: (
        "Rate limit reached (injected by the simulated provider).",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (injected by the simulated "
        "provider).",
        "server_error",
        None,
    ),
    503: (
        "The server is overloaded or not ready yet (injected by the simulated provider).",
        "server_error",
        None,
    ),
}
"""Per injectable status: the message, type and code OpenAI sends with it."""
