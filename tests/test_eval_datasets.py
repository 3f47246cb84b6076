"""Eval datasets: the shipped intelgraph task files, their manifests, and the row validator.

The shipped files (`evals/tasks/*.jsonl`) must parse, cover every slice with allowed values,
keep inputs unique across both files (a simulated provider looks tasks up by input text), and
match their manifests byte for byte, so a dataset edited without regenerating fails here.
Regenerating writes identical bytes. Bad rows are refused with their line and field.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maestro.control_plane.evals.datasets import (
    SCHEMA_ID,
    DatasetError,
    DatasetManifest,
    DatasetRowError,
    EvalTask,
    ParsedDataset,
    load_dataset_file,
    manifest_for,
    parse_jsonl,
    provenance_id_for,
    validate_dataset_name,
)

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "evals" / "tasks"
GENERATOR = ROOT / "evals" / "generate_tasks.py"
SHIPPED = {
    "golden.jsonl": ("intelgraph_golden.test.1", 600, 0.15),
    "critical_paths.jsonl": ("intelgraph_critical_paths.test.1", 150, 0.40),
}
ALLOWED_SLICES = {
    "kind": {"qa", "extraction", "classification", "arithmetic", "tool_use"},
    "difficulty": {"easy", "medium", "hard"},
    "tool": {"yes", "no"},
    "pii": {"yes", "no"},
}
PII_MARKS = re.compile(r"@example\.com|\+1 202 555 01\d\d|\b(?:CUST|EMP)-\d+")


def _load(file: str) -> tuple[ParsedDataset, DatasetManifest]:
    parsed, manifest = load_dataset_file(TASKS / file)
    assert manifest is not None, f"{file} has no manifest"
    return parsed, manifest


def _all_tasks() -> list[EvalTask]:
    return [task for file in SHIPPED for task in _load(file)[0].tasks]


def _row(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


GOOD = {"id": "t1", "input": "What is 2 + 2?", "expected": "4"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

# -- the shipped datasets ------------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_shipped_dataset_parses_and_matches_its_manifest(file: str) -> None:
    name, rows, _ = SHIPPED[file]
    parsed, manifest = _load(file)
    assert len(parsed.tasks) == rows
    assert manifest.name == name
    assert manifest.file == file
    assert manifest.schema == SCHEMA_ID
    assert manifest.rows == rows
    assert manifest.sha256 == parsed.sha256
    assert manifest.size_bytes == parsed.size_bytes
    assert manifest.provenance_id == provenance_id_for(name, parsed.sha256)
    expected = manifest_for(
        name,
        file,
        parsed,
        generator="evals/generate_tasks.py",
        generator_seed=manifest.generator_seed,
    )
    # Byte for byte: the manifest file is what `manifest_for` writes for this content.
    manifest_text = (TASKS / file).with_name(file.replace(".jsonl", ".manifest.json")).read_text()
    assert expected.to_json() == manifest_text


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_shipped_dataset_is_canonical_jsonl(file: str) -> None:
    data = (TASKS / file).read_bytes()
    assert data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")[:-1]
    assert all(lines), "no blank lines"
    for line in lines:
        row = json.loads(line)
        assert line == json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_every_shipped_task_sets_each_slice_to_an_allowed_value(file: str) -> None:
    parsed, _ = _load(file)
    for task in parsed.tasks:
        assert set(task.slices) == set(ALLOWED_SLICES), task.id
        for key, value in task.slices.items():
            assert value in ALLOWED_SLICES[key], (task.id, key, value)
    for key, allowed in ALLOWED_SLICES.items():
        assert set(parsed.slice_counts[key]) == allowed, f"{file}: some {key} value never used"


def test_inputs_are_unique_across_both_datasets() -> None:
    texts = Counter(task.input_text for task in _all_tasks())
    assert [text for text, n in texts.items() if n > 1] == []
    assert sum(texts.values()) == 750


def test_tool_slice_is_yes_exactly_when_tool_calls_are_expected() -> None:
    for task in _all_tasks():
        assert (task.slices["tool"] == "yes") == bool(task.expected_tool_calls), task.id
        assert (task.slices["kind"] == "tool_use") == bool(task.expected_tool_calls), task.id


def test_expected_tool_calls_fit_the_offered_tool_schemas() -> None:
    for task in _all_tasks():
        offered = {tool["function"]["name"]: tool["function"]["parameters"] for tool in task.tools}
        for call in task.expected_tool_calls:
            schema = offered[call.name]
            assert set(call.arguments) == set(schema["required"]), task.id
            for key, value in call.arguments.items():
                spec = schema["properties"][key]
                if "enum" in spec:
                    assert value in spec["enum"], (task.id, key, value)
                kinds: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float)}
                assert isinstance(value, kinds[spec["type"]]), (task.id, key, value)


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_pii_share_is_as_intended_and_pii_appears_only_in_pii_tasks(file: str) -> None:
    _, _, share = SHIPPED[file]
    parsed, _ = _load(file)
    pii = [task for task in parsed.tasks if task.slices["pii"] == "yes"]
    assert len(pii) == round(share * len(parsed.tasks))
    for task in parsed.tasks:
        text = " ".join(m["content"] for m in task.messages)
        if task.slices["pii"] == "yes":
            assert task.tags == ("pii",), task.id
            assert PII_MARKS.search(text), f"{task.id} is sliced pii but holds no personal data"
        else:
            assert task.tags == (), task.id
            assert not PII_MARKS.search(text), f"{task.id} holds personal data but is not pii"


def test_critical_paths_lean_to_tool_use_and_pii() -> None:
    golden, _ = _load("golden.jsonl")
    critical, _ = _load("critical_paths.jsonl")

    def share(parsed: ParsedDataset, key: str, value: str) -> float:
        return parsed.slice_counts[key][value] / len(parsed.tasks)

    assert share(critical, "kind", "tool_use") > share(golden, "kind", "tool_use")
    assert share(critical, "pii", "yes") > share(golden, "pii", "yes")


def test_question_and_extraction_tasks_ground_their_answer_in_the_context() -> None:
    for task in _all_tasks():
        if task.slices["kind"] in ("qa", "extraction"):
            assert task.expected is not None
            assert task.context is not None
            assert task.expected in task.context, task.id
            assert task.context in task.input_text, task.id
        if task.slices["kind"] != "tool_use":
            assert task.expected, task.id


def test_regenerating_writes_identical_bytes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in TASKS.iterdir())
    for name in written:
        assert (tmp_path / name).read_bytes() == (TASKS / name).read_bytes(), name
    check = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_generator_refuses_to_republish_a_version_with_other_content(tmp_path: Path) -> None:
    for path in TASKS.iterdir():
        shutil.copy(path, tmp_path / path.name)
    manifest = tmp_path / "golden.manifest.json"
    document = json.loads(manifest.read_text())
    document["sha256"] = "0" * 64  # as if intelgraph_golden.test.1 had been published otherwise
    manifest.write_text(json.dumps(document))
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "immutable" in done.stderr
    assert json.loads(manifest.read_text())["sha256"] == "0" * 64


def test_editing_a_dataset_without_regenerating_fails_the_manifest_check(tmp_path: Path) -> None:
    for name in ("golden.jsonl", "golden.manifest.json"):
        shutil.copy(TASKS / name, tmp_path / name)
    data = (tmp_path / "golden.jsonl").read_bytes()
    (tmp_path / "golden.jsonl").write_bytes(
        data.replace(b'"difficulty":"easy"', b'"difficulty":"hard"', 1)
    )
    with pytest.raises(
        DatasetError, match=r"digest mismatch: manifest says [0-9a-f]{64}, file has"
    ):
        load_dataset_file(tmp_path / "golden.jsonl")


def test_a_manifest_with_another_row_count_is_refused(tmp_path: Path) -> None:
    data = _row(**GOOD) + b"\n"
    parsed = parse_jsonl(data)
    (tmp_path / "d.jsonl").write_bytes(data)
    manifest = manifest_for("d.test.1", "d.jsonl", parsed)
    (tmp_path / "d.manifest.json").write_text(manifest.to_json().replace('"rows": 1', '"rows": 2'))
    with pytest.raises(DatasetError, match="row count mismatch"):
        load_dataset_file(tmp_path / "d.jsonl")


def test_a_dataset_without_a_manifest_loads_with_none(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(_row(**GOOD))
    parsed, manifest = load_dataset_file(tmp_path / "d.jsonl")
    assert manifest is None
    assert [t.id for t in parsed.tasks] == ["t1"]
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset_file(tmp_path / "d.jsonl", tmp_path / "missing.manifest.json")


# -- the row validator ---------------------------------------------------------------------------

BAD_ROWS: list[tuple[str, bytes, str, str]] = [
    ("invalid JSON", b'{"id": "t2", "input": "x", ', "(line)", "not valid JSON"),
    ("not an object", b'["t2", "x"]', "(line)", "expected a JSON object"),
    ("missing id", _row(input="x", expected="y"), "id", "required"),
    ("bad id", _row(id="has space", input="x", expected="y"), "id", "letters, digits"),
    ("duplicate id", _row(id="t1", input="x", expected="y"), "id", "duplicate id 't1'"),
    ("unknown key", _row(id="t2", input="x", expectd="y"), "expectd", "unknown field"),
    ("missing input", _row(id="t2", expected="y"), "input", "required"),
    ("empty input", _row(id="t2", input="  ", expected="y"), "input", "empty"),
    ("empty message list", _row(id="t2", input=[], expected="y"), "input", "empty"),
    (
        "bad message role",
        _row(id="t2", input=[{"role": "robot", "content": "x"}], expected="y"),
        "input[0].role",
        "'robot' is not one of system, user, assistant",
    ),
    (
        "no user message",
        _row(id="t2", input=[{"role": "system", "content": "x"}], expected="y"),
        "input",
        "no user message",
    ),
    (
        "non-string content",
        _row(id="t2", input=[{"role": "user", "content": 3}], expected="y"),
        "input[0].content",
        "expected a string",
    ),
    ("non-string expected", _row(id="t2", input="x", expected=4), "expected", "a string"),
    (
        "tool not offered",
        _row(
            id="t2",
            input="x",
            tools=[WEATHER],
            expected_tool_calls=[{"name": "lookup_order", "arguments": {}}],
        ),
        "expected_tool_calls[0].name",
        "not offered",
    ),
    (
        "non-object arguments",
        _row(
            id="t2",
            input="x",
            tools=[WEATHER],
            expected_tool_calls=[{"name": "get_weather", "arguments": '{"city": "Oslo"}'}],
        ),
        "expected_tool_calls[0].arguments",
        "a JSON object, got a string",
    ),
    (
        "tool calls without tools",
        _row(id="t2", input="x", expected_tool_calls=[{"name": "f", "arguments": {}}]),
        "tools",
        "required when expected_tool_calls is set",
    ),
    (
        "tool without type function",
        _row(id="t2", input="x", expected="y", tools=[{**WEATHER, "type": "code"}]),
        "tools[0].type",
        '"function"',
    ),
    (
        "neither expected nor tool calls",
        _row(id="t2", input="x", context="c"),
        "expected",
        "needs `expected`, `expected_tool_calls` or both",
    ),
    ("tags not a list", _row(id="t2", input="x", expected="y", tags="pii"), "tags", "a list"),
    (
        "bad slices value type",
        _row(id="t2", input="x", expected="y", slices={"kind": 3}),
        "slices.kind",
        "expected a string, got a number",
    ),
    (
        "slices not an object",
        _row(id="t2", input="x", expected="y", slices=["qa"]),
        "slices",
        "an object",
    ),
]


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [pytest.param(data, field, problem, id=name) for name, data, field, problem in BAD_ROWS],
)
def test_a_bad_row_is_refused_with_its_line_and_field(
    data: bytes, field: str, problem: str
) -> None:
    content = _row(**GOOD) + b"\n\n" + data + b"\n" + _row(id="t9", input="z", expected="z")
    with pytest.raises(DatasetRowError) as caught:
        parse_jsonl(content)
    error = caught.value
    assert (error.line, error.field) == (3, field)  # line 2 is blank, and still counted
    assert problem in error.problem
    assert str(error).startswith(f"line 3, field {field}: ")


def test_the_first_bad_row_is_the_one_reported() -> None:
    content = b"\n".join([_row(**GOOD), _row(id="t2", input=""), _row(id="t3")])
    with pytest.raises(DatasetRowError, match=r"^line 2, field input: empty"):
        parse_jsonl(content)


def test_empty_non_utf8_and_oversized_datasets_are_refused() -> None:
    with pytest.raises(DatasetError, match="no rows"):
        parse_jsonl(b"\n \n")
    with pytest.raises(DatasetError, match=r"line 2: not UTF-8"):
        parse_jsonl(_row(**GOOD) + b'\n{"id": "\xff"}')
    rows = b"\n".join(_row(id=f"t{i}", input=f"q{i}", expected="a") for i in range(4))
    assert len(parse_jsonl(rows, max_rows=4).tasks) == 4
    with pytest.raises(DatasetError, match="more than 3 rows"):
        parse_jsonl(rows, max_rows=3)


def test_a_string_input_is_one_user_message_and_input_text_is_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Check ORD-1."},
        {"role": "assistant", "content": "Which one?"},
        {"role": "user", "content": "ORD-2."},
    ]
    parsed = parse_jsonl(
        _row(**GOOD)
        + b"\n"
        + _row(
            id="t2",
            input=messages,
            tools=[WEATHER],
            expected_tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
            slices={"kind": "tool_use"},
            tags=["pii"],
        )
    )
    first, second = parsed.tasks
    assert first.messages == ({"role": "user", "content": "What is 2 + 2?"},)
    assert first.input_text == "What is 2 + 2?"
    assert second.input_text == "ORD-2."
    assert second.expected is None
    assert second.expected_tool_calls[0].arguments == {"city": "Oslo"}
    assert parsed.slice_counts == {"kind": {"tool_use": 1}}


def test_a_null_optional_field_is_the_same_as_leaving_it_out() -> None:
    (task,) = parse_jsonl(_row(**GOOD, context=None, tags=None, slices=None)).tasks
    assert (task.context, task.tags, task.slices) == (None, (), {})


# -- manifests and names -------------------------------------------------------------------------


def test_a_manifest_round_trips_through_its_json() -> None:
    parsed = parse_jsonl(_row(**GOOD, slices={"kind": "qa"}))
    manifest = manifest_for("tiny.dev.3", "tiny.jsonl", parsed, generator_seed=7)
    assert DatasetManifest.from_json(manifest.to_json()) == manifest
    document = json.loads(manifest.to_json())
    assert list(document) == sorted(document)
    assert document["provenance_id"] == provenance_id_for("tiny.dev.3", parsed.sha256)
    assert re.fullmatch(r"prov-[0-9a-f]{16}", document["provenance_id"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sha256": "abc"}, "sha256"),
        ({"rows": -1}, "rows"),
        ({"schema": "other.v2"}, "schema"),
        ({"name": "no_version"}, "dataset name"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    parsed = parse_jsonl(_row(**GOOD))
    document = manifest_for("tiny.dev.3", "tiny.jsonl", parsed).to_dict() | change
    with pytest.raises(DatasetError, match=field):
        DatasetManifest.from_json(json.dumps(document))


@pytest.mark.parametrize(
    "name", ["intelgraph_golden.test.1", "intelgraph_critical_paths.test.1", "a.train.12"]
)
def test_dataset_names_of_the_form_name_split_version_are_accepted(name: str) -> None:
    validate_dataset_name(name)


@pytest.mark.parametrize(
    "name", ["golden", "golden.test", "golden.test.v1", "golden.test.0", "Golden.test.1", "a..1"]
)
def test_dataset_names_of_another_form_are_refused(name: str) -> None:
    with pytest.raises(DatasetError, match=r"name\.split\.version"):
        validate_dataset_name(name)


# -- property ------------------------------------------------------------------------------------

_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")
_key = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_arguments = st.dictionaries(
    _key, st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
)


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"id": draw(st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True))}
    if draw(st.booleans()):
        row["input"] = draw(_text)
    else:
        history = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["system", "user", "assistant"]), "content": _text}
                ),
                min_size=1,  # one lone user message is written back as a plain string
                max_size=3,
            )
        )
        row["input"] = [*history, {"role": "user", "content": draw(_text)}]
    names = draw(st.lists(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), max_size=3, unique=True))
    if names:
        row["tools"] = [
            {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in names
        ]
        calls = draw(st.lists(st.sampled_from(names), max_size=2))
        if calls:
            row["expected_tool_calls"] = [{"name": n, "arguments": draw(_arguments)} for n in calls]
    if "expected_tool_calls" not in row or draw(st.booleans()):
        row["expected"] = draw(_text)
    if draw(st.booleans()):
        row["context"] = draw(_text)
    tags = draw(st.lists(st.from_regex(r"[a-z-]{1,12}", fullmatch=True), max_size=3, unique=True))
    if tags:
        row["tags"] = tags
    slices = draw(
        st.dictionaries(_key, st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), max_size=4)
    )
    if slices:
        row["slices"] = slices
    return row


@settings(max_examples=150, deadline=None)
@given(row=_rows())
def test_any_valid_row_round_trips_through_parse_jsonl(row: dict[str, Any]) -> None:
    data = json.dumps(row, ensure_ascii=False).encode("utf-8")
    (task,) = parse_jsonl(data).tasks
    assert task.to_row() == row
    again = json.dumps(task.to_row(), ensure_ascii=False).encode("utf-8")
    assert parse_jsonl(again).tasks == (task,)
