"""Typed clients: retries only where the contract says idempotent, deadlines, sync parity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import maestro.clients
from maestro.clients import AsyncMaestroClient, MaestroClient, MaestroRpcError
from maestro.clients._channel import API_FILES
from maestro.clients.retry import idempotent_methods, service_config
from maestro.v1 import project_service_pb2 as pb
from maestro.v1 import project_service_pb2_grpc
from tests.conftest import RunningServer


def test_public_exports_are_stable() -> None:
    assert sorted(maestro.clients.__all__) == [
        "AsyncMaestroClient",
        "FieldViolation",
        "MaestroClient",
        "MaestroRpcError",
        "channel_credentials",
    ]


def test_only_methods_marked_idempotent_are_retried() -> None:
    methods = set(idempotent_methods(API_FILES))
    assert ("maestro.v1.ProjectService", "GetProject") in methods
    assert ("maestro.v1.ProjectService", "ListApiKeys") in methods
    assert ("maestro.v1.ProjectService", "CreateApiKey") not in methods
    assert ("maestro.v1.RouteService", "ApplyConfig") not in methods
    config = json.loads(service_config(API_FILES))
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def test_sync_client_reads_and_reports_errors_like_the_async_one(
    server: RunningServer,
) -> None:
    def use_sync_client() -> tuple[str, MaestroRpcError]:
        with MaestroClient(server.target, api_key=server.alpha_key, timeout_s=5) as client:
            name = client.get_project("projects/alpha").name
            try:
                client.projects.GetProject(pb.GetProjectRequest(name="nope"))
            except MaestroRpcError as error:
                return name, error
        raise AssertionError("the bad request did not fail")

    name, error = await asyncio.to_thread(use_sync_client)
    assert name == "projects/alpha"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["name"]


async def test_error_text_is_readable(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        with pytest.raises(MaestroRpcError) as caught:
            await client.get_project("nope")
    text = str(caught.value)
    assert text.startswith("INVALID_ARGUMENT: ")
    assert "\n  name: " in text


async def test_default_deadline_applies_to_calls_without_timeout() -> None:
    # A peer that accepts TCP and never speaks HTTP/2: without a deadline the call would hang.
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    silent = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with AsyncMaestroClient(f"127.0.0.1:{port}", api_key="k", timeout_s=0.3) as client:
            with pytest.raises(MaestroRpcError) as caught:
                await client.get_project("projects/alpha")
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()


class _FlakyProjects(project_service_pb2_grpc.ProjectServiceServicer):
    """A peer that answers UNAVAILABLE to the first call of each method, then succeeds."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    async def _flaky(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.attempts[method] = self.attempts.get(method, 0) + 1
        if self.attempts[method] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProjectResponse:
        await self._flaky("GetProject", context)
        return pb.GetProjectResponse(project=pb.Project(name=request.name))

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateApiKeyResponse:
        await self._flaky("CreateApiKey", context)
        return pb.CreateApiKeyResponse()


@pytest.fixture
async def flaky_peer() -> AsyncIterator[tuple[str, _FlakyProjects]]:
    servicer = _FlakyProjects()  # type: ignore[abstract]  # only the methods under test
    peer = grpc.aio.server()
    project_service_pb2_grpc.add_ProjectServiceServicer_to_server(servicer, peer)
    port = peer.add_insecure_port("127.0.0.1:0")
    await peer.start()
    yield f"127.0.0.1:{port}", servicer
    await peer.stop(0)


async def test_idempotent_method_is_retried_on_unavailable(
    flaky_peer: tuple[str, _FlakyProjects],
) -> None:
    target, servicer = flaky_peer
    async with AsyncMaestroClient(target, api_key="k", timeout_s=5) as client:
        project = await client.get_project("projects/alpha")
    assert project.name == "projects/alpha"
    assert servicer.attempts["GetProject"] == 2


async def test_non_idempotent_method_is_not_retried(flaky_peer: tuple[str, _FlakyProjects]) -> None:
    target, servicer = flaky_peer
    async with AsyncMaestroClient(target, api_key="k", timeout_s=5) as client:
        with pytest.raises(MaestroRpcError) as caught:
            await client.projects.CreateApiKey(pb.CreateApiKeyRequest(parent="projects/alpha"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["CreateApiKey"] == 1
