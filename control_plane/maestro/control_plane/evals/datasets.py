"""Eval datasets: parse and validate task JSONL, and compute and check its manifest.

A dataset is JSONL, one task a line (schema `maestro.eval.task.v1`, described in
`evals/README.md`). Parsing is strict: an unknown key, a wrong type or an inconsistent row is
refused with its 1-based line and a JSON path to the field (`expected_tool_calls[0].name`), and
the first bad row stops the parse, so a typo surfaces rather than silently scoring nothing.

The manifest pins a dataset's content: SHA-256 of the exact bytes, row count, size, the
`name.split.version` identifier and a provenance id derived from the name and digest. Versions
are immutable: different content is a different version.

Everything here is pure except `load_dataset_file`, the one function that reads files. Errors
are plain Python exceptions (`DatasetRowError`, `DatasetError`); the servicer maps them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = [
    "MAX_ROWS",
    "NAME_SPLIT_VERSION",
    "SCHEMA_ID",
    "DatasetError",
    "DatasetManifest",
    "DatasetRowError",
    "EvalTask",
    "ParsedDataset",
    "ToolCallSpec",
    "load_dataset_file",
    "manifest_for",
    "manifest_path_for",
    "parse_jsonl",
    "provenance_id_for",
    "validate_dataset_name",
]

SCHEMA_ID: Final = "maestro.eval.task.v1"
MAX_ROWS: Final = 100_000
# `name.split.version`, such as `intelgraph_golden.test.1`: a lower-case name, a split (`train`,
# `dev`, `test`, ...) and a positive integer version. New content is a new version.
NAME_SPLIT_VERSION: Final = re.compile(
    r"^(?P<name>[a-z][a-z0-9_-]{0,62})\.(?P<split>[a-z][a-z0-9_-]{0,31})\.(?P<version>[1-9][0-9]{0,8})$"
)

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SLICE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ROLES: Final = ("system", "user", "assistant")
_ROW_KEYS: Final = frozenset(
    {"id", "input", "expected", "context", "tools", "expected_tool_calls", "tags", "slices"}
)
_MAX_TEXT: Final = 100_000  # characters of one input message, expected answer or context
_MAX_MESSAGES: Final = 64
_MAX_TOOLS: Final = 64
_MAX_TAGS: Final = 32
_MAX_TAG_LENGTH: Final = 64  # as routing's content tags
_MAX_SLICES: Final = 16
_MAX_SLICE_VALUE: Final = 64


class DatasetError(ValueError):
    """The dataset as a whole is unusable: empty, too large, not UTF-8, or not its manifest."""


class DatasetRowError(DatasetError):
    """One row is refused; `line` is 1-based and `field` a JSON path (`(line)`: not JSON)."""

    def __init__(self, line: int, field: str, problem: str) -> None:
        super().__init__(f"line {line}, field {field}: {problem}")
        self.line = line
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call a task expects: the tool's name and its exact arguments (read-only)."""

    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class EvalTask:
    """One validated task. A string `input` is held as a single user message.

    The mappings (messages, tools, arguments, slices) are plain dicts: treat them as read-only.
    """

    id: str
    messages: tuple[Mapping[str, str], ...]
    expected: str | None = None
    context: str | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    expected_tool_calls: tuple[ToolCallSpec, ...] = ()
    tags: tuple[str, ...] = ()
    slices: Mapping[str, str] = field(default_factory=dict)

    @property
    def input_text(self) -> str:
        """The last user message's content: what a simulated provider looks the task up by."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        raise AssertionError("a validated task always has a user message")  # pragma: no cover

    def to_row(self) -> dict[str, Any]:
        """The task as a JSONL row (optional fields left out when unset); parses back equal."""
        row: dict[str, Any] = {"id": self.id}
        if len(self.messages) == 1 and self.messages[0]["role"] == "user":
            row["input"] = self.messages[0]["content"]
        else:
            row["input"] = [dict(m) for m in self.messages]
        if self.expected is not None:
            row["expected"] = self.expected
        if self.context is not None:
            row["context"] = self.context
        if self.tools:
            row["tools"] = [dict(t) for t in self.tools]
        if self.expected_tool_calls:
            row["expected_tool_calls"] = [
                {"name": c.name, "arguments": dict(c.arguments)} for c in self.expected_tool_calls
            ]
        if self.tags:
            row["tags"] = list(self.tags)
        if self.slices:
            row["slices"] = dict(self.slices)
        return row


@dataclass(frozen=True)
class ParsedDataset:
    """A validated dataset: its tasks in file order, and what identifies its bytes."""

    tasks: tuple[EvalTask, ...]
    sha256: str
    size_bytes: int
    # slice key -> value -> number of tasks, keys and values sorted.
    slice_counts: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class DatasetManifest:
    """What identifies one dataset version; written next to its file as `<stem>.manifest.json`."""

    name: str
    file: str
    sha256: str
    rows: int
    size_bytes: int
    provenance_id: str
    slices: Mapping[str, Mapping[str, int]]
    schema: str = SCHEMA_ID
    # How the content was made, when a generator made it (`evals/generate_tasks.py`).
    generator: str | None = None
    generator_seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "rows": self.rows,
            "size_bytes": self.size_bytes,
            "schema": self.schema,
            "provenance_id": self.provenance_id,
            "slices": {key: dict(counts) for key, counts in self.slices.items()},
        }
        if self.generator is not None:
            data["generator"] = self.generator
        if self.generator_seed is not None:
            data["generator_seed"] = self.generator_seed
        return data

    def to_json(self) -> str:
        """The manifest file's text: keys sorted, 2-space indent, a final newline."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetManifest:
        """Parse a manifest file; DatasetError names the field that is wrong."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DatasetError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DatasetError("manifest must be a JSON object")
        known = {
            "name",
            "file",
            "sha256",
            "rows",
            "size_bytes",
            "schema",
            "provenance_id",
            "slices",
            "generator",
            "generator_seed",
        }
        for key in sorted(data):
            if key not in known:
                raise DatasetError(f"manifest field {key}: unknown field")

        def text_field(key: str) -> str:
            value = data.get(key)
            if not isinstance(value, str) or not value:
                raise DatasetError(f"manifest field {key}: required, a non-empty string")
            return value

        def count_field(key: str) -> int:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DatasetError(f"manifest field {key}: required, a non-negative integer")
            return value

        name = text_field("name")
        validate_dataset_name(name)
        sha256 = text_field("sha256")
        if not _SHA256.fullmatch(sha256):
            raise DatasetError("manifest field sha256: expected 64 lower-case hex digits")
        schema = text_field("schema")
        if schema != SCHEMA_ID:
            raise DatasetError(f"manifest field schema: {schema!r} is not {SCHEMA_ID!r}")
        slices = data.get("slices", {})
        if not isinstance(slices, dict) or not all(
            isinstance(counts, dict)
            and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()
            )
            for counts in slices.values()
        ):
            raise DatasetError("manifest field slices: expected {key: {value: count}}")
        generator = data.get("generator")
        if generator is not None and not isinstance(generator, str):
            raise DatasetError("manifest field generator: expected a string")
        seed = data.get("generator_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DatasetError("manifest field generator_seed: expected an integer")
        return cls(
            name=name,
            file=text_field("file"),
            sha256=sha256,
            rows=count_field("rows"),
            size_bytes=count_field("size_bytes"),
            provenance_id=text_field("provenance_id"),
            slices=slices,
            schema=schema,
            generator=generator,
            generator_seed=seed,
        )


def validate_dataset_name(name: str) -> None:
    """Raise DatasetError unless `name` is `name.split.version` (`intelgraph_golden.test.1`)."""
    if not NAME_SPLIT_VERSION.fullmatch(name):
        raise DatasetError(
            f"dataset name {name!r} is not name.split.version: a lower-case name, a split "
            "such as test, and a positive integer version (intelgraph_golden.test.1)"
        )


def provenance_id_for(name: str, sha256: str) -> str:
    """`prov-` and 16 hex digits of SHA-256(name + sha256): stable for one name and content."""
    return "prov-" + hashlib.sha256((name + sha256).encode()).hexdigest()[:16]


def manifest_for(
    name: str,
    file: str,
    parsed: ParsedDataset,
    *,
    generator: str | None = None,
    generator_seed: int | None = None,
) -> DatasetManifest:
    """The manifest of `parsed`, published as `name` (validated) in `file`."""
    validate_dataset_name(name)
    return DatasetManifest(
        name=name,
        file=file,
        sha256=parsed.sha256,
        rows=len(parsed.tasks),
        size_bytes=parsed.size_bytes,
        provenance_id=provenance_id_for(name, parsed.sha256),
        slices=parsed.slice_counts,
        generator=generator,
        generator_seed=generator_seed,
    )


def manifest_path_for(path: Path) -> Path:
    """Where a dataset file's manifest lives by default: `<stem>.manifest.json` beside it."""
    return path.with_name(f"{path.stem}.manifest.json")


def load_dataset_file(
    path: Path, manifest_path: Path | None = None
) -> tuple[ParsedDataset, DatasetManifest | None]:
    """Read and parse a dataset file and check it against its manifest.

    The manifest is `manifest_path`, or else `<stem>.manifest.json` beside the file when that
    exists (None is returned when it does not). A manifest whose digest, row count, size or
    file name differ from the file raises DatasetError: the file was edited without making a
    new version.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    parsed = parse_jsonl(data)
    explicit = manifest_path is not None
    manifest_file = manifest_path if manifest_path is not None else manifest_path_for(path)
    if not explicit and not manifest_file.exists():
        return parsed, None
    try:
        manifest = DatasetManifest.from_json(manifest_file.read_bytes())
    except OSError as exc:
        raise DatasetError(f"{manifest_file}: cannot read: {exc.strerror or exc}") from None
    except DatasetError as exc:
        raise DatasetError(f"{manifest_file}: {exc}") from None
    if manifest.sha256 != parsed.sha256:
        raise DatasetError(
            f"{path}: digest mismatch: manifest says {manifest.sha256}, file has "
            f"{parsed.sha256}; a published version is immutable, so publish the change as a "
            "new version"
        )
    if manifest.rows != len(parsed.tasks):
        raise DatasetError(
            f"{path}: row count mismatch: manifest says {manifest.rows}, file has "
            f"{len(parsed.tasks)}"
        )
    if manifest.size_bytes != parsed.size_bytes:
        raise DatasetError(
            f"{path}: size mismatch: manifest says {manifest.size_bytes}, file has "
            f"{parsed.size_bytes}"
        )
    if manifest.file != path.name:
        raise DatasetError(f"{manifest_file}: describes {manifest.file!r}, not {path.name!r}")
    return parsed, manifest


def parse_jsonl(data: bytes, *, max_rows: int = MAX_ROWS) -> ParsedDataset:
    """Validate JSONL task rows; blank lines are skipped (line numbers still count them).

    Raises DatasetRowError for the first bad row (a duplicate id on the duplicate's line, field
    `id`), DatasetError when the content is empty, not UTF-8 or has more than `max_rows` rows.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"line {line}: not UTF-8 (byte offset {exc.start})") from None
    tasks: list[EvalTask] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(tasks) == max_rows:
            raise DatasetError(f"more than {max_rows} rows (line {number})")
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # orjson counts lines and columns within the one line it was given.
            raise DatasetRowError(
                number, "(line)", f"not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        task = _task(row, number)
        first = seen.get(task.id)
        if first is not None:
            raise DatasetRowError(number, "id", f"duplicate id {task.id!r} (first on line {first})")
        seen[task.id] = number
        tasks.append(task)
    if not tasks:
        raise DatasetError("no rows: a dataset holds at least one task")
    return ParsedDataset(
        tasks=tuple(tasks),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        slice_counts=_slice_counts(tasks),
    )


def _slice_counts(tasks: Sequence[EvalTask]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for task in tasks:
        for key, value in task.slices.items():
            per_value = counts.setdefault(key, {})
            per_value[value] = per_value.get(value, 0) + 1
    return {key: dict(sorted(counts[key].items())) for key in sorted(counts)}


def _task(row: object, line: int) -> EvalTask:
    if not isinstance(row, dict):
        raise DatasetRowError(line, "(line)", f"expected a JSON object, got {_kind(row)}")
    for key in row:
        if key not in _ROW_KEYS:
            raise DatasetRowError(
                line, key, f"unknown field; allowed: {', '.join(sorted(_ROW_KEYS))}"
            )
    # An explicit null is the same as leaving an optional field out.
    task_id = row.get("id")
    if task_id is None:
        raise DatasetRowError(line, "id", "required")
    if not isinstance(task_id, str) or not _ID.fullmatch(task_id):
        raise DatasetRowError(
            line, "id", "expected 1-128 characters of letters, digits and . _ : -"
        )
    messages = _messages(row.get("input"), line)
    expected = _optional_text(row.get("expected"), line, "expected")
    context = _optional_text(row.get("context"), line, "context")
    tools = _tools(row.get("tools"), line)
    calls = _tool_calls(row.get("expected_tool_calls"), tools, line)
    if expected is None and not calls:
        raise DatasetRowError(
            line, "expected", "a task needs `expected`, `expected_tool_calls` or both"
        )
    return EvalTask(
        id=task_id,
        messages=messages,
        expected=expected,
        context=context,
        tools=tuple(tools.values()),
        expected_tool_calls=calls,
        tags=_tags(row.get("tags"), line),
        slices=_slices(row.get("slices"), line),
    )


def _messages(value: object, line: int) -> tuple[dict[str, str], ...]:
    if value is None:
        raise DatasetRowError(line, "input", "required")
    if isinstance(value, str):
        _check_text(value, line, "input")
        return ({"role": "user", "content": value},)
    if not isinstance(value, list):
        raise DatasetRowError(
            line, "input", f"expected a string or a list of messages, got {_kind(value)}"
        )
    if not value:
        raise DatasetRowError(line, "input", "empty: at least one message")
    if len(value) > _MAX_MESSAGES:
        raise DatasetRowError(line, "input", f"more than {_MAX_MESSAGES} messages")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(value):
        path = f"input[{index}]"
        if not isinstance(message, dict):
            raise DatasetRowError(line, path, f"expected a message object, got {_kind(message)}")
        for key in message:
            if key not in ("role", "content"):
                raise DatasetRowError(
                    line, f"{path}.{key}", "unknown field; allowed: content, role"
                )
        role = message.get("role")
        if role not in _ROLES:
            raise DatasetRowError(
                line, f"{path}.role", f"{role!r} is not one of {', '.join(_ROLES)}"
            )
        content = message.get("content")
        _check_text(content, line, f"{path}.content")
        assert isinstance(content, str)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise DatasetRowError(line, "input", "no user message")
    return tuple(messages)


def _check_text(value: object, line: int, path: str) -> None:
    if not isinstance(value, str):
        raise DatasetRowError(line, path, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise DatasetRowError(line, path, "empty")
    if len(value) > _MAX_TEXT:
        raise DatasetRowError(line, path, f"longer than {_MAX_TEXT} characters")


def _optional_text(value: object, line: int, path: str) -> str | None:
    if value is None:
        return None
    _check_text(value, line, path)
    assert isinstance(value, str)
    return value


def _tools(value: object, line: int) -> dict[str, dict[str, Any]]:
    """Offered tools by name, in order."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise DatasetRowError(line, "tools", f"expected a list of tools, got {_kind(value)}")
    if len(value) > _MAX_TOOLS:
        raise DatasetRowError(line, "tools", f"more than {_MAX_TOOLS} tools")
    tools: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(value):
        path = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise DatasetRowError(line, path, f"expected a tool object, got {_kind(tool)}")
        for key in tool:
            if key not in ("type", "function"):
                raise DatasetRowError(
                    line, f"{path}.{key}", "unknown field; allowed: function, type"
                )
        if tool.get("type") != "function":
            raise DatasetRowError(line, f"{path}.type", 'required, must be "function"')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise DatasetRowError(line, f"{path}.function", "required, an object")
        for key in function:
            if key not in ("name", "description", "parameters", "strict"):
                raise DatasetRowError(
                    line,
                    f"{path}.function.{key}",
                    "unknown field; allowed: description, name, parameters, strict",
                )
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise DatasetRowError(
                line,
                f"{path}.function.name",
                "required, 1-64 letters, digits, underscores and hyphens",
            )
        if name in tools:
            raise DatasetRowError(line, f"{path}.function.name", f"tool {name!r} offered twice")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise DatasetRowError(line, f"{path}.function.description", "expected a string")
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise DatasetRowError(
                    line, f"{path}.function.parameters", "expected a JSON schema object"
                )
            if parameters.get("type", "object") != "object":
                raise DatasetRowError(
                    line, f"{path}.function.parameters.type", 'a tool\'s parameters are "object"'
                )
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise DatasetRowError(line, f"{path}.function.strict", "expected true or false")
        tools[name] = tool
    return tools


def _tool_calls(
    value: object, tools: Mapping[str, Mapping[str, Any]], line: int
) -> tuple[ToolCallSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DatasetRowError(
            line, "expected_tool_calls", f"expected a list of tool calls, got {_kind(value)}"
        )
    if not value:
        raise DatasetRowError(
            line, "expected_tool_calls", "empty: leave the field out when no call is expected"
        )
    if not tools:
        raise DatasetRowError(line, "tools", "required when expected_tool_calls is set")
    calls: list[ToolCallSpec] = []
    for index, call in enumerate(value):
        path = f"expected_tool_calls[{index}]"
        if not isinstance(call, dict):
            raise DatasetRowError(line, path, f"expected a tool call object, got {_kind(call)}")
        for key in call:
            if key not in ("name", "arguments"):
                raise DatasetRowError(
                    line, f"{path}.{key}", "unknown field; allowed: arguments, name"
                )
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise DatasetRowError(line, f"{path}.name", "required, a tool name")
        if name not in tools:
            offered = ", ".join(tools)
            raise DatasetRowError(
                line, f"{path}.name", f"tool {name!r} is not offered in tools (offered: {offered})"
            )
        arguments = call.get("arguments")
        if not isinstance(arguments, dict):
            raise DatasetRowError(
                line, f"{path}.arguments", f"required, a JSON object, got {_kind(arguments)}"
            )
        calls.append(ToolCallSpec(name=name, arguments=arguments))
    return tuple(calls)


def _tags(value: object, line: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DatasetRowError(line, "tags", f"expected a list of strings, got {_kind(value)}")
    if len(value) > _MAX_TAGS:
        raise DatasetRowError(line, "tags", f"more than {_MAX_TAGS} tags")
    tags: list[str] = []
    for index, tag in enumerate(value):
        path = f"tags[{index}]"
        if not isinstance(tag, str):
            raise DatasetRowError(line, path, f"expected a string, got {_kind(tag)}")
        if not tag or len(tag) > _MAX_TAG_LENGTH or any(c.isspace() for c in tag):
            raise DatasetRowError(
                line, path, f"a tag is 1-{_MAX_TAG_LENGTH} characters without spaces"
            )
        if tag in tags:
            raise DatasetRowError(line, path, f"duplicate tag {tag!r}")
        tags.append(tag)
    return tuple(tags)


def _slices(value: object, line: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DatasetRowError(
            line, "slices", f"expected an object of string values, got {_kind(value)}"
        )
    if len(value) > _MAX_SLICES:
        raise DatasetRowError(line, "slices", f"more than {_MAX_SLICES} slices")
    slices: dict[str, str] = {}
    for key, item in value.items():
        path = f"slices.{key}"
        if not _SLICE_KEY.fullmatch(key):
            raise DatasetRowError(
                line, path, "a slice key is lower-case letters, digits and underscores"
            )
        if not isinstance(item, str):
            raise DatasetRowError(line, path, f"expected a string, got {_kind(item)}")
        if not item or len(item) > _MAX_SLICE_VALUE:
            raise DatasetRowError(line, path, f"a slice value is 1-{_MAX_SLICE_VALUE} characters")
        slices[key] = item
    return slices


def _kind(value: object) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
