"""Crash safety with real processes: `maestro up` is killed with SIGKILL again and again while 50
runs execute, on SQLite and on PostgreSQL; and two servers share one PostgreSQL, one is killed,
the other takes its runs over when the lease expires.

Each run's graph has model steps (through the data plane to the simulated provider) and a tool
with a side effect (`create_ticket`, which honours idempotency keys). After the runs complete the
event logs and the tools' ledger are checked: every committed output is in the final state
exactly once, each crash replayed at most the one step that was in flight, and no ticket was
created twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maestro.clients import AsyncMaestroClient
from maestro.control_plane.graph.store import RunStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.postgres import PostgresSql
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.v1 import graph_service_pb2 as gpb
from tests.graph_support import FINAL, all_events, struct
from tests.process_support import BIN, demo_config

pytestmark = pytest.mark.slow

PARENT = "projects/demo"
RUNS = 50
CRASH_RECIPE = """
description: "Crash-test graph: model steps and a tool with a side effect, in a loop."
autonomy: L3
tools:
  - {name: create_ticket, side_effects: true, parameters: {type: object}}
nodes:
  - {id: think, kind: model, max_tokens: 40, tools: [create_ticket], tool_choice: create_ticket}
  - {id: file, kind: tool, tool: create_ticket}
  - {id: review, kind: model, max_tokens: 40}
  - {id: loop, kind: router}
edges:
  - {from: __start__, to: think}
  - {from: think, to: file}
  - {from: file, to: review}
  - {from: review, to: loop}
  - {from: loop, to: think, when: visits.review < 4, label: again}
  - {from: loop, to: __end__}
"""
PATH = ["think", "file", "review", "loop"] * 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(tmp_path: Path, name: str, env: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """`maestro up --insecure` on a fixed port; yields (address, process)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    port = _free_port()
    log = (folder / "log.jsonl").open("a")
    process = subprocess.Popen(
        [str(BIN / "maestro"), "up", "--insecure", "--config", str(demo_config(folder)),
         "--port", str(port), "--http-port", "0"],
        cwd=folder,
        # The crash recipe's L3 run needs no autonomy promotion: these tests are about resume.
        env={"MAESTRO_STORE__SQLITE_PATH": str(folder / "maestro.db"),
             "MAESTRO_GRAPH__AUTONOMY_GATE": "false", **os.environ, **env},
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        log.close()


async def _ready(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="maestro.v1.GraphService"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server at {address} not ready")
            await asyncio.sleep(0.1)


async def _states(client: AsyncMaestroClient, names: list[str]) -> dict[str, gpb.Run]:
    out = {}
    for name in names:
        out[name] = (await client.graphs.GetRun(gpb.GetRunRequest(name=name))).run
    return out


def _check_run(run: gpb.Run, events: list[gpb.RunEvent], store: RunStore) -> Counter[str]:
    """The invariants of one run after crashes; returns its replays by replica."""
    assert run.state == gpb.Run.STATE_SUCCEEDED, run.state_reason
    finished = [e for e in events if e.WhichOneof("payload") == "node_finished"]
    assert [e.node_id for e in finished] == PATH  # each committed step once, in order
    # No state lost or doubled: folding the committed outputs over the input gives the state.
    folded = json_format.MessageToDict(run.input_state)
    for event in finished:
        folded.update(json_format.MessageToDict(event.node_finished.output))
    assert folded == json_format.MessageToDict(run.graph_state)
    # A replay re-runs the node that was in flight, and only that one.
    replays: Counter[str] = Counter()
    in_flight = None
    for event in events:
        kind = event.WhichOneof("payload")
        if kind == "node_started":
            in_flight = event.node_id
        elif kind == "node_finished":
            in_flight = None
        elif kind == "step_replayed":
            assert event.node_id == in_flight
            replays[event.step_replayed.replica] += 1
    assert all(count == 1 for count in replays.values())  # at most one per crash
    # A step starts once; a replay is recorded as `step_replayed`, not as a second start.
    starts = [e.node_id for e in events if e.WhichOneof("payload") == "node_started"]
    assert starts == PATH
    # The side effect happened once per visit, whatever the replays.
    effects = store.effects(f"{run.name}/file/")
    visits = range(1, PATH.count("file") + 1)
    assert [row["idempotency_key"] for row in effects] == [f"{run.name}/file/{v}" for v in visits]
    tickets = [
        json_format.MessageToDict(e.node_finished.output)["file"]["ticket"]
        for e in finished
        if e.node_id == "file"
    ]
    assert len(set(tickets)) == len(visits)
    return replays


async def _crash_many_times(tmp_path: Path, env: dict[str, str], store: RunStore) -> None:
    rng = random.Random(20261125)
    kills = 0
    with _server(tmp_path, "boot", env) as (address, _):
        await _ready(address)
        async with AsyncMaestroClient(address, timeout_s=10) as client:
            await client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent=PARENT, recipe_id="crash", recipe=gpb.Recipe(source_yaml=CRASH_RECIPE)
                )
            )
            names = [
                (
                    await client.graphs.CreateRun(
                        gpb.CreateRunRequest(
                            parent=PARENT,
                            run_id=f"seed-{seed}",
                            run=gpb.Run(
                                recipe=f"{PARENT}/recipes/crash",
                                input_state=struct({"topic": f"seed {seed}"}),
                            ),
                        )
                    )
                ).run.name
                for seed in range(RUNS)
            ]
    kills += 1  # leaving the block killed the first server with SIGKILL, mid-run
    in_flight_at_kill: Counter[str] = Counter()
    deadline = time.monotonic() + 240
    generation = 0
    while time.monotonic() < deadline:
        generation += 1
        with _server(tmp_path, f"gen-{generation}", env) as (address, process):
            await _ready(address)
            async with AsyncMaestroClient(address, timeout_s=10) as client:
                if kills >= 8:  # enough crashes: let the runs finish
                    while time.monotonic() < deadline:
                        runs = await _states(client, names)
                        if all(r.state in FINAL for r in runs.values()):
                            break
                        await asyncio.sleep(0.2)
                    runs = await _states(client, names)
                    replayed = 0
                    for run in runs.values():
                        events = await all_events(client, run.name)
                        replays = _check_run(run, events, store)
                        assert sum(replays.values()) <= kills
                        replayed += sum(replays.values())
                    total = sum(1 for _ in in_flight_at_kill.elements())
                    repeated_calls = sum(
                        row["calls"] - 1 for row in store.effects(f"{PARENT}/runs/")
                    )
                    print(
                        f"{kills} kills; {total} steps in flight just before them "
                        f"{dict(in_flight_at_kill)}; {replayed} steps replayed; "
                        f"{repeated_calls} ticket calls answered from the ledger"
                    )
                    assert replayed >= RUNS  # a step of each run replayed, on average
                    return
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                snapshot = await _states(client, names)
                for run in snapshot.values():
                    if run.current_node_ids and run.state == gpb.Run.STATE_RUNNING:
                        in_flight_at_kill[run.current_node_ids[0]] += 1
                process.send_signal(signal.SIGKILL)
                kills += 1
    raise AssertionError("the runs did not finish in time")


def _fast_lease() -> dict[str, str]:
    return {"MAESTRO_GRAPH__LEASE_S": "1", "MAESTRO_GRAPH__POLL_S": "0.1"}


async def test_sigkill_many_times_loses_no_state_and_repeats_no_side_effect_on_sqlite(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "maestro.db"  # every server generation opens the same database file
    env = {**_fast_lease(), "MAESTRO_STORE__SQLITE_PATH": str(shared)}
    sql = SqliteSql(shared, MIGRATIONS)
    try:
        await _crash_many_times(tmp_path, env, RunStore(sql))
    finally:
        sql.close()


async def test_sigkill_many_times_loses_no_state_and_repeats_no_side_effect_on_postgres(
    tmp_path: Path, postgres_dsn: str
) -> None:
    env = {
        **_fast_lease(),
        "MAESTRO_STORE__BACKEND": "postgres",
        "MAESTRO_STORE__POSTGRES_DSN": postgres_dsn,
    }
    sql = PostgresSql(postgres_dsn, MIGRATIONS)
    try:
        await _crash_many_times(tmp_path, env, RunStore(sql))
    finally:
        sql.close()


async def test_a_second_server_takes_over_a_killed_servers_runs_after_the_lease(
    tmp_path: Path, postgres_dsn: str
) -> None:
    lease_s = 2.0
    env = {
        "MAESTRO_STORE__BACKEND": "postgres",
        "MAESTRO_STORE__POSTGRES_DSN": postgres_dsn,
        "MAESTRO_GRAPH__LEASE_S": str(lease_s),
        "MAESTRO_GRAPH__POLL_S": "0.1",
    }
    sql = PostgresSql(postgres_dsn, MIGRATIONS)
    store = RunStore(sql)
    try:
        with (
            _server(tmp_path, "a", {**env, "MAESTRO_GRAPH__REPLICA_ID": "replica-a"}) as (
                address_a,
                process_a,
            ),
            _server(tmp_path, "b", {**env, "MAESTRO_GRAPH__REPLICA_ID": "replica-b"}) as (
                address_b,
                _,
            ),
        ):
            await _ready(address_a)
            await _ready(address_b)
            async with AsyncMaestroClient(address_a, timeout_s=10) as a:
                await a.graphs.CreateRecipe(
                    gpb.CreateRecipeRequest(
                        parent=PARENT,
                        recipe_id="crash",
                        recipe=gpb.Recipe(source_yaml=CRASH_RECIPE),
                    )
                )
                names = [
                    (
                        await a.graphs.CreateRun(
                            gpb.CreateRunRequest(
                                parent=PARENT,
                                run=gpb.Run(
                                    recipe=f"{PARENT}/recipes/crash",
                                    input_state=struct({"topic": f"t{i}"}),
                                ),
                            )
                        )
                    ).run.name
                    for i in range(12)
                ]
            owned: set[str] = set()
            for _ in range(200):  # bounded: until replica A is in the middle of a step
                held = [r for r in map(store.get_run, names) if r.owner == "replica-a"]
                owned = {r.name for r in held}
                if any(r.in_flight is not None for r in held):
                    break
                await asyncio.sleep(0.05)
            process_a.send_signal(signal.SIGKILL)
            killed_at = time.time()
            async with AsyncMaestroClient(address_b, timeout_s=10) as b:
                deadline = time.monotonic() + 90
                runs = await _states(b, names)
                while time.monotonic() < deadline and not all(
                    r.state in FINAL for r in runs.values()
                ):
                    await asyncio.sleep(0.2)
                    runs = await _states(b, names)
                logs = {name: await all_events(b, name) for name in owned}
    finally:
        sql.close()
    assert owned  # A held runs when it died
    assert all(run.state == gpb.Run.STATE_SUCCEEDED for run in runs.values())
    replayed = 0
    for events in logs.values():
        after = [e for e in events if e.event_time.ToNanoseconds() / 1e9 > killed_at]
        # nobody touched A's runs until its lease ran out, then B finished them
        assert min(e.event_time.ToNanoseconds() / 1e9 for e in after) >= killed_at + lease_s * 0.5
        for event in after:
            if event.WhichOneof("payload") == "step_replayed":
                assert event.step_replayed.previous_replica == "replica-a"
                assert event.step_replayed.replica == "replica-b"
                replayed += 1
    assert replayed >= 1  # A died in the middle of at least one step
