"""EvalService end to end: datasets, suites and runs through a real server whose data plane sends
every task to a simulated provider that answers with a configured accuracy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from maestro.clients import MaestroRpcError
from maestro.data_plane.sim import FaultProfile
from maestro.v1 import eval_service_pb2 as epb
from tests.eval_support import (
    create_dataset,
    create_suite,
    eval_stack,
    jsonl,
    run_to_end,
    task_rows,
)
from tests.inference_support import PARENT

ROWS = task_rows(60)


def violations(error: MaestroRpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT error, by field."""
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    return {v.field: v.description for v in error.field_violations}


async def test_a_run_scores_every_task_execution_and_streams_its_results(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.8, tool_accuracy=1.0) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        run, messages = await run_to_end(s.client, suite.name, repetitions=2)
        assert run.state == epb.EvalRun.STATE_SUCCEEDED
        assert run.progress.completed_tasks == run.progress.total_tasks == 120
        streamed = [r for m in messages for r in m.task_results]
        assert sorted((r.task.task_id, r.repetition) for r in streamed) == sorted(
            (str(row["id"]), rep) for row in ROWS for rep in (0, 1)
        )
        card = messages[-1].scorecard
        assert card.task_count == 60
        assert card.repetitions == 2
        exact = next(m for m in card.metrics if m.metric == epb.EVAL_METRIC_EXACT_MATCH)
        passed = [r for r in streamed if r.scores.get("exact_match") == 1.0]
        assert exact.mean == pytest.approx(len(passed) / exact.sample_count)
        assert exact.ci_low <= exact.mean <= exact.ci_high
        tools = next(m for m in card.metrics if m.metric == epb.EVAL_METRIC_TOOL_SUCCESS)
        assert tools.mean == 1.0  # tool_accuracy 1.0: every expected call made exactly


async def test_same_seed_gives_the_same_scorecard(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.7) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        first = (await run_to_end(s.client, suite.name, seed=11))[1][-1].scorecard
        second = (await run_to_end(s.client, suite.name, seed=11))[1][-1].scorecard
        assert [(m.metric, m.slice, m.mean) for m in first.metrics if m.metric <= 5] == [
            (m.metric, m.slice, m.mean) for m in second.metrics if m.metric <= 5
        ]


async def test_a_planted_regression_fails_the_regression_threshold_naming_it(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        s.primary.set_profile(_with_prompt(s.primary.profile, "[worse]", -0.4))
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name], max_regression_rate=0.005)
        base = (await run_to_end(s.client, suite.name, system="stable"))[1][-1].scorecard
        _run, messages = await run_to_end(
            s.client, suite.name, system="[worse] prompt", baseline=base.name
        )
        card = messages[-1].scorecard
        assert card.verdict == epb.Scorecard.VERDICT_FAIL
        (regression,) = card.threshold_results
        assert regression.threshold == epb.EvalThresholdResult.THRESHOLD_REGRESSION_RATE
        assert regression.outcome == epb.EvalThresholdResult.OUTCOME_FAILED
        assert regression.lower_bound > 0.005
        assert card.regressed_task_count > 0
        assert f"{card.regressed_task_count} of 60 tasks regressed" in regression.message


async def test_no_regression_on_few_tasks_is_inconclusive_not_a_pass(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name], max_regression_rate=0.005)
        base = (await run_to_end(s.client, suite.name))[1][-1].scorecard
        card = (await run_to_end(s.client, suite.name, baseline=base.name))[1][-1].scorecard
        assert card.regressed_task_count == 0
        assert card.verdict == epb.Scorecard.VERDICT_INCONCLUSIVE
        (regression,) = card.threshold_results
        assert regression.outcome == epb.EvalThresholdResult.OUTCOME_INCONCLUSIVE
        assert regression.upper_bound > 0.005
        assert "about 539 tasks with none would certify 0.50%" in regression.message


async def test_compare_scorecards_lists_flipped_tasks_with_both_answers(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        s.primary.set_profile(_with_prompt(s.primary.profile, "[worse]", -0.5))
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        base = (await run_to_end(s.client, suite.name))[1][-1].scorecard
        cand = (await run_to_end(s.client, suite.name, system="[worse]"))[1][-1].scorecard
        compared = await s.client.evals.CompareScorecards(
            epb.CompareScorecardsRequest(base_scorecard=base.name, candidate_scorecard=cand.name)
        )
        assert compared.compared_task_count == 60
        assert compared.regressed_task_count > 0
        assert compared.improved_task_count == 0
        diff = compared.task_diffs[0]
        assert diff.base_passed
        assert not diff.candidate_passed
        assert diff.base_output == diff.expected != diff.candidate_output
        exact = next(d for d in compared.diffs if d.metric == epb.EVAL_METRIC_EXACT_MATCH)
        assert exact.change == epb.EvalMetricDiff.CHANGE_REGRESSED
        assert exact.HasField("p_value")
        assert exact.HasField("holm_adjusted_p_value")
        assert exact.holm_adjusted_p_value >= exact.p_value


async def test_cancel_stops_a_run_without_a_scorecard(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        slow = {**s.primary.profile.to_json(), "default": {"ttft": {"kind": "fixed", "ms": 300}}}
        s.primary.set_profile(FaultProfile.model_validate(slow))
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        created = await s.client.evals.CreateEvalRun(
            epb.CreateEvalRunRequest(
                parent=PARENT,
                eval_run=epb.EvalRun(
                    suite=suite.name, target=epb.EvalTarget(model_group="primary")
                ),
            )
        )
        cancelled = await s.client.evals.CancelEvalRun(
            epb.CancelEvalRunRequest(name=created.eval_run.name, reason="enough")
        )
        assert cancelled.eval_run.state == epb.EvalRun.STATE_CANCELLED
        assert cancelled.eval_run.state_message == "cancelled: enough"
        with pytest.raises(MaestroRpcError) as again:
            await s.client.evals.CancelEvalRun(epb.CancelEvalRunRequest(name=created.eval_run.name))
        assert again.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(MaestroRpcError) as missing:
            await s.client.evals.GetScorecard(
                epb.GetScorecardRequest(name=f"{created.eval_run.name}/scorecard")
            )
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        await asyncio.sleep(0.5)  # the runner noticed: the run stays cancelled
        got = await s.client.evals.GetEvalRun(epb.GetEvalRunRequest(name=created.eval_run.name))
        assert got.eval_run.state == epb.EvalRun.STATE_CANCELLED


async def test_a_bad_row_is_refused_with_its_line_and_field_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    rows = task_rows(5)
    rows[3] = {**rows[3], "expected_tool_calls": [{"name": "nope", "arguments": {}}]}
    async with eval_stack(tmp_path, ROWS) as s:
        with pytest.raises(MaestroRpcError) as refused:
            await create_dataset(s.client, rows)
        found = violations(refused.value)
        assert "line 4" in found["jsonl"]
        assert "expected_tool_calls" in found["jsonl"]
        listed = await s.client.evals.ListDatasets(epb.ListDatasetsRequest(parent=PARENT))
        assert not listed.datasets


async def test_a_digest_mismatch_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        with pytest.raises(MaestroRpcError) as refused:
            await s.client.evals.CreateDataset(
                epb.CreateDatasetRequest(
                    parent=PARENT,
                    dataset=epb.Dataset(),
                    jsonl=jsonl(ROWS),
                    expected_sha256="0" * 64,
                )
            )
        assert "differs from its manifest" in violations(refused.value)["expected_sha256"]
        listed = await s.client.evals.ListDatasets(epb.ListDatasetsRequest(parent=PARENT))
        assert not listed.datasets


async def test_a_bad_suite_is_refused_naming_each_field_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        dataset = await create_dataset(s.client, ROWS)
        with pytest.raises(MaestroRpcError) as refused:
            await s.client.evals.CreateEvalSuite(
                epb.CreateEvalSuiteRequest(
                    parent=PARENT,
                    eval_suite_id="bad",
                    eval_suite=epb.EvalSuite(
                        datasets=[dataset.name, f"{PARENT}/datasets/missing"],
                        metrics=[epb.EVAL_METRIC_EXACT_MATCH, 99],  # type: ignore[list-item]
                        thresholds=epb.EvalThresholds(
                            max_regression_rate=1.5, max_cost_per_task_delta_ratio=0.1
                        ),
                    ),
                )
            )
        found = violations(refused.value)
        assert "unknown metric" in found["eval_suite.metrics[1]"]
        with pytest.raises(MaestroRpcError) as refused_again:
            await s.client.evals.CreateEvalSuite(
                epb.CreateEvalSuiteRequest(
                    parent=PARENT,
                    eval_suite_id="bad",
                    eval_suite=epb.EvalSuite(
                        datasets=[dataset.name, f"{PARENT}/datasets/missing"],
                        metrics=[epb.EVAL_METRIC_EXACT_MATCH],
                        thresholds=epb.EvalThresholds(
                            max_regression_rate=1.5, max_cost_per_task_delta_ratio=0.1
                        ),
                    ),
                )
            )
        found = violations(refused_again.value)
        assert "does not exist" in found["eval_suite.datasets[1]"]
        assert "0..1" in found["eval_suite.thresholds.max_regression_rate"]
        assert "cost_per_task" in found["eval_suite.thresholds.max_cost_per_task_delta_ratio"]
        listed = await s.client.evals.ListEvalSuites(epb.ListEvalSuitesRequest(parent=PARENT))
        assert not listed.eval_suites


async def test_another_project_cannot_reach_a_projects_evals(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        run, _ = await run_to_end(s.client, suite.name)
        card = f"{run.name}/scorecard"
        async with s.server.client(s.server.beta_key) as beta:
            calls: list[Awaitable[object]] = [
                beta.evals.GetDataset(epb.GetDatasetRequest(name=dataset.name)),
                beta.evals.ListDatasets(epb.ListDatasetsRequest(parent=PARENT)),
                beta.evals.GetEvalSuite(epb.GetEvalSuiteRequest(name=suite.name)),
                beta.evals.DeleteEvalSuite(epb.DeleteEvalSuiteRequest(name=suite.name)),
                beta.evals.GetEvalRun(epb.GetEvalRunRequest(name=run.name)),
                beta.evals.ListEvalRuns(epb.ListEvalRunsRequest(parent=PARENT)),
                beta.evals.CancelEvalRun(epb.CancelEvalRunRequest(name=run.name)),
                beta.evals.GetScorecard(epb.GetScorecardRequest(name=card)),
                beta.evals.CompareScorecards(
                    epb.CompareScorecardsRequest(base_scorecard=card, candidate_scorecard=card)
                ),
                beta.evals.CreateEvalRun(
                    epb.CreateEvalRunRequest(parent=PARENT, eval_run=epb.EvalRun(suite=suite.name))
                ),
                beta.evals.CreateDataset(
                    epb.CreateDatasetRequest(parent=PARENT, jsonl=jsonl(ROWS))
                ),
            ]
            for call in calls:
                with pytest.raises(MaestroRpcError) as denied:
                    await call
                assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(MaestroRpcError) as watch_denied:
                async for _ in beta.evals.WatchEvalRun(epb.WatchEvalRunRequest(name=run.name)):
                    pass
            assert watch_denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            # A beta suite cannot point at alpha's dataset either.
            with pytest.raises(MaestroRpcError) as borrowed:
                await beta.evals.CreateEvalSuite(
                    epb.CreateEvalSuiteRequest(
                        parent="projects/beta",
                        eval_suite_id="borrow",
                        eval_suite=epb.EvalSuite(
                            datasets=[dataset.name], metrics=[epb.EVAL_METRIC_EXACT_MATCH]
                        ),
                    )
                )
            assert borrowed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        still = await s.client.evals.GetEvalSuite(epb.GetEvalSuiteRequest(name=suite.name))
        assert still.eval_suite.name == suite.name


def _with_prompt(profile: FaultProfile, marker: str, delta: float) -> FaultProfile:
    """`profile` with one prompt version whose accuracy differs by `delta`."""
    data = profile.to_json()
    data["answers"]["prompts"] = [{"system_contains": marker, "accuracy_delta": delta}]
    return FaultProfile.model_validate(data)


async def test_scorecard_figures_are_exported_as_metrics(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.8) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        card = (await run_to_end(s.client, suite.name))[1][-1].scorecard
        data = s.server.metrics.get_metrics_data()
    points: dict[tuple[str, tuple[tuple[str, object], ...]], object] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("maestro.eval."):
                    for point in metric.data.data_points:
                        labels = tuple(sorted((point.attributes or {}).items()))
                        points[metric.name, labels] = getattr(point, "value", None)
    base = (("project", "alpha"), ("suite", suite.name), ("target", "model_group:primary"))
    exact = next(m for m in card.metrics if m.metric == epb.EVAL_METRIC_EXACT_MATCH)
    key = ("maestro.eval.scorecard.score", tuple(sorted((*base, ("metric", "exact_match")))))
    assert points[key] == pytest.approx(exact.mean)
    assert points[("maestro.eval.scorecard.verdict", tuple(sorted(base)))] == 1.0
    executions = sum(
        float(str(v)) for (name, _), v in points.items() if name == "maestro.eval.task_executions"
    )
    assert executions == 60


async def test_a_pinned_deployment_answers_every_task_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        created = await s.client.evals.CreateEvalRun(
            epb.CreateEvalRunRequest(
                parent=PARENT,
                eval_run=epb.EvalRun(
                    suite=suite.name, target=epb.EvalTarget(deployment="backup-b"), seed=3
                ),
            )
        )
        messages = [
            m
            async for m in s.client.evals.WatchEvalRun(
                epb.WatchEvalRunRequest(name=created.eval_run.name), timeout=120
            )
        ]
        deployments = {r.deployment for m in messages for r in m.task_results}
        assert deployments == {"backup-b"}
        assert messages[-1].eval_run.state == epb.EvalRun.STATE_SUCCEEDED


async def test_runs_list_by_suite_and_state_in_pages(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS[:10]) as s:
        dataset = await create_dataset(s.client, ROWS[:10])
        first = await create_suite(s.client, [dataset.name], suite_id="first")
        second = await create_suite(s.client, [dataset.name], suite_id="second")
        for suite in (first, second, first, second, first):
            await run_to_end(s.client, suite.name)
        seen: list[epb.EvalRun] = []
        token = ""
        while True:
            page = await s.client.evals.ListEvalRuns(
                epb.ListEvalRunsRequest(
                    parent=PARENT,
                    filter=f'suite = "{first.name}" AND state = SUCCEEDED',
                    page_size=1,
                    page_token=token,
                )
            )
            seen += page.eval_runs
            token = page.next_page_token
            if not token:
                break
    assert len(seen) == 3
    assert {r.suite for r in seen} == {first.name}
    assert [r.create_time.ToNanoseconds() for r in seen] == sorted(
        (r.create_time.ToNanoseconds() for r in seen), reverse=True
    )
