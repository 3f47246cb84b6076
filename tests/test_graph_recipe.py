"""Recipe YAML: the built-in recipes, validation that names every problem's field and line,
edge conditions, and the Mermaid export."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.control_plane.graph.expressions import compile_condition
from maestro.control_plane.graph.recipe import (
    END,
    MAX_SOURCE_BYTES,
    START,
    condition_problem,
    mermaid,
    parse_recipe,
)
from maestro.core.errors import InvalidArgument

BUILT_IN = sorted(
    f.name
    for f in resources.files("maestro.control_plane.graph.recipes").iterdir()
    if f.name.endswith(".yaml")
)


def _built_in(name: str) -> str:
    return (resources.files("maestro.control_plane.graph.recipes") / name).read_text()


def _problems(source: str) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        parse_recipe(source)
    return {
        v.field.removeprefix("recipe.source_yaml"): v.description for v in raised.value.violations
    }


def test_the_four_built_in_recipes_exist() -> None:
    assert BUILT_IN == [
        "critique_improve.yaml",
        "debate.yaml",
        "planner_executor.yaml",
        "toolformer.yaml",
    ]


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_recipe_validates_and_its_diagram_has_every_node_and_edge(name: str) -> None:
    recipe = parse_recipe(_built_in(name))
    diagram = mermaid(recipe.spec)
    lines = diagram.splitlines()
    assert lines[0] == "graph TD"
    defined = {line.split("[")[0].split("{")[0].split("(")[0].strip() for line in lines[1:]}
    assert {node.id for node in recipe.spec.nodes} | {START, END} <= defined
    assert sum(" --> " in line or " -->|" in line for line in lines) == len(recipe.spec.edges)


def test_every_problem_is_named_with_its_field_and_line() -> None:
    source = (
        "nodes:\n"  # line 1
        "  - {id: a, kind: tool, tool: nope}\n"  # line 2
        "  - {id: b, kind: model}\n"  # line 3
        "  - {id: c, kind: wizard}\n"  # line 4
        "edges:\n"  # line 5
        "  - {from: __start__, to: a}\n"  # line 6
        "  - {from: a, to: __end__, when: 'import os'}\n"  # line 7
    )
    problems = _problems(source)
    assert problems[".nodes[2].kind"].endswith("(line 4)")
    # Schema errors come first and alone: the graph is checked once the schema holds.
    fixed = _problems(source.replace("wizard", "model"))
    assert fixed[".nodes[0].tool"] == "tool 'nope' is not declared in `tools` (line 2)"
    assert fixed[".edges[1].when"].endswith("(line 7)")
    assert fixed[".nodes[1].id"] == "node 'b' cannot be reached from __start__ (line 3)"


def test_graph_shape_problems_are_reported() -> None:
    problems = _problems(
        "nodes:\n"
        "  - {id: a, kind: model}\n"
        "  - {id: a, kind: model}\n"
        "  - {id: g, kind: gate}\n"
        "edges:\n"
        "  - {from: a, to: ghost}\n"
    )
    assert "duplicate node id 'a'" in problems[".nodes[1].id"]
    assert "needs `gate`" in problems[".nodes[2].gate"]
    assert "no node 'ghost'" in problems[".edges[0].to"]
    assert "no edge leaves __start__" in problems[".edges"]


def test_a_setting_of_another_kind_is_refused() -> None:
    problems = _problems(
        "nodes:\n"
        "  - {id: r, kind: router, model: gpt-4o}\n"
        "edges:\n"
        "  - {from: __start__, to: r}\n"
        "  - {from: r, to: __end__}\n"
    )
    assert problems[".nodes[0].model"] == "`model` does not apply to a router node (line 2)"


def test_yaml_syntax_errors_and_oversized_sources_are_refused() -> None:
    assert "not valid YAML (line 3)" in _problems("nodes:\n  - {id: a\n")[""]
    assert "256 KiB" in _problems("#" * (MAX_SOURCE_BYTES + 1))[""]


@pytest.mark.parametrize(
    "condition",
    [
        'state.verdict == "approve"',
        "state.round < state.max_rounds and not state.done",
        'state.tool in ["search", "fetch"]',
        "state.scores[0] >= 0.5",
    ],
)
def test_conditions_over_state_are_accepted(condition: str) -> None:
    assert condition_problem(condition) == ""


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ('__import__("os")', "Call"),
        ("os.system", "unknown name 'os'"),
        ("state._secret", "private"),
        ("lambda: 1", "Lambda"),
        ("state.x ==", "cannot parse"),
    ],
)
def test_conditions_that_could_do_anything_else_are_refused(condition: str, problem: str) -> None:
    assert problem in condition_problem(condition)


def test_cli_validates_and_draws_a_recipe(tmp_path: Path) -> None:
    runner = CliRunner()
    drawn = runner.invoke(app, ["recipe", "diagram", "debate"])
    assert drawn.exit_code == 0, drawn.output
    assert drawn.output.startswith("graph TD\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - {id: a, kind: wizard}\nedges:\n  - {from: __start__, to: a}\n")
    checked = runner.invoke(app, ["recipe", "validate", str(bad)])
    assert checked.exit_code == 1
    assert f"{bad}: nodes[0].kind:" in checked.output
    assert "(line 2)" in checked.output


@pytest.mark.parametrize(
    ("condition", "state", "visits", "holds"),
    [
        ('state.verdict == "approve"', {"verdict": "approve"}, {}, True),
        ('state.verdict == "approve"', {}, {}, False),  # a missing field reads as None
        ("state.round < state.max_rounds", {"round": 1}, {}, False),  # None does not order
        ("visits.improve >= 3", {}, {"improve": 3}, True),
        ('state.tool in ["search", "fetch"]', {"tool": "fetch"}, {}, True),
        ("state.scores[1] > 0.5", {"scores": [0.1, 0.9]}, {}, True),
        ("state.scores[5] > 0.5", {"scores": [0.1]}, {}, False),  # out of range reads as None
        ("not state.done and visits.step < 2", {"done": False}, {"step": 1}, True),
        ("state.a.b.c == 1", {"a": {"b": {"c": 1}}}, {}, True),
        ('state.a == 1 or state.b == "x"', {"b": "x"}, {}, True),
        ("", {}, {}, True),
    ],
)
def test_compiled_conditions_read_state_and_visits_like_json(
    condition: str, state: dict[str, object], visits: dict[str, int], holds: bool
) -> None:
    assert compile_condition(condition)({"state": state, "visits": visits}) is holds
