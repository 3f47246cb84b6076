"""The run store's contract, run against both SQLite and a real PostgreSQL server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from maestro.control_plane.graph.records import (
    Budget,
    GateRecord,
    GateStatus,
    InFlight,
    NewEvent,
    RunChange,
    RunRecord,
    RunStatus,
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


def _started(body: str = "x") -> NewEvent:
    return NewEvent({"node_started": {"kind": body}}, "a", 1)


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
    gate = GateRecord(
        "projects/p/runs/r1/gates/g-1", "projects/p/runs/r1", "p", "a", GateStatus.OPEN, "ok?",
        1, 2, {}, None, (), "e1", time.time(), time.time(),
    )  # fmt: skip
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
    first = store.put_recipe("p", "x", RECIPE, "X", create=True)
    second = store.put_recipe("p", "x", RECIPE + "\n", "X", create=False, etag=first.revision_id)
    assert store.get_recipe("p", "x").revision_id == second.revision_id
    assert store.get_recipe("p", "x", first.revision_id).source_yaml == RECIPE
    with pytest.raises(Aborted):
        store.put_recipe("p", "x", RECIPE, "X", create=False, etag=first.revision_id)
    store.insert_run(_run(), [])
    with pytest.raises(FailedPrecondition):
        store.delete_recipe("p", "x")
    store.change_run("projects/p/runs/r1", lambda r, g: RunChange({"status": RunStatus.SUCCEEDED}))
    store.delete_recipe("p", "x")
    with pytest.raises(NotFound):
        store.get_recipe("p", "x")


def test_listing_runs_pages_newest_first(store: RunStore) -> None:
    for index in range(5):
        store.insert_run(_run(f"projects/p/runs/r{index}", create_time=1000.0 + index), [])
    first = store.list_runs("p", None, 2)
    rest = store.list_runs("p", (first[-1].create_time, first[-1].name), 10)
    assert [r.name[-2:] for r in [*first, *rest]] == ["r4", "r3", "r2", "r1", "r0"]


def test_finished_runs_are_not_claimed(store: RunStore) -> None:
    store.insert_run(replace(_run(), status=RunStatus.SUCCEEDED), [])
    assert store.claim("a", 60, 10) == []
