"""Edge conditions: a small expression language over a run's `state` and `visits`, compiled once.

A condition is a Python-syntax boolean expression over two names: `state` (the run's JSON state)
and `visits` (how many times each node has finished in this run, so loops can be bounded:
`visits.improve < 3`). It may use attribute and `[index]` access, comparisons, `and`/`or`/`not`,
`in`, and literals. `recipe.condition_problem` rejects anything else when the recipe is parsed;
`compile_condition` turns the checked text into a closure tree, so evaluating an edge is a few
function calls, never `eval`.

Reading is forgiving the way JSON is: a missing key or index gives `None`, and a comparison
between values that do not order (`None > 0`) is false rather than an error, so a condition over
a field a model did not write simply does not hold.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

Scope = Mapping[str, Any]
Getter = Callable[[Scope], Any]

NAMES = frozenset({"state", "visits"})

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def compile_condition(text: str) -> Callable[[Scope], bool]:
    """A checked condition as a function of `{"state": ..., "visits": ...}`; "" always holds."""
    if not text.strip():
        return lambda _scope: True
    getter = _compile(ast.parse(text, mode="eval").body)
    return lambda scope: bool(getter(scope))


def _compile(node: ast.expr) -> Getter:
    if isinstance(node, ast.Constant):
        value = node.value
        return lambda _scope: value
    if isinstance(node, ast.Name):
        name = node.id
        return lambda scope: scope.get(name)
    if isinstance(node, ast.Attribute):
        inner, key = _compile(node.value), node.attr
        return lambda scope: _item(inner(scope), key)
    if isinstance(node, ast.Subscript):
        inner, index = _compile(node.value), _compile(node.slice)
        return lambda scope: _item(inner(scope), index(scope))
    if isinstance(node, ast.List | ast.Tuple):
        items = [_compile(item) for item in node.elts]
        return lambda scope: [item(scope) for item in items]
    if isinstance(node, ast.UnaryOp):  # `not` is the only unary operator allowed
        operand = _compile(node.operand)
        return lambda scope: not operand(scope)
    if isinstance(node, ast.BoolOp):
        values = [_compile(value) for value in node.values]
        if isinstance(node.op, ast.And):
            return lambda scope: all(value(scope) for value in values)
        return lambda scope: any(value(scope) for value in values)
    if isinstance(node, ast.Compare):
        left = _compile(node.left)
        steps = [
            (_COMPARE[type(op)], _compile(right))
            for op, right in zip(node.ops, node.comparators, strict=True)
        ]
        return lambda scope: _chain(left(scope), steps, scope)
    raise ValueError(f"`{type(node).__name__}` is not allowed in a condition")


def _item(container: Any, key: Any) -> Any:
    try:
        if isinstance(container, Mapping):
            return container.get(key)
        if isinstance(container, list) and isinstance(key, int):
            return container[key]
    except (IndexError, TypeError):
        pass
    return None


def _chain(left: Any, steps: list[tuple[Callable[[Any, Any], Any], Getter]], scope: Scope) -> bool:
    for compare, right_getter in steps:
        right = right_getter(scope)
        try:
            if not compare(left, right):
                return False
        except TypeError:  # None > 0, "a" < 1, 1 in None: the condition does not hold
            return False
        left = right
    return True
