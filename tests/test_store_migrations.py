"""Databases written by earlier code open with today's: migrations move them forward, and what
they held (projects, keys, routing revisions, a run paused at its gate with its events) reads
back through the API, and the gate can still be decided. The fixtures and how they were made:
tests/data/README.md. Graph migration 2 moved stored events, gates and run errors from the API's
JSON form to Maestro's own names; every kind of body the old code wrote is checked here."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from maestro.control_plane.graph.records import (
    Budget,
    BudgetExceeded,
    CostUpdate,
    ErrorCode,
    GateDecided,
    GateDecision,
    GateOpened,
    GateRecord,
    GateStatus,
    GateVerdict,
    NodeFinished,
    NodeKind,
    NodeStarted,
    Outcome,
    PolicyBlocked,
    Provenance,
    RunError,
    RunErrored,
    RunRecord,
    RunStateChanged,
    RunStatus,
    StepReplayed,
    Usage,
)
from maestro.control_plane.graph.schema import MIGRATIONS as GRAPH_MIGRATIONS
from maestro.control_plane.graph.store import _RUN_COLUMNS, RunStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.migrations import Migration
from maestro.control_plane.store.postgres import PostgresSql
from maestro.control_plane.store.sql import Sql
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import project_service_pb2 as ppb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server

DATA = Path(__file__).parent / "data"
PARENT = "projects/alpha"
PAYLOADS = {"run_state_changed", "node_started", "node_finished", "cost_update", "gate_opened"}
APPLIED = [
    ("evals", 1),
    ("evals", 2),
    ("graph", 1),
    ("graph", 2),
    ("graph", 3),
    ("graph", 4),
    ("projects", 1),
    ("projects", 2),
    ("rollouts", 1),
    ("route", 1),
]


async def _paused_run_reads_back(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        runs = (await client.graphs.ListRuns(gpb.ListRunsRequest(parent=PARENT))).runs
        [run] = runs
        events = (
            await client.graphs.ListRunEvents(
                gpb.ListRunEventsRequest(parent=run.name, page_size=1000)
            )
        ).events
        gates = (await client.graphs.ListGates(gpb.ListGatesRequest(parent=run.name))).gates
        recipe = (await client.graphs.GetRecipe(gpb.GetRecipeRequest(name=run.recipe))).recipe
    assert run.state == gpb.Run.STATE_WAITING_FOR_APPROVAL
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.WhichOneof("payload") for e in events] == [
        "run_state_changed",
        "run_state_changed",
        "node_started",
        "node_finished",
        "cost_update",
        "gate_opened",
        "run_state_changed",
    ]
    assert {e.WhichOneof("payload") for e in events} >= PAYLOADS
    started = [e.node_started.kind for e in events if e.WhichOneof("payload") == "node_started"]
    assert started == [gpb.GRAPH_NODE_KIND_MODEL]
    states = [
        (e.run_state_changed.previous_state, e.run_state_changed.state)
        for e in events
        if e.WhichOneof("payload") == "run_state_changed"
    ]
    assert states == [
        (gpb.Run.STATE_QUEUED, gpb.Run.STATE_QUEUED),
        (gpb.Run.STATE_QUEUED, gpb.Run.STATE_RUNNING),
        (gpb.Run.STATE_RUNNING, gpb.Run.STATE_WAITING_FOR_APPROVAL),
    ]
    [finished] = [e.node_finished for e in events if e.WhichOneof("payload") == "node_finished"]
    assert finished.outcome == gpb.RunEvent.NodeFinished.OUTCOME_SUCCEEDED
    assert (finished.usage.completion_tokens, finished.usage.total_tokens) == (8, 13)
    assert 0 < finished.duration.ToNanoseconds() < 10**9
    [gate] = gates
    assert (gate.node_id, gate.state, gate.prompt) == ("review", gpb.Gate.STATE_OPEN, "Ship it?")
    assert gate.autonomy_level == common_pb2.AUTONOMY_LEVEL_L2
    [opened] = [e.gate_opened.gate for e in events if e.WhichOneof("payload") == "gate_opened"]
    assert (opened.name, opened.state, opened.etag) == (gate.name, gate.state, gate.etag)
    assert opened.autonomy_level == common_pb2.AUTONOMY_LEVEL_L2
    assert abs(opened.create_time.ToNanoseconds() - gate.create_time.ToNanoseconds()) < 10**5
    assert recipe.source_yaml.startswith("\nautonomy: L2")


async def _the_open_gate_can_be_blocked(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        [run] = (await client.graphs.ListRuns(gpb.ListRunsRequest(parent=PARENT))).runs
        [gate] = (await client.graphs.ListGates(gpb.ListGatesRequest(parent=run.name))).gates
        decided = await client.graphs.SubmitGateDecision(
            gpb.SubmitGateDecisionRequest(
                name=gate.name, verdict=gpb.GATE_VERDICT_BLOCK, reason="not after the upgrade"
            )
        )
        after = (await client.graphs.GetRun(gpb.GetRunRequest(name=run.name))).run
        last = (
            await client.graphs.ListRunEvents(
                gpb.ListRunEventsRequest(
                    parent=run.name, filter=f"sequence > {run.last_event_sequence}"
                )
            )
        ).events
    assert decided.gate.state == gpb.Gate.STATE_BLOCKED
    assert decided.decision.verdict == gpb.GATE_VERDICT_BLOCK
    assert after.state == gpb.Run.STATE_BLOCKED
    assert [e.WhichOneof("payload") for e in last] == ["gate_decided", "run_state_changed"]
    assert last[0].gate_decided.gate_state == gpb.Gate.STATE_BLOCKED


async def test_a_sqlite_file_from_before_the_store_layer_opens_with_everything_in_it(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "old" / "maestro.db"
    copy.parent.mkdir()
    shutil.copy(DATA / "legacy-sqlite.db", copy)
    server = await start_server(tmp_path, **{"store.sqlite_path": str(copy)})
    try:
        await _paused_run_reads_back(server)
        async with server.client(server.alpha_key) as client:
            config = await client.routes.GetConfig(
                rpb.GetConfigRequest(name=f"{PARENT}/routeConfig")
            )
            keys = await client.projects.ListApiKeys(ppb.ListApiKeysRequest(parent=PARENT))
        await _the_open_gate_can_be_blocked(server)
        with server.plane.store.read() as tx:
            applied = tx.all("SELECT slice, version FROM maestro_schema_migrations")
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
    assert config.route_config.revision_id == "2"
    legacy = {k.name: k for k in keys.api_keys}["projects/alpha/apiKeys/35ccfa391ed4"]
    # A key from before scopes keeps what every key could do then, and is its own principal.
    assert list(legacy.scopes) == ["admin", "approver", "data-plane", "inference"]
    assert legacy.principal == legacy.name
    assert sorted((r["slice"], r["version"]) for r in applied) == APPLIED


@pytest.mark.slow
async def test_a_postgres_database_from_before_the_store_layer_opens_with_its_runs(
    tmp_path: Path, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute((DATA / "legacy-postgres-graph.sql").read_bytes())
    server = await start_server(
        tmp_path, **{"store.backend": "postgres", "store.postgres_dsn": postgres_dsn}
    )
    try:
        await _paused_run_reads_back(server)
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
    with psycopg.connect(postgres_dsn) as conn:
        applied = conn.execute(
            "SELECT slice, version FROM maestro_schema_migrations ORDER BY slice, version"
        ).fetchall()
    assert applied == APPLIED


# -- graph migration 2: every kind of body the old code wrote -------------------------------------

RUN = "projects/alpha/runs/r1"
GATE = f"{RUN}/gates/review-1"
_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _status(code: int, reason: str, message: str, node_id: str = "") -> dict[str, Any]:
    """A run error as the old code stored it: a `google.rpc.Status` in proto JSON."""
    metadata = {"node_id": node_id} if node_id else {}
    return {
        "code": code,
        "message": message,
        "details": [
            {"@type": _INFO, "reason": reason, "domain": "maestro.dev", "metadata": metadata}
        ],
    }


_OLD_DECISION = {
    "approver": "key-1",
    "verdict": "GATE_VERDICT_EDIT",
    "reason": "tone",
    "counted": False,
    "provenance_id": "prov-3",
    "decide_time": "2023-11-14T22:13:20.250000Z",
    "state_patch": {"draft": "calmer"},
}
_OLD_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("", {"run_state_changed": {"previous_state": "STATE_QUEUED", "state": "STATE_RUNNING",
                                "reason": "claimed by a"}}),
    ("route", {"node_started": {"kind": "GRAPH_NODE_KIND_ROUTER"}}),
    ("route", {"node_finished": {"outcome": "OUTCOME_SUCCEEDED", "output": {}, "duration": "0s",
                                 "next_node_ids": ["draft"]}, "provenance": {"id": "prov-0"}}),
    ("draft", {"node_started": {"kind": "GRAPH_NODE_KIND_TOOL", "estimated_cost_usd": 0.25,
                                "idempotency_key": f"{RUN}/draft/1"},
               "provenance": {"id": "prov-1"}}),
    ("draft", {"node_finished": {"outcome": "OUTCOME_TIMED_OUT", "duration": "2.500000s",
                                 "error": _status(9, "NODE_TIMEOUT", "too slow", "draft"),
                                 "will_retry": True}}),
    ("draft", {"step_replayed": {"previous_replica": "a", "replica": "b",
                                 "idempotency_key": f"{RUN}/draft/1"}}),
    ("draft", {"node_finished": {"outcome": "OUTCOME_SUCCEEDED", "output": {"draft": "x"},
                                 "duration": "0.004549s",
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 8,
                                           "total_tokens": 13},
                                 "cost_usd": 0.01, "next_node_ids": ["review"]},
               "provenance": {"id": "prov-1", "producer": "tool:draft",
                              "input_digests": ["sha256:00"]}}),
    ("", {"cost_update": {"usage": {"prompt_tokens": 5, "completion_tokens": 8,
                                    "total_tokens": 13},
                          "cost_usd": 0.01, "budget_used_ratio": 0.5}}),
    ("review", {"node_started": {"kind": "GRAPH_NODE_KIND_HUMAN_GATE"}}),
    ("review", {"gate_opened": {"gate": {
        "name": GATE, "node_id": "review", "prompt": "Ship it?", "state_snapshot": {"draft": "x"},
        "autonomy_level": "AUTONOMY_LEVEL_L4", "required_approvals": 2, "approvals_counted": 0,
        "decisions": [], "state": "STATE_OPEN", "create_time": "2023-11-14T22:13:20Z",
        "update_time": "2023-11-14T22:13:20Z", "etag": "e1",
        "proposed_action": {"tool": "ship", "arguments": {"n": 1}},
        "expire_time": "2023-11-14T22:14:20.500000Z"}}}),
    ("review", {"gate_decided": {"gate": GATE, "decision": _OLD_DECISION,
                                 "gate_state": "STATE_OPEN"},
                "provenance": {"id": "prov-3", "producer": "key-1"}}),
    ("publish", {"budget_exceeded": {"rule": "maestro.graph.wall_time_budget", "reason": "late",
                                     "budget": {"max_tokens": 10, "max_wall_time": "60.0s"},
                                     "estimated_cost_usd": 0.2, "spent_cost_usd": 0.01}}),
    ("publish", {"policy_blocked": {"rule": "data.maestro.graph.deny", "reason": "no"}}),
    ("review", {"error": _status(9, "GATE_EXPIRED", "expired", "review")}),
    ("", {"run_state_changed": {"previous_state": "STATE_WAITING_FOR_APPROVAL",
                                "state": "STATE_BLOCKED", "reason": "expired"}}),
]  # fmt: skip

_DECISION = GateDecision(
    "key-1", GateVerdict.EDIT, "tone", False, "prov-3", 1_700_000_000.25, {"draft": "calmer"}
)
_GATE = GateRecord(
    GATE, RUN, "alpha", "review", GateStatus.OPEN, "Ship it?", 2, 4, {"draft": "x"},
    {"tool": "ship", "arguments": {"n": 1}}, (), "e1", 1_700_000_000.0, 1_700_000_000.0,
    opened_seq=10, expire_time=1_700_000_060.5,
)  # fmt: skip
_TIMEOUT = RunError(ErrorCode.FAILED_PRECONDITION, "NODE_TIMEOUT", "too slow", "draft")
_EXPIRED = RunError(ErrorCode.FAILED_PRECONDITION, "GATE_EXPIRED", "expired", "review")
_PAYLOADS = [
    RunStateChanged(RunStatus.QUEUED, RunStatus.RUNNING, "claimed by a"),
    NodeStarted(NodeKind.ROUTER),
    NodeFinished(Outcome.SUCCEEDED, 0.0, output={}, next_node_ids=("draft",)),
    NodeStarted(NodeKind.TOOL, 0.25, f"{RUN}/draft/1"),
    NodeFinished(Outcome.TIMED_OUT, 2.5, error=_TIMEOUT, will_retry=True),
    StepReplayed("a", "b", f"{RUN}/draft/1"),
    NodeFinished(Outcome.SUCCEEDED, 0.004549, {"draft": "x"}, Usage(5, 8), 0.01, ("review",)),
    CostUpdate(Usage(5, 8), 0.01, 0.5),
    NodeStarted(NodeKind.GATE),
    GateOpened(_GATE),
    GateDecided(GATE, _DECISION, GateStatus.OPEN),
    BudgetExceeded("maestro.graph.wall_time_budget", "late", Budget(10, 0.0, 60.0), 0.2, 0.01),
    PolicyBlocked("data.maestro.graph.deny", "no"),
    RunErrored(_EXPIRED),
    RunStateChanged(RunStatus.WAITING_FOR_APPROVAL, RunStatus.BLOCKED, "expired"),
]


def _open(backend: str, where: Path | str, migrations: tuple[Migration, ...]) -> Sql:
    if backend == "sqlite":
        return SqliteSql(Path(where), migrations)
    return PostgresSql(str(where), migrations)


def _insert_old_run(sql: Sql, run: RunRecord) -> None:
    """A run row as graph/1 had it: today's columns less those later migrations added."""
    later = {"creator", "artifact_version"}
    columns = [c.strip() for c in _RUN_COLUMNS.split(",") if c.strip() not in later]
    store = RunStore(sql)
    values = [store._value(c, getattr(run, c)) for c in columns]
    with sql.write() as tx:
        tx.run(
            f"INSERT INTO agent_runs ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(values))})",
            values,
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_graph_bodies_in_the_apis_json_form_migrate_to_maestros_names(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = (
        tmp_path / "maestro.db" if backend == "sqlite" else request.getfixturevalue("postgres_dsn")
    )
    old = _open(backend, where, GRAPH_MIGRATIONS[:1])  # the graph tables as the old code had them
    now = time.time()
    run = RunRecord(
        RUN, "alpha", "projects/alpha/recipes/gated", "rev", "{}", {}, {},
        RunStatus.BLOCKED, Budget(), 4, "0" * 32, now, now,
    )  # fmt: skip
    _insert_old_run(old, run)
    gate_body = {
        "prompt": "Ship it?", "required_approvals": 2, "autonomy": 4,
        "state_snapshot": {"draft": "x"},
        "proposed_action": {"tool": "ship", "arguments": {"n": 1}},
        "decisions": [_OLD_DECISION, {**_OLD_DECISION, "verdict": "GATE_VERDICT_APPROVE",
                                      "approver": "key-2", "counted": True,
                                      "decide_time": "2023-11-14T22:13:21Z"}],
    }  # fmt: skip
    with old.write() as tx:
        tx.many(
            "INSERT INTO run_events (run, seq, event_time, node_id, attempt, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(RUN, seq, now, node, 1, json.dumps(body))
             for seq, (node, body) in enumerate(_OLD_EVENTS, start=1)],
        )  # fmt: skip
        tx.run(
            "INSERT INTO run_gates (name, run, project, opened_seq, status, node_id, body, etag, "
            "create_time, update_time, expire_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (GATE, RUN, "alpha", 10, 1, "review", json.dumps(gate_body), "e2", now, now, None),
        )
        tx.run(
            "UPDATE agent_runs SET error = ?, last_seq = ? WHERE name = ?",
            (json.dumps(_status(13, "INTERNAL", "internal error")), len(_OLD_EVENTS), RUN),
        )
    old.close()
    sql = _open(backend, where, MIGRATIONS)
    try:
        store = RunStore(sql)
        events = store.list_events(RUN, 0, 100)
        gate = store.get_gate(GATE)
        migrated = store.get_run(RUN)
        with sql.read() as tx:
            bodies = [sql.json_out(row["body"]) for row in tx.all("SELECT body FROM run_events")]
    finally:
        sql.close()
    assert [e.payload for e in events] == _PAYLOADS
    assert events[6].provenance == Provenance("prov-1", "tool:draft", ("sha256:00",))
    assert events[10].provenance == Provenance("prov-3", "key-1")
    assert gate.decisions == (
        _DECISION,
        GateDecision("key-2", GateVerdict.APPROVE, "tone", True, "prov-3", 1_700_000_001.0,
                     {"draft": "calmer"}),
    )  # fmt: skip
    assert gate.approvals_counted == 1
    assert migrated.error == RunError(ErrorCode.INTERNAL, "INTERNAL", "internal error")
    text = json.dumps(bodies)
    for wire in (
        "GRAPH_NODE_KIND",
        "OUTCOME_",
        "STATE_",
        "GATE_VERDICT",
        "AUTONOMY_LEVEL",
        "@type",
    ):
        assert wire not in text
