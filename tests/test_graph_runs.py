"""GraphService end to end: the built-in recipes run through the real data plane against real
simulated providers; gates, budgets, cancel, pause/resume, kill switches and bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from maestro.clients.errors import MaestroRpcError
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as gpb
from tests.graph_support import (
    FINAL,
    PARENT,
    all_events,
    create_run,
    finished_nodes,
    state_of,
    wait_for,
)
from tests.inference_support import profile, stack


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, object]:
    """Server overrides that put runs in SQLite (the default) or a real PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {
        "store.backend": "postgres",
        "store.postgres_dsn": request.getfixturevalue("postgres_dsn"),
    }


WAITING: frozenset[int] = frozenset({gpb.Run.STATE_WAITING_FOR_APPROVAL})


def _edges_taken(mermaid: str) -> set[tuple[str, str]]:
    return {
        (m.group(1), m.group(2))
        for m in re.finditer(r"^\s+(\w+) --(?:>|>\|[^|]*\|) (\w+)$", mermaid, re.MULTILINE)
    }


def _path(nodes: list[str]) -> set[tuple[str, str]]:
    full = ["__start__", *nodes, "__end__"]
    return set(itertools.pairwise(full))


@pytest.mark.parametrize(
    ("recipe", "state", "expected"),
    [
        (
            "planner-executor",
            {"question": "How does Maestro resume?", "max_steps": 2},
            ["plan", "execute", "progress", "execute", "progress", "summarize"],
        ),
        (
            "critique-improve",
            {"task": "Explain leases."},
            ["draft", *["critique", "verdict", "improve"] * 3, "critique", "verdict"],
        ),
        (
            "toolformer",
            {"question": "What do gates do?", "max_turns": 2},
            ["think", "choose", "search", "think", "choose"],
        ),
    ],
)
async def test_builtin_recipe_runs_end_to_end_through_the_data_plane(
    tmp_path: Path,
    backend: dict[str, object],
    recipe: str,
    state: dict[str, object],
    expected: list[str],
) -> None:
    async with stack(tmp_path, overrides=backend) as s:
        run = await create_run(s.client, f"projects/builtin/recipes/{recipe}", state)
        assert run.state == gpb.Run.STATE_RUNNING  # claimed and started by this replica
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
        diagram = await s.client.graphs.ExportRecipeDiagram(
            gpb.ExportRecipeDiagramRequest(name=f"projects/builtin/recipes/{recipe}")
        )
    assert done.state == gpb.Run.STATE_SUCCEEDED, done.state_reason
    assert finished_nodes(events) == expected
    assert done.usage.completion_tokens > 0
    model_steps = sum(
        1 for e in events if e.WhichOneof("payload") == "node_started" and e.node_started.kind == 1
    )
    assert s.primary.stats.requests_completed + s.backup.stats.requests_completed == model_steps
    # every transition the run took is an edge of the exported diagram
    assert _path(expected) <= _edges_taken(diagram.mermaid)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_debate_waits_at_its_gate_and_an_approval_finishes_it(
    tmp_path: Path, backend: dict[str, object]
) -> None:
    async with stack(tmp_path, overrides=backend) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/debate", {"motion": "Tabs", "max_rounds": 1}
        )
        waiting = await wait_for(s.client, run.name, WAITING)
        [gate_name] = waiting.open_gates or [
            g.name
            for g in (await s.client.graphs.ListGates(gpb.ListGatesRequest(parent=run.name))).gates
        ]
        async with s.server.client(s.server.new_key("reviewer")) as reviewer:
            decided = await reviewer.graphs.SubmitGateDecision(
                gpb.SubmitGateDecisionRequest(name=gate_name, verdict=gpb.GATE_VERDICT_APPROVE)
            )
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
    assert decided.gate.state == gpb.Gate.STATE_APPROVED
    assert decided.decision.counted
    assert done.state == gpb.Run.STATE_SUCCEEDED
    assert finished_nodes(events) == ["proponent", "opponent", "rounds", "judge", "confirm"]
    assert state_of(done)["gate"]["decision"] == "approve"


async def test_budget_exceeded_before_a_node_blocks_the_run_and_the_node_never_runs(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client,
            "projects/builtin/recipes/critique-improve",
            {"task": "x"},
            budget=common_pb2.Budget(
                max_tokens=300, max_cost_usd=0.5, max_wall_time=duration_pb2.Duration(seconds=60)
            ),
        )
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
    assert done.state == gpb.Run.STATE_BLOCKED
    blocked = [e for e in events if e.WhichOneof("payload") == "budget_exceeded"]
    assert len(blocked) == 1
    node = blocked[0].node_id
    started = [e.node_id for e in events if e.WhichOneof("payload") == "node_started"]
    assert started.count(node) == finished_nodes(events).count(node)  # it never started
    info = error_details_pb2.ErrorInfo()
    done.error.details[0].Unpack(info)
    assert info.reason == "BUDGET_EXCEEDED"
    assert info.metadata["node_id"] == node
    assert "exceed" in blocked[0].budget_exceeded.reason


async def test_invalid_recipe_is_refused_naming_field_and_line_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    source = (
        "nodes:\n  - {id: a, kind: model}\nedges:\n  - {from: __start__, to: a}\n"
        "  - {from: a, to: b}\n"
    )
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as caught:
            await s.client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent=PARENT, recipe_id="bad", recipe=gpb.Recipe(source_yaml=source)
                )
            )
        listed = await s.client.graphs.ListRecipes(gpb.ListRecipesRequest(parent=PARENT))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field: v.description for v in caught.value.field_violations}
    assert fields["recipe.source_yaml.edges[1].to"] == "no node 'b' (line 5)"
    assert list(listed.recipes) == []


async def test_cancel_ends_a_waiting_run_and_expires_its_gate(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(s.client, "projects/builtin/recipes/debate", {"max_rounds": 0})
        await wait_for(s.client, run.name, WAITING)
        cancelled = await s.client.graphs.CancelRun(
            gpb.CancelRunRequest(name=run.name, reason="not needed")
        )
        again = await s.client.graphs.CancelRun(gpb.CancelRunRequest(name=run.name))
        gates = await s.client.graphs.ListGates(gpb.ListGatesRequest(parent=run.name))
    assert cancelled.run.state == gpb.Run.STATE_CANCELLED
    assert again.run.state == gpb.Run.STATE_CANCELLED
    assert [g.state for g in gates.gates] == [gpb.Gate.STATE_EXPIRED]


async def test_kill_switch_pauses_runs_refuses_new_ones_and_is_audited(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(s.client, "projects/builtin/recipes/debate", {"max_rounds": 0})
        await wait_for(s.client, run.name, WAITING)
        engaged = await s.client.graphs.SetKillSwitch(
            gpb.SetKillSwitchRequest(
                name=f"{PARENT}/killSwitch", engaged=True, reason="incident 42"
            )
        )
        paused = (await s.client.graphs.GetRun(gpb.GetRunRequest(name=run.name))).run
        with pytest.raises(MaestroRpcError) as refused:
            await create_run(s.client, "projects/builtin/recipes/debate", {})
        with pytest.raises(MaestroRpcError) as global_refused:
            await s.client.graphs.SetKillSwitch(
                gpb.SetKillSwitchRequest(
                    name="projects/global/killSwitch", engaged=True, reason="x"
                )
            )
        audit = s.server.plane.graph.store.audit_entries(f"{PARENT}/killSwitch")  # type: ignore[union-attr]
    assert engaged.paused_run_count == 1
    assert engaged.kill_switch.engaged
    assert engaged.kill_switch.in_effect
    assert paused.state == gpb.Run.STATE_PAUSED
    assert paused.kill_switch == f"{PARENT}/killSwitch"
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert global_refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [(a["action"], a["reason"]) for a in audit] == [("engage", "incident 42")]


async def test_runs_of_another_project_are_denied(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(s.client, "projects/builtin/recipes/debate", {"max_rounds": 0})
        async with s.server.client(s.server.beta_key) as beta:
            with pytest.raises(MaestroRpcError) as caught:
                await beta.graphs.GetRun(gpb.GetRunRequest(name=run.name))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_every_node_runs_in_an_agent_node_span_parenting_its_model_and_tool_calls(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/toolformer", {"question": "q", "max_turns": 1}
        )
        await wait_for(s.client, run.name, FINAL)
        spans = s.server.spans.get_finished_spans()
    nodes = [sp for sp in spans if sp.name == "agent.node.run"]
    assert [sp.attributes["maestro.node.id"] for sp in nodes] == ["think"]  # type: ignore[index]
    node = nodes[0]
    assert node.attributes["maestro.run"] == run.name  # type: ignore[index]
    assert node.context.trace_id == int(run.trace_id, 16)  # the run's trace
    create = next(sp for sp in spans if sp.name.endswith("GraphService/CreateRun"))
    assert create.context.trace_id == node.context.trace_id  # the creating call's trace
    children = [
        sp for sp in spans if sp.parent is not None and sp.parent.span_id == node.context.span_id
    ]
    assert any(sp.name.startswith("chat ") for sp in children)


async def test_tool_calls_get_a_tool_call_span_with_their_idempotency_key(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/toolformer", {"question": "q", "max_turns": 2}
        )
        await wait_for(s.client, run.name, FINAL)
        spans = s.server.spans.get_finished_spans()
    [tool] = [sp for sp in spans if sp.name == "tool.call"]
    assert tool.attributes["gen_ai.tool.name"] == "search"  # type: ignore[index]
    assert tool.attributes["maestro.tool.idempotency_key"] == f"{run.name}/search/1"  # type: ignore[index]
    parent = next(sp for sp in spans if sp.context.span_id == tool.parent.span_id)  # type: ignore[union-attr]
    assert parent.name == "agent.node.run"


GATE_THEN_MODEL = """
nodes:
  - {id: hold, kind: gate, gate: {prompt: Go on?}}
  - {id: write, kind: model, max_tokens: 24}
edges:
  - {from: __start__, to: hold}
  - {from: hold, to: write}
  - {from: write, to: __end__}
"""


async def test_stream_run_events_replays_then_follows_until_the_run_ends(tmp_path: Path) -> None:
    async with stack(tmp_path, primary=profile(tokens_per_s=400)) as s:
        await s.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="held", recipe=gpb.Recipe(source_yaml=GATE_THEN_MODEL)
            )
        )
        run = await create_run(s.client, f"{PARENT}/recipes/held")
        seen: list[gpb.RunEvent] = []
        async for item in s.client.graphs.StreamRunEvents(
            gpb.StreamRunEventsRequest(name=run.name, include_token_chunks=True)
        ):
            seen.append(item.event)
            if item.event.WhichOneof("payload") == "gate_opened":  # watching live from here
                async with s.server.client(s.server.new_key("reviewer")) as reviewer:
                    await reviewer.graphs.SubmitGateDecision(
                        gpb.SubmitGateDecisionRequest(
                            name=item.event.gate_opened.gate.name, verdict=gpb.GATE_VERDICT_APPROVE
                        )
                    )
        stored = await all_events(s.client, run.name)
        resumed = [
            item.event
            async for item in s.client.graphs.StreamRunEvents(
                gpb.StreamRunEventsRequest(name=run.name, after_sequence=3)
            )
        ]
    kept = [e for e in seen if e.WhichOneof("payload") != "token_chunk"]
    assert [e.sequence for e in kept] == [e.sequence for e in stored]
    assert kept[-1].run_state_changed.state == gpb.Run.STATE_SUCCEEDED
    assert [e.sequence for e in resumed] == [e.sequence for e in stored if e.sequence > 3]
    sequences = [e.sequence for e in seen]
    assert sequences == sorted(sequences)  # chunks never go back in sequence
    chunks = [e for e in seen if e.WhichOneof("payload") == "token_chunk"]
    assert chunks  # the model node's output streamed live, 24 tokens at 400 tokens/s
    assert {c.node_id for c in chunks} == {"write"}
    [started] = [e.sequence for e in kept if e.WhichOneof("payload") == "node_started"
                 and e.node_id == "write"]  # fmt: skip
    assert all(chunk.sequence >= started for chunk in chunks)  # never ahead of its node's start


async def test_preview_estimates_cost_per_node_and_checks_the_budget(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        fits = await s.client.graphs.PreviewRunCost(
            gpb.PreviewRunCostRequest(
                parent=PARENT, run=gpb.Run(recipe="projects/builtin/recipes/planner-executor")
            )
        )
        tight = await s.client.graphs.PreviewRunCost(
            gpb.PreviewRunCostRequest(
                parent=PARENT,
                run=gpb.Run(
                    recipe="projects/builtin/recipes/planner-executor",
                    budget=common_pb2.Budget(max_tokens=100),
                ),
            )
        )
    assert [n.node_id for n in fits.nodes] == ["plan", "execute", "lookup", "progress", "summarize"]
    assert fits.estimated_usage.total_tokens > 0
    assert fits.fits_budget
    assert fits.slo_forecast.success_rate == 1.0  # no errors observed in the live window yet
    assert fits.slo_forecast.p95_wall_time.ToNanoseconds() > 0
    assert not tight.fits_budget
    assert "exceed budget 100" in tight.budget_violations[0]


async def test_a_large_step_input_is_kept_in_the_blob_store_under_its_digest(
    tmp_path: Path,
) -> None:
    question = "why? " * 1000  # 5 KB: large inputs are stored, small ones rebuilt from events
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/toolformer", {"question": question, "max_turns": 1}
        )
        await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
        runtime = s.server.plane.graph.runtime  # type: ignore[union-attr]
        [think] = [
            e for e in events if e.WhichOneof("payload") == "node_finished" and e.node_id == "think"
        ]
        [digest] = think.provenance.input_digests
        assert runtime.blobs is not None
        stored = json.loads(runtime.blobs.get(digest))
    assert stored == {"question": question, "max_turns": 1}  # what the model step was given
    assert digest.startswith("sha256:")


CHILD = """
nodes:
  - {id: summarize, kind: model, max_tokens: 8}
edges:
  - {from: __start__, to: summarize}
  - {from: summarize, to: __end__}
"""
PARENT_RECIPE = """
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: condense, kind: subgraph, recipe: projects/alpha/recipes/child}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: condense}
  - {from: condense, to: __end__}
"""


async def test_a_subgraph_node_runs_its_recipe_as_a_child_run_over_the_state(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        for recipe_id, source in (("child", CHILD), ("parent", PARENT_RECIPE)):
            await s.client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent=PARENT, recipe_id=recipe_id, recipe=gpb.Recipe(source_yaml=source)
                )
            )
        run = await create_run(s.client, f"{PARENT}/recipes/parent", {"topic": "leases"})
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
        [finished] = [
            e
            for e in events
            if e.WhichOneof("payload") == "node_finished" and e.node_id == "condense"
        ]
        child_name = finished.provenance.producer.removeprefix("run:")
        child = (await s.client.graphs.GetRun(gpb.GetRunRequest(name=child_name))).run
    assert done.state == gpb.Run.STATE_SUCCEEDED, done.state_reason
    assert child.state == gpb.Run.STATE_SUCCEEDED
    assert child.recipe == f"{PARENT}/recipes/child"
    assert state_of(child)["draft"] == state_of(done)["draft"]  # the child saw the parent's state
    assert state_of(done)["summarize"] == state_of(child)["summarize"]  # and gave back its own
    assert done.usage.completion_tokens == 8 + child.usage.completion_tokens


async def test_a_subgraph_of_an_unknown_recipe_is_refused_at_creation(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        await s.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="parent", recipe=gpb.Recipe(source_yaml=PARENT_RECIPE)
            )
        )
        with pytest.raises(MaestroRpcError) as caught:
            await create_run(s.client, f"{PARENT}/recipes/parent")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_node_attempts_and_finished_runs_are_counted(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/toolformer", {"question": "q", "max_turns": 2}
        )
        await wait_for(s.client, run.name, FINAL)
        data = s.server.metrics.get_metrics_data()
    points: dict[tuple[str, tuple[tuple[str, object], ...]], object] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if not metric.name.startswith("maestro.graph."):
                    continue
                for point in metric.data.data_points:
                    labels = tuple(sorted((point.attributes or {}).items()))
                    points[metric.name, labels] = getattr(point, "value", None)
    assert (
        points[("maestro.graph.node.attempts", (("kind", "model"), ("outcome", "succeeded")))] == 2
    )
    assert (
        points[("maestro.graph.node.attempts", (("kind", "tool"), ("outcome", "succeeded")))] == 1
    )
    finished = (
        ("maestro.project", "alpha"),
        ("recipe", "projects/builtin/recipes/toolformer"),
        ("state", "succeeded"),
    )
    assert points[("maestro.graph.runs.finished", finished)] == 1


async def test_cancelling_a_parent_cancels_the_child_run_it_waits_for(tmp_path: Path) -> None:
    gated_child = """
nodes:
  - {id: hold, kind: gate, gate: {prompt: Go on?}}
edges:
  - {from: __start__, to: hold}
  - {from: hold, to: __end__}
"""
    async with stack(tmp_path) as s:
        for recipe_id, source in (("child", gated_child), ("parent", PARENT_RECIPE)):
            await s.client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent=PARENT, recipe_id=recipe_id, recipe=gpb.Recipe(source_yaml=source)
                )
            )
        run = await create_run(s.client, f"{PARENT}/recipes/parent")
        children: list[gpb.Run] = []
        for _ in range(200):  # bounded: until the child waits at its gate
            listed = await s.client.graphs.ListRuns(
                gpb.ListRunsRequest(parent=PARENT, filter="state = WAITING_FOR_APPROVAL")
            )
            children = list(listed.runs)
            if children:
                break
            await asyncio.sleep(0.02)
        await s.client.graphs.CancelRun(gpb.CancelRunRequest(name=run.name, reason="no longer"))
        child = (await s.client.graphs.GetRun(gpb.GetRunRequest(name=children[0].name))).run
    assert child.recipe == f"{PARENT}/recipes/child"
    assert child.state == gpb.Run.STATE_CANCELLED
    assert run.name in child.state_reason
