"""The eval slice's typed values: suites, datasets, runs, task results and scorecards.

Plain frozen dataclasses with no transport in them; `convert.py` maps them to and from the API's
messages and `store.py` to and from rows. Metric names are the suite file's (`exact_match`,
`semantic_sim`, ...), thresholds are ratios (the file's `0.5%` is 0.005).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXACT_MATCH = "exact_match"
SEMANTIC_SIM = "semantic_sim"
TOOL_SUCCESS = "tool_success"
COST_PER_TASK = "cost_per_task"
HALLUCINATION_RATE = "hallucination_rate"
TTFT = "ttft"
LATENCY = "latency"
METRICS = (
    EXACT_MATCH,
    SEMANTIC_SIM,
    TOOL_SUCCESS,
    COST_PER_TASK,
    HALLUCINATION_RATE,
    TTFT,
    LATENCY,
)
QUALITY_METRICS = (EXACT_MATCH, SEMANTIC_SIM, TOOL_SUCCESS)
"""Metrics a task must pass to count as passed (those the suite scores)."""
RATE_METRICS = frozenset({EXACT_MATCH, TOOL_SUCCESS, HALLUCINATION_RATE})
"""0/1 per execution: their intervals are Wilson intervals, their paired tests McNemar."""
LOWER_IS_BETTER = frozenset({COST_PER_TASK, HALLUCINATION_RATE, TTFT, LATENCY})

REGRESSION_RATE = "regression_rate"
HALLUCINATION = "hallucination_rate"
COST_DELTA = "cost_per_task_delta"

DEFAULT_REPETITIONS = 3
DEFAULT_SEMANTIC_PASS_MIN = 0.8
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A suite's limits, as ratios; None is not checked."""

    regressions_max: float | None = None
    hallucination_rate_max: float | None = None
    cost_per_task_delta_max: float | None = None


@dataclass(frozen=True, slots=True)
class SuiteRecord:
    project: str
    suite_id: str
    display_name: str
    description: str
    datasets: tuple[str, ...]
    """Dataset resource names."""
    metrics: tuple[str, ...]
    thresholds: Thresholds
    default_repetitions: int
    semantic_pass_min: float
    create_time: float = 0.0
    update_time: float = 0.0
    etag: str = ""

    @property
    def name(self) -> str:
        return f"projects/{self.project}/evalSuites/{self.suite_id}"


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    project: str
    dataset_id: str
    display_name: str
    description: str
    source_uri: str
    sha256: str
    task_count: int
    size_bytes: int
    provenance_id: str
    create_time: float = 0.0

    @property
    def name(self) -> str:
        return f"projects/{self.project}/datasets/{self.dataset_id}"


class RunState(enum.IntEnum):
    """EvalRun.State, by the same numbers."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


ENDED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Target:
    model_group: str = ""
    artifact_version: str = ""
    deployment: str = ""
    recipe: str = ""
    """A recipe (`projects/p/recipes/r@revision`, pinned when the run is created)."""
    prompt_name: str = ""
    prompt_system: str = ""
    prompt_version: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    total_tasks: int = 0
    completed_tasks: int = 0
    errored_tasks: int = 0
    completed_repetitions: int = 0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What CreateEvalRun fixes: immutable for the run's life."""

    suite: str
    target: Target
    baseline: str
    repetitions: int
    seed: int
    max_cost_usd: float
    max_tokens: int
    max_concurrent: int
    labels: Mapping[str, str]
    suite_snapshot: SuiteRecord
    datasets: tuple[DatasetRecord, ...]


@dataclass(frozen=True, slots=True)
class RunRecord:
    project: str
    run_id: str
    spec: RunSpec
    state: RunState
    state_message: str
    progress: Progress
    sequence: int
    create_time: float
    start_time: float | None
    end_time: float | None
    scorecard_json: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/evalRuns/{self.run_id}"


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One task executed once: its scores (only the metrics that apply to the task) and what
    the target answered."""

    dataset: str
    dataset_sha256: str
    task_id: str
    repetition: int
    scores: Mapping[str, float]
    passed: bool
    output: str
    expected: str
    slices: Mapping[str, str]
    deployment: str = ""
    error: str = ""
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seq: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """What matches a task across scorecards: its dataset's content digest and its id."""
        return (self.dataset_sha256, self.task_id)


@dataclass(frozen=True, slots=True)
class MetricScore:
    metric: str
    dataset: str
    slice: str
    mean: float
    stddev: float
    sample_count: int
    ci_low: float
    ci_high: float
    baseline_mean: float | None = None
    delta: float | None = None
    delta_ratio: float | None = None
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    threshold: str
    outcome: str
    """PASSED, FAILED, SKIPPED or INCONCLUSIVE."""
    limit: float
    measured: float
    message: str
    lower_bound: float = 0.0
    upper_bound: float = 0.0
    sample_count: int = 0


@dataclass(frozen=True, slots=True)
class TaskRef:
    dataset: str
    task_id: str


@dataclass(frozen=True, slots=True)
class Scorecard:
    """A run's result. Stored as JSON (`to_json`) once, never changed."""

    run: str
    suite: str
    target: Target
    baseline: str
    verdict: str
    """PASS, FAIL or INCONCLUSIVE."""
    metrics: tuple[MetricScore, ...]
    thresholds: tuple[ThresholdResult, ...]
    regressed_task_count: int
    improved_task_count: int
    regressed_tasks: tuple[TaskRef, ...]
    task_count: int
    repetitions: int
    seed: int
    total_cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    input_digests: tuple[str, ...]
    labels: Mapping[str, str]
    maestro_version: str
    suite_digest: str
    embedding_model: str
    create_time: float
    provenance_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.run}/scorecard"


@dataclass(frozen=True, slots=True)
class GateDecision:
    """A recorded EvaluateGate outcome: the audit trail of promotions and CI gates."""

    project: str
    decision_id: str
    scorecard: str
    kind: str
    subject: str
    subject_revision: str
    from_level: int
    to_level: int
    passed: bool
    checks: tuple[Mapping[str, Any], ...]
    principal: str
    decide_time: float
