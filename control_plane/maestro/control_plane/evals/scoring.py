"""A run's task results turned into a scorecard: means, variance, intervals, deltas against a
baseline, threshold outcomes and the verdict; and two scorecards' results compared.

The unit of evidence is the task, not the execution: a task run three times is one sample whose
score is its mean over the repetitions, because repetitions of one task are not independent
(lm-evaluation-harness's standard error treats them as if they were). A task *passes* when it
passed in more than half of its repetitions, which is what "confirmed across repeats" means for
regressions: one flaky repetition does not make a regression.

Every threshold is decided from a one-sided 95% confidence bound (the ends of a two-sided 90%
interval): PASSED when the upper bound is within the limit, FAILED when the lower bound is past
it, INCONCLUSIVE when the interval straddles it. A regression smaller than the noise of this
many tasks is inconclusive, never a pass.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from maestro.control_plane.evals import stats
from maestro.control_plane.evals.records import (
    COST_DELTA,
    COST_PER_TASK,
    HALLUCINATION,
    HALLUCINATION_RATE,
    LOWER_IS_BETTER,
    METRICS,
    RATE_METRICS,
    REGRESSION_RATE,
    MetricScore,
    TaskRef,
    TaskResult,
    ThresholdResult,
    Thresholds,
)

CONFIDENCE = 0.95
"""Of the intervals shown with each metric (two-sided)."""
BOUND_CONFIDENCE = 0.95
"""Of the one-sided bounds thresholds are decided on."""
MAX_LISTED_TASKS = 100
RESAMPLES = 4000
NORMAL_MIN_TASKS = 30
"""From this many tasks on, a continuous metric's interval is the normal one (mean +- z * sd /
sqrt(n)); below, a bootstrap over the tasks. A scorecard has one per metric, dataset and slice,
and thousands of bootstrap resamples each would cost more than the rest of the scoring."""
UNBOUNDED = 1e6
"""The cost delta shown when the baseline spent nothing and the run did (JSON has no infinity)."""
TaskKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """One task over its repetitions."""

    key: TaskKey
    dataset: str
    task_id: str
    slices: Mapping[str, str]
    scores: Mapping[str, float]
    """Mean over repetitions of each metric scored for the task."""
    passed: bool
    outputs: tuple[str, ...]
    expected: str


def summarise(results: Iterable[TaskResult]) -> dict[TaskKey, TaskSummary]:
    """Per task: mean scores over its repetitions and the majority pass."""
    grouped: dict[TaskKey, list[TaskResult]] = defaultdict(list)
    for result in results:
        grouped[result.key].append(result)
    out: dict[TaskKey, TaskSummary] = {}
    for key, runs in grouped.items():
        runs.sort(key=lambda r: r.repetition)
        sums: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            for metric, score in run.scores.items():
                sums[metric].append(score)
        passes = sum(1 for run in runs if run.passed)
        first = runs[0]
        out[key] = TaskSummary(
            key,
            first.dataset,
            first.task_id,
            first.slices,
            {metric: sum(values) / len(values) for metric, values in sums.items()},
            passes * 2 > len(runs),
            tuple(run.output for run in runs),
            first.expected,
        )
    return out


def _per_repetition_means(results: Sequence[TaskResult], metric: str) -> list[float]:
    sums: dict[int, list[float]] = defaultdict(list)
    for result in results:
        if metric in result.scores:
            sums[result.repetition].append(result.scores[metric])
    return [sum(v) / len(v) for _, v in sorted(sums.items()) if v]


def _stddev(values: Sequence[float]) -> float:
    """Sample standard deviation; exactly 0 for identical values (statistics sums exactly)."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def _interval(
    metric: str, task_means: Sequence[float], confidence: float, seed: int
) -> stats.Interval:
    if not task_means:
        return stats.Interval(0.0, 0.0, 0.0)
    if metric in RATE_METRICS:
        return stats.wilson_interval(sum(task_means), len(task_means), confidence)
    if len(task_means) < 2:
        value = task_means[0]
        return stats.Interval(value, value, value)
    if len(task_means) >= NORMAL_MIN_TASKS:  # the mean of many tasks is close to normal
        values = np.asarray(task_means)
        mean = float(values.mean())
        half = NormalDist().inv_cdf(0.5 + confidence / 2) * float(values.std(ddof=1))
        half /= math.sqrt(len(values))
        return stats.Interval(mean, mean - half, mean + half)
    zeros = np.zeros(len(task_means))
    return stats.paired_bootstrap_mean_diff(
        zeros, np.asarray(task_means), confidence=confidence, resamples=RESAMPLES, seed=seed
    )


def _paired_p(metric: str, base: Sequence[float], candidate: Sequence[float]) -> float | None:
    if not base:
        return None
    if metric in RATE_METRICS:
        base_only = sum(1 for b, c in zip(base, candidate, strict=True) if b >= 0.5 > c)
        cand_only = sum(1 for b, c in zip(base, candidate, strict=True) if c >= 0.5 > b)
        return stats.mcnemar_exact(base_only, cand_only)
    return stats.paired_permutation_pvalue(base, candidate, resamples=RESAMPLES, seed=0)


def _groups(results: Sequence[TaskResult]) -> list[tuple[str, str, Callable[[TaskResult], bool]]]:
    """(dataset, slice, membership) of each score group: all tasks, each dataset, each slice."""

    def everything(_: TaskResult) -> bool:
        return True

    def in_dataset(dataset: str) -> Callable[[TaskResult], bool]:
        return lambda r: r.dataset == dataset

    def in_slice(key: str, value: str) -> Callable[[TaskResult], bool]:
        return lambda r: r.slices.get(key) == value

    groups: list[tuple[str, str, Callable[[TaskResult], bool]]] = [("", "", everything)]
    groups += [(d, "", in_dataset(d)) for d in sorted({r.dataset for r in results})]
    pairs = sorted({(k, v) for r in results for k, v in r.slices.items()})
    groups += [("", f"{k}={v}", in_slice(k, v)) for k, v in pairs]
    return groups


def metric_scores(
    metrics: Sequence[str],
    results: Sequence[TaskResult],
    baseline: Sequence[TaskResult] = (),
) -> list[MetricScore]:
    """One score per (metric, group), groups being all tasks, each dataset, each slice; with
    the baseline's mean, the delta and the paired p-value over shared tasks when given."""
    out: list[MetricScore] = []
    ordered = [m for m in METRICS if m in metrics]
    for dataset, slice_name, member in _groups(results):
        mine = [r for r in results if member(r)]
        theirs = [r for r in baseline if member(r)]
        summary = summarise(mine)
        base_summary = summarise(theirs)
        for metric in ordered:
            scored = [r for r in mine if metric in r.scores]
            if not scored:
                continue
            task_means = [s.scores[metric] for s in summary.values() if metric in s.scores]
            interval = _interval(metric, task_means, CONFIDENCE, seed=len(task_means))
            mean = sum(r.scores[metric] for r in scored) / len(scored)
            score = MetricScore(
                metric,
                dataset,
                slice_name,
                mean,
                _stddev(_per_repetition_means(mine, metric)),
                len(scored),
                interval.low,
                interval.high,
            )
            base_scored = [r for r in theirs if metric in r.scores]
            if base_scored:
                base_mean = sum(r.scores[metric] for r in base_scored) / len(base_scored)
                shared = [
                    k
                    for k, s in summary.items()
                    if metric in s.scores and k in base_summary and metric in base_summary[k].scores
                ]
                p_value = _paired_p(
                    metric,
                    [base_summary[k].scores[metric] for k in shared],
                    [summary[k].scores[metric] for k in shared],
                )
                delta = mean - base_mean
                score = replace(
                    score,
                    baseline_mean=base_mean,
                    delta=delta,
                    delta_ratio=delta / base_mean if base_mean else None,
                    p_value=p_value,
                )
            out.append(score)
    return out


@dataclass(frozen=True, slots=True)
class Flips:
    """Tasks both scorecards ran, and those whose majority pass changed."""

    compared: int
    regressed: list[TaskSummary]
    improved: list[TaskSummary]
    base: dict[TaskKey, TaskSummary]
    candidate: dict[TaskKey, TaskSummary]


def flips(base: Sequence[TaskResult], candidate: Sequence[TaskResult]) -> Flips:
    base_tasks, cand_tasks = summarise(base), summarise(candidate)
    shared = sorted(set(base_tasks) & set(cand_tasks), key=lambda k: (cand_tasks[k].dataset, k[1]))
    regressed = [cand_tasks[k] for k in shared if base_tasks[k].passed and not cand_tasks[k].passed]
    improved = [cand_tasks[k] for k in shared if cand_tasks[k].passed and not base_tasks[k].passed]
    return Flips(len(shared), regressed, improved, base_tasks, cand_tasks)


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


def _rate_outcome(
    threshold: str, what: str, events: float, n: int, limit: float
) -> ThresholdResult:
    measured = events / n if n else 0.0
    interval = stats.wilson_interval(events, n, stats.one_sided_bound_confidence(BOUND_CONFIDENCE))
    outcome = stats.decide_upper_limit(interval, limit) if n else "INCONCLUSIVE"
    shown_events = f"{events:g}" if events != int(events) else f"{int(events)}"
    head = (
        f"{shown_events} of {n} tasks {what} ({_percent(measured)}; 95% bounds "
        f"{_percent(interval.low)}..{_percent(interval.high)}; limit {_percent(limit)})"
    )
    if outcome == "PASS":
        message = f"{head}: within the limit"
    elif outcome == "FAIL":
        message = f"{head}: over the limit beyond noise"
    else:
        message = (
            f"{head}: inconclusive, the interval straddles the limit{_settle(measured, limit)}"
        )
    return ThresholdResult(
        threshold,
        {"PASS": "PASSED", "FAIL": "FAILED"}.get(outcome, "INCONCLUSIVE"),
        limit,
        measured,
        message,
        interval.low,
        interval.high,
        n,
    )


def _settle(rate: float, limit: float) -> str:
    """How many tasks would settle a straddling rate: certify it within the limit when it is
    below, or show it over the limit when it is above; "" when no count would."""
    if limit <= 0 or rate == limit:
        return ""
    if rate == 0:
        need = stats.tasks_needed_for_zero_events(limit, BOUND_CONFIDENCE)
        return f"; about {need} tasks with none would certify {_percent(limit)}"
    confidence = stats.one_sided_bound_confidence(BOUND_CONFIDENCE)

    def settles(n: int) -> bool:
        bound = stats.wilson_interval(rate * n, n, confidence)
        return bound.high <= limit if rate < limit else bound.low > limit

    high = 1
    while not settles(high):
        high *= 2
        if high > 10_000_000:
            return ""
    low = high // 2
    while high - low > 1:  # the smallest n that settles it
        middle = (low + high) // 2
        low, high = (low, middle) if settles(middle) else (middle, high)
    verb = "certify it within" if rate < limit else "show it over"
    return f"; at this rate about {high} tasks would {verb} {_percent(limit)}"


def _skipped(threshold: str, limit: float, why: str) -> ThresholdResult:
    return ThresholdResult(threshold, "SKIPPED", limit, 0.0, why)


def threshold_results(
    thresholds: Thresholds,
    results: Sequence[TaskResult],
    baseline: Sequence[TaskResult] | None,
    seed: int,
) -> tuple[list[ThresholdResult], Flips | None]:
    """Each threshold the suite sets, decided from its confidence bound."""
    out: list[ThresholdResult] = []
    flipped = flips(baseline, results) if baseline is not None else None
    if thresholds.regressions_max is not None:
        limit = thresholds.regressions_max
        if flipped is None:
            out.append(_skipped(REGRESSION_RATE, limit, "needs a baseline scorecard"))
        else:
            out.append(
                _rate_outcome(
                    REGRESSION_RATE, "regressed", len(flipped.regressed), flipped.compared, limit
                )
            )
    if thresholds.hallucination_rate_max is not None:
        limit = thresholds.hallucination_rate_max
        tasks = summarise(r for r in results if HALLUCINATION_RATE in r.scores)
        events = sum(t.scores[HALLUCINATION_RATE] for t in tasks.values())
        out.append(_rate_outcome(HALLUCINATION, "hallucinated", events, len(tasks), limit))
    if thresholds.cost_per_task_delta_max is not None:
        limit = thresholds.cost_per_task_delta_max
        out.append(_cost_delta(limit, results, baseline, seed))
    return out, flipped


def _cost_delta(
    limit: float, results: Sequence[TaskResult], baseline: Sequence[TaskResult] | None, seed: int
) -> ThresholdResult:
    if baseline is None:
        return _skipped(COST_DELTA, limit, "needs a baseline scorecard")
    mine, theirs = summarise(results), summarise(baseline)
    shared = sorted(set(mine) & set(theirs))
    base = [theirs[k].scores.get(COST_PER_TASK, 0.0) for k in shared]
    cand = [mine[k].scores.get(COST_PER_TASK, 0.0) for k in shared]
    if not shared:
        return ThresholdResult(
            COST_DELTA, "INCONCLUSIVE", limit, 0.0, "no task in common with the baseline"
        )
    if sum(base) <= 0:  # nothing to take a ratio of: no increase, or an unbounded one
        spent = sum(cand) > 0
        return ThresholdResult(
            COST_DELTA,
            "FAILED" if spent else "PASSED",
            limit,
            UNBOUNDED if spent else 0.0,
            f"the baseline spent nothing on {len(shared)} shared tasks and this run spent "
            + (f"${sum(cand):.6f}: an unbounded increase" if spent else "nothing either"),
            sample_count=len(shared),
        )
    interval = stats.paired_bootstrap_ratio_delta(
        base,
        cand,
        confidence=stats.one_sided_bound_confidence(BOUND_CONFIDENCE),
        resamples=RESAMPLES,
        seed=seed,
    )
    outcome = stats.decide_upper_limit(interval, limit)
    message = (
        f"cost per task {interval.estimate * 100:+.2f}% against the baseline over "
        f"{len(shared)} shared tasks (95% bounds {interval.low * 100:+.2f}%.."
        f"{interval.high * 100:+.2f}%; limit +{limit * 100:.2f}%)"
    )
    return ThresholdResult(
        COST_DELTA,
        {"PASS": "PASSED", "FAIL": "FAILED"}.get(outcome, "INCONCLUSIVE"),
        limit,
        interval.estimate,
        message,
        interval.low,
        interval.high,
        len(shared),
    )


def verdict(results: Sequence[ThresholdResult]) -> str:
    """FAIL if any threshold FAILED, else INCONCLUSIVE if any was, else PASS."""
    outcomes = {r.outcome for r in results}
    if "FAILED" in outcomes:
        return "FAIL"
    if "INCONCLUSIVE" in outcomes:
        return "INCONCLUSIVE"
    return "PASS"


def task_refs(tasks: Sequence[TaskSummary]) -> tuple[TaskRef, ...]:
    return tuple(TaskRef(t.dataset, t.task_id) for t in tasks[:MAX_LISTED_TASKS])


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER
