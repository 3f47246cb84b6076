"""The eval slice's records to and from the API's messages: the only place that knows both."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from maestro.control_plane.evals import gates
from maestro.control_plane.evals.records import (
    COST_PER_TASK,
    EXACT_MATCH,
    HALLUCINATION_RATE,
    LATENCY,
    LOWER_IS_BETTER,
    SEMANTIC_SIM,
    TOOL_SUCCESS,
    TTFT,
    DatasetRecord,
    GateDecision,
    MetricScore,
    RunRecord,
    Scorecard,
    SuiteRecord,
    Target,
    TaskResult,
    Thresholds,
)
from maestro.control_plane.evals.scoring import TaskSummary
from maestro.control_plane.evals.service import Comparison, GateRequest, NewRun, NewSuite
from maestro.control_plane.evals.stats import Interval
from maestro.control_plane.evals.suites import SuiteThresholds
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.v1 import common_pb2
from maestro.v1 import eval_service_pb2 as pb

METRIC_ENUM = {
    EXACT_MATCH: pb.EVAL_METRIC_EXACT_MATCH,
    SEMANTIC_SIM: pb.EVAL_METRIC_SEMANTIC_SIMILARITY,
    TOOL_SUCCESS: pb.EVAL_METRIC_TOOL_SUCCESS,
    COST_PER_TASK: pb.EVAL_METRIC_COST_PER_TASK,
    HALLUCINATION_RATE: pb.EVAL_METRIC_HALLUCINATION_RATE,
    TTFT: pb.EVAL_METRIC_TTFT,
    LATENCY: pb.EVAL_METRIC_LATENCY,
}
METRIC_NAME = {value: key for key, value in METRIC_ENUM.items()}
_THRESHOLD = {
    "regression_rate": pb.EvalThresholdResult.THRESHOLD_REGRESSION_RATE,
    "hallucination_rate": pb.EvalThresholdResult.THRESHOLD_HALLUCINATION_RATE,
    "cost_per_task_delta": pb.EvalThresholdResult.THRESHOLD_COST_PER_TASK_DELTA,
}
_OUTCOME = {
    "PASSED": pb.EvalThresholdResult.OUTCOME_PASSED,
    "FAILED": pb.EvalThresholdResult.OUTCOME_FAILED,
    "SKIPPED": pb.EvalThresholdResult.OUTCOME_SKIPPED,
    "INCONCLUSIVE": pb.EvalThresholdResult.OUTCOME_INCONCLUSIVE,
}
_VERDICT = {
    "PASS": pb.Scorecard.VERDICT_PASS,
    "FAIL": pb.Scorecard.VERDICT_FAIL,
    "INCONCLUSIVE": pb.Scorecard.VERDICT_INCONCLUSIVE,
}


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


# -- requests -----------------------------------------------------------------------------------


def new_suite(message: pb.EvalSuite, field: str = "eval_suite") -> NewSuite:
    metrics = []
    violations = []
    for index, value in enumerate(message.metrics):
        name = METRIC_NAME.get(value)
        if name is None:
            violations.append(
                FieldViolation(f"{field}.metrics[{index}]", "unspecified or unknown metric")
            )
        else:
            metrics.append(name)
    if violations:
        raise InvalidArgument(violations)
    limits = message.thresholds
    return NewSuite(
        message.display_name,
        message.description,
        tuple(message.datasets),
        tuple(metrics),
        Thresholds(
            limits.max_regression_rate if limits.HasField("max_regression_rate") else None,
            limits.max_hallucination_rate if limits.HasField("max_hallucination_rate") else None,
            limits.max_cost_per_task_delta_ratio
            if limits.HasField("max_cost_per_task_delta_ratio")
            else None,
        ),
        message.default_repetitions,
        message.semantic_similarity_pass_min,
    )


def new_run(message: pb.EvalRun) -> NewRun:
    target = message.target
    return NewRun(
        message.suite,
        Target(
            model_group=target.model_group,
            artifact_version=target.artifact_version,
            deployment=target.deployment,
            recipe=target.recipe,
            prompt_name=target.prompt.name,
            prompt_system=target.prompt.system,
        ),
        message.baseline_scorecard,
        message.repetitions,
        message.seed,
        message.budget.max_cost_usd,
        message.budget.max_tokens,
        message.max_concurrent_tasks,
        dict(message.labels),
    )


# -- responses ----------------------------------------------------------------------------------


def thresholds_message(limits: Thresholds | SuiteThresholds) -> pb.EvalThresholds:
    """A suite's limits (from the store or from a suite file) as the API's message."""
    message = pb.EvalThresholds()
    if limits.regressions_max is not None:
        message.max_regression_rate = limits.regressions_max
    if limits.hallucination_rate_max is not None:
        message.max_hallucination_rate = limits.hallucination_rate_max
    if limits.cost_per_task_delta_max is not None:
        message.max_cost_per_task_delta_ratio = limits.cost_per_task_delta_max
    return message


def suite_message(suite: SuiteRecord) -> pb.EvalSuite:
    return pb.EvalSuite(
        name=suite.name,
        display_name=suite.display_name,
        description=suite.description,
        datasets=suite.datasets,
        metrics=[METRIC_ENUM[m] for m in suite.metrics],
        thresholds=thresholds_message(suite.thresholds),
        default_repetitions=suite.default_repetitions,
        semantic_similarity_pass_min=suite.semantic_pass_min,
        create_time=_time(suite.create_time),
        update_time=_time(suite.update_time),
        etag=suite.etag,
    )


def dataset_message(dataset: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        name=dataset.name,
        display_name=dataset.display_name,
        description=dataset.description,
        source_uri=dataset.source_uri,
        manifest=pb.DatasetManifest(
            sha256=dataset.sha256,
            task_count=dataset.task_count,
            size_bytes=dataset.size_bytes,
            provenance=common_pb2.Provenance(
                id=dataset.provenance_id, producer=dataset.name, input_digests=[dataset.sha256]
            ),
        ),
        create_time=_time(dataset.create_time),
    )


def target_message(target: Target) -> pb.EvalTarget:
    message = pb.EvalTarget(
        model_group=target.model_group,
        artifact_version=target.artifact_version,
        deployment=target.deployment,
        recipe=target.recipe,
    )
    if target.prompt_system:
        message.prompt.CopyFrom(
            pb.EvalPrompt(
                name=target.prompt_name, system=target.prompt_system, version=target.prompt_version
            )
        )
    return message


def run_message(run: RunRecord) -> pb.EvalRun:
    spec = run.spec
    progress = run.progress
    message = pb.EvalRun(
        name=run.name,
        suite=spec.suite,
        target=target_message(spec.target),
        baseline_scorecard=spec.baseline,
        repetitions=spec.repetitions,
        seed=spec.seed,
        budget=common_pb2.Budget(max_cost_usd=spec.max_cost_usd, max_tokens=spec.max_tokens),
        max_concurrent_tasks=spec.max_concurrent,
        labels=spec.labels,
        state=int(run.state),  # type: ignore[arg-type]
        state_message=run.state_message,
        progress=pb.EvalRunProgress(
            total_tasks=progress.total_tasks,
            completed_tasks=progress.completed_tasks,
            errored_tasks=progress.errored_tasks,
            completed_repetitions=progress.completed_repetitions,
            cost_usd=progress.cost_usd,
            usage=common_pb2.Usage(
                prompt_tokens=progress.prompt_tokens,
                completion_tokens=progress.completion_tokens,
                total_tokens=progress.prompt_tokens + progress.completion_tokens,
            ),
        ),
        suite_snapshot=suite_message(spec.suite_snapshot),
        scorecard=f"{run.name}/scorecard" if run.state.name == "SUCCEEDED" else "",
        create_time=_time(run.create_time),
        start_time=_time(run.start_time),
        end_time=_time(run.end_time),
    )
    return message


def score_message(score: MetricScore) -> pb.EvalMetricScore:
    message = pb.EvalMetricScore(
        metric=METRIC_ENUM[score.metric],
        dataset=score.dataset,
        mean=score.mean,
        stddev=score.stddev,
        sample_count=score.sample_count,
        ci_low=score.ci_low,
        ci_high=score.ci_high,
        slice=score.slice,
    )
    if score.baseline_mean is not None:
        message.baseline_mean = score.baseline_mean
    if score.delta is not None:
        message.delta = score.delta
    if score.delta_ratio is not None:
        message.delta_ratio = score.delta_ratio
    if score.p_value is not None:
        message.p_value = score.p_value
    return message


def scorecard_message(card: Scorecard) -> pb.Scorecard:
    return pb.Scorecard(
        name=card.name,
        suite=card.suite,
        target=target_message(card.target),
        baseline_scorecard=card.baseline,
        verdict=_VERDICT[card.verdict],
        metrics=[score_message(m) for m in card.metrics],
        threshold_results=[
            pb.EvalThresholdResult(
                threshold=_THRESHOLD[t.threshold],
                outcome=_OUTCOME[t.outcome],
                limit=t.limit,
                measured=t.measured,
                message=t.message,
                lower_bound=t.lower_bound,
                upper_bound=t.upper_bound,
                sample_count=t.sample_count,
            )
            for t in card.thresholds
        ],
        regressed_task_count=card.regressed_task_count,
        regressed_tasks=[
            pb.EvalTaskRef(dataset=t.dataset, task_id=t.task_id) for t in card.regressed_tasks
        ],
        task_count=card.task_count,
        repetitions=card.repetitions,
        seed=card.seed,
        total_cost_usd=card.total_cost_usd,
        usage=common_pb2.Usage(
            prompt_tokens=card.prompt_tokens,
            completion_tokens=card.completion_tokens,
            total_tokens=card.prompt_tokens + card.completion_tokens,
        ),
        provenance=common_pb2.Provenance(
            id=card.provenance_id, producer=card.run, input_digests=card.input_digests
        ),
        create_time=_time(card.create_time),
        improved_task_count=card.improved_task_count,
        labels=card.labels,
        maestro_version=card.maestro_version,
        suite_digest=card.suite_digest,
        embedding_model=card.embedding_model,
    )


def task_result_message(result: TaskResult) -> pb.EvalTaskResult:
    return pb.EvalTaskResult(
        task=pb.EvalTaskRef(dataset=result.dataset, task_id=result.task_id),
        repetition=result.repetition,
        passed=result.passed,
        output=result.output,
        expected=result.expected,
        scores=result.scores,
        deployment=result.deployment,
        error=result.error,
        cost_usd=result.cost_usd,
        usage=common_pb2.Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        ),
    )


def _change(metric: str, interval: Interval, p_value: float | None) -> int:
    if p_value is None or p_value >= 0.05 or interval.low <= 0.0 <= interval.high:
        return pb.EvalMetricDiff.CHANGE_UNCHANGED
    better = interval.estimate < 0 if metric in LOWER_IS_BETTER else interval.estimate > 0
    return pb.EvalMetricDiff.CHANGE_IMPROVED if better else pb.EvalMetricDiff.CHANGE_REGRESSED


def _diff(summary: TaskSummary, other: TaskSummary, regressed: bool) -> pb.EvalTaskDiff:
    base, cand = (other, summary)
    return pb.EvalTaskDiff(
        task=pb.EvalTaskRef(dataset=summary.dataset, task_id=summary.task_id),
        base_passed=base.passed,
        candidate_passed=cand.passed,
        base_output=base.outputs[0] if base.outputs else "",
        candidate_output=cand.outputs[0] if cand.outputs else "",
        expected=summary.expected,
    )


def comparison_message(comparison: Comparison) -> pb.CompareScorecardsResponse:
    diffs = []
    for base, cand, p_value, interval, holm in comparison.diffs:
        message = pb.EvalMetricDiff(
            metric=METRIC_ENUM[cand.metric],
            dataset=cand.dataset,
            base_mean=base.mean,
            candidate_mean=cand.mean,
            base_stddev=base.stddev,
            candidate_stddev=cand.stddev,
            delta=cand.mean - base.mean,
            change=_change(cand.metric, interval, holm if holm is not None else p_value),  # type: ignore[arg-type]
            delta_ci_low=interval.low,
            delta_ci_high=interval.high,
        )
        if base.mean:
            message.delta_ratio = (cand.mean - base.mean) / base.mean
        if p_value is not None:
            message.p_value = p_value
        if holm is not None:
            message.holm_adjusted_p_value = holm
        diffs.append(message)
    flips = comparison.flips
    refs = _refs
    return pb.CompareScorecardsResponse(
        diffs=diffs,
        compared_task_count=flips.compared,
        regressed_task_count=len(flips.regressed),
        improved_task_count=len(flips.improved),
        regressed_tasks=refs(flips.regressed),
        improved_tasks=refs(flips.improved),
        task_diffs=[_diff(t, flips.base[t.key], True) for t in flips.regressed[:100]]
        + [_diff(t, flips.base[t.key], False) for t in flips.improved[:100]],
    )


def _refs(tasks: Sequence[TaskSummary]) -> list[pb.EvalTaskRef]:
    return [pb.EvalTaskRef(dataset=t.dataset, task_id=t.task_id) for t in tasks[:100]]


_GATE_KIND = {
    pb.EVAL_GATE_KIND_CI: gates.CI,
    pb.EVAL_GATE_KIND_AUTONOMY_PROMOTION: gates.AUTONOMY_PROMOTION,
    pb.EVAL_GATE_KIND_ROLLOUT_ANALYSIS: gates.ROLLOUT_ANALYSIS,
}


def gate_request(request: pb.EvaluateGateRequest) -> GateRequest:
    forecasts = tuple(
        gates.SloForecast(
            f.slo,
            f.forecast_burn_rate,
            f.horizon.ToNanoseconds() / 1e9,
            f.error_budget_remaining_ratio if f.HasField("error_budget_remaining_ratio") else None,
        )
        for f in request.slo_forecasts
    )
    max_age = (
        request.max_scorecard_age.ToNanoseconds() / 1e9
        if request.HasField("max_scorecard_age")
        else None
    )
    return GateRequest(
        request.scorecard,
        _GATE_KIND.get(request.kind, ""),
        request.subject,
        int(request.from_autonomy_level),
        int(request.to_autonomy_level),
        gates.GateInputs(
            _GATE_KIND.get(request.kind, ""),
            forecasts,
            request.max_burn_rate,
            max_age,
            request.strict,
        ),
        request.request_id,
    )


def gate_response(
    decision: GateDecision, checks: Sequence[gates.GateCheck]
) -> pb.EvaluateGateResponse:
    return pb.EvaluateGateResponse(
        passed=decision.passed,
        checks=[
            pb.EvalGateCheck(
                check=c.check,
                passed=c.passed,
                measured=c.measured,
                limit=c.limit,
                message=c.message,
            )
            for c in checks
        ],
        decision_id=decision.decision_id,
        decide_time=_time(decision.decide_time),
    )
