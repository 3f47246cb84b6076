"""The texts of a request that a provider will see, gathered for content tagging.

Content tagging (`tagging.ContentTagger`) keeps PII away from hosted models only if it reads
every text the provider is sent, not just plain-string `content`: the text parts of content-part
arrays, message `name`s, tool calls (function name and JSON arguments), tool results, tool
definitions (name, description, parameter schema) and stop sequences. Both wire forms are read
here: the OpenAI chat dicts the providers are sent (HTTP ingress, InferenceService, graph model
steps) and RouteService's `ChatMessage`s.

The result is a tuple of references to the request's own strings: no string is copied or joined,
and the tagger scans each in turn. A dict's *values* are read, every string at any depth, except:

* protocol enums and ids (`role`, `type`, `id`, `tool_call_id`, `format`, `detail`): the
  protocol's own words, never a person's data, and each text costs the tagger about 1 us;
* base64 payloads (the `data` of `input_audio`, a file's `file_data`, a `data:...;base64,` URL):
  binary, so the tagger finds nothing there, yet it reads base64 at about 10 MB/s against
  about 500 MB/s for prose (digits at random look like the start of numbers).

Dict *keys* are not read: they are the protocol's field names and JSON-schema property names.
A text split across two parts is read as two texts, so an item cut in half is not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from maestro.v1 import common_pb2

__all__ = ["chat_message_texts", "wire_texts"]

_NOT_TEXT: Final = frozenset(
    {"role", "type", "id", "tool_call_id", "format", "detail", "data", "file_data"}
)
_DATA_URL: Final = "data:"
_BASE64_MARK: Final = ";base64,"
_DATA_URL_HEAD: Final = 128  # a media type and its parameters fit well within this


def wire_texts(
    messages: Iterable[Mapping[str, Any]],
    tools: Iterable[Mapping[str, Any]] = (),
    stop: Iterable[str] = (),
) -> tuple[str, ...]:
    """Every text of OpenAI-form chat messages, tool definitions and stop sequences.

    The usual message (``{"role": ..., "content": "..."}``) takes the first branch only, so a
    small prompt costs about what reading `content` alone did.
    """
    out: list[str] = []
    for message in messages:
        for key, value in message.items():
            if key in _NOT_TEXT:
                continue
            if isinstance(value, str):
                if value:
                    out.append(value)
            elif value is not None:
                _gather(value, out)
    for tool in tools:
        _gather(tool, out)
    out.extend(sequence for sequence in stop if sequence)
    return tuple(out)


def chat_message_texts(messages: Iterable[common_pb2.ChatMessage]) -> tuple[str, ...]:
    """Every text of RouteService's chat messages: content, author name, tool calls."""
    out: list[str] = []
    for message in messages:
        if message.content:
            out.append(message.content)
        if message.name:
            out.append(message.name)
        for call in message.tool_calls:
            if call.name:
                out.append(call.name)
            if call.arguments_json:
                out.append(call.arguments_json)
    return tuple(out)


def _gather(value: object, out: list[str]) -> None:
    """The strings under `value` (dicts, lists, tuples), iteratively: a deeply nested body
    cannot exhaust the interpreter's recursion limit."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item and not _is_base64_url(item):
                out.append(item)
        elif isinstance(item, Mapping):
            stack.extend(v for k, v in item.items() if k not in _NOT_TEXT)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _is_base64_url(text: str) -> bool:
    return text.startswith(_DATA_URL) and _BASE64_MARK in text[:_DATA_URL_HEAD]
