"""Human-in-the-loop gates: dual control above L3, repeat approvers, EDIT, BLOCK, stale etags,
the automatic gate before a side-effecting tool at L1-L2, and a gate opened on one server
decided through another that shares its PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from maestro.clients.errors import MaestroRpcError
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import start_server
from tests.graph_support import (
    FINAL,
    PARENT,
    all_events,
    create_run,
    finished_nodes,
    state_of,
    struct,
    wait_for,
)
from tests.inference_support import CONFIG, stack

WAITING = frozenset({gpb.Run.STATE_WAITING_FOR_APPROVAL})
GATED = """
autonomy: {level}
nodes:
  - {{id: draft, kind: model, max_tokens: 8}}
  - {{id: review, kind: gate, gate: {{prompt: Ship it?}}}}
  - {{id: publish, kind: model, max_tokens: 8}}
edges:
  - {{from: __start__, to: draft}}
  - {{from: draft, to: review}}
  - {{from: review, to: publish, when: state.gate.decision == "approve"}}
  - {{from: review, to: __end__}}
  - {{from: publish, to: __end__}}
"""
TICKETS = """
autonomy: L2
tools:
  - {name: create_ticket, side_effects: true, parameters: {type: object}}
nodes:
  - {id: think, kind: model, max_tokens: 8, tools: [create_ticket], tool_choice: create_ticket}
  - {id: file, kind: tool, tool: create_ticket}
edges:
  - {from: __start__, to: think}
  - {from: think, to: file}
  - {from: file, to: __end__}
"""


async def _recipe(client: object, recipe_id: str, source: str) -> str:
    created = await client.graphs.CreateRecipe(  # type: ignore[attr-defined]
        gpb.CreateRecipeRequest(
            parent=PARENT, recipe_id=recipe_id, recipe=gpb.Recipe(source_yaml=source)
        )
    )
    return str(created.recipe.name)


UNGATED: dict[str, object] = {"graph.autonomy_gate": False}
"""Runs above L2 without an autonomy promotion: promotion is EvalService's and has its own tests
(tests/test_eval_gates.py); these are about the human-in-the-loop gates inside a run."""


def _decide(
    gate: str, verdict: int, reason: str = "", **fields: object
) -> gpb.SubmitGateDecisionRequest:
    return gpb.SubmitGateDecisionRequest(name=gate, verdict=verdict, reason=reason, **fields)  # type: ignore[arg-type]


async def test_an_l4_gate_needs_two_distinct_approvers(tmp_path: Path) -> None:
    async with stack(tmp_path, overrides=UNGATED) as s:
        recipe = await _recipe(s.client, "dual", GATED.format(level="L4"))
        run = await create_run(s.client, recipe)
        waiting = await wait_for(s.client, run.name, WAITING)
        [gate] = waiting.open_gates
        async with s.server.client(s.server.new_key("ann")) as ann:
            first = await ann.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
            repeat = await ann.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
        still = (await s.client.graphs.GetRun(gpb.GetRunRequest(name=run.name))).run
        async with s.server.client(s.server.new_key("bob")) as other:
            second = await other.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
    assert first.gate.required_approvals == 2
    assert first.decision.counted
    assert first.gate.state == gpb.Gate.STATE_OPEN
    assert not repeat.decision.counted  # the same approver again is recorded, not counted
    assert len(repeat.gate.decisions) == 2
    assert still.state == gpb.Run.STATE_WAITING_FOR_APPROVAL
    assert second.decision.counted
    assert second.gate.state == gpb.Gate.STATE_APPROVED
    assert second.decision.approver != first.decision.approver
    assert done.state == gpb.Run.STATE_SUCCEEDED
    assert finished_nodes(events) == ["draft", "review", "publish"]
    assert len(state_of(done)["gate"]["approvers"]) == 2


async def test_block_stops_the_run_with_the_reason_recorded(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        recipe = await _recipe(s.client, "gated", GATED.format(level="L2"))
        run = await create_run(s.client, recipe)
        [gate] = (await wait_for(s.client, run.name, WAITING)).open_gates
        with pytest.raises(MaestroRpcError) as no_reason:
            await s.client.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_BLOCK))
        blocked = await s.client.graphs.SubmitGateDecision(
            _decide(gate, gpb.GATE_VERDICT_BLOCK, "draft leaks a customer name")
        )
        done = (await s.client.graphs.GetRun(gpb.GetRunRequest(name=run.name))).run
        with pytest.raises(MaestroRpcError) as closed:
            await s.client.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
        events = await all_events(s.client, run.name)
        audit = s.server.plane.graph.store.audit_entries(gate)  # type: ignore[union-attr]
    assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in no_reason.value.field_violations] == ["reason"]
    assert blocked.gate.state == gpb.Gate.STATE_BLOCKED
    assert done.state == gpb.Run.STATE_BLOCKED
    assert "draft leaks a customer name" in done.state_reason
    assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    decided = [e for e in events if e.WhichOneof("payload") == "gate_decided"]
    assert decided[0].gate_decided.decision.reason == "draft leaks a customer name"
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("gate.block", "draft leaks a customer name")
    ]


async def test_edit_patches_the_state_and_makes_earlier_approvals_stale(tmp_path: Path) -> None:
    async with stack(tmp_path, overrides=UNGATED) as s:
        recipe = await _recipe(s.client, "dual", GATED.format(level="L4"))
        run = await create_run(s.client, recipe, {"title": "old"})
        [gate] = (await wait_for(s.client, run.name, WAITING)).open_gates
        ann = s.server.client(s.server.new_key("ann"))
        approved = await ann.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
        async with s.server.client(s.server.new_key("bob")) as editor:
            with pytest.raises(MaestroRpcError) as stale:
                await editor.graphs.SubmitGateDecision(
                    _decide(gate, gpb.GATE_VERDICT_APPROVE, etag="not-the-etag")
                )
            edited = await editor.graphs.SubmitGateDecision(
                _decide(
                    gate,
                    gpb.GATE_VERDICT_EDIT,
                    "better title",
                    state_patch=struct({"title": "new"}),
                    etag=approved.gate.etag,
                )
            )
        final = await ann.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
        await ann.close()
        done = await wait_for(s.client, run.name, FINAL)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert edited.gate.approvals_counted == 1  # the first approval was of the old version
    assert json_format.MessageToDict(edited.gate.state_snapshot)["title"] == "new"
    assert final.gate.state == gpb.Gate.STATE_APPROVED
    assert state_of(done)["title"] == "new"


async def test_a_side_effecting_tool_below_l3_waits_for_approval_first(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        recipe = await _recipe(s.client, "tickets", TICKETS)
        run = await create_run(s.client, recipe)
        waiting = await wait_for(s.client, run.name, WAITING)
        gate = (await s.client.graphs.GetGate(gpb.GetGateRequest(name=waiting.open_gates[0]))).gate
        before = s.server.plane.graph.store.effects(run.name)  # type: ignore[union-attr]
        async with s.server.client(s.server.new_key("ann")) as ann:
            await ann.graphs.SubmitGateDecision(
                _decide(
                    gate.name,
                    gpb.GATE_VERDICT_EDIT,
                    "clearer title",
                    edited_action=struct({"title": "Fix the login page"}),
                )
            )
        done = await wait_for(s.client, run.name, FINAL)
    assert gate.node_id == "file"
    assert json_format.MessageToDict(gate.proposed_action)["tool"] == "create_ticket"
    assert before == []  # nothing happened before the approval
    assert done.state == gpb.Run.STATE_SUCCEEDED
    assert state_of(done)["file"]["title"] == "Fix the login page"


async def test_a_gate_opened_on_one_server_is_approved_through_another(
    tmp_path: Path, postgres_dsn: str
) -> None:
    shared = {"store.backend": "postgres", "store.postgres_dsn": postgres_dsn}
    async with stack(tmp_path / "a", overrides={**shared, "graph.replica_id": "a"}) as a:
        b_server = await start_server(tmp_path / "b", **shared, **{"graph.replica_id": "b"})
        try:
            async with b_server.client(b_server.alpha_key) as b:
                await b.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(
                            name=f"{PARENT}/routeConfig",
                            config_yaml=CONFIG.format(
                                primary=a.primary.base_url, backup=a.backup.base_url
                            ),
                        )
                    )
                )
                recipe = await _recipe(a.client, "gated", GATED.format(level="L2"))
                await b_server.plane.graph.runtime.stop()  # type: ignore[union-attr] # B only decides
                run = await create_run(a.client, recipe)
                [gate] = (await wait_for(a.client, run.name, WAITING)).open_gates
                decided = await b.graphs.SubmitGateDecision(_decide(gate, gpb.GATE_VERDICT_APPROVE))
                done = await wait_for(b, run.name, FINAL)
                events = await all_events(b, run.name)
        finally:
            await b_server.plane.stop(grace_s=0)
            b_server.telemetry.shutdown()
    assert decided.gate.state == gpb.Gate.STATE_APPROVED
    assert done.state == gpb.Run.STATE_SUCCEEDED
    assert finished_nodes(events) == ["draft", "review", "publish"]
    claims = [
        e.run_state_changed.reason
        for e in events
        if e.WhichOneof("payload") == "run_state_changed"
        and "claimed" in e.run_state_changed.reason
    ]
    assert claims == ["claimed by a"]


async def test_an_interactive_session_sees_the_gate_open_and_approves_it_on_the_same_stream(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        recipe = await _recipe(s.client, "gated", GATED.format(level="L2"))
        run = await create_run(s.client, recipe)
        commands: asyncio.Queue[gpb.InteractRunRequest | None] = asyncio.Queue()
        await commands.put(
            gpb.InteractRunRequest(start=gpb.InteractRunRequest.Start(name=run.name))
        )

        async def requests() -> AsyncIterator[gpb.InteractRunRequest]:
            while (message := await commands.get()) is not None:
                yield message

        approver = s.server.client(s.server.new_key("ann"))  # not the run's creator
        session = approver.graphs.InteractRun(requests())
        received: list[gpb.InteractRunResponse] = []
        async for response in session:
            received.append(response)
            kind = response.WhichOneof("payload")
            if kind == "event" and response.event.WhichOneof("payload") == "gate_opened":
                gate = response.event.gate_opened.gate.name
                await commands.put(  # a rejected command first: the session goes on
                    gpb.InteractRunRequest(
                        request_id="r1",
                        decide=gpb.InteractRunRequest.Decide(
                            gate=gate, verdict=gpb.GATE_VERDICT_BLOCK
                        ),
                    )
                )
                await commands.put(
                    gpb.InteractRunRequest(
                        request_id="r2",
                        decide=gpb.InteractRunRequest.Decide(
                            gate=gate, verdict=gpb.GATE_VERDICT_APPROVE
                        ),
                    )
                )
        await commands.put(None)
        await approver.close()
    assert received[0].WhichOneof("payload") == "snapshot"
    results = {
        r.result.request_id: r.result for r in received if r.WhichOneof("payload") == "result"
    }
    assert results["r1"].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert results["r2"].status.code == 0
    assert results["r2"].gate.state == gpb.Gate.STATE_APPROVED
    last = received[-1] if received[-1].WhichOneof("payload") == "event" else received[-2]
    assert last.event.run_state_changed.state == gpb.Run.STATE_SUCCEEDED


GRAPH_POLICY = """package maestro.graph

deny[reason] {
  input.node.side_effects
  input.autonomy != "L1"
  reason := sprintf("%s changes the outside world; only L1 runs may call it", [input.node.tool])
}
"""


async def test_the_before_execute_policy_blocks_a_node_before_it_starts(tmp_path: Path) -> None:
    async with stack(tmp_path, overrides=UNGATED) as s:
        await s.client.routes.ApplyConfig(
            rpb.ApplyConfigRequest(
                route_config=rpb.RouteConfig(
                    name=f"{PARENT}/routeConfig",
                    policy_modules=[rpb.RoutePolicyModule(name="graph.rego", source=GRAPH_POLICY)],
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["policy_modules"]),
            )
        )
        recipe = await _recipe(s.client, "tickets", TICKETS.replace("autonomy: L2", "autonomy: L3"))
        run = await create_run(s.client, recipe)
        done = await wait_for(s.client, run.name, FINAL)
        events = await all_events(s.client, run.name)
        effects = s.server.plane.graph.store.effects(run.name)  # type: ignore[union-attr]
    assert done.state == gpb.Run.STATE_BLOCKED
    [blocked] = [e for e in events if e.WhichOneof("payload") == "policy_blocked"]
    assert blocked.node_id == "file"
    assert blocked.policy_blocked.rule == "data.maestro.graph.deny"
    assert blocked.policy_blocked.reason == (
        "create_ticket changes the outside world; only L1 runs may call it"
    )
    assert finished_nodes(events) == ["think"]  # the tool never started
    assert effects == []


async def test_runs_and_gates_are_listed_by_state(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        recipe = await _recipe(s.client, "gated", GATED.format(level="L2"))
        waiting = await create_run(s.client, recipe)
        [gate] = (await wait_for(s.client, waiting.name, WAITING)).open_gates
        done = await create_run(s.client, "projects/builtin/recipes/critique-improve")
        await wait_for(s.client, done.name, FINAL)
        by_state = await s.client.graphs.ListRuns(
            gpb.ListRunsRequest(parent=PARENT, filter="state = WAITING_FOR_APPROVAL")
        )
        by_recipe = await s.client.graphs.ListRuns(
            gpb.ListRunsRequest(
                parent=PARENT,
                filter='recipe = "projects/builtin/recipes/critique-improve"',
                order_by="create_time",
            )
        )
        first_page = await s.client.graphs.ListRuns(
            gpb.ListRunsRequest(parent=PARENT, page_size=1, order_by="create_time")
        )
        second_page = await s.client.graphs.ListRuns(
            gpb.ListRunsRequest(
                parent=PARENT,
                page_size=1,
                order_by="create_time",
                page_token=first_page.next_page_token,
            )
        )
        open_gates = await s.client.graphs.ListGates(
            gpb.ListGatesRequest(parent=f"{PARENT}/runs/-", filter="state = OPEN")
        )
        with pytest.raises(MaestroRpcError) as bad:
            await s.client.graphs.ListRuns(gpb.ListRunsRequest(parent=PARENT, filter="state > 3"))
    assert [r.name for r in by_state.runs] == [waiting.name]
    assert [r.name for r in by_recipe.runs] == [done.name]
    assert [r.name for r in (*first_page.runs, *second_page.runs)] == [waiting.name, done.name]
    assert [g.name for g in open_gates.gates] == [gate]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_project_over_its_run_quota_gets_resource_exhausted(tmp_path: Path) -> None:
    async with stack(tmp_path, overrides={"graph.max_active_runs_per_project": 1}) as s:
        recipe = await _recipe(s.client, "gated", GATED.format(level="L2"))
        first = await create_run(s.client, recipe)
        await wait_for(s.client, first.name, WAITING)
        with pytest.raises(MaestroRpcError) as caught:
            await create_run(s.client, recipe)
        await s.client.graphs.CancelRun(gpb.CancelRunRequest(name=first.name))
        again = await create_run(s.client, recipe)  # a finished run frees its place
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.reason == "RUN_QUOTA_EXCEEDED"
    assert again.name != first.name


async def test_a_gate_past_its_timeout_expires_and_blocks_the_run(tmp_path: Path) -> None:
    timed = GATED.format(level="L2").replace(
        "{id: review, kind: gate, gate: {prompt: Ship it?}}",
        "{id: review, kind: gate, gate: {prompt: Ship it?}, timeout_s: 0.3}",
    )
    async with stack(tmp_path) as s:
        recipe = await _recipe(s.client, "timed", timed)
        run = await create_run(s.client, recipe)
        [gate_name] = (await wait_for(s.client, run.name, WAITING)).open_gates
        opened = (await s.client.graphs.GetGate(gpb.GetGateRequest(name=gate_name))).gate
        done = await wait_for(s.client, run.name, FINAL)
        gate = (await s.client.graphs.GetGate(gpb.GetGateRequest(name=gate_name))).gate
        with pytest.raises(MaestroRpcError) as late:
            await s.client.graphs.SubmitGateDecision(_decide(gate_name, gpb.GATE_VERDICT_APPROVE))
    assert opened.HasField("expire_time")
    assert gate.state == gpb.Gate.STATE_EXPIRED
    assert done.state == gpb.Run.STATE_BLOCKED
    assert "expired" in done.state_reason
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


UNARY_METHODS = [
    method.name
    for method in gpb.DESCRIPTOR.services_by_name["GraphService"].methods
    if not method.client_streaming and not method.server_streaming
]


@pytest.mark.parametrize("method", UNARY_METHODS)
async def test_an_empty_request_is_invalid_argument_with_field_violations(
    tmp_path: Path, method: str
) -> None:
    async with stack(tmp_path) as s:
        request_type = getattr(gpb, f"{method}Request")
        with pytest.raises(MaestroRpcError) as caught:
            await getattr(s.client.graphs, method)(request_type())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations


async def test_streams_refuse_bad_requests_with_invalid_argument(tmp_path: Path) -> None:
    async def only_a_decide() -> AsyncIterator[gpb.InteractRunRequest]:
        yield gpb.InteractRunRequest(decide=gpb.InteractRunRequest.Decide(gate="x"))

    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as stream:
            async for _ in s.client.graphs.StreamRunEvents(gpb.StreamRunEventsRequest()):
                pass
        with pytest.raises(MaestroRpcError) as session:
            async for _ in s.client.graphs.InteractRun(only_a_decide()):
                pass
    assert stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert session.value.code() == grpc.StatusCode.INVALID_ARGUMENT
