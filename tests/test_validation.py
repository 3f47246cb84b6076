"""Bad input: INVALID_ARGUMENT with google.rpc.BadRequest field violations; nothing stored lost."""

from __future__ import annotations

import grpc
import pytest

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.v1 import project_service_pb2 as pb
from tests.conftest import RunningServer


async def _violations(call: object) -> tuple[MaestroRpcError, dict[str, str]]:
    with pytest.raises(MaestroRpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.domain == "maestro.dev"
    return error, {v.field: v.description for v in error.field_violations}


@pytest.mark.parametrize(
    "bad_name", ["", "alpha", "projects/", "projects/Alpha", "projects/a/b", "x" * 300]
)
async def test_malformed_project_name_names_the_field(
    alpha: AsyncMaestroClient, bad_name: str
) -> None:
    _, violations = await _violations(
        alpha.projects.GetProject(pb.GetProjectRequest(name=bad_name))
    )
    assert list(violations) == ["name"]


async def test_malformed_api_key_name_names_the_field(alpha: AsyncMaestroClient) -> None:
    _, violations = await _violations(
        alpha.projects.GetApiKey(pb.GetApiKeyRequest(name="projects/alpha/keys/1"))
    )
    assert "projects/{project}/apiKeys/{api_key}" in violations["name"]


async def test_negative_page_size_is_rejected(alpha: AsyncMaestroClient) -> None:
    _, violations = await _violations(
        alpha.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/alpha", page_size=-1))
    )
    assert list(violations) == ["page_size"]


async def test_forged_page_token_is_rejected(alpha: AsyncMaestroClient) -> None:
    _, violations = await _violations(
        alpha.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/alpha", page_token="%%%"))
    )
    assert list(violations) == ["page_token"]


async def test_all_bad_fields_are_reported_at_once(alpha: AsyncMaestroClient) -> None:
    request = pb.CreateApiKeyRequest(
        parent="projects/alpha",
        api_key=pb.ApiKey(display_name="x" * 201),
        request_id="r" * 65,
    )
    _, violations = await _violations(alpha.projects.CreateApiKey(request))
    assert set(violations) == {"api_key.display_name", "request_id"}


async def test_bad_input_stores_nothing_and_server_keeps_serving(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    before = await alpha.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/alpha"))
    await _violations(
        alpha.projects.CreateApiKey(
            pb.CreateApiKeyRequest(parent="projects/alpha", api_key=pb.ApiKey(display_name="\x00"))
        )
    )
    after = await alpha.projects.ListApiKeys(pb.ListApiKeysRequest(parent="projects/alpha"))
    assert [k.name for k in after.api_keys] == [k.name for k in before.api_keys]
    assert (await alpha.get_project("projects/alpha")).name == "projects/alpha"


async def test_missing_resource_is_not_found(alpha: AsyncMaestroClient) -> None:
    with pytest.raises(MaestroRpcError) as caught:
        await alpha.projects.GetApiKey(pb.GetApiKeyRequest(name="projects/alpha/apiKeys/ffffff"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "API_KEY_NOT_FOUND"


async def test_pages_cover_every_key_once(alpha: AsyncMaestroClient) -> None:
    for index in range(5):
        await alpha.projects.CreateApiKey(
            pb.CreateApiKeyRequest(
                parent="projects/alpha", api_key=pb.ApiKey(display_name=f"k{index}")
            )
        )
    seen: list[str] = []
    request = pb.ListApiKeysRequest(parent="projects/alpha", page_size=2)
    pages = 0
    while True:
        response = await alpha.projects.ListApiKeys(request)
        pages += 1
        seen += [k.name for k in response.api_keys]
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    assert pages == 3
    assert len(seen) == len(set(seen)) == 6


async def test_page_token_from_another_list_is_rejected(
    alpha: AsyncMaestroClient, server: RunningServer
) -> None:
    for _ in range(2):
        await alpha.projects.CreateApiKey(
            pb.CreateApiKeyRequest(parent="projects/alpha", api_key=pb.ApiKey())
        )
    first = await alpha.projects.ListApiKeys(
        pb.ListApiKeysRequest(parent="projects/alpha", page_size=1)
    )
    async with server.client(server.beta_key) as beta:
        _, violations = await _violations(
            beta.projects.ListApiKeys(
                pb.ListApiKeysRequest(parent="projects/beta", page_token=first.next_page_token)
            )
        )
    assert list(violations) == ["page_token"]
