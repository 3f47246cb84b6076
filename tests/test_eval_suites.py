"""Eval suite files: the seed file `evals/prompt_eval.yaml` loads unchanged, and bad suites are
refused naming the field.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from maestro.control_plane.evals.suites import (
    METRICS,
    SuiteError,
    SuiteFile,
    SuiteThresholds,
    find_suite,
    load_suite_file,
    parse_ratio,
    parse_suite,
)

EVALS = Path(__file__).resolve().parent.parent / "evals"
SEED_TEXT = """\
# evals/prompt_eval.yaml
suite: intelgraph_core_v1
datasets: [tasks/golden.jsonl, tasks/critical_paths.jsonl]
metrics: [exact_match, semantic_sim, tool_success, cost_per_task]
thresholds:
  regressions_max: 0.5%
  hallucination_rate_max: 1.0%
  cost_per_task_delta_max: 10%
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A suite folder with two (empty) dataset files; suites only check that they exist."""
    (tmp_path / "tasks").mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / "tasks" / name).write_text("")
    return tmp_path


def _suite(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "suite": "demo_suite",
        "datasets": ["tasks/a.jsonl", "tasks/b.jsonl"],
        "metrics": ["exact_match", "cost_per_task"],
        "thresholds": {"regressions_max": "1%"},
    }
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def test_the_seed_suite_file_is_committed_unchanged() -> None:
    assert (EVALS / "prompt_eval.yaml").read_text(encoding="utf-8") == SEED_TEXT


def test_the_seed_suite_file_loads_with_exactly_its_values() -> None:
    suite = load_suite_file(EVALS / "prompt_eval.yaml")
    assert suite == SuiteFile(
        suite="intelgraph_core_v1",
        suite_id="intelgraph-core-v1",
        datasets=(
            (EVALS / "tasks" / "golden.jsonl").resolve(),
            (EVALS / "tasks" / "critical_paths.jsonl").resolve(),
        ),
        metrics=("exact_match", "semantic_sim", "tool_success", "cost_per_task"),
        thresholds=SuiteThresholds(
            regressions_max=0.005, hallucination_rate_max=0.01, cost_per_task_delta_max=0.10
        ),
        description="",
        repetitions=None,
        semantic_similarity_pass_min=None,
        source=str(EVALS / "prompt_eval.yaml"),
    )
    assert all(path.is_file() for path in suite.datasets)


def test_a_threshold_implies_the_metric_it_limits() -> None:
    suite = load_suite_file(EVALS / "prompt_eval.yaml")
    assert "hallucination_rate" not in suite.metrics
    assert suite.effective_metrics == (
        "exact_match",
        "semantic_sim",
        "tool_success",
        "cost_per_task",
        "hallucination_rate",
    )


def test_the_optional_keys_load(folder: Path) -> None:
    suite = parse_suite(
        _suite(
            description="Smoke suite.",
            repetitions=3,
            semantic_similarity_pass_min=0.8,
            metrics=list(METRICS),
            thresholds={"cost_per_task_delta_max": 0.25, "regressions_max": 0},
        ),
        folder,
        "demo.yaml",
    )
    assert (suite.description, suite.repetitions, suite.semantic_similarity_pass_min) == (
        "Smoke suite.",
        3,
        0.8,
    )
    assert suite.thresholds == SuiteThresholds(regressions_max=0.0, cost_per_task_delta_max=0.25)
    assert suite.effective_metrics == METRICS
    assert suite.datasets == tuple((folder / "tasks" / n).resolve() for n in ("a.jsonl", "b.jsonl"))


def test_a_suite_is_found_by_its_name_or_its_id(tmp_path: Path) -> None:
    assert find_suite("intelgraph_core_v1", [EVALS]) == EVALS / "prompt_eval.yaml"
    assert find_suite("intelgraph-core-v1", [tmp_path, EVALS]) == EVALS / "prompt_eval.yaml"
    (tmp_path / "other.yaml").write_text("not: [a, suite")  # not YAML: skipped
    with pytest.raises(SuiteError, match="no suite file declares suite 'missing'") as caught:
        find_suite("missing", [tmp_path, EVALS])
    assert caught.value.field == "suite"
    (tmp_path / "copy.yaml").write_text(SEED_TEXT)
    with pytest.raises(SuiteError, match="declared by several files"):
        find_suite("intelgraph_core_v1", [tmp_path, EVALS])


BAD_SUITES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "unknown metric",
        _suite(metrics=["exact_match", "bleu"]),
        "metrics[1]",
        "unknown metric 'bleu'; known: exact_match, semantic_sim",
    ),
    (
        "duplicate metric",
        _suite(metrics=["exact_match", "exact_match"]),
        "metrics[1]",
        "duplicate metric",
    ),
    ("no metrics", _suite(metrics=[]), "metrics", "empty"),
    (
        "threshold over 100%",
        _suite(thresholds={"regressions_max": "150%"}),
        "thresholds.regressions_max",
        "150% is out of range: between 0 and 1 (100%)",
    ),
    (
        "negative threshold",
        _suite(thresholds={"hallucination_rate_max": -0.01}),
        "thresholds.hallucination_rate_max",
        "out of range",
    ),
    (
        "negative percentage",
        _suite(thresholds={"regressions_max": "-1%"}),
        "thresholds.regressions_max",
        "out of range",
    ),
    (
        "non-numeric threshold",
        _suite(thresholds={"regressions_max": "lots"}),
        "thresholds.regressions_max",
        "'lots' is not a number",
    ),
    (
        "boolean threshold",
        _suite(thresholds={"regressions_max": True}),
        "thresholds.regressions_max",
        "expected a number",
    ),
    (
        "cost delta over 1000%",
        _suite(thresholds={"cost_per_task_delta_max": "1500%"}),
        "thresholds.cost_per_task_delta_max",
        "between 0 and 10 (1000%)",
    ),
    (
        "unknown threshold",
        _suite(thresholds={"latency_max": "5%"}),
        "thresholds.latency_max",
        "unknown threshold",
    ),
    ("unknown key", _suite(treshold={"regressions_max": "1%"}), "treshold", "unknown field"),
    ("no datasets key", _suite(datasets=None), "datasets", "required"),
    ("no datasets", _suite(datasets=[]), "datasets", "empty"),
    (
        "too many datasets",
        _suite(datasets=[f"tasks/{i}.jsonl" for i in range(21)]),
        "datasets",
        "more than 20",
    ),
    (
        "duplicate dataset",
        _suite(datasets=["tasks/a.jsonl", "tasks/../tasks/a.jsonl"]),
        "datasets[1]",
        "duplicate dataset",
    ),
    (
        "missing dataset file",
        _suite(datasets=["tasks/a.jsonl", "tasks/missing.jsonl"]),
        "datasets[1]",
        "no such file: tasks/missing.jsonl",
    ),
    ("bad suite name", _suite(suite="core suite!"), "suite", "letters, digits"),
    ("no suite name", _suite(suite=None), "suite", "required"),
    ("repetitions out of range", _suite(repetitions=11), "repetitions", "1 to 10"),
    (
        "similarity out of range",
        _suite(semantic_similarity_pass_min=1.5),
        "semantic_similarity_pass_min",
        "out of range",
    ),
]


@pytest.mark.parametrize(
    ("document", "field", "problem"),
    [pytest.param(doc, field, problem, id=name) for name, doc, field, problem in BAD_SUITES],
)
def test_a_bad_suite_is_refused_naming_the_field(
    folder: Path, document: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(SuiteError) as caught:
        parse_suite(document, folder, "demo.yaml")
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert str(caught.value) == f"demo.yaml: {field}: {caught.value.problem}"


def test_a_suite_file_that_is_not_a_yaml_mapping_is_refused(tmp_path: Path) -> None:
    for name, text in (("broken.yaml", "suite: [x"), ("list.yaml", "- a\n- b\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SuiteError) as caught:
            load_suite_file(tmp_path / name)
        assert caught.value.field == "(file)"
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite_file(tmp_path / "absent.yaml")


def test_a_yaml_number_threshold_is_a_ratio(folder: Path) -> None:
    text = "suite: s\ndatasets: [tasks/a.jsonl]\nmetrics: [latency]\n"
    text += "thresholds: {regressions_max: 0.005, cost_per_task_delta_max: 2}\n"
    (folder / "s.yaml").write_text(text)
    suite = load_suite_file(folder / "s.yaml")
    assert suite.thresholds == SuiteThresholds(regressions_max=0.005, cost_per_task_delta_max=2.0)
    assert suite.effective_metrics == ("latency", "cost_per_task")
    assert yaml.safe_load(text)["thresholds"]["regressions_max"] == 0.005


@given(percent=st.decimals(min_value=0, max_value=100, places=3))
def test_a_percentage_parses_to_its_value_over_100(percent: Decimal) -> None:
    assert parse_ratio(f"{percent}%", "x") == float(percent / 100)
    assert parse_ratio(f" {percent} %", "x") == float(percent / 100)
    ratio = float(percent / 100)
    assert parse_ratio(ratio, "x") == ratio
