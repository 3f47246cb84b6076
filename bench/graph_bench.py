"""Agent-graph benchmarks (issue 5), each beside its baseline in the same run.

1. Per-step runtime overhead with a durable checkpoint: a 6-node linear graph whose nodes each
   add one to a counter, run to completion many times, one run at a time.
   - Maestro: the graph runtime on SQLite (WAL), every node's start and its output committed
     before the next node, driven through GraphService (create, claim, run, finish).
   - LangGraph: the same graph compiled with `SqliteSaver` (WAL), `durability="sync"` (a
     checkpoint written before each next step, the same guarantee), plus its default
     (`"async"`) and no checkpointer, for scale.
2. Checkpoint write latency: one node commit (state, output, event, in one transaction) on
   SQLite and on PostgreSQL, and LangGraph's `SqliteSaver.put` beside it.
3. Human-in-the-loop: SubmitGateDecision over gRPC to the run resumed (the gate's step
   committed by the runtime, seen on StreamRunEvents), on one SQLite server and across two
   servers sharing PostgreSQL; LangGraph's `interrupt()` resumed by `Command(resume=...)`
   in process, for scale.

Run: `.venv/bin/python bench/graph_bench.py` (about 2 minutes; `--quick` for a smoke run).
Writes `results/graph_bench.json` and `results/graph_bench.md`. PostgreSQL: a throwaway cluster
is started from the machine's binaries (as in the tests), or `MAESTRO_TEST_POSTGRES_DSN`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import grpc

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench._measure import Latency, machine, progress, summarise  # noqa: E402

RESULTS = BENCH / "results"
STEPS = 6
LINEAR = (
    "autonomy: L3\ntools: [{name: bump, parameters: {type: object}}]\nnodes:\n"
    + "".join(f"  - {{id: n{i}, kind: tool, tool: bump}}\n" for i in range(STEPS))
    + "edges:\n  - {from: __start__, to: n0}\n"
    + "".join(f"  - {{from: n{i}, to: n{i + 1}}}\n" for i in range(STEPS - 1))
    + f"  - {{from: n{STEPS - 1}, to: __end__}}\n"
)
GATED = """
autonomy: L2
nodes:
  - {id: review, kind: gate, gate: {prompt: Go on?}}
  - {id: after, kind: router}
edges:
  - {from: __start__, to: review}
  - {from: review, to: after}
  - {from: after, to: __end__}
"""


# -- Maestro side ---------------------------------------------------------------------------------


async def bump(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """The benchmark's node body: the tool returns a constant, as LangGraph's adds one."""
    return {"count": 1}


@contextlib.asynccontextmanager
async def maestro_server(folder: Path, **overrides: object) -> AsyncIterator[Any]:
    """A real control plane (gRPC on loopback) with the bench tool registered."""
    from maestro.app.config import load_config
    from maestro.app.server import start_control_plane
    from maestro.control_plane.graph.tools import read_only
    from maestro.core.telemetry import build_telemetry

    config = load_config(
        None,
        env={},
        **{
            "server.port": 0,
            "store.sqlite_path": str(folder / "maestro.db"),
            "data_plane.enabled": False,
            "auth.mode": "insecure",
            "auth.insecure_project": "bench",
            "logging.level": "warning",
            "graph.poll_s": 5.0,  # the runtime is woken; polling is only a fallback
            **overrides,
        },
    )
    telemetry = build_telemetry(config.telemetry)  # what `maestro up` runs with
    plane = await start_control_plane(config, telemetry)
    assert plane.graph is not None
    plane.graph.runtime.tools = {**plane.graph.runtime.tools, "bump": read_only(bump)}
    try:
        yield plane
    finally:
        await plane.stop(grace_s=0)
        telemetry.shutdown()


async def maestro_steps(
    runs: int, folder: Path, *, over_grpc: bool, synchronous: str = "normal"
) -> dict[str, Any]:
    """Per-step time of whole runs of the linear graph, one at a time: created through the
    GraphService domain API in process (as LangGraph's `invoke` is called), or with the
    CreateRun RPC from a client on loopback."""
    from maestro.clients import AsyncMaestroClient
    from maestro.control_plane.graph.service import NewRun
    from maestro.core.auth import Principal
    from maestro.v1 import graph_service_pb2 as gpb

    async with (
        maestro_server(folder, **{"store.sqlite_synchronous": synchronous}) as plane,
        AsyncMaestroClient(plane.address, timeout_s=30) as client,
    ):
        recipe = (
            await client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent="projects/bench",
                    recipe_id="linear",
                    recipe=gpb.Recipe(source_yaml=LINEAR),
                )
            )
        ).recipe.name
        store, hub, service = plane.graph.store, plane.graph.hub, plane.graph.service
        principal = Principal("bench", None)
        samples: list[int] = []
        for index in range(runs + 20):
            name = f"projects/bench/runs/r{index}"
            finished = hub.final_event(name)
            started = time.perf_counter_ns()
            if over_grpc:
                await client.graphs.CreateRun(
                    gpb.CreateRunRequest(
                        parent="projects/bench", run_id=f"r{index}", run=gpb.Run(recipe=recipe)
                    )
                )
            else:
                new = NewRun(recipe, {"count": 0}, None, 0, f"r{index}", "")
                await service.create_run(principal, "projects/bench", new)
            await asyncio.wait_for(finished.wait(), 30)
            elapsed = time.perf_counter_ns() - started
            record = store.get_run(name)
            assert record.status.name == "SUCCEEDED", record.state_reason
            assert record.visits == {f"n{i}": 1 for i in range(STEPS)}
            if index >= 20:  # warm-up
                samples.append(elapsed)
    per_run = summarise(samples)
    return {"per_run": asdict(per_run), "per_step_us": per_run.p50_us / STEPS}


def checkpoint_writes(store: Any, runs: int) -> Latency:
    """One node commit: output merged into the state, visits, next node, a node_finished event,
    in one transaction."""
    from maestro.control_plane.graph.records import (
        Budget,
        NewEvent,
        NodeFinished,
        Outcome,
        RunChange,
        RunRecord,
        RunStatus,
    )

    now = time.time()
    name = f"projects/bench/runs/{uuid.uuid4().hex[:12]}"
    state = {"question": "x" * 200, "count": 0, "notes": ["y" * 100] * 5}
    store.insert_run(
        RunRecord(
            name=name, project="bench", recipe="projects/bench/recipes/linear",
            recipe_revision_id="r", recipe_source=LINEAR, input_state=state, state=state,
            status=RunStatus.RUNNING, budget=Budget(), autonomy=3, trace_id="0" * 32,
            create_time=now, update_time=now, next_node="n0",
        ),
        [],
    )  # fmt: skip
    samples = []
    for index in range(runs + 50):
        output = {"count": index}

        def commit(
            run: Any, _gates: Any, output: dict[str, Any] = output, visit: int = index
        ) -> Any:
            return RunChange(
                {"state": {**run.state, **output}, "visits": {"n0": visit}, "next_node": "n1"},
                (NewEvent(NodeFinished(Outcome.SUCCEEDED, 0.0, output=output)),),
            )

        started = time.perf_counter_ns()
        store.change_run(name, commit)
        if index >= 50:
            samples.append(time.perf_counter_ns() - started)
    return summarise(samples)


def with_p95(samples_ns: list[int]) -> dict[str, float]:
    """`summarise` plus the nearest-rank p95 (the HITL goal is stated at p95)."""
    ordered = sorted(samples_ns)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] / 1000
    return {**asdict(summarise(ordered)), "p95_us": p95}


@contextlib.contextmanager
def up_process(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """`maestro up --insecure` in its own process, as deployed; yields its address."""
    from tests.process_support import BIN, demo_config

    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (folder / "log.jsonl").open("w")
    process = subprocess.Popen(
        [str(BIN / "maestro"), "up", "--insecure", "--config", str(demo_config(folder)),
         "--port", str(port), "--http-port", "0"],
        cwd=folder,
        env={**os.environ, "MAESTRO_STORE__SQLITE_PATH": str(folder / "maestro.db"),
             "MAESTRO_LOGGING__LEVEL": "warning", **env},
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def _serving(address: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="maestro.v1.GraphService"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} did not start")


async def maestro_gate_resume(
    decisions: int, folder: Path, postgres_dsn: str | None
) -> dict[str, float]:
    """SubmitGateDecision to the run resumed: the gate's step committed by the runtime, as a
    client watching StreamRunEvents on server A sees it. Servers run as `maestro up` processes;
    with PostgreSQL the decision goes to server B, which resumes the run it approved."""
    from maestro.clients import AsyncMaestroClient
    from maestro.v1 import graph_service_pb2 as gpb

    env = {"MAESTRO_GRAPH__REPLICA_ID": "a"}
    if postgres_dsn:
        env |= {"MAESTRO_STORE__BACKEND": "postgres", "MAESTRO_STORE__POSTGRES_DSN": postgres_dsn}
    with contextlib.ExitStack() as processes:
        address_a = processes.enter_context(up_process(folder / "a", env))
        address_b = address_a
        if postgres_dsn:  # B adopts the run it approved; A's watcher learns of it by NOTIFY
            address_b = processes.enter_context(
                up_process(folder / "b", {**env, "MAESTRO_GRAPH__REPLICA_ID": "b"})
            )
        await _serving(address_a)
        await _serving(address_b)
        async with (
            AsyncMaestroClient(address_a, timeout_s=30) as client_a,
            AsyncMaestroClient(address_b, timeout_s=30) as client_b,
        ):
            recipe = (
                await client_a.graphs.CreateRecipe(
                    gpb.CreateRecipeRequest(
                        parent="projects/demo",
                        recipe_id="gated",
                        recipe=gpb.Recipe(source_yaml=GATED),
                    )
                )
            ).recipe.name
            samples = []
            for index in range(decisions + 10):
                run = (
                    await client_a.graphs.CreateRun(
                        gpb.CreateRunRequest(parent="projects/demo", run=gpb.Run(recipe=recipe))
                    )
                ).run
                stream = client_a.graphs.StreamRunEvents(gpb.StreamRunEventsRequest(name=run.name))
                gate = ""
                async for item in stream:
                    if item.event.WhichOneof("payload") == "gate_opened":
                        gate = item.event.gate_opened.gate.name
                        break
                started = time.perf_counter_ns()
                await client_b.graphs.SubmitGateDecision(
                    gpb.SubmitGateDecisionRequest(name=gate, verdict=gpb.GATE_VERDICT_APPROVE)
                )
                async for item in stream:
                    event = item.event
                    if event.WhichOneof("payload") == "node_finished" and event.node_id == "review":
                        break
                elapsed = time.perf_counter_ns() - started
                stream.cancel()
                if index >= 10:
                    samples.append(elapsed)
    return with_p95(samples)


# -- LangGraph side -------------------------------------------------------------------------------


class Counter(TypedDict):
    count: int


def _linear_graph() -> Any:
    from langgraph.graph import END, START, StateGraph

    def step(state: Counter) -> dict[str, int]:
        return {"count": state["count"] + 1}

    graph = StateGraph(Counter)
    names = [f"n{i}" for i in range(STEPS)]
    for name in names:
        graph.add_node(name, step)
    graph.add_edge(START, names[0])
    for first, second in itertools.pairwise(names):
        graph.add_edge(first, second)
    graph.add_edge(names[-1], END)
    return graph


def langgraph_steps(runs: int, folder: Path) -> dict[str, Any]:
    """The same graph with SqliteSaver: its default (synchronous FULL, as SQLite ships) and with
    synchronous NORMAL (Maestro's default), each with `durability="sync"` and `"async"`; and with
    no checkpointer."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    out: dict[str, Any] = {}
    plain = _linear_graph().compile()
    cases: dict[str, Any] = {"no_checkpointer": lambda i: plain.invoke({"count": 0})}
    connections = []
    for synchronous in ("full", "normal"):
        conn = sqlite3.connect(str(folder / f"langgraph-{synchronous}.db"), check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        connections.append(conn)
        durable = _linear_graph().compile(checkpointer=saver)
        for durability in ("sync", "async"):
            cases[f"sqlite_{synchronous}_{durability}"] = (
                lambda i, app=durable, d=durability, s=synchronous: app.invoke(
                    {"count": 0}, {"configurable": {"thread_id": f"{s}{d}{i}"}}, durability=d
                )
            )
    for label, call in cases.items():
        samples = []
        for index in range(runs + 20):
            started = time.perf_counter_ns()
            call(index)
            if index >= 20:
                samples.append(time.perf_counter_ns() - started)
        per_run = summarise(samples)
        out[label] = {"per_run": asdict(per_run), "per_step_us": per_run.p50_us / STEPS}
    for conn in connections:
        conn.close()
    return out


def langgraph_put(runs: int, folder: Path) -> Latency:
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(folder / "langgraph-put.db"), check_same_thread=False)
    saver = SqliteSaver(conn)
    config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    state = {"question": "x" * 200, "count": 0, "notes": ["y" * 100] * 5}
    samples = []
    for index in range(runs + 50):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {**state, "count": index}
        checkpoint["channel_versions"] = {"count": index + 1}
        started = time.perf_counter_ns()
        config = saver.put(
            config, checkpoint, {"source": "loop", "step": index}, {"count": index + 1}
        )
        if index >= 50:
            samples.append(time.perf_counter_ns() - started)
    conn.close()
    return summarise(samples)


def langgraph_interrupt_resume(decisions: int, folder: Path) -> dict[str, float]:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    def review(state: Counter) -> dict[str, int]:
        interrupt("Go on?")
        return {"count": state["count"] + 1}

    def after(state: Counter) -> dict[str, int]:
        return {"count": state["count"] + 1}

    graph = StateGraph(Counter)
    graph.add_node("review", review)
    graph.add_node("after", after)
    graph.add_edge(START, "review")
    graph.add_edge("review", "after")
    graph.add_edge("after", END)
    conn = sqlite3.connect(str(folder / "langgraph-hitl.db"), check_same_thread=False)
    app = graph.compile(checkpointer=SqliteSaver(conn))
    samples = []
    for index in range(decisions + 10):
        config: Any = {"configurable": {"thread_id": f"h{index}"}}
        app.invoke({"count": 0}, config, durability="sync")
        started = time.perf_counter_ns()
        app.invoke(Command(resume="approve"), config, durability="sync")
        if index >= 10:
            samples.append(time.perf_counter_ns() - started)
    conn.close()
    return with_p95(samples)


# -- the run --------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    from tests.postgres_support import fresh_database, postgres_server

    with postgres_server() as server:
        yield fresh_database(server)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "NOT MET"


def report(results: dict[str, Any]) -> str:
    steps = results["steps"]
    lg = {k: v["per_step_us"] for k, v in steps["langgraph"].items()}
    ours = {k: v["per_step_us"] for k, v in steps.items() if k != "langgraph"}
    writes = results["checkpoint_write"]
    hitl = results["hitl"]
    two = hitl["maestro_postgres_two_servers"]
    step_rows = [
        ("defaults: Maestro (NORMAL) vs LangGraph (FULL)", ours["maestro_normal_in_process"],
         lg["sqlite_full_sync"]),
        ("both synchronous NORMAL", ours["maestro_normal_in_process"], lg["sqlite_normal_sync"]),
        ("both synchronous FULL", ours["maestro_full_in_process"], lg["sqlite_full_sync"]),
        ("Maestro over gRPC (CreateRun on loopback) vs LangGraph default",
         ours["maestro_normal_grpc"], lg["sqlite_full_sync"]),
    ]  # fmt: skip
    rows = [
        "| measure | Maestro | baseline, same run | ratio / goal | result |",
        "|---|---|---|---|---|",
    ]
    for label, mine, theirs in step_rows:
        rows.append(
            f"| per-step time, 6-node graph, durable SQLite checkpoint, {label} | {mine:.0f} µs "
            f"| LangGraph SqliteSaver `durability=sync` {theirs:.0f} µs | {mine / theirs:.2f}x "
            f"(goal ≤ 0.33x) | {_verdict(mine <= theirs / 3)} |"
        )
    rows += [
        f"| (for scale) LangGraph without a checkpointer | | {lg['no_checkpointer']:.0f} µs | | |",
        f"| checkpoint write p99, SQLite (NORMAL) | {_ms(writes['maestro_sqlite']['p99_us'])} "
        f"| LangGraph SqliteSaver.put p99 {_ms(writes['langgraph_put']['p99_us'])} "
        f"| goal ≤ 2 ms | {_verdict(writes['maestro_sqlite']['p99_us'] <= 2000)} |",
        f"| checkpoint write p99, SQLite (FULL) | {_ms(writes['maestro_sqlite_full']['p99_us'])} "
        f"| | goal ≤ 2 ms | {_verdict(writes['maestro_sqlite_full']['p99_us'] <= 2000)} |",
        f"| checkpoint write p99, PostgreSQL | {_ms(writes['maestro_postgres']['p99_us'])} | "
        f"| goal ≤ 5 ms | {_verdict(writes['maestro_postgres']['p99_us'] <= 5000)} |",
        f"| gate decision to run resumed, p95, one server, SQLite "
        f"| {_ms(hitl['maestro_sqlite']['p95_us'])} (p50 {_ms(hitl['maestro_sqlite']['p50_us'])}) "
        f"| LangGraph interrupt resumed in process, p95 {_ms(hitl['langgraph']['p95_us'])} "
        f"| goal ≤ 10 ms | {_verdict(hitl['maestro_sqlite']['p95_us'] <= 10000)} |",
        f"| gate decision on server B to run resumed on server A, PostgreSQL, p95 "
        f"| {_ms(two['p95_us'])} (p50 {_ms(two['p50_us'])}) | | goal ≤ 10 ms "
        f"| {_verdict(two['p95_us'] <= 10000)} |",
    ]
    return "\n".join(rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = 40 if args.quick else 400
    writes = 200 if args.quick else 3000
    decisions = 20 if args.quick else 200
    results: dict[str, Any] = {
        "machine": machine(["langgraph", "langgraph-checkpoint-sqlite", "psycopg", "grpcio"])
    }
    with tempfile.TemporaryDirectory() as scratch, postgres() as dsn:
        folder = Path(scratch)
        progress("per-step: Maestro on SQLite")
        steps = {
            "maestro_normal_in_process": await maestro_steps(runs, folder / "s1", over_grpc=False),
            "maestro_full_in_process": await maestro_steps(
                runs, folder / "s2", over_grpc=False, synchronous="full"
            ),
            "maestro_normal_grpc": await maestro_steps(runs, folder / "s3", over_grpc=True),
        }
        progress("per-step: LangGraph")
        steps["langgraph"] = langgraph_steps(runs, folder)
        results["steps"] = steps
        progress("checkpoint writes")
        from maestro.control_plane.graph.store import RunStore
        from maestro.control_plane.schema import MIGRATIONS
        from maestro.control_plane.store.postgres import PostgresSql
        from maestro.control_plane.store.sqlite import SqliteSql

        database = SqliteSql(folder / "writes.db", MIGRATIONS)
        full = SqliteSql(folder / "writes-full.db", MIGRATIONS, "full")
        pg = PostgresSql(dsn, MIGRATIONS)
        results["checkpoint_write"] = {
            "maestro_sqlite": asdict(checkpoint_writes(RunStore(database), writes)),
            "maestro_sqlite_full": asdict(checkpoint_writes(RunStore(full), writes)),
            "maestro_postgres": asdict(checkpoint_writes(RunStore(pg), writes)),
            "langgraph_put": asdict(langgraph_put(writes, folder)),
        }
        database.close()
        full.close()
        pg.close()
        progress("gate decision to resume")
        results["hitl"] = {
            "maestro_sqlite": await maestro_gate_resume(decisions, folder / "h1", None),
            "maestro_postgres_two_servers": await maestro_gate_resume(
                decisions, folder / "h2", dsn
            ),
            "langgraph": langgraph_interrupt_resume(decisions, folder),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Maestro agent-graph benchmarks (issue 5).")
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    table = report(results)
    print(table)
    suffix = "_quick" if args.quick else ""
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"graph_bench{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    command = "bench/graph_bench.py" + (" --quick" if args.quick else "")
    (args.results / f"graph_bench{suffix}.md").write_text(
        f"# Agent-graph benchmark results\n\n`.venv/bin/python {command}`\n\n{table}\n\n"
        f"Machine: `{json.dumps(results['machine'])}`\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
