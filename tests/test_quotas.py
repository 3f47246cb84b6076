"""Per-project limits on every door (gRPC and the HTTP ingress) and the brake on key guessing:
a flooding tenant is answered RESOURCE_EXHAUSTED with a retry delay while others are served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from maestro.clients import MaestroRpcError
from maestro.core.quotas import Limiter, ProjectLimits, peer_host
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import project_service_pb2 as ppb
from tests.conftest import RunningServer, start_server


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(
        tmp_path,
        **{
            "server.limits": {
                "projects": {"alpha": {"requests_per_s": 0.01, "burst": 2}},
                "failed_auth_per_minute": 3,
            }
        },
    )
    try:
        yield running
    finally:
        await running.plane.stop(grace_s=0)
        running.telemetry.shutdown()


async def test_a_project_over_its_rate_is_refused_with_a_retry_delay_and_others_are_served(
    limited: RunningServer,
) -> None:
    request = ppb.GetProjectRequest(name="projects/alpha")
    async with limited.client(limited.alpha_key) as alpha, limited.client(limited.beta_key) as beta:
        for _ in range(2):
            await alpha.projects.GetProject(request)
        with pytest.raises(MaestroRpcError) as over:
            await alpha.projects.GetProject(request)
        served = await beta.projects.GetProject(ppb.GetProjectRequest(name="projects/beta"))
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.value.reason == "RATE_LIMITED"
    assert over.value.retry_delay_s is not None
    assert over.value.retry_delay_s > 1
    assert served.project.name == "projects/beta"


async def test_the_http_ingress_shares_the_projects_rate_and_answers_429_with_retry_after(
    limited: RunningServer,
) -> None:
    assert limited.plane.data is not None
    url = f"{limited.plane.data.base_url}/models"
    headers = {"Authorization": f"Bearer {limited.alpha_key}"}
    async with limited.client(limited.alpha_key) as alpha:
        for _ in range(2):  # the burst is spent over gRPC...
            await alpha.projects.GetProject(ppb.GetProjectRequest(name="projects/alpha"))
    async with httpx.AsyncClient() as http:
        answer = await http.get(url, headers=headers)  # ...so HTTP is refused too
    assert answer.status_code == 429
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["error"]["code"] == "RATE_LIMITED"


async def test_a_project_at_its_concurrency_quota_is_refused_until_a_call_ends(
    tmp_path: Path,
) -> None:
    running = await start_server(
        tmp_path, **{"server.limits": {"projects": {"alpha": {"max_concurrent_calls": 1}}}}
    )
    hold = asyncio.Event()

    async def silent() -> AsyncIterator[gpb.InteractRunRequest]:
        await hold.wait()  # the server waits for a first command that never comes
        yield gpb.InteractRunRequest()

    request = ppb.GetProjectRequest(name="projects/alpha")
    try:
        async with running.client(running.alpha_key) as alpha:
            watch = alpha.graphs.InteractRun(silent())  # a long-lived call holds the slot
            over = None
            # Until the server has admitted the stream: bounded in count, and generous, as a
            # loaded machine (PostgreSQL key look-ups beside a parallel suite) may take seconds.
            for _ in range(1000):
                try:
                    await alpha.projects.GetProject(request)
                except MaestroRpcError as error:
                    over = error
                    break
                await asyncio.sleep(0.02)
            hold.set()
            watch.cancel()
            after = None
            for _ in range(1000):  # until the server has seen the stream end (bounded)
                try:
                    after = await alpha.projects.GetProject(request)
                    break
                except MaestroRpcError:
                    await asyncio.sleep(0.02)
    finally:
        await running.plane.stop(grace_s=0)
        running.telemetry.shutdown()
    assert over is not None
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.reason == "CONCURRENCY_QUOTA_EXCEEDED"
    assert after is not None


async def test_an_address_presenting_bad_keys_is_slowed_down_before_any_look_up(
    limited: RunningServer,
) -> None:
    codes = []
    for attempt in range(5):
        async with limited.client(f"mk_000000000000_guess{attempt}") as guesser:
            try:
                await guesser.projects.GetProject(ppb.GetProjectRequest(name="projects/alpha"))
            except MaestroRpcError as error:
                codes.append(error.code())
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2


def test_the_rate_refills_with_time_and_calls_leave_their_slot() -> None:
    now = [0.0]
    limiter = Limiter(
        ProjectLimits(requests_per_s=2, burst=1, max_concurrent_calls=1), clock=lambda: now[0]
    )
    limiter.enter("p")
    limiter.leave("p")
    with pytest.raises(Exception, match="rate"):
        limiter.enter("p")
    now[0] += 0.5
    limiter.enter("p")
    assert limiter.limits("q").requests_per_s == 2


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"), ("10.0.0.1:80", "10.0.0.1")],
)
def test_a_peer_is_counted_by_address_not_by_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host
