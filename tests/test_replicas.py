"""Two real `maestro up` processes on one PostgreSQL behave as one control plane: keys, configs
and revision numbers are shared, and killing one with SIGKILL loses nothing it committed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.projects.service import ProjectService
from maestro.control_plane.projects.store import ProjectStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.postgres import PostgresSql
from maestro.v1 import project_service_pb2 as ppb
from maestro.v1 import rollout_service_pb2 as rollout_pb
from maestro.v1 import route_service_pb2 as rpb
from tests.process_support import ROOT, maestro_process
from tests.rollout_support import pause, push_prompt, rollout, wait_for_state, weight

pytestmark = pytest.mark.slow
CONFIG_NAME = "projects/alpha/routeConfig"
SEED_YAML = (ROOT / "deploy/router/litellm.yaml").read_text()
KEY_CACHE_TTL_S = 1.0
REPLICA_CONFIG = """
server: {host: 127.0.0.1, port: 0, grace_period_s: 2}
data_plane: {http_port: 0, simulated_provider: true}
"""


@contextmanager
def replica(tmp_path: Path, name: str, dsn: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "maestro.yaml").write_text(REPLICA_CONFIG)
    env = {
        **os.environ,
        "MAESTRO_STORE__BACKEND": "postgres",
        "MAESTRO_STORE__POSTGRES_DSN": dsn,
        "MAESTRO_AUTH__KEY_CACHE_TTL_S": str(KEY_CACHE_TTL_S),
        "MAESTRO_GRAPH__REPLICA_ID": name,
    }
    with maestro_process(["up", "--config", "maestro.yaml"], folder, env) as (ready, process):
        yield ready["address"], process


def _admin_key(dsn: str) -> str:
    """What `maestro admin create-project alpha` does, on the shared store."""
    sql = PostgresSql(dsn, MIGRATIONS)
    try:
        service = ProjectService(ProjectStore(sql))
        service.create_project("alpha")
        return service.create_key_offline("alpha", "admin").secret
    finally:
        sql.close()


def _config(marker: str) -> rpb.RouteConfig:
    return rpb.RouteConfig(name=CONFIG_NAME, config_yaml=f"{SEED_YAML}\n# {marker}\n")


async def _until_refused(client: AsyncMaestroClient) -> grpc.StatusCode:
    for _ in range(200):  # bounded: a cached key is trusted for at most KEY_CACHE_TTL_S
        try:
            await client.projects.GetProject(ppb.GetProjectRequest(name="projects/alpha"))
        except MaestroRpcError as error:
            return error.code()
        await asyncio.sleep(0.05)
    raise AssertionError("the deleted key kept working")


@pytest.fixture
async def pair(tmp_path: Path, postgres_dsn: str) -> AsyncIterator[tuple[str, str, str, object]]:
    admin = _admin_key(postgres_dsn)
    with (
        replica(tmp_path, "a", postgres_dsn) as (address_a, process_a),
        replica(tmp_path, "b", postgres_dsn) as (address_b, _),
    ):
        yield address_a, address_b, admin, process_a


async def test_a_key_created_on_one_replica_authenticates_on_the_other_and_dies_with_it(
    pair: tuple[str, str, str, object],
) -> None:
    address_a, address_b, admin, _ = pair
    async with AsyncMaestroClient(address_a, api_key=admin) as a:
        created = await a.projects.CreateApiKey(
            ppb.CreateApiKeyRequest(parent="projects/alpha", api_key=ppb.ApiKey(display_name="x"))
        )
        async with AsyncMaestroClient(address_b, api_key=created.secret) as b_new:
            seen = await b_new.projects.GetProject(ppb.GetProjectRequest(name="projects/alpha"))
            await a.projects.DeleteApiKey(ppb.DeleteApiKeyRequest(name=created.api_key.name))
            refused = await _until_refused(b_new)
    assert seen.project.name == "projects/alpha"
    assert refused == grpc.StatusCode.UNAUTHENTICATED


async def test_a_config_applied_on_one_replica_reaches_a_watcher_on_the_other(
    pair: tuple[str, str, str, object],
) -> None:
    address_a, address_b, admin, _ = pair

    async def watch() -> AsyncIterator[rpb.WatchConfigRequest]:
        yield rpb.WatchConfigRequest(node_id="dp-on-b", route_configs=[CONFIG_NAME])
        await asyncio.Event().wait()  # keep the stream open

    async with (
        AsyncMaestroClient(address_a, api_key=admin) as a,
        AsyncMaestroClient(address_b, api_key=admin, timeout_s=60) as b,
    ):
        stream = b.routes.WatchConfig(watch())
        first = await asyncio.wait_for(anext(aiter(stream)), timeout=30)
        applied = await a.routes.ApplyConfig(rpb.ApplyConfigRequest(route_config=_config("one")))
        update = await asyncio.wait_for(anext(aiter(stream)), timeout=30)
        stream.cancel()
        on_b = await b.routes.GetConfig(rpb.GetConfigRequest(name=CONFIG_NAME))
    assert [s.snapshot_version for s in first.snapshots] == []
    assert [s.snapshot_version for s in update.snapshots] == [applied.route_config.revision_id]
    assert update.snapshots[0].config_yaml.endswith("# one\n")
    assert on_b.route_config.revision_id == "1"


async def test_concurrent_applies_on_both_replicas_never_fork_revision_numbers(
    pair: tuple[str, str, str, object],
) -> None:
    address_a, address_b, admin, _ = pair
    async with (
        AsyncMaestroClient(address_a, api_key=admin, timeout_s=60) as a,
        AsyncMaestroClient(address_b, api_key=admin, timeout_s=60) as b,
    ):

        async def apply(client: AsyncMaestroClient, marker: str) -> str | grpc.StatusCode:
            try:
                done = await client.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(route_config=_config(marker))
                )
                return str(done.route_config.revision_id)
            except MaestroRpcError as error:
                return error.code()

        outcomes = await asyncio.gather(*(apply(a if i % 2 else b, f"c{i}") for i in range(12)))
        listed = await b.routes.ListConfigRevisions(
            rpb.ListConfigRevisionsRequest(parent=CONFIG_NAME, page_size=100)
        )
    won = [o for o in outcomes if isinstance(o, str)]
    lost = [o for o in outcomes if not isinstance(o, str)]
    assert won
    assert len(set(won)) == len(won)  # no revision number given twice
    assert set(lost) <= {grpc.StatusCode.ABORTED}
    numbers = sorted(int(r.revision_id) for r in listed.revisions)
    assert numbers == list(range(1, len(won) + 1))


async def test_sigkill_of_one_replica_loses_nothing_it_committed(
    pair: tuple[str, str, str, object],
) -> None:
    address_a, address_b, admin, process_a = pair
    async with AsyncMaestroClient(address_a, api_key=admin) as a:
        key = await a.projects.CreateApiKey(
            ppb.CreateApiKeyRequest(
                parent="projects/alpha", api_key=ppb.ApiKey(display_name="k", scopes=["admin"])
            )
        )
        applied = await a.routes.ApplyConfig(rpb.ApplyConfigRequest(route_config=_config("a")))
    process_a.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    process_a.wait(timeout=30)  # type: ignore[attr-defined]
    async with AsyncMaestroClient(address_b, api_key=key.secret, timeout_s=30) as b:
        seen = await b.routes.GetConfig(rpb.GetConfigRequest(name=CONFIG_NAME))
        next_one = await b.routes.ApplyConfig(rpb.ApplyConfigRequest(route_config=_config("b")))
    assert seen.route_config.revision_id == applied.route_config.revision_id
    assert seen.route_config.config_yaml.endswith("# a\n")
    assert int(next_one.route_config.revision_id) == int(applied.route_config.revision_id) + 1


async def test_a_rollback_on_one_replica_reaches_a_data_plane_watching_the_other(
    pair: tuple[str, str, str, object],
) -> None:
    address_a, address_b, admin, _ = pair

    async def watch() -> AsyncIterator[rpb.WatchConfigRequest]:
        yield rpb.WatchConfigRequest(node_id="dp-on-b", route_configs=[CONFIG_NAME])
        await asyncio.Event().wait()  # keep the stream open

    async with (
        AsyncMaestroClient(address_a, api_key=admin) as a,
        AsyncMaestroClient(address_b, api_key=admin, timeout_s=60) as b,
    ):
        v1 = await push_prompt(a, "v1")
        v2 = await push_prompt(a, "v2")
        created = await a.rollouts.CreateRollout(
            rollout_pb.CreateRolloutRequest(
                parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(30), pause()])
            )
        )
        await wait_for_state(a, created.rollout.name, rollout_pb.Rollout.STATE_PAUSED)
        stream = b.routes.WatchConfig(watch())
        seen: list[list[tuple[str, int]]] = []
        async with asyncio.timeout(30):
            async for response in stream:
                for snapshot in response.snapshots:
                    for split in snapshot.traffic_splits:
                        seen.append(
                            [(w.artifact_version, w.weight_percent) for w in split.version_weights]
                        )
                if seen and seen[-1] == [(v2.name, 30), (v1.name, 70)]:
                    break
            await a.rollouts.AbortRollout(
                rollout_pb.AbortRolloutRequest(name=created.rollout.name, reason="bad canary")
            )
            async for response in stream:
                for snapshot in response.snapshots:
                    for split in snapshot.traffic_splits:
                        seen.append(
                            [(w.artifact_version, w.weight_percent) for w in split.version_weights]
                        )
                if seen[-1] == [(v1.name, 100)]:
                    break
        stream.cancel()
    assert seen[-1] == [(v1.name, 100)]
