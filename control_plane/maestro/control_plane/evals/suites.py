"""Eval suite files: load and validate the YAML a suite is written in (`evals/prompt_eval.yaml`).

A suite file names its suite, the datasets (JSONL paths relative to the file's folder), the
metrics to score and the thresholds a scorecard must meet:

    suite: intelgraph_core_v1
    datasets: [tasks/golden.jsonl, tasks/critical_paths.jsonl]
    metrics: [exact_match, semantic_sim, tool_success, cost_per_task]
    thresholds:
      regressions_max: 0.5%
      hallucination_rate_max: 1.0%
      cost_per_task_delta_max: 10%

Thresholds are ratios: `0.5%` and `0.005` are the same limit. A threshold on a metric implies
that metric: `hallucination_rate_max` makes the suite score `hallucination_rate` even when
`metrics` does not list it (`SuiteFile.effective_metrics`), so a limit is never set on something
that is not measured.

Validation errors are `SuiteError` with the field (`thresholds.regressions_max`, `metrics[2]`,
`datasets[1]`) and the problem. This module reads files (`load_suite_file`, `find_suite`) and
never imports gRPC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "IMPLIED_METRICS",
    "MAX_DATASETS",
    "METRICS",
    "SuiteError",
    "SuiteFile",
    "SuiteThresholds",
    "find_suite",
    "load_suite_file",
    "parse_ratio",
    "parse_suite",
    "suite_id_for",
]

METRICS: Final = (
    "exact_match",
    "semantic_sim",
    "tool_success",
    "cost_per_task",
    "hallucination_rate",
    "ttft",
    "latency",
)
# The metric each threshold limits, scored whenever the threshold is set.
IMPLIED_METRICS: Final[Mapping[str, str]] = {
    "hallucination_rate_max": "hallucination_rate",
    "cost_per_task_delta_max": "cost_per_task",
}
MAX_DATASETS: Final = 20
MAX_REPETITIONS: Final = 10
# Cost may grow by at most 1000% over the baseline: a larger limit is a typo, not a policy.
MAX_COST_DELTA: Final = 10.0

_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_KEYS: Final = (
    "suite",
    "description",
    "datasets",
    "metrics",
    "thresholds",
    "repetitions",
    "semantic_similarity_pass_min",
)
_THRESHOLD_KEYS: Final = ("regressions_max", "hallucination_rate_max", "cost_per_task_delta_max")
_PERCENT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*%\s*$")


class SuiteError(ValueError):
    """A suite file is refused; `field` is where (`thresholds.regressions_max`)."""

    def __init__(self, field: str, problem: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")
        self.field = field
        self.problem = problem
        self.source = source


@dataclass(frozen=True)
class SuiteThresholds:
    """Limits as ratios (0.005 is 0.5%); None: not checked."""

    regressions_max: float | None = None
    hallucination_rate_max: float | None = None
    cost_per_task_delta_max: float | None = None


@dataclass(frozen=True)
class SuiteFile:
    """A validated suite file."""

    suite: str  # as written, such as intelgraph_core_v1
    suite_id: str  # the resource id: lower-case, hyphens for underscores (intelgraph-core-v1)
    datasets: tuple[Path, ...]  # resolved against the suite file's folder; each exists
    metrics: tuple[str, ...]  # as listed
    thresholds: SuiteThresholds
    description: str = ""
    repetitions: int | None = None
    semantic_similarity_pass_min: float | None = None
    source: str = ""  # where the suite came from (a path), for messages

    @property
    def effective_metrics(self) -> tuple[str, ...]:
        """The listed metrics, then those a threshold implies (`hallucination_rate_max`)."""
        implied = [
            metric
            for key, metric in IMPLIED_METRICS.items()
            if getattr(self.thresholds, key) is not None
        ]
        return tuple(dict.fromkeys([*self.metrics, *implied]))


def suite_id_for(suite: str) -> str:
    """The resource id of a suite name: `intelgraph_core_v1` -> `intelgraph-core-v1`."""
    return suite.replace("_", "-").lower()


def parse_ratio(value: object, field: str, *, maximum: float = 1.0, source: str = "") -> float:
    """A ratio from a number (0.005) or a percent string ("0.5%"), within 0..`maximum`."""
    if isinstance(value, bool):
        raise SuiteError(
            field, "expected a number such as 0.005 or a percentage such as 0.5%", source
        )
    if isinstance(value, int | float):
        ratio = float(value)
        shown = repr(value)
    elif isinstance(value, str):
        match = _PERCENT.fullmatch(value)
        if match is None:
            raise SuiteError(
                field,
                f"{value!r} is not a number such as 0.005 or a percentage such as 0.5%",
                source,
            )
        # Decimal, so "0.3%" is the float nearest 0.003 rather than 0.3 / 100 rounded twice.
        ratio = float(Decimal(match.group(1)) / 100)
        shown = value.strip()
    else:
        raise SuiteError(
            field, "expected a number such as 0.005 or a percentage such as 0.5%", source
        )
    if not math.isfinite(ratio):
        raise SuiteError(field, f"{shown} is not a finite number", source)
    if ratio < 0 or ratio > maximum:
        raise SuiteError(
            field,
            f"{shown} is out of range: between 0 and {maximum:g} ({maximum * 100:g}%)",
            source,
        )
    return ratio


def parse_suite(data: Mapping[str, Any], base_dir: Path, source: str) -> SuiteFile:
    """Validate a suite document (the parsed YAML); dataset paths resolve against `base_dir`."""
    if not isinstance(data, Mapping):
        raise SuiteError("(file)", "expected a mapping of suite fields", source)
    for key in data:
        if key not in _KEYS:
            raise SuiteError(
                str(key), f"unknown field; allowed: {', '.join(sorted(_KEYS))}", source
            )
    suite = data.get("suite")
    if not isinstance(suite, str) or not _SUITE_NAME.fullmatch(suite):
        raise SuiteError(
            "suite",
            "required: 1-63 letters, digits, underscores and hyphens, starting with a letter "
            "or digit (such as intelgraph_core_v1)",
            source,
        )
    description = data.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise SuiteError("description", "expected a string", source)
    thresholds = _thresholds(data.get("thresholds"), source)
    repetitions = data.get("repetitions")
    if repetitions is not None and (
        isinstance(repetitions, bool)
        or not isinstance(repetitions, int)
        or not 1 <= repetitions <= MAX_REPETITIONS
    ):
        raise SuiteError(
            "repetitions", f"expected a whole number from 1 to {MAX_REPETITIONS}", source
        )
    pass_min = data.get("semantic_similarity_pass_min")
    if pass_min is not None:
        pass_min = parse_ratio(pass_min, "semantic_similarity_pass_min", source=source)
    return SuiteFile(
        suite=suite,
        suite_id=suite_id_for(suite),
        datasets=_datasets(data.get("datasets"), base_dir, source),
        metrics=_metrics(data.get("metrics"), source),
        thresholds=thresholds,
        description=description,
        repetitions=repetitions,
        semantic_similarity_pass_min=pass_min,
        source=source,
    )


def load_suite_file(path: Path) -> SuiteFile:
    """Read, parse and validate a suite YAML file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError("(file)", f"cannot read: {exc.strerror or exc}", source) from None
    except UnicodeDecodeError:
        raise SuiteError("(file)", "not UTF-8", source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError("(file)", f"not valid YAML: {exc}", source) from None
    if not isinstance(data, dict):
        raise SuiteError("(file)", "expected a mapping of suite fields", source)
    return parse_suite(data, path.parent, source)


def find_suite(name: str, search_dirs: Sequence[Path]) -> Path:
    """The one `*.yaml` in `search_dirs` whose `suite:` is `name` (or whose id is `name`'s id).

    Files that are not YAML mappings are skipped: a folder may hold other YAML. Raises
    SuiteError (field `suite`) when no file, or more than one, declares the suite.
    """
    wanted = suite_id_for(name)
    found: list[Path] = []
    for folder in search_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            suite = data.get("suite") if isinstance(data, dict) else None
            if isinstance(suite, str) and suite_id_for(suite) == wanted:
                found.append(path)
    searched = ", ".join(str(d) for d in search_dirs) or "(no folders)"
    if not found:
        raise SuiteError("suite", f"no suite file declares suite {name!r} in {searched}")
    if len(found) > 1:
        raise SuiteError(
            "suite",
            f"suite {name!r} is declared by several files: {', '.join(map(str, found))}",
        )
    return found[0]


def _datasets(value: object, base_dir: Path, source: str) -> tuple[Path, ...]:
    if value is None:
        raise SuiteError("datasets", "required: a list of dataset files", source)
    if not isinstance(value, list):
        raise SuiteError("datasets", "expected a list of dataset files", source)
    if not value:
        raise SuiteError("datasets", "empty: a suite needs at least one dataset", source)
    if len(value) > MAX_DATASETS:
        raise SuiteError("datasets", f"more than {MAX_DATASETS} datasets", source)
    paths: list[Path] = []
    for index, item in enumerate(value):
        field = f"datasets[{index}]"
        if not isinstance(item, str) or not item.strip():
            raise SuiteError(field, "expected a file path relative to the suite file", source)
        path = (base_dir / item).resolve()
        if path in paths:
            raise SuiteError(field, f"duplicate dataset {item!r}", source)
        if not path.is_file():
            raise SuiteError(field, f"no such file: {item} (looked for {path})", source)
        paths.append(path)
    return tuple(paths)


def _metrics(value: object, source: str) -> tuple[str, ...]:
    if value is None:
        raise SuiteError("metrics", "required: a list of metrics", source)
    if not isinstance(value, list):
        raise SuiteError("metrics", "expected a list of metrics", source)
    if not value:
        raise SuiteError("metrics", "empty: a suite scores at least one metric", source)
    metrics: list[str] = []
    for index, item in enumerate(value):
        field = f"metrics[{index}]"
        if not isinstance(item, str) or item not in METRICS:
            raise SuiteError(field, f"unknown metric {item!r}; known: {', '.join(METRICS)}", source)
        if item in metrics:
            raise SuiteError(field, f"duplicate metric {item!r}", source)
        metrics.append(item)
    return tuple(metrics)


def _thresholds(value: object, source: str) -> SuiteThresholds:
    if value is None:
        return SuiteThresholds()
    if not isinstance(value, dict):
        raise SuiteError("thresholds", "expected a mapping of limits", source)
    for key in value:
        if key not in _THRESHOLD_KEYS:
            raise SuiteError(
                f"thresholds.{key}",
                f"unknown threshold; allowed: {', '.join(_THRESHOLD_KEYS)}",
                source,
            )

    limits: Mapping[Any, Any] = value

    def ratio(key: str, maximum: float = 1.0) -> float | None:
        item = limits.get(key)
        if item is None:
            return None
        return parse_ratio(item, f"thresholds.{key}", maximum=maximum, source=source)

    return SuiteThresholds(
        regressions_max=ratio("regressions_max"),
        hallucination_rate_max=ratio("hallucination_rate_max"),
        cost_per_task_delta_max=ratio("cost_per_task_delta_max", MAX_COST_DELTA),
    )
