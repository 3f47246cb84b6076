"""Agent graph recipes: the YAML format, its validation, and the Mermaid export.

A recipe is a graph of nodes over a JSON state (`GraphService`'s `Recipe` message is its parsed
form):

    description: Plan, then execute each step.
    autonomy: L2
    budget: {max_tokens: 20000, max_cost_usd: 0.5, max_wall_time_s: 300}
    tools:
      - {name: search, description: Search the web., side_effects: false,
         parameters: {type: object, properties: {query: {type: string}}}}
    nodes:
      - {id: plan, kind: model, model: gpt-4o, hint: draft}
      - {id: act, kind: tool, tool: search, retries: {max_attempts: 3, backoff_s: 0.5}}
      - {id: review, kind: gate, gate: {prompt: Ship it?, approvals: 1}}
      - {id: check, kind: router}
    edges:
      - {from: __start__, to: plan}
      - {from: check, to: plan, when: 'state.verdict == "revise"', label: revise}
      - {from: check, to: __end__}

Every problem is reported at once, each with its field path and the YAML line it is on, so an
editor can point at it. Edge conditions are a small expression language over `state`
(comparisons, `and`/`or`/`not`, `in`, literals); they are checked here and evaluated by the
runtime, never by `eval`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maestro.control_plane.graph.expressions import NAMES
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.core.yaml_input import reject_aliases

START, END = "__start__", "__end__"
MAX_SOURCE_BYTES = 256 * 1024
MAX_NODES = 256
_ID = r"^[a-z][a-z0-9_]{0,62}$"
_RECIPE_NAME = re.compile(r"projects/[a-z][a-z0-9-]{0,62}/recipes/[a-z][a-z0-9-]{0,62}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetSpec(_Strict):
    max_tokens: int = Field(0, ge=0)
    max_cost_usd: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_wall_time_s: float = Field(0.0, ge=0, allow_inf_nan=False)


class RetrySpec(_Strict):
    max_attempts: int = Field(1, ge=1, le=20)
    backoff_s: float = Field(0.0, ge=0, le=3600)


class GateSpec(_Strict):
    prompt: str = Field(min_length=1, max_length=2000)
    approvals: Literal[1, 2] = 1


class ToolSpec(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    side_effects: bool = False


class NodeSpec(_Strict):
    id: str = Field(pattern=_ID)
    kind: Literal["model", "tool", "gate", "router", "subgraph"]
    description: str = ""
    model: str = ""
    hint: Literal["", "draft", "finalization"] = ""
    tools: tuple[str, ...] = ()
    """Model node: the declared tools offered to the model."""
    tool_choice: str = ""
    """Model node: `auto`, `required`, `none` or one offered tool's name; "" is `auto`."""
    max_tokens: int = Field(0, ge=0, le=1_000_000)
    """Model node: completion tokens per call; 0 is the runtime's default."""
    tool: str = ""
    gate: GateSpec | None = None
    recipe: str = ""
    retries: RetrySpec = RetrySpec()
    timeout_s: float | None = Field(None, gt=0, le=86_400)
    budget: BudgetSpec = BudgetSpec()
    tags: tuple[str, ...] = ()


class EdgeSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from")
    target: str = Field(alias="to")
    when: str = ""
    label: str = Field("", max_length=64)


class RecipeSpec(_Strict):
    description: str = ""
    autonomy: Literal["L1", "L2", "L3", "L4"] = "L2"
    budget: BudgetSpec = BudgetSpec()
    tools: tuple[ToolSpec, ...] = ()
    nodes: tuple[NodeSpec, ...] = Field(min_length=1, max_length=MAX_NODES)
    edges: tuple[EdgeSpec, ...] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Recipe:
    """A validated recipe and the source it came from."""

    spec: RecipeSpec
    source_yaml: str


# -- parsing with line numbers ------------------------------------------------------------------


def _node_at(root: yaml.Node | None, path: Sequence[str | int]) -> yaml.Node | None:
    """The YAML node at a pydantic error path, as deep as the document goes."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == part), None)
            if found is None:
                found = next((k for k, _ in node.value if k.value == part), None)
                return found or node
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _line(root: yaml.Node | None, path: Sequence[str | int]) -> int:
    node = _node_at(root, path)
    return node.start_mark.line + 1 if node is not None else 1


def _field(field: str, path: Sequence[str | int]) -> str:
    out = field
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(recipe)"


def parse_recipe(source: str, field: str = "recipe.source_yaml") -> Recipe:
    """Validate recipe YAML. Raises InvalidArgument naming every problem's field and line."""
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidArgument([FieldViolation(field, "must be at most 256 KiB")])
    reject_aliases(source, field)  # before anything is built: no billion laughs
    try:
        root = yaml.compose(source, Loader=yaml.CSafeLoader)
        data = yaml.load(source, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidArgument(
            [FieldViolation(field, f"not valid YAML{line}: {getattr(error, 'problem', error)}")]
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument([FieldViolation(field, "the top level must be a mapping (line 1)")])
    try:
        spec = RecipeSpec.model_validate(data)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        # A bad item also fails its list's length check; the item's own error says more.
        locs = [tuple(problem["loc"]) for problem in problems]
        raise InvalidArgument(
            [
                FieldViolation(
                    _field(field, problem["loc"]),
                    f"{problem['msg'].removeprefix('Value error, ')} "
                    f"(line {_line(root, problem['loc'])})",
                )
                for problem, loc in zip(problems, locs, strict=True)
                if not any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)
            ]
        ) from None
    violations = list(_graph_problems(spec, root, field))
    if violations:
        raise InvalidArgument(violations)
    return Recipe(spec, source)


# -- graph checks ---------------------------------------------------------------------------------


def _graph_problems(
    spec: RecipeSpec, root: yaml.Node | None, field: str
) -> Iterator[FieldViolation]:
    def at(path: Sequence[str | int], message: str) -> FieldViolation:
        return FieldViolation(_field(field, path), f"{message} (line {_line(root, path)})")

    ids: dict[str, int] = {}
    for index, node in enumerate(spec.nodes):
        if node.id in ids:
            yield at(("nodes", index, "id"), f"duplicate node id {node.id!r}")
        ids.setdefault(node.id, index)
    tools = {tool.name for tool in spec.tools}
    if len(tools) != len(spec.tools):
        yield at(("tools",), "tool names must be unique")
    for index, node in enumerate(spec.nodes):
        yield from (
            at(("nodes", index, *path), message) for path, message in _node_problems(node, tools)
        )
    outgoing: dict[str, list[EdgeSpec]] = {}
    for index, edge in enumerate(spec.edges):
        if edge.source != START and edge.source not in ids:
            yield at(("edges", index, "from"), f"no node {edge.source!r}")
        if edge.target != END and edge.target not in ids:
            yield at(("edges", index, "to"), f"no node {edge.target!r}")
        if edge.source == END or edge.target == START:
            yield at(("edges", index), "edges run from __start__ and into __end__, not back")
        if edge.when:
            problem = condition_problem(edge.when)
            if problem:
                yield at(("edges", index, "when"), problem)
        outgoing.setdefault(edge.source, []).append(edge)
    if START not in outgoing:
        yield at(("edges",), "no edge leaves __start__")
        return
    reached = _reachable(outgoing, START)
    for index, node in enumerate(spec.nodes):
        if node.id not in reached:
            yield at(("nodes", index, "id"), f"node {node.id!r} cannot be reached from __start__")
        elif node.id not in outgoing:
            yield at(("nodes", index, "id"), f"node {node.id!r} has no outgoing edge")
    if END not in reached:
        yield at(("edges",), "__end__ cannot be reached from __start__")


_OWNER = {
    "model": "model",
    "hint": "model",
    "tools": "model",
    "tool_choice": "model",
    "max_tokens": "model",
    "tool": "tool",
    "gate": "gate",
    "recipe": "subgraph",
}
"""Which node kind each kind-specific setting belongs to."""


def _node_problems(node: NodeSpec, tools: set[str]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    for setting, kind in _OWNER.items():
        if getattr(node, setting) and node.kind != kind:
            yield (setting,), f"`{setting}` does not apply to a {node.kind} node"
    required = {"tool": "tool", "gate": "gate", "subgraph": "recipe"}.get(node.kind)
    if required and not getattr(node, required):
        yield (required,), f"a {node.kind} node needs `{required}`"
    if node.kind == "tool" and node.tool and node.tool not in tools:
        yield ("tool",), f"tool {node.tool!r} is not declared in `tools`"
    for index, offered in enumerate(node.tools):
        if offered not in tools:
            yield ("tools", index), f"tool {offered!r} is not declared in `tools`"
    if node.tool_choice not in {"", "auto", "required", "none", *node.tools}:
        yield ("tool_choice",), "must be auto, required, none or one of the node's `tools`"
    if node.kind == "subgraph" and node.recipe and not _RECIPE_NAME.fullmatch(node.recipe):
        yield ("recipe",), "must be a recipe name, projects/{project}/recipes/{recipe}"


def _reachable(outgoing: dict[str, list[EdgeSpec]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for edge in outgoing.get(todo.pop(), ()):
            if edge.target not in seen:
                seen.add(edge.target)
                todo.append(edge.target)
    return seen


# -- conditions -----------------------------------------------------------------------------------

_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.Attribute, ast.Subscript, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple,
)  # fmt: skip


def condition_problem(text: str) -> str:
    """What is wrong with an edge condition, or "" when it is well formed: a boolean expression
    over `state` and `visits` (attributes, [index], comparisons, and/or/not, in) and literals;
    `expressions.compile_condition` runs it."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        return f"cannot parse the condition: {error.msg}"
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            return f"`{type(node).__name__}` is not allowed in a condition"
        if isinstance(node, ast.Name) and node.id not in NAMES:
            return f"unknown name {node.id!r}; conditions read `state` and `visits` only"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return "private attributes are not allowed"
    return ""


# -- Mermaid --------------------------------------------------------------------------------------

_SHAPES = {
    "model": ('["', '"]'),
    "tool": ('[/"', '"/]'),
    "gate": ('{{"', '"}}'),
    "router": ('{"', '"}'),
    "subgraph": ('[["', '"]]'),
}


def mermaid(spec: RecipeSpec) -> str:
    """The recipe as a Mermaid flowchart (`graph TD`): one shape per node kind, edges labelled
    with their label or condition."""
    lines = ["graph TD", f'  {START}(["start"])', f'  {END}(["end"])']
    for node in spec.nodes:
        opening, closing = _SHAPES[node.kind]
        detail = node.model or node.tool or node.recipe.rpartition("/")[2] or ""
        text = f"{node.id}<br/>{node.kind}" + (f": {detail}" if detail else "")
        lines.append(f"  {node.id}{opening}{_escape(text)}{closing}")
    for edge in spec.edges:
        label = edge.label or edge.when
        arrow = f" -->|{_escape(label)}| " if label else " --> "
        lines.append(f"  {edge.source}{arrow}{edge.target}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace('"', "#quot;").replace("|", "#124;")
