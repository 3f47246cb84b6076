"""Authentication and tenancy: keys identify a project, and a project sees only its own."""

from __future__ import annotations

import grpc
import pytest

from maestro.clients import MaestroRpcError
from maestro.v1 import project_service_pb2 as pb
from tests.conftest import RunningServer, start_server


async def test_call_without_key_is_unauthenticated(server: RunningServer) -> None:
    async with server.client(None) as client:
        with pytest.raises(MaestroRpcError) as caught:
            await client.get_project("projects/alpha")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "API_KEY_MISSING"


async def test_call_with_unknown_key_is_unauthenticated(server: RunningServer) -> None:
    async with server.client("mk_0000_not-a-real-key") as client:
        with pytest.raises(MaestroRpcError) as caught:
            await client.get_project("projects/alpha")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "API_KEY_INVALID"


async def test_bearer_authorization_header_is_accepted(server: RunningServer) -> None:
    async with server.client(None) as client:
        response = await client.projects.GetProject(
            pb.GetProjectRequest(name="projects/alpha"),
            metadata=(("authorization", f"Bearer {server.alpha_key}"),),
        )
    assert response.project.name == "projects/alpha"


async def test_key_reads_its_own_project(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        project = await client.get_project("projects/alpha")
    assert project.name == "projects/alpha"
    assert project.create_time.seconds > 0


async def test_key_of_project_a_cannot_read_project_b(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        with pytest.raises(MaestroRpcError) as caught:
            await client.get_project("projects/beta")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "PROJECT_MISMATCH"


async def test_key_of_project_a_cannot_read_or_revoke_project_b_keys(server: RunningServer) -> None:
    async with server.client(server.beta_key) as beta:
        listed = await beta.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/beta"))
    beta_key_name = listed.api_keys[0].name
    async with server.client(server.alpha_key) as alpha:
        for call in (
            alpha.projects.GetApiKey(pb.GetApiKeyRequest(name=beta_key_name)),
            alpha.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/beta")),
            alpha.projects.DeleteApiKey(pb.DeleteApiKeyRequest(name=beta_key_name)),
            alpha.projects.CreateApiKey(
                pb.CreateApiKeyRequest(parent="projects/beta", api_key=pb.ApiKey())
            ),
        ):
            with pytest.raises(MaestroRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with server.client(server.beta_key) as beta:
        still_there = await beta.projects.GetApiKey(pb.GetApiKeyRequest(name=beta_key_name))
    assert still_there.api_key.name == beta_key_name


async def test_list_projects_shows_only_the_callers_project(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        response = await client.projects.ListProjects(pb.ListProjectsRequest())
    assert [p.name for p in response.projects] == ["projects/alpha"]


async def test_revoked_key_is_unauthenticated(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as alpha:
        created = await alpha.projects.CreateApiKey(
            pb.CreateApiKeyRequest(parent="projects/alpha", api_key=pb.ApiKey(display_name="ci"))
        )
        async with server.client(created.secret) as temporary:
            assert (await temporary.get_project("projects/alpha")).name == "projects/alpha"
            await alpha.projects.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name))
            with pytest.raises(MaestroRpcError) as caught:
                await temporary.get_project("projects/alpha")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_stored_key_is_hashed_not_plaintext(server: RunningServer) -> None:
    with server.plane.store.read() as tx:
        rows = tx.all("SELECT * FROM api_keys")
    stored = " ".join(str(value) for row in rows for value in row.values())
    assert rows
    assert server.alpha_key not in stored
    if server.plane.store.kind == "sqlite":  # nor anywhere in the file
        assert server.alpha_key.encode() not in server.plane.config.store.sqlite_path.read_bytes()


async def test_create_key_with_same_request_id_returns_the_first_key(server: RunningServer) -> None:
    request = pb.CreateApiKeyRequest(
        parent="projects/alpha", api_key=pb.ApiKey(display_name="x"), request_id="7d1f-retry"
    )
    async with server.client(server.alpha_key) as alpha:
        first = await alpha.projects.CreateApiKey(request)
        second = await alpha.projects.CreateApiKey(request)
    assert first.secret.startswith("mk_")
    assert second.api_key.name == first.api_key.name
    assert second.secret == ""


async def test_insecure_mode_acts_for_the_configured_project(tmp_path: object) -> None:
    from pathlib import Path

    running = await start_server(
        Path(str(tmp_path)), **{"auth.mode": "insecure", "auth.insecure_project": "alpha"}
    )
    try:
        async with running.client(None) as client:
            assert (await client.get_project("projects/alpha")).name == "projects/alpha"
            with pytest.raises(MaestroRpcError) as caught:
                await client.get_project("projects/beta")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.plane.stop(grace_s=0)


def test_every_reflected_method_names_the_scopes_it_accepts() -> None:
    """A new RPC cannot ship unguarded: the guard refuses a method missing from the table."""
    from maestro.clients._channel import API_FILES
    from maestro.core.rpc.scopes import scopes_for

    methods = [
        f"/{service.full_name}/{method.name}"
        for file in API_FILES
        for service in file.services_by_name.values()
        for method in service.methods
    ]
    assert len(methods) > 60
    assert [m for m in methods if not scopes_for(m)] == []
    assert scopes_for("/maestro.v1.RouteService/NotAMethod") == frozenset()


async def test_insecure_mode_creates_the_project_it_acts_for(tmp_path: object) -> None:
    from pathlib import Path

    running = await start_server(
        Path(str(tmp_path)), **{"auth.mode": "insecure", "auth.insecure_project": "sandbox"}
    )
    try:
        async with running.client(None) as client:
            project = await client.get_project("projects/sandbox")
    finally:
        await running.plane.stop(grace_s=0)
    assert project.name == "projects/sandbox"
