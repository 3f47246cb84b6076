"""Deterministic completions: the same (model, messages, seed) always gives the same words.

Words come from a fixed vocabulary, drawn by a `random.Random` seeded with a hash of the request's
model, messages and seed, so tests (and the data plane's tests) can compute the expected output
with `completion_text` instead of hard-coding it. One word is one token. Fault draws never touch
this generator: a cut stream's partial output is a prefix of the undisturbed one.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

VOCABULARY: tuple[str, ...] = (
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was",
    "at", "by", "this", "from", "or", "be", "are", "not", "have", "one", "all", "can", "will",
    "more", "when", "time", "there", "each", "which", "their", "about", "many", "then", "them",
    "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has",
    "look", "day", "could", "go", "come", "did", "number", "sound", "most", "people", "over",
    "know", "water", "than",
)  # fmt: skip
_WORD_IDS = range(len(VOCABULARY))


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Words in the messages' text (string content and text parts): the prompt's token count."""
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(text := part.get("text"), str):
                    count += len(text.split())
    return count


def completion_ids(
    model: str, messages: Sequence[Mapping[str, Any]], seed: int | None, n_tokens: int
) -> list[int]:
    """Indices into `VOCABULARY` of the completion's `n_tokens` words."""
    key = json.dumps(
        [model, messages, seed], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big")).choices(_WORD_IDS, k=n_tokens)


def completion_text(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    seed: int | None = None,
    max_tokens: int = 64,
) -> str:
    """The text the simulated provider answers this request with: words joined by spaces."""
    return " ".join(VOCABULARY[i] for i in completion_ids(model, messages, seed, max_tokens))
