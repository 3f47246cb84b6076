"""Databases written by earlier code open with today's: migrations move them forward, and what
they held (projects, keys, routing revisions, a run paused at its gate with its events) reads
back through the API. The fixtures and how they were made: tests/data/README.md."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import project_service_pb2 as ppb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server

DATA = Path(__file__).parent / "data"
PARENT = "projects/alpha"
PAYLOADS = {"run_state_changed", "node_started", "node_finished", "gate_opened"}


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
    assert {e.WhichOneof("payload") for e in events} >= PAYLOADS
    started = [e.node_started.kind for e in events if e.WhichOneof("payload") == "node_started"]
    assert started == [gpb.GRAPH_NODE_KIND_MODEL]
    [gate] = gates
    assert (gate.node_id, gate.state, gate.prompt) == ("review", gpb.Gate.STATE_OPEN, "Ship it?")
    assert recipe.source_yaml.startswith("\nautonomy: L2")


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
        with server.plane.store.read() as tx:
            applied = tx.all("SELECT slice, version FROM maestro_schema_migrations")
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
    assert config.route_config.revision_id == "2"
    assert "projects/alpha/apiKeys/35ccfa391ed4" in {k.name for k in keys.api_keys}
    assert sorted((r["slice"], r["version"]) for r in applied) == [
        ("graph", 1),
        ("projects", 1),
        ("route", 1),
    ]


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
            "SELECT slice, version FROM maestro_schema_migrations ORDER BY slice"
        ).fetchall()
    assert applied == [("graph", 1), ("projects", 1), ("route", 1)]
