"""Rego routing policies compiled into decision tables, and the native cost guard.

The oracle is regopy evaluating the same modules directly, one query per input document, the
way the policy would run per request if that were affordable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cache

import numpy as np
import pytest
import regopy  # type: ignore[import-untyped, unused-ignore]
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from maestro.routing import policy
from maestro.routing.policy import (
    MAX_TAG_BITS,
    OTHER_TAG,
    ModelFacts,
    PolicyError,
    PolicyModule,
    PolicyTable,
    compile_routing_policy,
    cost_violations,
)

# The seed's policies, verbatim.
SEED_ROUTING = """package maestro.routing

default allow = false

allow {
  input.step_tags[_] == "pii"
  input.selected_model == "ig-local-70b"
}

allow {
  not input.step_tags[_] == "pii"
}
"""
SEED_COST = """package maestro.cost

violation[reason] {
  input.estimated_cost > input.step_budget
  reason := sprintf("Step cost %.4f exceeds budget %.4f", [input.estimated_cost, input.step_budget])
}
"""

# A user policy set in two modules that uses what the seed does not: rego.v1, `in`, helper
# rules, a prefix match on known tags, model facts, the project, and reasons: a v1 set
# `deny_reason` here, a v0 `violation[msg]` in the second module (rego-cpp 1.5.2 reads the v0
# form as an object rule, {msg: true}, so the two forms cannot share one rule name).
USER_ROUTING = """package maestro.routing
import rego.v1

default allow := false

pii if {
  some tag in input.step_tags
  startswith(tag, "pii")
}

export_controlled if "export_ctrl" in input.step_tags

allow if {
  not pii
  not export_controlled
}

allow if {
  pii
  input.model.in_house
}

allow if {
  export_controlled
  not pii
  input.model.jurisdiction == "eu"
  input.project == "alpha"
}

deny_reason contains msg if {
  pii
  not input.model.in_house
  msg := sprintf("%s: PII must stay on in-house models", [input.selected_model])
}
"""
USER_EXPORT_REASONS = """package maestro.routing

violation["export-controlled content needs an EU model"] {
  input.step_tags[_] == "export_ctrl"
  input.model.jurisdiction != "eu"
}
"""

MODELS = (
    ModelFacts("ig-local-70b", "vllm", "eu", True),
    ModelFacts("gpt-4o", "openai", "us", False),
    ModelFacts("mistral-large", "mistral", "eu", False),
    ModelFacts("sonnet-3.7", "anthropic", "us", False),
)
KNOWN_TAGS = ("pii", "pii.email", "pii.phone", "export_ctrl", "draft")
# Known tags, tags nobody declared, and a model name used as a tag.
TAG_ALPHABET = (*KNOWN_TAGS, "customer-42", "zz-unknown", "ig-local-70b")


@cache  # tables are immutable; each compile starts a worker process (about 0.2 s)
def _seed_table() -> PolicyTable:
    return _compile([PolicyModule("routing.rego", SEED_ROUTING)])


def _compile(modules: Sequence[PolicyModule], project: str = "alpha") -> PolicyTable:
    return compile_routing_policy(modules, MODELS, project, known_tags=KNOWN_TAGS)


def _allowed(table: PolicyTable, tags: set[str]) -> set[str]:
    row = table.allowed_row(table.tag_key(frozenset(tags)))
    return {name for name, ok in zip(table.models, row, strict=True) if ok}


def _input(tags: frozenset[str], model: ModelFacts, project: str) -> str:
    return json.dumps(
        {
            "step_tags": sorted(tags),
            "selected_model": model.name,
            "model": {
                "provider": model.provider,
                "jurisdiction": model.jurisdiction,
                "in_house": model.in_house,
            },
            "project": project,
        }
    )


def _interpreter(*sources: str) -> regopy.Interpreter:
    interpreter = regopy.Interpreter()
    for i, source in enumerate(sources):
        interpreter.add_module(f"m{i}.rego", source)
    return interpreter


def _oracle(interpreter: regopy.Interpreter, input_json: str) -> dict[str, object]:
    """`data.maestro.routing` for one input (querying the rule itself would answer `undefined`
    for `false`; the package answers {"allow": false})."""
    interpreter.set_input_term(input_json)
    document = json.loads(str(interpreter.query("data.maestro.routing")))
    package = document["expressions"][0]
    assert isinstance(package, dict)
    return package


# -- the seed policy --------------------------------------------------------------------------


def test_seed_pii_allows_only_ig_local_70b() -> None:
    assert _allowed(_seed_table(), {"pii"}) == {"ig-local-70b"}


def test_seed_without_pii_allows_every_model() -> None:
    table = _seed_table()
    assert _allowed(table, set()) == set(table.models)
    assert _allowed(table, {"draft", "pii.email"}) == set(table.models)


def test_seed_unknown_extra_tags_do_not_change_the_verdict() -> None:
    table = _seed_table()
    for extra in ({"zz-unknown"}, {"customer-42", "ig-local-70b"}, {OTHER_TAG}):
        assert _allowed(table, {"pii", *extra}) == {"ig-local-70b"}
        assert _allowed(table, extra) == set(table.models)


def test_seed_table_has_one_bit_per_policy_tag_plus_the_sentinel() -> None:
    table = _seed_table()
    assert table.tags == ("pii",)  # "ig-local-70b" is a model name, not a tag
    assert table.row_count == 4
    assert table.tag_key(frozenset()) == 0
    assert table.tag_key(frozenset({"pii"})) == 1
    assert table.tag_key(frozenset({"zz-unknown", "customer-42"})) == 2
    assert table.tags_of(3) == sorted(["pii", OTHER_TAG])


def test_denied_cell_without_reason_rules_names_the_policy_modules() -> None:
    table = _seed_table()
    key = table.tag_key(frozenset({"pii"}))
    assert table.reasons(key, table.models.index("gpt-4o")) == ("denied by policy routing.rego",)
    assert table.reasons(key, table.models.index("ig-local-70b")) == ()


def test_allowed_rows_are_read_only() -> None:
    row = _seed_table().allowed_row(1)
    assert row.dtype == np.bool_
    with pytest.raises(ValueError, match="read-only"):
        row[0] = False


# -- module sets ------------------------------------------------------------------------------


def test_empty_module_list_allows_everything() -> None:
    table = _compile([])
    assert table.tags == ()
    assert _allowed(table, {"pii", "export_ctrl"}) == set(table.models)


def test_module_set_without_a_routing_package_allows_everything() -> None:
    table = _compile([PolicyModule("cost.rego", SEED_COST)])
    assert _allowed(table, {"pii"}) == set(table.models)


def test_allow_undefined_for_every_input_denies_everything() -> None:
    source = 'package maestro.routing\n\nallow { input.project == "beta" }\n'
    table = _compile([PolicyModule("beta-only.rego", source)])
    assert _allowed(table, set()) == set()
    assert _allowed(table, {"pii"}) == set()


def test_non_boolean_allow_denies() -> None:
    source = 'package maestro.routing\n\nallow = "yes"\n'
    assert _allowed(_compile([PolicyModule("yes.rego", source)]), set()) == set()


def test_builtin_error_in_allow_denies() -> None:
    """Rego's default (non-strict) built-in errors make the expression undefined: deny."""
    source = (
        "package maestro.routing\n\n"
        "allow {\n  input.model.in_house\n}\n\n"
        "allow {\n  not input.model.in_house\n  1 / count(input.step_tags) > 0\n}\n"
    )
    table = _compile([PolicyModule("div.rego", source)])
    assert _allowed(table, set()) == {"ig-local-70b"}  # 1 / 0 for the others
    assert _allowed(table, {"draft"}) == set(table.models)


# -- failing closed ---------------------------------------------------------------------------


def test_syntax_error_names_the_module_and_line() -> None:
    source = "package maestro.routing\n\n# ünïcode before the error\nallow {\n  input.x ==\n}\n"
    modules = [PolicyModule("routing.rego", SEED_ROUTING), PolicyModule("broken.rego", source)]
    with pytest.raises(PolicyError) as caught:
        _compile(modules)
    assert (caught.value.module, caught.value.line) == ("broken.rego", 5)
    assert caught.value.message


def test_conflicting_values_at_evaluation_raise_policy_error() -> None:
    """Errors the engine reports while evaluating reject the whole set (the previous snapshot
    stays), rather than denying the cells they hit."""
    source = (
        "package maestro.routing\n\n"
        "allow = true { true }\n"
        'allow = false { input.step_tags[_] == "pii" }\n'
    )
    with pytest.raises(PolicyError, match="multiple outputs") as caught:
        _compile([PolicyModule("conflict.rego", source)])
    assert caught.value.module == "conflict.rego"


def test_unknown_function_raises_policy_error() -> None:
    source = "package maestro.routing\n\nallow { no_such_function(input.selected_model) }\n"
    with pytest.raises(PolicyError, match="no_such_function"):
        _compile([PolicyModule("typo.rego", source)])


def test_two_default_rules_across_modules_raise_policy_error() -> None:
    modules = [
        PolicyModule("a.rego", SEED_ROUTING),
        PolicyModule("b.rego", "package maestro.routing\n\ndefault allow = true\n"),
    ]
    with pytest.raises(PolicyError, match="default"):
        _compile(modules)


def test_duplicate_module_names_raise_policy_error() -> None:
    module = PolicyModule("routing.rego", SEED_ROUTING)
    with pytest.raises(PolicyError, match="name") as caught:
        _compile([module, module])
    assert caught.value.module == "routing.rego"


def test_too_many_policy_tags_raise_policy_error() -> None:
    rules = "\n".join(
        f'allow {{\n  input.step_tags[_] == "tag{i}"\n}}\n' for i in range(MAX_TAG_BITS)
    )
    with pytest.raises(PolicyError, match="at most"):
        _compile([PolicyModule("wide.rego", f"package maestro.routing\n\n{rules}")])


def test_syntax_error_fails_even_without_models() -> None:
    broken = PolicyModule("broken.rego", "package maestro.routing\n\nallow {\n")
    with pytest.raises(PolicyError) as caught:
        compile_routing_policy([broken], [], "alpha")
    assert caught.value.module == "broken.rego"


def test_a_worker_that_dies_fails_the_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine runs in worker processes; one killed by a signal rejects the policy set."""
    monkeypatch.setattr(policy, "_WORKER_BOOT", "import os, signal; os.kill(os.getpid(), 11)")
    with pytest.raises(PolicyError, match="engine failed"):
        _compile([PolicyModule("routing.rego", SEED_ROUTING)])


def test_tables_split_across_workers_match_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = [
        PolicyModule("user.rego", USER_ROUTING),
        PolicyModule("export.rego", USER_EXPORT_REASONS),
    ]
    whole = _compile(modules)
    monkeypatch.setattr(policy, "_CELLS_PER_WORKER", 8 * len(MODELS))  # eight rows a worker
    split = _compile(modules)
    assert split.info.processes > whole.info.processes
    assert split.tags == whole.tags
    for key in range(whole.row_count):
        assert np.array_equal(split.allowed_row(key), whole.allowed_row(key))
        for j in range(len(MODELS)):
            assert split.reasons(key, j) == whole.reasons(key, j)


# -- user policies ----------------------------------------------------------------------------


@cache
def _user_table() -> PolicyTable:
    return _compile(
        [
            PolicyModule("user.rego", USER_ROUTING),
            PolicyModule("export.rego", USER_EXPORT_REASONS),
        ]
    )


def test_known_tag_matched_by_prefix_becomes_a_policy_tag() -> None:
    table = _user_table()
    assert {"pii", "pii.email", "pii.phone", "export_ctrl"} <= set(table.tags)
    assert "draft" not in table.tags  # known, but the policy treats it as any other tag
    assert _allowed(table, {"pii.email"}) == {"ig-local-70b"}


def test_deny_reason_supplies_the_rationale() -> None:
    table = _user_table()
    key = table.tag_key(frozenset({"pii", "export_ctrl"}))
    assert table.reasons(key, table.models.index("gpt-4o")) == (
        "export-controlled content needs an EU model",
        "gpt-4o: PII must stay on in-house models",
    )
    assert table.reasons(key, table.models.index("ig-local-70b")) == ()


@cache
def _user_oracle() -> regopy.Interpreter:
    return _interpreter(USER_ROUTING, USER_EXPORT_REASONS)


@cache
def _seed_oracle() -> regopy.Interpreter:
    return _interpreter(SEED_ROUTING)


@settings(max_examples=300, deadline=None)
@given(
    tags=st.frozensets(st.sampled_from(TAG_ALPHABET), max_size=4),
    model=st.sampled_from(MODELS),
    user=st.booleans(),
)
def test_table_agrees_with_direct_evaluation(
    tags: frozenset[str], model: ModelFacts, user: bool
) -> None:
    table = _user_table() if user else _seed_table()
    expected = _oracle(_user_oracle() if user else _seed_oracle(), _input(tags, model, "alpha"))
    key = table.tag_key(tags)
    index = table.models.index(model.name)
    assert bool(table.allowed_row(key)[index]) is (expected.get("allow") is True)
    if expected.get("allow") is not True:
        members = {m for rule in ("deny_reason", "violation") for m in _members(expected.get(rule))}
        if members:
            assert table.reasons(key, index) == tuple(sorted(members))


def _members(value: object) -> list[str]:
    """A set as regopy prints it: a JSON array (v1 `contains`) or an object keyed by the member
    (v0 `rule[member] { ... }`)."""
    if isinstance(value, dict):
        return list(value)
    return list(value) if isinstance(value, list) else []


def test_verdicts_depend_on_the_project() -> None:
    alpha = _allowed(_user_table(), {"export_ctrl"})
    beta = _compile(
        [
            PolicyModule("user.rego", USER_ROUTING),
            PolicyModule("export.rego", USER_EXPORT_REASONS),
        ],
        project="beta",
    )
    assert alpha == {"ig-local-70b", "mistral-large"}
    assert _allowed(beta, {"export_ctrl"}) == set()


# -- the cost guard ---------------------------------------------------------------------------


@cache
def _cost_oracle() -> regopy.Interpreter:
    return _interpreter(SEED_COST)


def _rego_cost_violations(estimated_cost: float, step_budget: float) -> list[str]:
    """The seed's cost module in regopy. The input goes in as JSON: `set_input(dict)` would
    keep only six decimals of each float (regopy 1.5.2 formats them with `std::to_string`)."""
    interpreter = _cost_oracle()
    interpreter.set_input_term(
        json.dumps({"estimated_cost": estimated_cost, "step_budget": step_budget})
    )
    document = json.loads(str(interpreter.query("data.maestro.cost.violation")))
    violations = document["expressions"][0]
    assert isinstance(violations, dict)  # the v0 partial set: an object keyed by the reason
    assert all(value is True for value in violations.values())
    return sorted(violations)


COST_EDGES = [
    (0.0, 0.0),
    (0.0, -0.0),
    (-0.0, 0.0),
    (1e-9, 0.0),
    (1e-300, 0.0),
    (0.0, 1e-300),
    (0.5, 0.5),
    (0.50001, 0.5),
    (0.500049, 0.5),
    (1.0, 0.5),
    (0.5, 1.0),
    (math.nextafter(1.0, 2.0), 1.0),
    (1.0 + 1e-15, 1.0),
    (1.0 + 1e-12, 1.0),
    (0.1 + 0.2, 0.3),
    (0.3, 0.1 + 0.2),
    (0.00005, 0.0),
    (0.00015, 0.0),
    (2.675, 1.0),
    (0.12345, 0.12344),
    (123456789.123456789, 3.0),
    (1e20, 1.0),
    (-1.0, -2.0),
    (-2.0, -1.0),
    (12.5, -0.0001),
]


@pytest.mark.parametrize(("estimated_cost", "step_budget"), COST_EDGES)
def test_cost_guard_agrees_with_rego_on_edge_values(
    estimated_cost: float, step_budget: float
) -> None:
    assert cost_violations(estimated_cost, step_budget) == _rego_cost_violations(
        estimated_cost, step_budget
    )


finite = st.floats(allow_nan=False, allow_infinity=False)
money = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@st.composite
def cost_pairs(draw: st.DrawFn) -> tuple[float, float]:
    """Costs and budgets, many of them equal or a few ulps or digits apart."""
    budget = draw(st.one_of(money, finite))
    nudge = draw(st.sampled_from(["any", "equal", "ulps", "digits"]))
    if nudge == "any":
        cost = draw(st.one_of(money, finite))
    elif nudge == "equal":
        cost = budget
    elif nudge == "ulps":
        cost = budget
        for _ in range(draw(st.integers(1, 8))):
            cost = math.nextafter(cost, draw(st.sampled_from([math.inf, -math.inf])))
    else:
        cost = budget * (1 + draw(st.sampled_from([1e-17, -1e-16, 1e-15, 1e-12, -1e-9, 1e-5])))
    return (cost, budget) if draw(st.booleans()) else (budget, cost)


def _engine_reads(value: float) -> bool:
    """rego-cpp 1.5.2 holds numbers as 16 significant digits and reads them back with `stod`,
    which fails (the query errors) on subnormals, DBL_MIN, and what rounds up past DBL_MAX."""
    return value == 0 or 1e-300 <= abs(value) <= 1e308


@settings(max_examples=300, deadline=None)
@given(pair=cost_pairs())
def test_cost_guard_agrees_with_rego(pair: tuple[float, float]) -> None:
    estimated_cost, step_budget = pair
    assume(_engine_reads(estimated_cost) and _engine_reads(step_budget))
    assert cost_violations(estimated_cost, step_budget) == _rego_cost_violations(
        estimated_cost, step_budget
    )


def test_cost_guard_treats_nan_as_a_violation() -> None:
    """NaN cannot reach Rego (JSON has none); natively it fails closed."""
    assert cost_violations(math.nan, 1.0) == ["Step cost nan exceeds budget 1.0000"]
    assert cost_violations(1.0, math.nan) == ["Step cost 1.0000 exceeds budget nan"]
    assert cost_violations(math.inf, 1e300) != []
    assert cost_violations(1.0, math.inf) == []
