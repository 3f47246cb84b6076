"""A data plane in its own server, following a control plane: snapshots over WatchConfig,
observations over ReportObservations, callers' keys checked with the control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest

from maestro.app.data_plane_server import DataPlaneServer, start_data_plane_server
from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.core.telemetry import build_telemetry
from maestro.data_plane.remote import RemoteKeyVerifier
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import test_config
from tests.inference_support import CONFIG, PARENT, Stack, events, stack, stream_request


@dataclass
class Remote:
    control: Stack
    data: DataPlaneServer
    client: AsyncMaestroClient


@asynccontextmanager
async def remote(tmp_path: Path) -> AsyncIterator[Remote]:
    async with stack(tmp_path / "control") as control:
        config = test_config(
            tmp_path,
            **{
                "data_plane.control_plane_target": control.server.target,
                "data_plane.control_plane_api_key": control.server.alpha_key,
                "data_plane.node_id": "edge-1",
            },
        )
        telemetry = build_telemetry(config.telemetry)
        data = await start_data_plane_server(config, telemetry)
        try:
            await asyncio.wait_for(data.follower.synced.wait(), 30)
            async with AsyncMaestroClient(
                data.address, api_key=control.server.alpha_key, timeout_s=20
            ) as client:
                yield Remote(control, data, client)
        finally:
            await data.stop(grace_s=0)
            telemetry.shutdown()


async def test_data_plane_streams_with_the_control_planes_snapshot(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with remote(tmp_path) as r:
        config = await r.control.client.routes.GetConfig(
            rpb.GetConfigRequest(name=f"{PARENT}/routeConfig")
        )
        stream = await events(r.client, stream_request())
    assert stream[0].routed.snapshot_version == config.route_config.snapshot_version
    assert stream[-1].done.usage.completion_tokens == 24
    assert r.control.primary.stats.requests_completed == 1


async def test_a_config_change_reaches_the_data_plane(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with remote(tmp_path) as r:
        backup = r.control.backup.base_url
        third = (
            "  - model_name: third\n"
            f'    litellm_params: {{model: openai/third, api_base: "{backup}"}}\n'
        )
        extra = CONFIG.format(primary=r.control.primary.base_url, backup=backup).replace(
            "router:", third + "router:"
        )
        await r.control.client.routes.ApplyConfig(
            rpb.ApplyConfigRequest(
                route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=extra)
            )
        )
        for _ in range(200):  # bounded: the push is asynchronous
            models = await r.client.inference.ListModels(ipb.ListModelsRequest(parent=PARENT))
            if models.snapshot_version == "2":
                break
            await asyncio.sleep(0.05)
        stream = await events(r.client, stream_request(model="third"))
    assert [g.model for g in models.model_groups] == ["backup", "primary", "third"]
    assert stream[0].routed.snapshot_version == "2"


async def test_observations_reach_the_control_plane(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with remote(tmp_path) as r:
        for _ in range(3):
            await events(r.client, stream_request())
        r.data.data.observer.flush()
        for _ in range(200):  # bounded: the report is asynchronous
            got = await r.control.client.routes.GetDeploymentSignals(
                rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
            )
            if got.deployment_signals.sample_count:
                break
            await asyncio.sleep(0.05)
    assert got.deployment_signals.sample_count == 3
    assert got.deployment_signals.reporting_node_count == 1


async def test_data_plane_checks_caller_keys_with_the_control_plane(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with remote(tmp_path) as r:
        async with AsyncMaestroClient(r.data.address, api_key="mk_nope_nope") as bad:
            with pytest.raises(MaestroRpcError) as raised:
                await events(bad, stream_request())
        async with AsyncMaestroClient(r.data.address, api_key=r.control.server.beta_key) as other:
            with pytest.raises(MaestroRpcError) as denied:
                await events(other, stream_request())
        http = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{r.data.data.http_port}/v1",
            api_key=r.control.server.alpha_key,
            max_retries=0,
        )
        async with http:
            answer = await http.chat.completions.create(
                model="primary", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5


async def test_concurrent_checks_of_one_key_share_one_round_trip(tmp_path: Path) -> None:
    async with stack(tmp_path) as control:
        verifier = RemoteKeyVerifier(control.server.target, 60.0)
        try:
            principals = await asyncio.gather(
                *(verifier.authenticate(control.server.alpha_key) for _ in range(20))
            )
            again = await verifier.authenticate(control.server.alpha_key)
        finally:
            await verifier.close()
        checks = [
            s
            for s in control.server.spans.get_finished_spans()
            if s.name == "/maestro.v1.ProjectService/ListProjects"
        ]
    assert principals[0] is not None
    assert f"projects/{principals[0].project_id}" == PARENT
    assert all(p == principals[0] for p in principals)
    assert again == principals[0]
    assert len(checks) == 1


async def test_stopping_a_data_plane_delivers_its_last_observations(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with remote(tmp_path) as r:
        await events(r.client, stream_request())
        await r.data.stop(grace_s=1.0)  # no flush before: the stop itself must deliver them
        got = await r.control.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
        )
    assert got.deployment_signals.sample_count == 1


async def test_a_failing_observation_listener_costs_the_batch_nothing(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    heard: list[str] = []

    def broken(observation: object, now: float) -> None:
        raise RuntimeError("listener bug")

    async with remote(tmp_path) as r:
        listeners = r.control.server.plane.routes.observation_listeners
        listeners.insert(0, broken)
        listeners.append(lambda observation, now: heard.append(observation.deployment_id))
        for _ in range(3):
            await events(r.client, stream_request())
        r.data.data.observer.flush()
        assert await r.data.reporter.drain(10)
        assert r.data.reporter.accepted == 1  # one observation: the deployment's window
        got = await r.control.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
        )
    assert got.deployment_signals.sample_count == 3
    assert heard == ["primary-a"]
