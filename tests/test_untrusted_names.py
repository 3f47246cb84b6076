"""Names and digests from callers are matched whole before they mean anything.

A resource-name regex applied with `match` and a trailing `$` accepts `projects/demo\\n`
(`$` also matches before a final newline); every name is matched with `fullmatch`. A blob digest
is checked against `sha256:<64 lower-case hex>` before any path is built from it, so no digest
reaches a file outside the blob store.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.graph.blobs import FileBlobStore
from maestro.core.errors import InvalidArgument
from maestro.core.names import parse_api_key_name, parse_project_name


@pytest.mark.parametrize(
    "name", ["projects/alpha\n", "projects/alpha\r\n", "projects/alpha/", " projects/alpha"]
)
async def test_a_project_name_with_anything_after_it_is_invalid_argument(
    alpha: AsyncMaestroClient, name: str
) -> None:
    with pytest.raises(MaestroRpcError) as raised:
        await alpha.get_project(name)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await alpha.get_project("projects/alpha")).name == "projects/alpha"


def test_name_parsers_match_the_whole_name() -> None:
    assert parse_project_name("projects/demo", "name") == "demo"
    assert parse_api_key_name("projects/demo/apiKeys/k1", "name") == ("demo", "k1")
    for parse, value in (
        (parse_project_name, "projects/demo\n"),
        (parse_api_key_name, "projects/demo/apiKeys/k1\n"),
    ):
        with pytest.raises(InvalidArgument):
            parse(value, "name")


def test_blob_digests_are_checked_before_a_path_is_built(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    digest = store.put(b"state")
    (tmp_path / "secret").write_text("not a blob")
    (tmp_path / "blobs" / "x").mkdir()  # any folder that exists inside the store
    # 64 characters, as a length check wanted: root/x/../x/../../secret is tmp_path/secret.
    escape = "x/../../secret".ljust(64, "/")
    refused = [
        f"sha256:{escape}",
        "sha256:" + "../" * 21 + "a",
        "sha256:" + digest.removeprefix("sha256:").upper(),
        f"{digest}\n",
        "md5:" + "0" * 64,
        "sha256:" + "0" * 63,
        "",
    ]
    for bad in refused:
        with pytest.raises(FileNotFoundError):
            store.get(bad)
    assert store.get(digest) == b"state"
