"""Gates: a scorecard and SLO burn forecasts decide CI, autonomy promotions and rollout steps;
GraphService refuses a run at L3 or above until its recipe revision has a passing promotion."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.evals import gates
from maestro.control_plane.evals.records import Scorecard, Target, ThresholdResult
from maestro.v1 import common_pb2
from maestro.v1 import eval_service_pb2 as epb
from maestro.v1 import graph_service_pb2 as gpb
from tests.eval_support import create_dataset, create_suite, eval_stack, run_to_end, task_rows
from tests.graph_support import FINAL, create_run, wait_for
from tests.inference_support import PARENT

ROWS = task_rows(40, prefix="gate")
RECIPE = """
autonomy: L3
nodes:
  - {id: answer, kind: model, max_tokens: 8}
edges:
  - {from: __start__, to: answer}
  - {from: answer, to: __end__}
"""
BURN_OK = epb.EvalGateSloForecast(slo="chat-availability", forecast_burn_rate=0.4)


def _card(verdict: str = "PASS", outcome: str = "PASSED", age_s: float = 0.0) -> Scorecard:
    return Scorecard(
        run="projects/p/evalRuns/r",
        suite="projects/p/evalSuites/s",
        target=Target(),
        baseline="projects/p/evalRuns/b/scorecard",
        verdict=verdict,
        metrics=(),
        thresholds=(ThresholdResult("hallucination_rate", outcome, 0.01, 0.0, "m"),),
        regressed_task_count=0,
        improved_task_count=0,
        regressed_tasks=(),
        task_count=10,
        repetitions=1,
        seed=1,
        total_cost_usd=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        input_digests=(),
        labels={},
        maestro_version="test",
        suite_digest="",
        embedding_model="",
        create_time=time.time() - age_s,
    )


def test_a_ci_gate_passes_a_pass_and_nothing_else() -> None:
    ci = gates.GateInputs(gates.CI)
    assert gates.decide(_card(), ci, time.time())[0]
    for verdict in ("FAIL", "INCONCLUSIVE"):
        passed, checks = gates.decide(_card(verdict, "INCONCLUSIVE"), ci, time.time())
        assert not passed
        assert checks[0].check in {"verdict", "threshold:hallucination_rate"}
        assert not checks[0].passed  # failed checks come first


def test_a_skipped_threshold_passes_ci_but_not_strict_ci_nor_a_promotion() -> None:
    card = _card(outcome="SKIPPED")
    assert gates.decide(card, gates.GateInputs(gates.CI), time.time())[0]
    assert not gates.decide(card, gates.GateInputs(gates.CI, strict=True), time.time())[0]
    promotion = gates.GateInputs(gates.AUTONOMY_PROMOTION, (gates.SloForecast("a", 0.1),))
    assert not gates.decide(card, promotion, time.time())[0]


def test_a_promotion_needs_a_fresh_scorecard_and_every_burn_within_the_limit() -> None:
    burns = (gates.SloForecast("availability", 0.5), gates.SloForecast("latency", 1.4))
    passed, checks = gates.decide(
        _card(), gates.GateInputs(gates.AUTONOMY_PROMOTION, burns), time.time()
    )
    assert not passed
    assert [c.check for c in checks if not c.passed] == ["slo_burn:latency"]
    assert "1.4 > 1" in checks[0].message
    stale = _card(age_s=8 * 24 * 3600)
    fresh_burns = (gates.SloForecast("availability", 0.5),)
    passed, checks = gates.decide(
        stale, gates.GateInputs(gates.AUTONOMY_PROMOTION, fresh_burns), time.time()
    )
    assert not passed
    assert checks[0].check == "scorecard_age"


def test_a_spent_error_budget_fails_whatever_the_burn_rate() -> None:
    spent = (gates.SloForecast("availability", 0.1, error_budget_remaining=0.0),)
    passed, checks = gates.decide(
        _card(), gates.GateInputs(gates.ROLLOUT_ANALYSIS, spent), time.time()
    )
    assert not passed
    assert "error budget is spent" in checks[0].message


async def _passing_scorecard(client: AsyncMaestroClient) -> str:
    dataset = await create_dataset(client, ROWS)
    suite = await create_suite(
        client,
        [dataset.name],
        metrics=(epb.EVAL_METRIC_EXACT_MATCH,),
        max_hallucination_rate=0.5,
    )
    base = (await run_to_end(client, suite.name))[1][-1].scorecard
    card = (await run_to_end(client, suite.name, baseline=base.name))[1][-1].scorecard
    assert card.verdict == epb.Scorecard.VERDICT_PASS
    return str(card.name)


def _promotion(
    card: str, recipe: str, forecasts: tuple[epb.EvalGateSloForecast, ...] = (BURN_OK,)
) -> epb.EvaluateGateRequest:
    return epb.EvaluateGateRequest(
        scorecard=card,
        kind=epb.EVAL_GATE_KIND_AUTONOMY_PROMOTION,
        subject=recipe,
        from_autonomy_level=common_pb2.AUTONOMY_LEVEL_L2,
        to_autonomy_level=common_pb2.AUTONOMY_LEVEL_L3,
        slo_forecasts=forecasts,
        max_scorecard_age=duration_pb2.Duration(seconds=3600),
    )


async def test_an_l3_run_is_refused_until_its_recipe_revision_passes_the_autonomy_gate(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        created = await s.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="auto", recipe=gpb.Recipe(source_yaml=RECIPE)
            )
        )
        recipe = created.recipe.name
        with pytest.raises(MaestroRpcError) as refused:
            await create_run(s.client, recipe)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "AUTONOMY_GATE_REQUIRED"
        assert "AUTONOMY_PROMOTION" in refused.value.message
        lower = await create_run(s.client, recipe, autonomy_level=common_pb2.AUTONOMY_LEVEL_L2)
        assert lower.autonomy_level == common_pb2.AUTONOMY_LEVEL_L2  # below L3: no gate

        card = await _passing_scorecard(s.client)
        decided = await s.client.evals.EvaluateGate(_promotion(card, recipe))
        assert decided.passed, decided.checks
        assert decided.decision_id
        run = await create_run(s.client, recipe)
        assert run.autonomy_level == common_pb2.AUTONOMY_LEVEL_L3
        assert (await wait_for(s.client, run.name, FINAL)).state == gpb.Run.STATE_SUCCEEDED

        # A new revision of the recipe is a new thing to promote.
        await s.client.graphs.UpdateRecipe(
            gpb.UpdateRecipeRequest(
                recipe=gpb.Recipe(name=recipe, source_yaml=RECIPE + "\n# changed\n"),
                update_mask=field_mask_pb2.FieldMask(paths=["source_yaml"]),
            )
        )
        with pytest.raises(MaestroRpcError) as again:
            await create_run(s.client, recipe)
        assert again.value.reason == "AUTONOMY_GATE_REQUIRED"


async def test_a_failed_gate_is_recorded_and_does_not_promote(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        created = await s.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="auto", recipe=gpb.Recipe(source_yaml=RECIPE)
            )
        )
        card = await _passing_scorecard(s.client)
        hot = epb.EvalGateSloForecast(slo="latency", forecast_burn_rate=3.0)
        decided = await s.client.evals.EvaluateGate(_promotion(card, created.recipe.name, (hot,)))
        assert not decided.passed
        assert decided.checks[0].check == "slo_burn:latency"
        assert not decided.checks[0].passed
        with pytest.raises(MaestroRpcError) as refused:
            await create_run(s.client, created.recipe.name)
        assert refused.value.reason == "AUTONOMY_GATE_REQUIRED"


async def test_a_promotion_without_forecasts_or_a_one_level_step_is_invalid(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        card = await _passing_scorecard(s.client)
        request = _promotion(card, f"{PARENT}/recipes/auto")
        del request.slo_forecasts[:]
        request.to_autonomy_level = common_pb2.AUTONOMY_LEVEL_L4
        with pytest.raises(MaestroRpcError) as refused:
            await s.client.evals.EvaluateGate(request)
        fields = {v.field for v in refused.value.field_violations}
        assert fields == {"slo_forecasts", "to_autonomy_level"}


async def test_another_project_cannot_decide_a_gate_on_a_projects_scorecard(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        card = await _passing_scorecard(s.client)
        async with s.server.client(s.server.beta_key) as beta:
            with pytest.raises(MaestroRpcError) as denied:
                await beta.evals.EvaluateGate(
                    epb.EvaluateGateRequest(scorecard=card, kind=epb.EVAL_GATE_KIND_CI)
                )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_the_built_in_l3_recipes_run_without_a_promotion(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        run = await create_run(s.client, "projects/builtin/recipes/debate")
        assert run.autonomy_level == common_pb2.AUTONOMY_LEVEL_L3


async def test_an_operator_override_starts_an_ungated_l3_run_and_is_audited(
    tmp_path: Path,
) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        created = await s.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="auto", recipe=gpb.Recipe(source_yaml=RECIPE)
            )
        )
        recipe = created.recipe
        override = gpb.CreateRunRequest(
            parent=PARENT,
            run=gpb.Run(recipe=recipe.name),
            autonomy_gate_override_reason="incident 42: the gate's eval suite is down",
        )
        with pytest.raises(MaestroRpcError) as tenant:
            await s.client.graphs.CreateRun(override)  # a tenant key cannot override
        assert tenant.value.code() is grpc.StatusCode.PERMISSION_DENIED
        operator_key = s.server.new_key("oncall@corp", frozenset({"operator", "inference"}))
        async with s.server.client(operator_key) as operator:
            run = (await operator.graphs.CreateRun(override)).run
        assert run.autonomy_level == common_pb2.AUTONOMY_LEVEL_L3
        graph = s.server.plane.graph
        assert graph is not None
        entries = graph.store.audit_entries(recipe.name)
    [entry] = [e for e in entries if e["action"] == "autonomy_gate_override"]
    assert entry["actor"] == "oncall@corp"
    assert entry["target"] == f"{recipe.name}@{recipe.revision_id}"
    assert entry["reason"] == "incident 42: the gate's eval suite is down"


async def test_nan_and_infinity_are_invalid_arguments_not_silent_passes(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        card = await _passing_scorecard(s.client)
        nan = float("nan")
        request = _promotion(
            card,
            f"{PARENT}/recipes/auto",
            (
                epb.EvalGateSloForecast(slo="a", forecast_burn_rate=nan),
                epb.EvalGateSloForecast(
                    slo="b", forecast_burn_rate=0.1, error_budget_remaining_ratio=float("inf")
                ),
            ),
        )
        request.max_burn_rate = float("inf")
        with pytest.raises(MaestroRpcError) as refused:
            await s.client.evals.EvaluateGate(request)
        assert {v.field for v in refused.value.field_violations} == {
            "max_burn_rate",
            "slo_forecasts[0].forecast_burn_rate",
            "slo_forecasts[1].error_budget_remaining_ratio",
        }
        suite = await s.client.evals.ListEvalSuites(epb.ListEvalSuitesRequest(parent=PARENT))
        with pytest.raises(MaestroRpcError) as budget:
            await s.client.evals.CreateEvalRun(
                epb.CreateEvalRunRequest(
                    parent=PARENT,
                    eval_run=epb.EvalRun(
                        suite=suite.eval_suites[0].name,
                        target=epb.EvalTarget(model_group="primary"),
                        budget=common_pb2.Budget(max_cost_usd=nan),
                    ),
                )
            )
        assert [v.field for v in budget.value.field_violations] == ["eval_run.budget"]
        with pytest.raises(MaestroRpcError) as threshold:
            await s.client.evals.CreateEvalSuite(
                epb.CreateEvalSuiteRequest(
                    parent=PARENT,
                    eval_suite_id="nan",
                    eval_suite=epb.EvalSuite(
                        datasets=suite.eval_suites[0].datasets,
                        metrics=[epb.EVAL_METRIC_EXACT_MATCH],
                        thresholds=epb.EvalThresholds(max_hallucination_rate=nan),
                        semantic_similarity_pass_min=nan,
                    ),
                )
            )
        assert {v.field for v in threshold.value.field_violations} == {
            "eval_suite.thresholds.max_hallucination_rate",
            "eval_suite.semantic_similarity_pass_min",
        }
        runs = await s.client.evals.ListEvalRuns(epb.ListEvalRunsRequest(parent=PARENT))
        assert len(runs.eval_runs) == 2  # the scorecard's two runs; nothing more was stored
