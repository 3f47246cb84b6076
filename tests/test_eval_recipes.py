"""Recipe revisions as eval targets: each task execution is a real agent-graph run, the answer
its model node's text and `tool_success` the tool calls its tool nodes really made."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from maestro.clients import MaestroRpcError
from maestro.v1 import eval_service_pb2 as epb
from maestro.v1 import graph_service_pb2 as gpb
from tests.eval_support import create_dataset, create_suite, eval_stack, task_rows
from tests.inference_support import PARENT

RECIPE = """
autonomy: L3
tools:
  - name: search
    description: Search the knowledge base.
    parameters: {type: object, properties: {query: {type: string}}, required: [query]}
nodes:
  - {id: think, kind: model, description: Answer or search., tools: [search], max_tokens: 16}
  - {id: choose, kind: router}
  - {id: search, kind: tool, tool: search}
edges:
  - {from: __start__, to: think}
  - {from: think, to: choose}
  - {from: choose, to: search, when: state.tool == "search", label: search}
  - {from: choose, to: __end__, label: answered}
  - {from: search, to: __end__}
"""
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}


def _rows() -> list[dict[str, object]]:
    """Question-answering tasks, and every fifth a search the graph must really run."""
    rows = []
    for row in task_rows(30, prefix="graph"):
        if "expected_tool_calls" in row:
            query = f"orders of customer {row['id']}"
            row = {
                "id": row["id"],
                "input": f"Search the knowledge base for the {query}.",
                "tools": [SEARCH],
                "expected_tool_calls": [{"name": "search", "arguments": {"query": query}}],
                "slices": {"kind": "tool_use"},
            }
        rows.append(row)
    return rows


ROWS = _rows()


async def test_a_recipe_revision_is_scored_from_its_graph_runs(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS, accuracy=1.0, tool_accuracy=1.0) as s:
        recipe = (
            await s.client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent=PARENT, recipe_id="answerer", recipe=gpb.Recipe(source_yaml=RECIPE)
                )
            )
        ).recipe
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        created = await s.client.evals.CreateEvalRun(
            epb.CreateEvalRunRequest(
                parent=PARENT,
                eval_run=epb.EvalRun(
                    suite=suite.name, target=epb.EvalTarget(recipe=recipe.name), seed=2
                ),
            )
        )
        # The target is pinned to the revision measured.
        assert created.eval_run.target.recipe == f"{recipe.name}@{recipe.revision_id}"
        messages = [
            m
            async for m in s.client.evals.WatchEvalRun(
                epb.WatchEvalRunRequest(name=created.eval_run.name), timeout=180
            )
        ]
        runs = await s.client.graphs.ListRuns(gpb.ListRunsRequest(parent=PARENT, page_size=100))
    final = messages[-1]
    assert final.eval_run.state == epb.EvalRun.STATE_SUCCEEDED
    results = [r for m in messages for r in m.task_results]
    assert not [r.error for r in results if r.error]
    # One graph run per task execution, at L2: evals never need the promotion they feed.
    assert len(runs.runs) == len(ROWS)
    assert {r.autonomy_level for r in runs.runs} == {2}
    assert {r.deployment.rsplit("/runs/", 1)[0] for r in results} == {PARENT}
    scores = {m.metric: m.mean for m in final.scorecard.metrics if not m.dataset and not m.slice}
    assert scores[epb.EVAL_METRIC_EXACT_MATCH] == 1.0
    assert scores[epb.EVAL_METRIC_TOOL_SUCCESS] == 1.0  # the search tool node really ran


async def test_a_recipe_of_another_project_is_not_a_target(tmp_path: Path) -> None:
    async with eval_stack(tmp_path, ROWS) as s:
        dataset = await create_dataset(s.client, ROWS)
        suite = await create_suite(s.client, [dataset.name])
        with pytest.raises(MaestroRpcError) as refused:
            await s.client.evals.CreateEvalRun(
                epb.CreateEvalRunRequest(
                    parent=PARENT,
                    eval_run=epb.EvalRun(
                        suite=suite.name,
                        target=epb.EvalTarget(recipe="projects/beta/recipes/theirs"),
                    ),
                )
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["eval_run.target.recipe"]
