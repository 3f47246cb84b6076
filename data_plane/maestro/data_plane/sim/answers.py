"""Simulated quality: the answer key and the per-request answer decision.

So that eval suites mean something without hosted models, the simulated provider can answer the
tasks of eval datasets (JSONL, the rows EvalService reads) right or wrong at a configured rate.
`AnswerKey.load` reads the key files once, when a profile is applied, and indexes the tasks by the
text of their last user message; `AnswerBook.decide` then costs a request a dictionary look-up and
a few hashes, with no I/O and no parsing.

A request is answered from the key when the content of its last user message (a string, or its
text parts joined) equals a task's exactly. A task with `expected_tool_calls`, asked with `tools`
and a `tool_choice` other than "none" (a named function must be one of its calls), gets tool
calls: the expected ones exactly, or with one call wrong (another offered tool with the same
arguments, or one argument changed: a nearby number, another task's value for it, a flipped
boolean; dropped when nothing plausible is left). Otherwise a task with `expected` gets a text
answer. Every other request gets the deterministic random words of `text.py`, as without a key.

The draws, each a uniform in [0, 1) hashed (blake2b, like `text.py`) from the strings below:

- `u` from (model, task id, "answer"): the answer is `expected` when `u < accuracy`, otherwise a
  plausible wrong one. The prompt version (system message) and the request's seed take no part,
  so a prompt version whose accuracy is 0.05 lower turns exactly the tasks with `u` in
  [accuracy - 0.05, accuracy) wrong, and no wrong task right: a planted regression is a clean set
  of flips.
- `v` from (model, task id, "hallucination"): an invented claim is appended when
  `v < hallucination_rate`.
- `w` from (model, task id, "tool"): the expected tool calls are made when `w < tool_accuracy`,
  otherwise a wrong call.

With `sampling_noise` s > 0, each draw is replaced with probability s by a fresh one. Both the
"replace?" draw and the fresh draw are hashed from the same strings plus a nonce: the request's
`seed` when it carries one (the same seed answers the same way), otherwise the profile's seed and
the request's sequence number (a fresh server replays a run; later runs on the same server vary).

Which wrong answer, claim or wrong call a task gets is hashed from (model, task id) too: it does
not change with the seed. The wrong answer is plausible and never invents a name, so that a lexical
hallucination grader (capitalised words of the answer found nowhere in the task) counts it an
error, not a hallucination: for a numeric `expected`, a nearby different number with the same
decimals; otherwise another task's `expected` of the same `slices.kind` whose capitalised words all
occur in this task (the other entity its question or context names), else one of that kind with no
capitalised words (a label), else a short generic wrong phrase; never equal to or containing
`expected` after case and punctuation are ignored. The invented claim names a made-up institution
and a year, neither of which occurs anywhere in the task's row; it is appended to the answer, so a
hallucinated right answer no longer matches exactly either.

Nothing here does network I/O or knows about HTTP; only `AnswerKey.load` reads files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from maestro.data_plane.sim.profile import AnswerProfile, Quality

log = structlog.get_logger(__name__)

INVENTED_SOURCES: tuple[str, ...] = (
    "Halvorsen Institute", "Brackwater Commission", "Quillfeather Observatory",
    "Marrowdale Survey", "Vennholm Academy", "Ostermark Bureau", "Calderwick Council",
    "Ambervale Trust", "Korrington Laboratory", "Thistlecombe Registry",
)  # fmt: skip
"""Made-up proper names for hallucinated claims."""
INVENTED_YEARS: tuple[str, ...] = (
    "1887", "1903", "1912", "1926", "1931", "1948", "1957", "1963", "1974", "1987",
)  # fmt: skip
_CLAIMS = (
    "Source: the {source} report of {year}.",
    "This was confirmed by the {source} in {year}.",
    "(According to a {year} study by the {source}.)",
)
_WRONG_PHRASES = (
    "It cannot be determined from the information given.",
    "None of the above.",
    "The answer is unclear.",
)
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_NOT_WORD = re.compile(r"[^\w\s]")
# What a lexical hallucination grader sees: capitalised words of an answer that name something,
# to be found among the words of the task.
_NAME = re.compile(r"\b[A-Z][A-Za-z'\-]+\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
MAX_DISTRACTORS = 16
"""Distractors kept per task: enough variety across models, bounded memory."""
_MISSING = object()


STATE_TASK_KEYS = ("question", "task", "input")
"""Fields of a JSON user message (a graph run's state) that may hold a task's text."""


def _unit(*parts: str) -> float:
    """A uniform in [0, 1) hashed from `parts`."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def draw(model: str, task_id: str, purpose: str) -> float:
    """The draw of `purpose` ("answer", "tool" or "hallucination") for a model and task, when no
    sampling noise replaces it: what a rate is compared with."""
    return _unit(model, task_id, purpose)


def _pick(n: int, *parts: str) -> int:
    """An index in [0, n) hashed from `parts`."""
    return int(_unit(*parts) * n)


def _normal(text: str) -> str:
    """Case, punctuation and spacing ignored: what a lenient grader compares."""
    return " ".join(_NOT_WORD.sub("", text.casefold()).split())


def _text(content: object) -> str | None:
    """A message's text: string content, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return None


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The content of the last user message: what the answer key is indexed by."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


def _perturbed(value: str, *parts: str) -> str | None:
    """A nearby different number written like `value` (same decimals), or None when `value` is
    not a plain number. The step is up to a tenth of its magnitude; it never crosses zero."""
    if not _NUMBER.fullmatch(value):
        return None
    negative = value.startswith("-")
    whole, _, decimals = value.lstrip("-").partition(".")
    units = int(whole + decimals) * (-1 if negative else 1)
    step = 1 + _pick(max(1, abs(units) // 10), *parts, "step")
    if units - step < 0 <= units or _unit(*parts, "sign") < 0.5:
        units += step
    else:
        units -= step
    digits = str(abs(units)).rjust(len(decimals) + 1, "0")
    sign = "-" if units < 0 else ""
    if not decimals:
        return f"{sign}{digits}"
    return f"{sign}{digits[: -len(decimals)]}.{digits[-len(decimals) :]}"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One expected tool call: the function's name and its arguments, decoded and as JSON."""

    name: str
    arguments: Mapping[str, Any]
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Task:
    """One task of the answer key, with what answering it needs worked out when it was read."""

    id: str
    expected: str | None
    kind: str | None
    tool_calls: tuple[ToolCall, ...]
    distractors: tuple[str, ...]
    """Other tasks' answers of the same kind whose capitalised words all occur in this task
    (entities of its own question and context), none equal to or containing `expected`."""
    sources: tuple[str, ...]
    """The invented names that occur nowhere in the task's row."""
    years: tuple[str, ...]
    """The invented years that occur nowhere in the task's row."""


@dataclass(frozen=True, slots=True)
class _Row:
    """A dataset row's fields, before the key's pools are known."""

    text: str
    id: str
    expected: str | None
    kind: str | None
    tool_calls: tuple[ToolCall, ...]
    vocabulary: frozenset[str]
    """The words of its messages, context and expected answer, case folded."""
    haystack: str
    """The whole row as JSON, case folded."""


def _tool_calls(raw: object) -> tuple[ToolCall, ...]:
    if not isinstance(raw, list):
        return ()
    calls = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(name := item.get("name"), str):
            continue
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                continue
        if not isinstance(arguments, dict):
            continue
        calls.append(ToolCall(name, arguments, json.dumps(arguments, ensure_ascii=False)))
    return tuple(calls)


def _row(row: object) -> _Row | None:
    """A dataset row's fields; None when it lacks an id, an input with a user message, or
    anything to answer with. Unknown keys are ignored."""
    if not isinstance(row, Mapping):
        return None
    task_id, raw_input = row.get("id"), row.get("input")
    if not isinstance(task_id, str | int) or isinstance(task_id, bool):
        return None
    messages: list[Mapping[str, Any]] = []
    if isinstance(raw_input, str):
        messages = [{"role": "user", "content": raw_input}]
    elif isinstance(raw_input, list):
        messages = [m for m in raw_input if isinstance(m, Mapping)]
    text = last_user_text(messages)
    if not text:
        return None
    expected = row.get("expected")
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        expected = str(expected)
    if not isinstance(expected, str) or not expected.strip():
        expected = None
    calls = _tool_calls(row.get("expected_tool_calls"))
    if expected is None and not calls:
        return None
    slices = row.get("slices")
    kind = slices.get("kind") if isinstance(slices, Mapping) else None
    context = row.get("context")
    grounding = [_text(m.get("content")) or "" for m in messages]
    grounding += [context if isinstance(context, str) else json.dumps(context), expected or ""]
    return _Row(
        text=text,
        id=str(task_id),
        expected=expected,
        kind=kind if isinstance(kind, str) else None,
        tool_calls=calls,
        vocabulary=frozenset(w.casefold() for g in grounding for w in _WORD.findall(g)),
        haystack=json.dumps(row, ensure_ascii=False, default=str).casefold(),
    )


def _differs(candidate: str, expected: str) -> bool:
    """Whether `candidate` is wrong for `expected` (already `_normal`): not equal to it and not
    containing it as words, so a lenient grader cannot count it right."""
    return f" {expected} " not in f" {_normal(candidate)} "


class _Pool:
    """The distinct expected answers of one kind, indexed by their capitalised words."""

    __slots__ = ("by_name", "free", "names")

    def __init__(self, answers: Iterable[str]) -> None:
        self.names: dict[str, frozenset[str]] = {}
        self.by_name: dict[str, list[str]] = {}
        free = []
        for answer in answers:
            names = frozenset(name.casefold() for name in _NAME.findall(answer))
            self.names[answer] = names
            for name in names:
                self.by_name.setdefault(name, []).append(answer)
            if not names:
                free.append(answer)
        self.free = tuple(free)
        """Answers without capitalised words (labels, numbers): wrong anywhere, invented nowhere."""

    def grounded(self, row: _Row) -> tuple[str, ...]:
        """The answers with capitalised words, all of which occur in `row`, that are wrong for
        it: at most `MAX_DISTRACTORS`, in a hashed order."""
        hits: dict[str, int] = {}
        for word in row.vocabulary:
            for answer in self.by_name.get(word, ()):
                hits[answer] = hits.get(answer, 0) + 1
        assert row.expected is not None
        expected = _normal(row.expected)
        found = [
            answer
            for answer, count in hits.items()
            if count == len(self.names[answer]) and _differs(answer, expected)
        ]
        # A hashed order, not the set's: a set of strings iterates differently in each process
        # (PYTHONHASHSEED), and the wrong answer must be the same in every one.
        return tuple(
            sorted(found, key=lambda answer: (_unit(row.id, answer), answer))[:MAX_DISTRACTORS]
        )


def _invented(row: _Row) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The invented sources and years that occur nowhere in `row`."""
    sources = tuple(s for s in INVENTED_SOURCES if s.split()[0].casefold() not in row.haystack)
    years = tuple(y for y in INVENTED_YEARS if y not in row.haystack)
    return (
        INVENTED_SOURCES if len(sources) == len(INVENTED_SOURCES) else sources,
        INVENTED_YEARS if len(years) == len(INVENTED_YEARS) else years,
    )


class AnswerKey:
    """Tasks by the text of their last user message (the first row with a text wins), and the
    pools wrong answers are picked from."""

    __slots__ = ("_argument_pools", "_pools", "tasks")

    def __init__(self, rows: Iterable[object]) -> None:
        parsed: dict[str, _Row] = {}
        labels: dict[str | None, dict[str, None]] = {}
        arguments: dict[tuple[str, str], dict[str, None]] = {}
        for raw in rows:
            row = _row(raw)
            if row is None or row.text in parsed:
                continue
            parsed[row.text] = row
            if row.expected is not None:
                labels.setdefault(row.kind, {})[row.expected] = None
            for call in row.tool_calls:
                for name, value in call.arguments.items():
                    if isinstance(value, str):
                        arguments.setdefault((call.name, name), {})[value] = None
        self._pools = {kind: _Pool(answers) for kind, answers in labels.items()}
        self._argument_pools = {key: tuple(pool) for key, pool in arguments.items()}
        self.tasks: dict[str, Task] = {}
        for text, row in parsed.items():
            sources, years = _invented(row)
            numeric = row.expected is not None and _NUMBER.fullmatch(row.expected.strip())
            self.tasks[text] = Task(
                id=row.id,
                expected=row.expected,
                kind=row.kind,
                tool_calls=row.tool_calls,
                distractors=(
                    self._pools[row.kind].grounded(row)
                    if row.expected is not None and not numeric
                    else ()
                ),
                sources=sources,
                years=years,
            )

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> AnswerKey:
        """The key from JSONL files; a missing or unreadable file is logged and skipped, and so
        is a line that is not JSON."""
        names = [str(path) for path in paths]
        rows: list[object] = []
        for path in names:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as error:
                log.warning("sim_provider.answer_key_skipped", path=path, error=str(error))
                continue
            bad = 0
            for line in lines:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        bad += 1
            if bad:
                log.warning("sim_provider.answer_key_bad_lines", path=path, lines=bad)
        key = cls(rows)
        log.info("sim_provider.answer_key", files=names, tasks=len(key.tasks))
        return key

    def wrong_answer(self, task: Task, *parts: str) -> str:
        """A plausible wrong answer to `task` (which has an `expected`): a nearby number, an
        entity of its own text that answers another task of its kind, another answer of its
        kind without capitalised words, or a generic wrong phrase; never an invented name."""
        assert task.expected is not None
        number = _perturbed(task.expected.strip(), *parts)
        if number is not None:
            return number
        if task.distractors:
            return task.distractors[_pick(len(task.distractors), *parts, "distractor")]
        expected = _normal(task.expected)
        pool = self._pools[task.kind].free
        start = _pick(len(pool), *parts, "label") if pool else 0
        for offset in range(len(pool)):
            candidate = pool[(start + offset) % len(pool)]
            if _differs(candidate, expected):
                return candidate
        start = _pick(len(_WRONG_PHRASES), *parts, "phrase")
        for offset in range(len(_WRONG_PHRASES)):
            phrase = _WRONG_PHRASES[(start + offset) % len(_WRONG_PHRASES)]
            if _differs(phrase, expected):
                return phrase
        return "No."  # pragma: no cover - the phrases differ from one another

    def wrong_tool_calls(
        self, task: Task, offered: Sequence[str], *parts: str
    ) -> list[tuple[str, str]]:
        """The expected calls with one of them wrong: another offered tool with the same
        arguments, or the same tool with one argument's value changed (or dropped)."""
        calls = [(call.name, call.arguments_json) for call in task.tool_calls]
        index = _pick(len(calls), *parts, "call")
        call = task.tool_calls[index]
        others = [name for name in offered if name != call.name]
        altered = self._altered(call, *parts)
        if others and (altered is None or _unit(*parts, "other-tool") < 0.5):
            calls[index] = (others[_pick(len(others), *parts, "tool-name")], call.arguments_json)
        elif altered is not None:
            calls[index] = (call.name, json.dumps(altered, ensure_ascii=False))
        else:
            calls[index] = (call.name, json.dumps({"unexpected": True}))
        return calls

    def _altered(self, call: ToolCall, *parts: str) -> dict[str, Any] | None:
        """`call`'s arguments with one value changed (dropped when no plausible other value
        exists); None when it has no arguments."""
        if not call.arguments:
            return None
        names = sorted(call.arguments)
        name = names[_pick(len(names), *parts, "argument")]
        value = call.arguments[name]
        new: object = _MISSING
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int | float):
            shifted = _perturbed(str(value), *parts)
            if shifted is not None:
                new = float(shifted) if isinstance(value, float) else int(shifted)
        elif isinstance(value, str):
            shifted = _perturbed(value.strip(), *parts)
            if shifted is not None:
                new = shifted
            else:
                pool = self._argument_pools.get((call.name, name), ())
                if len(pool) > 1:
                    index = _pick(len(pool), *parts, "value")
                    new = pool[index] if pool[index] != value else pool[(index + 1) % len(pool)]
        arguments = dict(call.arguments)
        if new is _MISSING or new == value:
            del arguments[name]
        else:
            arguments[name] = new
        return arguments


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulated model answers a task with: words, or tool calls (exactly one of the
    two is set)."""

    task_id: str
    words: tuple[str, ...] | None
    """The text answer's words (one word is one token)."""
    tool_calls: tuple[tuple[str, str], ...] | None
    """(function name, arguments JSON) of each call."""
    correct: bool
    hallucinated: bool = False


@dataclass(frozen=True, slots=True)
class Rates:
    """The quality one request is answered at: its model's, shifted by its prompt version."""

    accuracy: float
    tool_accuracy: float
    hallucination_rate: float
    sampling_noise: float


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def _system_text(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(
        text
        for message in messages
        if message.get("role") in ("system", "developer")
        and (text := _text(message.get("content")))
    )


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    names = []
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, Mapping) and isinstance(name := function.get("name"), str):
            names.append(name)
    return names


class AnswerBook:
    """An `AnswerProfile` and its key, ready to decide requests' answers cheaply."""

    __slots__ = ("_cache", "_default", "_per_model", "_profile_seed", "key", "profile")

    def __init__(self, profile: AnswerProfile, key: AnswerKey, profile_seed: int = 0) -> None:
        self.profile = profile
        self.key = key
        self._profile_seed = profile_seed
        self._default = profile.default
        self._per_model = {
            name: profile.default.patched(patch) for name, patch in profile.per_model.items()
        }
        # Keyed by (model if it has its own patch else None, matching prompt entry or -1):
        # bounded by the profile's size whatever model names requests carry.
        self._cache: dict[tuple[str | None, int], Rates] = {}

    @classmethod
    def load(cls, profile: AnswerProfile, profile_seed: int = 0) -> AnswerBook:
        """The book with its key read from `profile.key_files` (file I/O: call it when a
        profile is applied, never per request)."""
        return cls(profile, AnswerKey.load(profile.key_files), profile_seed)

    def rates(self, model: str, messages: Sequence[Mapping[str, Any]]) -> Rates:
        """The quality that applies: the model's, shifted by the first matching prompt entry."""
        entry = -1
        if self.profile.prompts:
            system = _system_text(messages)
            if system:
                entry = next(
                    (
                        index
                        for index, prompt in enumerate(self.profile.prompts)
                        if prompt.system_contains in system
                    ),
                    -1,
                )
        key = (model if model in self._per_model else None, entry)
        rates = self._cache.get(key)
        if rates is None:
            quality: Quality = self._per_model.get(model, self._default)
            shift = self.profile.prompts[entry] if entry >= 0 else None
            rates = self._cache[key] = Rates(
                accuracy=_clamp(quality.accuracy + (shift.accuracy_delta if shift else 0.0)),
                tool_accuracy=_clamp(
                    quality.tool_accuracy + (shift.tool_accuracy_delta if shift else 0.0)
                ),
                hallucination_rate=_clamp(
                    quality.hallucination_rate + (shift.hallucination_rate_delta if shift else 0.0)
                ),
                sampling_noise=quality.sampling_noise,
            )
        return rates

    def _task_in_state(self, text: str) -> Task | None:
        """An agent graph's model node sends its run's state as JSON: a task whose text is the
        state's `question`, `task` or `input` is that task."""
        try:
            state = json.loads(text)
        except ValueError:
            return None
        if not isinstance(state, dict):
            return None
        for key in STATE_TASK_KEYS:
            value = state.get(key)
            if isinstance(value, str) and (task := self.key.tasks.get(value)) is not None:
                return task
        return None

    def decide(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        seed: int | None = None,
        sequence: int = 0,
    ) -> Answer | None:
        """The answer to a request, or None when its last user message is no task's (or the
        task has only tool calls and the request offers no tools): answer as without a key.
        `sequence` numbers the request under the profile (the sampling-noise nonce without a
        seed)."""
        text = last_user_text(messages)
        task = self.key.tasks.get(text) if text is not None else None
        if task is None and text is not None and text.startswith("{"):
            task = self._task_in_state(text)
        if task is None:
            return None
        rates = self.rates(model, messages)
        nonce = f"seed={seed}" if seed is not None else f"run={self._profile_seed}/{sequence}"

        def sample(purpose: str) -> float:
            if rates.sampling_noise and _unit(model, task.id, purpose, "noise", nonce) < (
                rates.sampling_noise
            ):
                return _unit(model, task.id, purpose, "fresh", nonce)
            return draw(model, task.id, purpose)

        if task.tool_calls and tools and self._calls_tools(task, tool_choice):
            if sample("tool") < rates.tool_accuracy:
                calls = [(call.name, call.arguments_json) for call in task.tool_calls]
                return Answer(task.id, None, tuple(calls), correct=True)
            wrong = self.key.wrong_tool_calls(task, _tool_names(tools), model, task.id)
            return Answer(task.id, None, tuple(wrong), correct=False)
        if task.expected is None:
            return None
        correct = sample("answer") < rates.accuracy
        reply = task.expected if correct else self.key.wrong_answer(task, model, task.id)
        hallucinated = False
        if rates.hallucination_rate and task.sources and task.years:
            hallucinated = sample("hallucination") < rates.hallucination_rate
            if hallucinated:
                claim = _CLAIMS[_pick(len(_CLAIMS), model, task.id, "claim")]
                reply += " " + claim.format(
                    source=task.sources[_pick(len(task.sources), model, task.id, "source")],
                    year=task.years[_pick(len(task.years), model, task.id, "year")],
                )
        return Answer(task.id, tuple(reply.split()), None, correct, hallucinated)

    @staticmethod
    def _calls_tools(task: Task, tool_choice: str | Mapping[str, Any] | None) -> bool:
        """Whether the request lets the model make the task's calls: not `none`, and a forced
        function must be one of them."""
        if tool_choice == "none":
            return False
        if isinstance(tool_choice, Mapping):
            function = tool_choice.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            return any(call.name == name for call in task.tool_calls)
        return True
