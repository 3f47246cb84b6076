"""The run store's contract, run against both SQLite and a real PostgreSQL server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from maestro.control_plane.graph.recipe_store import RecipeStore
from maestro.control_plane.graph.records import (
    Budget,
    BudgetExceeded,
    CostUpdate,
    ErrorCode,
    EventPayload,
    GateDecided,
    GateDecision,
    GateOpened,
    GateRecord,
    GateStatus,
    GateVerdict,
    InFlight,
    NewEvent,
    NodeFinished,
    NodeKind,
    NodeStarted,
    Outcome,
    PolicyBlocked,
    Provenance,
    RunChange,
    RunError,
    RunErrored,
    RunRecord,
    RunStateChanged,
    RunStatus,
    StepReplayed,
    Usage,
)
from maestro.control_plane.graph.store import RunStore
from maestro.control_plane.store.sql import Sql
from maestro.core.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound

RECIPE = "nodes: [{id: a, kind: router}]\nedges: [{from: __start__, to: a}, {from: a, to: __end__}]"


@pytest.fixture
def store(store_sql: Sql) -> RunStore:
    return RunStore(store_sql)


def _run(name: str = "projects/p/runs/r1", **fields: object) -> RunRecord:
    now = time.time()
    values: dict[str, object] = {
        "name": name,
        "project": "p",
        "recipe": "projects/p/recipes/x",
        "recipe_revision_id": "rev1",
        "recipe_source": RECIPE,
        "input_state": {"q": 1},
        "state": {"q": 1},
        "status": RunStatus.QUEUED,
        "budget": Budget(100, 1.0, 60.0),
        "autonomy": 2,
        "trace_id": "t" * 32,
        "create_time": now,
        "update_time": now,
        "next_node": "a",
        **fields,
    }
    return RunRecord(**values)  # type: ignore[arg-type]


def _started() -> NewEvent:
    return NewEvent(NodeStarted(NodeKind.ROUTER), "a", 1)


def _gate(**fields: object) -> GateRecord:
    now = time.time()
    values: dict[str, object] = {
        "name": "projects/p/runs/r1/gates/g-1",
        "run": "projects/p/runs/r1",
        "project": "p",
        "node_id": "a",
        "status": GateStatus.OPEN,
        "prompt": "ok?",
        "required_approvals": 1,
        "autonomy": 2,
        "state_snapshot": {},
        "proposed_action": None,
        "decisions": (),
        "etag": "e1",
        "create_time": now,
        "update_time": now,
        **fields,
    }
    return GateRecord(**values)  # type: ignore[arg-type]


def test_a_run_round_trips_with_its_json_state_and_first_events(store: RunStore) -> None:
    inserted, created = store.insert_run(
        _run(state={"q": 1, "nested": {"list": [1, "x", None]}}), [_started()]
    )
    stored = store.get_run(inserted.name)
    assert created
    assert stored == inserted
    assert stored.state == {"q": 1, "nested": {"list": [1, "x", None]}}
    assert stored.budget == Budget(100, 1.0, 60.0)
    assert stored.last_seq == 1
    assert [e.seq for e in store.list_events(stored.name, 0, 10)] == [1]


def test_a_taken_name_is_already_exists_and_a_retried_request_id_returns_the_first_run(
    store: RunStore,
) -> None:
    first, _ = store.insert_run(_run(request_id="req-1"), [])
    again, created = store.insert_run(_run("projects/p/runs/other", request_id="req-1"), [])
    assert again.name == first.name
    assert not created
    with pytest.raises(AlreadyExists):
        store.insert_run(_run(), [])


def test_change_run_commits_updates_events_and_gates_together_with_dense_sequences(
    store: RunStore,
) -> None:
    store.insert_run(_run(), [_started()])
    gate = _gate()
    run, events = store.change_run(
        "projects/p/runs/r1",
        lambda r, g: RunChange(
            {"state": {"q": 2}, "status": RunStatus.RUNNING}, (_started(), _started()), (gate,)
        ),
    )
    assert [e.seq for e in events] == [2, 3]
    assert run.state == {"q": 2}
    assert store.get_run(run.name).last_seq == 3
    assert store.get_gate(gate.name).prompt == "ok?"


def test_a_change_that_raises_writes_nothing(store: RunStore) -> None:
    store.insert_run(_run(), [_started()])

    def refuse(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
        raise FailedPrecondition("no", reason="NO")

    with pytest.raises(FailedPrecondition):
        store.change_run("projects/p/runs/r1", refuse)
    assert store.get_run("projects/p/runs/r1").last_seq == 1
    assert len(store.list_events("projects/p/runs/r1", 0, 10)) == 1


def test_claims_take_unleased_runs_once_and_expired_leases_name_the_previous_owner(
    store: RunStore,
) -> None:
    for index in range(4):
        store.insert_run(_run(f"projects/p/runs/r{index}"), [])
    first = store.claim("replica-a", lease_s=60, limit=3)
    second = store.claim("replica-b", lease_s=60, limit=10)
    assert len(first) == 3
    assert len(second) == 1
    assert not {r.name for r, _ in first} & {r.name for r, _ in second}
    later = store.claim("replica-b", lease_s=60, limit=10, now=time.time() + 120)
    assert {previous for _, previous in later} == {"replica-a", "replica-b"}


def test_concurrent_claimers_never_share_a_run(store: RunStore) -> None:
    for index in range(40):
        store.insert_run(_run(f"projects/p/runs/r{index}"), [])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: store.claim(f"replica-{i}", 60, 40), range(4)))
    names = [run.name for claimed in results for run, _ in claimed]
    assert sorted(names) == sorted(f"projects/p/runs/r{i}" for i in range(40))


def test_renew_keeps_only_owned_unfinished_unhalted_runs(store: RunStore) -> None:
    for index in range(3):
        store.insert_run(_run(f"projects/p/runs/r{index}"), [])
    store.claim("a", 60, 3)
    store.change_run("projects/p/runs/r1", lambda r, g: RunChange({"kill_switch": "k"}))
    store.change_run("projects/p/runs/r2", lambda r, g: RunChange({"owner": "b"}))
    held = store.renew("a", [f"projects/p/runs/r{i}" for i in range(3)], 60)
    assert held == {"projects/p/runs/r0"}


def test_in_flight_node_survives_a_reopen(store: RunStore) -> None:
    store.insert_run(_run(), [])
    flight = InFlight("a", 1, 1, "replica-a", "projects/p/runs/r1/a/1", "prov")
    store.change_run("projects/p/runs/r1", lambda r, g: RunChange({"in_flight": flight}))
    assert store.get_run("projects/p/runs/r1").in_flight == flight


def test_a_side_effect_runs_once_per_idempotency_key(store: RunStore) -> None:
    calls = []

    def effect() -> dict[str, object]:
        calls.append(1)
        return {"ticket": f"T-{len(calls)}"}

    first = store.apply_effect("run/node/1", "create_ticket", {"title": "x"}, effect)
    second = store.apply_effect("run/node/1", "create_ticket", {"title": "x"}, effect)
    assert first == ({"ticket": "T-1"}, True)
    assert second == ({"ticket": "T-1"}, False)
    assert [(row["calls"]) for row in store.effects("run/")] == [2]


def test_kill_switch_changes_are_etag_checked_and_audited(store: RunStore) -> None:
    name = "projects/p/killSwitch"
    initial = store.get_switch(name)
    assert not initial.engaged
    engaged, changed = store.set_switch(name, True, "incident", "key-1", initial.etag)
    assert changed
    with pytest.raises(Aborted):
        store.set_switch(name, False, "stale", "key-1", initial.etag)
    _, changed_again = store.set_switch(name, True, "again", "key-2", engaged.etag)
    assert not changed_again
    assert [(e["actor"], e["action"]) for e in store.audit_entries(name)] == [
        ("key-1", "engage"),
        ("key-2", "engage"),
    ]


def test_recipes_keep_every_revision_and_refuse_deletion_while_a_run_uses_them(
    store: RunStore,
) -> None:
    recipes = RecipeStore(store.sql)
    first = recipes.put_recipe("p", "x", RECIPE, "X", create=True)
    second = recipes.put_recipe("p", "x", RECIPE + "\n", "X", create=False, etag=first.revision_id)
    assert recipes.get_recipe("p", "x").revision_id == second.revision_id
    assert recipes.get_recipe("p", "x", first.revision_id).source_yaml == RECIPE
    with pytest.raises(Aborted):
        recipes.put_recipe("p", "x", RECIPE, "X", create=False, etag=first.revision_id)
    store.insert_run(_run(), [])
    with pytest.raises(FailedPrecondition):
        recipes.delete_recipe("p", "x")
    store.change_run("projects/p/runs/r1", lambda r, g: RunChange({"status": RunStatus.SUCCEEDED}))
    recipes.delete_recipe("p", "x")
    with pytest.raises(NotFound):
        recipes.get_recipe("p", "x")


def test_concurrent_updates_of_a_recipe_and_a_kill_switch_queue_instead_of_conflicting(
    store: RunStore,
) -> None:
    """Found by the RPC fuzz test on PostgreSQL: a delete and re-insert of the row raced."""
    recipes = RecipeStore(store.sql)
    recipes.put_recipe("p", "x", RECIPE, "X", create=True)

    def update(i: int) -> str:
        recipes.put_recipe("p", "x", RECIPE + f"\n# {i}", "X", create=False)
        store.set_switch("projects/p/killSwitch", i % 2 == 0, f"r{i}", "me", "")
        return "ok"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(update, range(24)))
    with store.sql.read() as tx:
        revisions = tx.one("SELECT COUNT(*) AS n FROM graph_recipe_revisions", ())
    assert outcomes == ["ok"] * 24
    assert revisions is not None
    assert int(revisions["n"]) == 25


def test_listing_runs_pages_newest_first(store: RunStore) -> None:
    for index in range(5):
        store.insert_run(_run(f"projects/p/runs/r{index}", create_time=1000.0 + index), [])
    first = store.list_runs("p", None, 2)
    rest = store.list_runs("p", (first[-1].create_time, first[-1].name), 10)
    assert [r.name[-2:] for r in [*first, *rest]] == ["r4", "r3", "r2", "r1", "r0"]


def test_finished_runs_are_not_claimed(store: RunStore) -> None:
    store.insert_run(replace(_run(), status=RunStatus.SUCCEEDED), [])
    assert store.claim("a", 60, 10) == []


def test_every_event_payload_and_a_decided_gate_read_back_as_written(store: RunStore) -> None:
    decision = GateDecision(
        "key-1", GateVerdict.EDIT, "tone", False, "prov-2", 1_700_000_000.25,
        state_patch={"draft": None}, edited_action={"title": "x"},
    )  # fmt: skip
    error = RunError(ErrorCode.FAILED_PRECONDITION, "NODE_TIMEOUT", "too slow", "a")
    gate = _gate(
        status=GateStatus.APPROVED,
        proposed_action={"tool": "t", "arguments": {"n": 1}},
        decisions=(decision,),
        expire_time=1_700_000_060.5,
        opened_seq=4,
    )
    payloads: list[EventPayload] = [
        NodeStarted(NodeKind.TOOL, 0.25, "projects/p/runs/r1/a/1"),
        NodeFinished(Outcome.SUCCEEDED, 0.5, {"a": [1, "x", None]}, Usage(3, 4), 0.01, ("b",)),
        NodeFinished(Outcome.TIMED_OUT, 2.0, error=error, will_retry=True),
        CostUpdate(Usage(3, 4), 0.01, 0.5),
        GateOpened(gate),
        GateDecided(gate.name, decision, GateStatus.APPROVED),
        BudgetExceeded("maestro.graph.token_budget", "too many", Budget(10, 0.5, 60.0), 0.2, 0.1),
        PolicyBlocked("data.maestro.graph.deny", "no"),
        StepReplayed("replica-a", "replica-b", "projects/p/runs/r1/a/1"),
        RunStateChanged(RunStatus.RUNNING, RunStatus.WAITING_FOR_APPROVAL, "ok?"),
        RunErrored(error),
    ]
    provenance = Provenance("prov-1", "primary-a", ("sha256:00",))
    store.insert_run(_run(), [NewEvent(p, "a", 1, provenance) for p in payloads], (gate,))
    store.change_run(
        "projects/p/runs/r1", lambda r, g: RunChange({"error": error, "status": RunStatus.FAILED})
    )
    events = store.list_events("projects/p/runs/r1", 0, 100)
    assert [e.payload for e in events] == payloads
    assert {e.provenance for e in events} == {provenance}
    assert store.get_gate(gate.name) == gate
    assert store.get_run("projects/p/runs/r1").error == error


def test_stored_bodies_use_maestros_names_not_the_apis(store: RunStore) -> None:
    decision = GateDecision("key-1", GateVerdict.APPROVE, "", True, "prov", 1_700_000_000.0)
    gate = _gate(decisions=(decision,))
    events = [
        NewEvent(NodeStarted(NodeKind.GATE), "a", 1),
        NewEvent(GateDecided(gate.name, decision, GateStatus.APPROVED), "a"),
        NewEvent(RunStateChanged(RunStatus.QUEUED, RunStatus.RUNNING, "claimed")),
    ]
    store.insert_run(_run(), events, (gate,))
    with store.sql.read() as tx:
        bodies = [
            store.sql.json_out(row["body"])
            for row in tx.all("SELECT body FROM run_events ORDER BY seq")
        ]
        [gate_row] = tx.all("SELECT body FROM run_gates")
    assert bodies[0] == {
        "node_started": {"kind": "gate", "estimated_cost_usd": 0.0, "idempotency_key": ""}
    }
    assert bodies[1]["gate_decided"]["gate_status"] == "approved"
    assert bodies[1]["gate_decided"]["decision"]["verdict"] == "approve"
    assert bodies[2] == {
        "run_state_changed": {"previous_status": "queued", "status": "running", "reason": "claimed"}
    }
    [stored_decision] = store.sql.json_out(gate_row["body"])["decisions"]
    assert (stored_decision["verdict"], stored_decision["decide_time"]) == ("approve", 1.7e9)
