"""How one answer is scored against its task: exact match, tool success and hallucination.

Pure functions of (answer, task), cheap enough to run as each answer arrives. Semantic similarity
needs the embedding model and is scored in batches elsewhere (`embeddings.py`).

Hallucination, as Maestro grades it: an answer hallucinates when it names something the task
never mentions, that is a proper name (a capitalised word that is not a common sentence word)
found in none of the task's messages, its context and its reference answer. A wrong answer that
picks another entity of the task's context is an error, not a hallucination; an answer that
cites an invented institute, person or place is one. Numbers are not checked: a miscomputed sum
is wrong, not invented. The rule is lexical on purpose: it is reproducible, fast, and needs no
second model whose own errors would move the metric.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_SPACES = re.compile(r"\s+")
_TRAILING = ".!?;:,"
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_NAME = re.compile(r"\b[A-Z][A-Za-z'\-]+\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
# Capitalised words that start sentences or label answers without naming anything.
_COMMON = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "i",
        "we",
        "you",
        "he",
        "she",
        "they",
        "there",
        "here",
        "and",
        "or",
        "but",
        "so",
        "if",
        "then",
        "when",
        "while",
        "because",
        "as",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "of",
        "on",
        "to",
        "with",
        "without",
        "about",
        "after",
        "before",
        "answer",
        "answers",
        "source",
        "sources",
        "according",
        "note",
        "yes",
        "no",
        "not",
        "none",
        "true",
        "false",
        "result",
        "results",
        "total",
        "sum",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "my",
        "our",
        "your",
        "their",
        "his",
        "her",
        "what",
        "which",
        "who",
        "where",
        "why",
        "how",
        "all",
        "any",
        "each",
        "every",
        "some",
        "most",
        "many",
        "more",
        "less",
        "per",
    ]
)
MAX_OUTPUT_CHARS = 4096


def normalise(text: str) -> str:
    """Text as exact match compares it: Unicode NFKC, case folded, whitespace collapsed,
    surrounding quotes and trailing sentence punctuation removed."""
    folded = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    folded = folded.strip(_QUOTES).strip()
    return folded.rstrip(_TRAILING).strip().strip(_QUOTES).strip()


def exact_match(answer: str, expected: str) -> float:
    """1.0 when the answers are equal after `normalise`, else 0.0."""
    return 1.0 if normalise(answer) == normalise(expected) else 0.0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the target made, with its arguments parsed (raw text when not JSON)."""

    name: str
    arguments: Any


def parse_arguments(raw: str) -> Any:
    """Tool-call arguments as the model sent them: JSON when they parse, the text otherwise."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return raw


def _canonical(name: str, arguments: Any) -> str:
    return json.dumps([name, arguments], sort_keys=True, separators=(",", ":"))


def tool_success(
    made: Sequence[ToolCall], expected: Sequence[tuple[str, Mapping[str, Any]]]
) -> float:
    """1.0 when the calls made are exactly the expected ones (names and arguments equal as
    JSON, in any order), else 0.0."""
    got = sorted(_canonical(call.name, call.arguments) for call in made)
    want = sorted(_canonical(name, dict(arguments)) for name, arguments in expected)
    return 1.0 if got == want else 0.0


def proper_names(text: str) -> set[str]:
    """The capitalised words of `text` that may name something, case folded."""
    return {m.casefold() for m in _NAME.findall(text) if m.casefold() not in _COMMON}


def _vocabulary(sources: Iterable[str]) -> set[str]:
    return {word.casefold() for source in sources for word in _WORD.findall(source)}


def hallucinated(answer: str, grounding: Iterable[str]) -> float:
    """1.0 when the answer names something none of `grounding` (the task's messages, context
    and reference answer) mentions, else 0.0. See the module docstring."""
    names = proper_names(answer)
    if not names:
        return 0.0
    return 1.0 if names - _vocabulary(grounding) else 0.0


def shown_output(text: str, calls: Sequence[ToolCall]) -> str:
    """What a task result shows as the answer: the text, or the tool calls as JSON; at most
    `MAX_OUTPUT_CHARS` characters."""
    if calls and not text:
        text = json.dumps(
            [{"name": c.name, "arguments": c.arguments} for c in calls], sort_keys=True
        )
    return text[:MAX_OUTPUT_CHARS]
