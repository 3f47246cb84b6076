"""Rego routing policies compiled into a decision table when a snapshot is built.

A Rego query through regopy costs about 1 ms (it compiles the program each time), far too slow per
request, so `compile_routing_policy` evaluates `data.maestro.routing.allow` over the whole finite
domain once, at config time, and the hot path does a dict look-up (`PolicyTable.tag_key`) and a
row look-up (`PolicyTable.allowed_row`).

Each (tag set, model) cell is evaluated with the input document::

    {"step_tags": [sorted tags], "selected_model": <model name>,
     "model": {"provider": str, "jurisdiction": str, "in_house": bool}, "project": <project id>}

Only a verdict that is exactly `true` allows; `false`, undefined (no rule fired and no default)
and any non-boolean value deny. If the package also defines `deny_reason` or `violation` (a
string, or a set of strings), the strings it yields for a denied cell become that cell's
`reasons`; otherwise a denied cell's reason names the policy modules.

Tag domain. A Rego policy tells tags apart by the string literals it contains, so:

- Every string literal of the modules that looks like a tag (no whitespace, at most 128
  characters) and is not a fact value (a model name, provider, jurisdiction, or the project id)
  is a *policy tag*, with its own bit in the row key.
- Every other tag collapses to one sentinel, `OTHER_TAG` ("some tag the policy does not name"),
  which has a bit of its own: a row key is the set of policy tags present plus the sentinel bit.
- Probing: each of `known_tags` (detector and configured tags) and each tag-like literal that is
  a fact value is evaluated alone (`[tag]`) and compared with `[OTHER_TAG]`; one that changes any
  model's verdict is promoted to a policy tag. This keeps policies that match known tags without
  naming them (`startswith(tag, "pii.")` with `pii.email`) exact.

Limitation, by design: a policy that distinguishes tags it does not name literally is
approximated. A tag outside `known_tags` that such a policy treats differently from the sentinel,
a known tag that matters only in combination with another tag, or a policy that counts tags (two
unnamed tags collapse into one sentinel) can get another verdict than direct evaluation would
give. Policies that compare tags with literals, as the seed's does, compile exactly.

At most `MAX_TAG_BITS` row-key bits (the sentinel's included, so 4,096 rows) are compiled; a
policy set over the cap is rejected with `PolicyError`.

A module set with no `package maestro.routing` module (the empty set included) places no routing
restriction: every model is allowed for every tag set.

Evaluation (regopy 1.5.2, rego-cpp underneath). The modules are built once into a bundle with
`allow` (and the reason rules) as entry points; each cell then costs one `set_input` and one
entry-point query, 30-150 us depending on the policy. This runs in worker processes (at most
`_CELLS_PER_WORKER` cells each, several at once on large domains), never in the server: rego-cpp
leaks 1.5-6 KB on every query, which a 10^6-cell table would turn into gigabytes, and regopy has
paths that crash the process. A worker costs about 0.2 s to start.

Evaluating the whole domain in one query (a generated module iterates it and evaluates `allow`
`with input as` each cell) was measured and rejected: rego-cpp 1.5.2 cannot compile `with input`
over an `allow` that calls any function (`in`, `startswith`, `count`, `sprintf`, ...) or refers
to another rule (internal error "shape `rego-localref` has no field `rego-refhead`"), stops a
query after a fixed statement count (about 10^5 cells of the seed policy), and where it works it
is only 10-40% faster, because evaluation, not the query, dominates.

Fail closed: a module that does not parse raises `PolicyError(module, line, message)`; a set that
does not compile (two `default allow`, a function that does not exist, ...) or whose evaluation
fails (a complete rule with conflicting values, ...) raises `PolicyError`, so the snapshot is
rejected and the previous one stays. Built-in errors such as a division by zero are not errors
in Rego's default (non-strict) mode: the expression is undefined, so the cell is denied.
"""

from __future__ import annotations

import base64
import ctypes
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import regopy  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "MAX_TAG_BITS",
    "OTHER_TAG",
    "REASON_RULES",
    "ROUTING_PACKAGE",
    "CompileInfo",
    "ModelFacts",
    "PolicyError",
    "PolicyModule",
    "PolicyTable",
    "compile_routing_policy",
    "cost_violations",
    "string_literals",
]

OTHER_TAG: Final = "<other>"
"""The sentinel that stands for every tag the compiled policy does not name."""

MAX_TAG_BITS: Final = 12
"""Row-key bits, the sentinel's included: at most 11 policy tags, 4,096 rows."""

ROUTING_PACKAGE: Final = "maestro.routing"
REASON_RULES: Final = ("deny_reason", "violation")

BoolArray = npt.NDArray[np.bool_]

_rs: Any = regopy.rego_shared  # the C API: `regopy.Output` and `Input` are not enough, see below
_MAX_TAG_LENGTH = 128
_CELLS_PER_WORKER = 50_000  # rego-cpp leaks 1.5-6 KB a query: bound what one worker accumulates
_MAX_WORKERS = 8
_COMPILE_TIMEOUT_S = 600.0
_WORKER_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[3]); "
    "from maestro.routing.policy import _worker_main; "
    "_worker_main(sys.argv[1], sys.argv[2])"
)
_STRING_LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"|`([^`]*)`')
_ROUTING_PACKAGE_DECL = re.compile(r"^[ \t]*package[ \t]+maestro\.routing[ \t]*(?:#.*)?$", re.M)
_REASON_RULE_DECL = re.compile(r"^[ \t]*(deny_reason|violation)\b", re.M)
_ERROR_ENTRY = re.compile(rb"\(error (\d+):")
_ERROR_POSITION = re.compile(rb"\|(\d+)\|(\d+)")
_ERROR_MESSAGE = re.compile(rb"\(errormsg (\d+):")


@dataclass(frozen=True, slots=True)
class PolicyModule:
    """One Rego module: `name` is what errors cite (usually a file name)."""

    name: str
    source: str


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a policy may know about a model: `input.selected_model` and `input.model`."""

    name: str
    provider: str
    jurisdiction: str
    in_house: bool


class PolicyError(Exception):
    """A policy set that does not load, compile or evaluate.

    `module` is the offending module's name where the engine says which (otherwise the routing
    modules' names, comma-separated); `line` is 1-based, None where unknown.
    """

    module: str
    line: int | None
    message: str

    def __init__(self, module: str, line: int | None, message: str) -> None:
        where = f"{module}:{line}" if line is not None else module
        super().__init__(f"{where}: {message}")
        self.module = module
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class CompileInfo:
    """What a compile cost: engine queries, evaluated cells (probes included), worker
    processes, wall-clock seconds."""

    queries: int
    cells: int
    processes: int
    seconds: float


class PolicyTable:
    """A compiled routing policy: one read-only row of verdicts per tag-set key.

    A row key is a bit set: bit i for `tags[i]`, and `1 << len(tags)` (the sentinel bit) for any
    other tag. Columns follow `models`.
    """

    __slots__ = ("_bits", "_fallback", "_other_bit", "_reasons", "_rows", "info", "models", "tags")

    models: tuple[str, ...]
    tags: tuple[str, ...]
    info: CompileInfo

    def __init__(
        self,
        models: tuple[str, ...],
        tags: tuple[str, ...],
        table: BoolArray,
        reasons: Mapping[tuple[int, int], tuple[str, ...]],
        fallback_reason: str,
        info: CompileInfo,
    ) -> None:
        if table.shape != (1 << (len(tags) + 1), len(models)):
            raise ValueError(f"a table of shape {table.shape} does not fit {len(tags)} tags")
        self.models = models
        self.tags = tags
        self.info = info
        self._other_bit = 1 << len(tags)
        self._bits = {tag: 1 << i for i, tag in enumerate(tags)}
        frozen = np.array(table, dtype=np.bool_, copy=True)
        frozen.setflags(write=False)  # the rows below are views: read-only too
        self._rows: tuple[BoolArray, ...] = tuple(frozen[key] for key in range(frozen.shape[0]))
        self._reasons = dict(reasons)
        self._fallback = (fallback_reason,)

    @property
    def row_count(self) -> int:
        return len(self._rows)

    def tag_key(self, tags: frozenset[str]) -> int:
        """The row key of a request's tags; tags the policy does not name set the sentinel bit."""
        bits = self._bits
        other = self._other_bit
        key = 0
        for tag in tags:
            key |= bits.get(tag, other)
        return key

    def allowed_row(self, key: int) -> BoolArray:
        """Read-only verdicts of row `key`, one per model (in `models` order)."""
        return self._rows[key]

    def reasons(self, key: int, model_index: int) -> tuple[str, ...]:
        """Why the policy denies `models[model_index]` for row `key`; () where it allows it."""
        if self._rows[key][model_index]:
            return ()
        return self._reasons.get((key, model_index), self._fallback)

    def tags_of(self, key: int) -> list[str]:
        """The sorted `step_tags` row `key` was evaluated with."""
        tags = [tag for i, tag in enumerate(self.tags) if key >> i & 1]
        if key & self._other_bit:
            tags.append(OTHER_TAG)
        return sorted(tags)


# -- the engine -------------------------------------------------------------------------------


class _EngineError(Exception):
    def __init__(self, message: str, module: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.module = module
        self.line = line


_UNDEFINED: Final = object()
_TRUE_OUTPUT = b'{"expressions":[true]}'
_FALSE_OUTPUT = b'{"expressions":[false]}'
_UNDEFINED_OUTPUT = b"undefined"
_KEYS = {
    key: key.encode()
    for key in (
        "step_tags",
        "selected_model",
        "model",
        "provider",
        "jurisdiction",
        "in_house",
        "project",
    )
}


def _error_location(text: str, sources: Mapping[str, str]) -> tuple[str | None, int | None]:
    """The first `(error <size>:<name>|<byte offset>|<size>` that names a module, as a line."""
    raw = text.encode()
    for match in _ERROR_ENTRY.finditer(raw):
        size = int(match.group(1))
        name = raw[match.end() : match.end() + size].decode(errors="replace")
        position = _ERROR_POSITION.match(raw, match.end() + size)
        if name in sources and position:
            offset = int(position.group(1))
            return name, sources[name].encode()[:offset].count(b"\n") + 1
    return None, None


def _error_from_text(text: str, sources: Mapping[str, str]) -> _EngineError:
    """An engine error printed as an s-expression (`(rego-errorseq (error ...`)."""
    raw = text.encode()
    messages = []
    for match in _ERROR_MESSAGE.finditer(raw):
        size = int(match.group(1))
        messages.append(raw[match.end() : match.end() + size].decode(errors="replace"))
    module, line = _error_location(text, sources)
    message = "; ".join(dict.fromkeys(messages)) or text.strip() or "the policy does not compile"
    return _EngineError(message, module, line)


def _error_from_node(node: Any, sources: Mapping[str, str]) -> _EngineError:
    """An engine error as an ErrorSeq or Error node."""
    if not node:
        return _EngineError("the policy does not evaluate")
    if _rs.rego_node_type(node) == regopy.NodeKind.Error:
        errors = [node]
    else:
        errors = [_rs.rego_node_get(node, i) for i in range(int(_rs.rego_node_size(node)))]
    messages: list[str] = []
    module: str | None = None
    line: int | None = None
    for error in errors:
        for i in range(int(_rs.rego_node_size(error))):
            child = _rs.rego_node_get(error, i)
            if _rs.rego_node_type(child) == regopy.NodeKind.ErrorMessage:
                messages.append(str(_rs.rego_node_value(child)))
        if module is None:
            module, line = _error_location(str(_rs.rego_node_json(error)), sources)
    message = "; ".join(dict.fromkeys(m for m in messages if m)) or "the policy does not evaluate"
    return _EngineError(message, module, line)


def _read_output(interpreter: Any, output: Any, sources: Mapping[str, str]) -> object:
    """The value a query answered, `_UNDEFINED`, or `_EngineError` raised.

    regopy 1.5.2 crashes the process (SIGSEGV) in `regoOutputNode`/`regoOutputJSON` for failed
    outputs whose error text the interpreter holds instead, so a failed output is read through
    `rego_get_error` first and its node only when that is empty. `regopy.Output` is not used: it
    has the same problem and cannot parse an error returned as a result ("Function not found").
    """
    lib = _rs.rego
    if not output:
        raise _EngineError(str(_rs.rego_get_error(interpreter._impl)) or "the query failed")
    try:
        if not lib.regoOutputOk(output):
            text = str(_rs.rego_get_error(interpreter._impl))
            if text:
                raise _EngineError(text)
            raise _error_from_node(lib.regoOutputNode(output), sources)
        size = int(lib.regoOutputJSONSize(output))
        buffer = ctypes.create_string_buffer(size)
        if lib.regoOutputJSON(output, buffer, size) != 0:
            raise _EngineError("the engine's output could not be read")
        raw = buffer.value
    finally:
        lib.regoFreeOutput(output)
    if raw == _TRUE_OUTPUT:
        return True
    if raw == _FALSE_OUTPUT:
        return False
    if raw == _UNDEFINED_OUTPUT:
        return _UNDEFINED
    try:
        document = json.loads(raw)
    except ValueError:  # an error printed as the result: "(error (errormsg ..."
        raise _error_from_text(raw.decode(errors="replace"), sources) from None
    if isinstance(document, list):  # several results: the first one decides
        document = document[0] if document else {}
    expressions = document.get("expressions", []) if isinstance(document, dict) else []
    return expressions[0] if expressions else _UNDEFINED


_EncodedModel = tuple[bytes, bytes, bytes, bool, bytes]


class _Engine:
    """The policy set built into a bundle, evaluated one (tag set, model) cell per query."""

    def __init__(
        self,
        modules: Sequence[PolicyModule],
        reason_rules: Sequence[str],
        models: Sequence[ModelFacts],
        project: str,
    ) -> None:
        self.sources = {m.name: m.source for m in modules}
        self.reason_rules = tuple(reason_rules)
        self.queries = 0
        self.cells = 0
        self._models: tuple[_EncodedModel, ...] = tuple(
            (
                m.name.encode(),
                m.provider.encode(),
                m.jurisdiction.encode(),
                m.in_house,
                project.encode(),
            )
            for m in models
        )
        interpreter = regopy.Interpreter()
        interpreter.log_level = regopy.LogLevel.NONE  # errors come back to us: don't print them
        for module in modules:
            try:
                interpreter.add_module(module.name, module.source)
            except regopy.RegoError as exc:
                error = _error_from_text(str(exc), self.sources)
                raise _EngineError(error.message, module.name, error.line) from None
        rules = ("allow", *reason_rules)
        entrypoints = [f"{ROUTING_PACKAGE.replace('.', '/')}/{rule}" for rule in rules]
        bundle = interpreter.build(None, entrypoints)
        if not bundle.ok():
            text = str(_rs.rego_get_error(interpreter._impl))
            if text:
                raise _error_from_text(text, self.sources)
            raise _error_from_node(_rs.rego_bundle_node(bundle._impl), self.sources)
        self._interpreter = interpreter
        self._bundle = bundle
        self._entrypoints = {rule: e.encode() for rule, e in zip(rules, entrypoints, strict=True)}

    def evaluate(
        self, tagsets: Sequence[Sequence[str]], reasons_from: int
    ) -> tuple[BoolArray, dict[tuple[int, int], tuple[str, ...]]]:
        """allowed[i, j] (`allow` is exactly true for tag set i and model j), and for the denied
        cells of rows from `reasons_from` on, the strings the reason rules yield."""
        allowed = np.zeros((len(tagsets), len(self._models)), dtype=np.bool_)
        reasons: dict[tuple[int, int], tuple[str, ...]] = {}
        for i, tagset in enumerate(tagsets):
            tags = [tag.encode() for tag in tagset]
            with_reasons = bool(self.reason_rules) and i >= reasons_from
            for j, model in enumerate(self._models):
                self._set_input(tags, model)
                self.cells += 1
                if self._query("allow") is True:
                    allowed[i, j] = True
                elif with_reasons:
                    texts = {t for rule in self.reason_rules for t in _strings(self._query(rule))}
                    if texts:
                        reasons[i, j] = tuple(sorted(texts))
        return allowed, reasons

    def close(self) -> None:
        """Free the bundle, then the interpreter that built it."""
        self._bundle = None
        self._interpreter = None

    def _query(self, rule: str) -> object:
        self.queries += 1
        output = _rs.rego.regoBundleQueryEntrypoint(
            self._interpreter._impl, self._bundle._impl, self._entrypoints[rule]
        )
        return _read_output(self._interpreter, output, self.sources)

    def _set_input(self, tags: Sequence[bytes], model: _EncodedModel) -> None:
        """`set_input(cell)` through the C API: a third of what `regopy.Input(dict)` costs."""
        lib = _rs.rego
        name, provider, jurisdiction, in_house, project = model
        handle = lib.regoNewInput()
        if not handle:
            raise _EngineError("the engine could not allocate an input document")
        try:
            string, item = lib.regoInputString, lib.regoInputObjectItem
            failed = string(handle, _KEYS["step_tags"])
            for tag in tags:
                failed |= string(handle, tag)
            failed |= lib.regoInputArray(handle, len(tags)) | item(handle)
            failed |= string(handle, _KEYS["selected_model"]) | string(handle, name) | item(handle)
            failed |= string(handle, _KEYS["model"])
            failed |= string(handle, _KEYS["provider"]) | string(handle, provider) | item(handle)
            failed |= string(handle, _KEYS["jurisdiction"]) | string(handle, jurisdiction)
            failed |= item(handle) | string(handle, _KEYS["in_house"])
            failed |= lib.regoInputBoolean(handle, in_house) | item(handle)
            failed |= lib.regoInputObject(handle, 3) | item(handle)
            failed |= string(handle, _KEYS["project"]) | string(handle, project) | item(handle)
            failed |= lib.regoInputObject(handle, 4)
            if failed or lib.regoSetInput(self._interpreter._impl, handle) != 0:
                raise _EngineError("the engine rejected an input document")
        finally:
            lib.regoFreeInput(handle)  # regoSetInput copied it


def _strings(value: object) -> list[str]:
    """A reason rule's value as strings: a string, a set (a JSON array) or, as rego-cpp renders
    the v0 partial set `deny_reason[msg] { ... }`, an object keyed by the members."""
    if value is _UNDEFINED:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        items: list[object] = list(value)
    elif isinstance(value, list):
        items = value
    else:
        return []
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


# -- worker processes -------------------------------------------------------------------------
#
# The engine runs in child processes, never in the server: rego-cpp 1.5.2 leaks 1.5-6 KB on every
# query (freed outputs and interpreters included), which a 10^6-cell table would turn into
# gigabytes; a crash in native code (regopy has SIGSEGV paths) costs a rejected config, not the
# control plane; and large domains are evaluated in parallel.


def _worker_main(job_path: str, result_path: str) -> None:
    """A worker's entry point: evaluate the job's rows, write the result as JSON."""
    with open(job_path, encoding="utf-8") as file:
        job = json.load(file)
    models = [ModelFacts(n, p, j, bool(h)) for n, p, j, h in job["models"]]
    modules = [PolicyModule(name, source) for name, source in job["modules"]]
    engine: _Engine | None = None
    try:
        engine = _Engine(modules, job["reason_rules"], models, job["project"])
        allowed, reasons = engine.evaluate(job["tagsets"], job["reasons_from"])
    except _EngineError as error:
        result: dict[str, object] = {
            "ok": False,
            "module": error.module,
            "line": error.line,
            "message": error.message,
        }
    else:
        texts: dict[tuple[str, ...], int] = {}
        cells = [[i, j, texts.setdefault(t, len(texts))] for (i, j), t in reasons.items()]
        result = {
            "ok": True,
            "allowed": base64.b64encode(np.packbits(allowed, axis=None).tobytes()).decode(),
            "reason_texts": [list(t) for t in texts],
            "reason_cells": cells,
            "queries": engine.queries,
            "cells": engine.cells,
        }
    finally:
        if engine is not None:
            engine.close()
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump(result, file)


@dataclass(slots=True)
class _Evaluation:
    allowed: BoolArray
    reasons: dict[tuple[int, int], tuple[str, ...]]
    queries: int = 0
    cells: int = 0
    processes: int = 0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _evaluate(
    modules: Sequence[PolicyModule],
    models: Sequence[ModelFacts],
    project: str,
    reason_rules: Sequence[str],
    tagsets: Sequence[Sequence[str]],
    reasons_from: int,
    where: str,
) -> _Evaluation:
    """Evaluate every (tag set, model) cell in worker processes, `_CELLS_PER_WORKER` each.

    At least one worker runs, so a module set that does not compile fails even without cells.
    """
    result = _Evaluation(np.zeros((len(tagsets), len(models)), dtype=np.bool_), {})
    rows_per_job = max(1, _CELLS_PER_WORKER // max(1, len(models)))
    starts = list(range(0, len(tagsets), rows_per_job)) or [0]
    common = {
        "modules": [[m.name, m.source] for m in modules],
        "models": [[m.name, m.provider, m.jurisdiction, m.in_house] for m in models],
        "project": project,
        "reason_rules": list(reason_rules),
    }
    deadline = time.monotonic() + _COMPILE_TIMEOUT_S
    with tempfile.TemporaryDirectory(prefix="maestro-policy-") as scratch:
        pending = list(enumerate(starts))
        running: list[tuple[int, int, subprocess.Popen[bytes], Any]] = []
        try:
            while pending or running:
                while pending and len(running) < min(_MAX_WORKERS, _cpu_count()):
                    k, start = pending.pop(0)
                    job = {
                        **common,
                        "tagsets": [list(t) for t in tagsets[start : start + rows_per_job]],
                        "reasons_from": max(0, reasons_from - start),
                    }
                    job_path = os.path.join(scratch, f"job-{k}.json")
                    with open(job_path, "w", encoding="utf-8") as file:
                        json.dump(job, file)
                    stderr = open(os.path.join(scratch, f"err-{k}.txt"), "wb")  # noqa: SIM115
                    command = [
                        sys.executable,
                        "-c",
                        _WORKER_BOOT,
                        job_path,
                        os.path.join(scratch, f"result-{k}.json"),
                        json.dumps([p for p in sys.path if p]),
                    ]
                    process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
                    )
                    running.append((k, start, process, stderr))
                    result.processes += 1
                k, start, process, stderr = running.pop(0)
                try:
                    code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    running.append((k, start, process, stderr))
                    raise PolicyError(
                        where, None, f"evaluating the policy took over {_COMPILE_TIMEOUT_S:.0f} s"
                    ) from None
                stderr.close()
                _merge(result, start, rows_per_job, scratch, k, code, where)
        finally:
            for _, _, process, stderr in running:
                process.kill()
                process.wait()
                stderr.close()
    return result


def _merge(
    result: _Evaluation, start: int, rows: int, scratch: str, k: int, code: int, where: str
) -> None:
    """Fold worker k's result (up to `rows` rows from `start`) into `result`, or raise
    PolicyError."""
    try:
        with open(os.path.join(scratch, f"result-{k}.json"), encoding="utf-8") as file:
            output = json.load(file)
    except (OSError, ValueError):
        with open(os.path.join(scratch, f"err-{k}.txt"), "rb") as file:
            lines = file.read().decode(errors="replace").strip().splitlines()
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        detail = f"{lines[-1]} ({status})" if lines else status
        raise PolicyError(where, None, f"the policy engine failed: {detail}") from None
    if not output["ok"]:
        raise PolicyError(output["module"] or where, output["line"], output["message"])
    rows = max(0, min(result.allowed.shape[0] - start, rows))
    columns = result.allowed.shape[1]
    bits = np.frombuffer(base64.b64decode(output["allowed"]), dtype=np.uint8)
    block = np.unpackbits(bits, count=rows * columns).astype(np.bool_).reshape(rows, columns)
    result.allowed[start : start + rows] = block
    texts = [tuple(t) for t in output["reason_texts"]]
    for i, j, t in output["reason_cells"]:
        result.reasons[start + i, j] = texts[t]
    result.queries += output["queries"]
    result.cells += output["cells"]


# -- compilation ------------------------------------------------------------------------------


def string_literals(source: str) -> set[str]:
    """Every string literal of a Rego source ("..." with JSON escapes, and raw `...`).

    A regex over the text, comments included: an over-approximation, which only adds rows.
    """
    found: set[str] = set()
    for match in _STRING_LITERAL.finditer(source):
        quoted, raw = match.group(1), match.group(2)
        if raw is not None:
            found.add(raw)
            continue
        try:
            found.add(str(json.loads(f'"{quoted}"')))
        except ValueError:
            found.add(quoted)
    return found


def _tag_like(text: str) -> bool:
    return (
        0 < len(text) <= _MAX_TAG_LENGTH
        and "\0" not in text  # the C API takes NUL-terminated strings
        and not any(c.isspace() for c in text)
    )


def _row_tagsets(tags: Sequence[str]) -> list[list[str]]:
    """The sorted `step_tags` of every row key (bit i: tags[i]; top bit: the sentinel)."""
    names = [*tags, OTHER_TAG]
    return [
        sorted(name for bit, name in enumerate(names) if key >> bit & 1)
        for key in range(1 << len(names))
    ]


def _check_tag_count(where: str, tags: Iterable[str]) -> None:
    names = sorted(tags)
    if len(names) + 1 > MAX_TAG_BITS:
        raise PolicyError(
            where,
            None,
            f"the policy distinguishes {len(names)} tags ({', '.join(names)}); a decision table "
            f"holds at most {MAX_TAG_BITS - 1}",
        )


def compile_routing_policy(
    modules: Sequence[PolicyModule],
    models: Sequence[ModelFacts],
    project: str,
    known_tags: Iterable[str] = (),
) -> PolicyTable:
    """Evaluate `data.maestro.routing.allow` over (tag sets x models) into a `PolicyTable`.

    Raises PolicyError for a module that does not parse (with its name and line), a set that does
    not compile or evaluate, or more policy tags than `MAX_TAG_BITS` allows; ValueError for
    duplicate model names. CPU-bound (tens of microseconds a cell): run it off the event loop.
    """
    started = time.perf_counter()
    names = tuple(m.name for m in models)
    if len(set(names)) != len(names):
        raise ValueError("model names must be unique")
    seen: set[str] = set()
    for module in modules:
        if module.name in seen:
            raise PolicyError(module.name, None, "two policy modules have this name")
        seen.add(module.name)
    routing = [m for m in modules if _ROUTING_PACKAGE_DECL.search(m.source)]
    where = ", ".join(m.name for m in routing)
    fallback = f"denied by policy {where}"
    if not routing:
        everything = np.ones((2, len(names)), dtype=np.bool_)
        info = CompileInfo(0, 0, 0, time.perf_counter() - started)
        return PolicyTable(names, (), everything, {}, fallback, info)

    facts = {project}
    for model in models:
        facts.update((model.name, model.provider, model.jurisdiction))
    literals = {t for m in modules for t in string_literals(m.source) if _tag_like(t)}
    literals.discard(OTHER_TAG)
    direct = literals - facts
    _check_tag_count(where, direct)
    probes = sorted(
        ({t for t in known_tags if _tag_like(t)} | (literals & facts)) - direct - {OTHER_TAG}
    )
    reason_rules = [r for r in REASON_RULES if any(_declares(m.source, r) for m in routing)]
    # Round one: the probes and the table over the literal tags; round two only if a probe
    # changed some verdict (its tag then needs a bit of its own).
    probe_rows = [[OTHER_TAG], *([t] for t in probes)] if probes else []
    tags = tuple(sorted(direct))
    _check_tag_count(where, tags)
    rows = _row_tagsets(tags)
    first = _evaluate(
        modules, models, project, reason_rules, [*probe_rows, *rows], len(probe_rows), where
    )
    evaluation = first
    table = first.allowed[len(probe_rows) :]
    reasons = {(i - len(probe_rows), j): r for (i, j), r in first.reasons.items()}
    promoted = {
        t
        for k, t in enumerate(probes, 1)
        if probe_rows and (first.allowed[k] != first.allowed[0]).any()
    }
    if promoted:
        tags = tuple(sorted(direct | promoted))
        _check_tag_count(where, tags)
        evaluation = _evaluate(modules, models, project, reason_rules, _row_tagsets(tags), 0, where)
        table, reasons = evaluation.allowed, evaluation.reasons
    info = CompileInfo(
        first.queries + (evaluation.queries if promoted else 0),
        first.cells + (evaluation.cells if promoted else 0),
        first.processes + (evaluation.processes if promoted else 0),
        time.perf_counter() - started,
    )
    return PolicyTable(names, tags, table, reasons, fallback, info)


def _declares(source: str, rule: str) -> bool:
    return any(m.group(1) == rule for m in _REASON_RULE_DECL.finditer(source))


# -- the cost guard ---------------------------------------------------------------------------


def _rego_number(value: float) -> float:
    """A float as rego-cpp 1.5.2 holds a JSON number: to 16 significant digits."""
    return float(f"{value:.16g}")


def cost_violations(estimated_cost: float, step_budget: float) -> list[str]:
    """The seed's `data.maestro.cost.violation`, natively.

    A violation when the cost exceeds the budget, worded as the seed's
    `sprintf("Step cost %.4f exceeds budget %.4f", ...)`. The numbers compare as rego-cpp compares
    them, at 16 significant digits (so a cost of `0.1 + 0.2` does not exceed a budget of `0.3`).
    NaN, which neither JSON nor Rego can express, is a violation (fail closed).
    """
    if estimated_cost <= step_budget:  # rounding is monotonic: no violation after it either
        return []
    cost = _rego_number(estimated_cost)
    budget = _rego_number(step_budget)
    if cost > budget or math.isnan(cost) or math.isnan(budget):
        return [f"Step cost {cost:.4f} exceeds budget {budget:.4f}"]
    return []
