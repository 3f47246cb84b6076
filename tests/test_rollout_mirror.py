"""Mirroring artifact versions to a real OCI registry (CNCF Distribution on a loopback port):
push off the request path, retries while the registry is down, digests verified on pull."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from maestro.control_plane.rollouts import oci
from maestro.control_plane.rollouts.mirror import RegistryMirror, pull_version, target_of
from maestro.control_plane.rollouts.oci import CorruptArtifact, OciLayout, content_digest
from maestro.control_plane.rollouts.records import Kind, Provenance, VersionRecord
from maestro.control_plane.rollouts.store import RolloutStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.sqlite import SqliteSql
from tests import registry_support
from tests.conftest import RunningServer, start_server
from tests.registry_support import RunningRegistry, registry_server
from tests.rollout_support import prompt, push_prompt

MEDIA_TYPE = "application/vnd.maestro.prompt.v1+yaml"


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with registry_server() as running:
        yield running


@dataclass
class Versions:
    """Versions created as the server creates them (the store's insert, the OCI layout's put),
    without the server."""

    store: RolloutStore
    layout: OciLayout

    def create(self, artifact_id: str, content: bytes, project: str = "acme") -> VersionRecord:
        record = VersionRecord(
            project=project,
            artifact_id=artifact_id,
            version_id="",
            kind=Kind.PROMPT,
            description="a test prompt",
            media_type=MEDIA_TYPE,
            digest=content_digest(content),
            manifest_digest="",
            size_bytes=len(content),
            provenance=Provenance(source_commit="0123abcd", creator="test"),
            create_time=time.time(),
        )

        def store_blob(r: VersionRecord) -> VersionRecord:
            stored = self.layout.put(
                content,
                r.media_type,
                r.kind.label,
                {"dev.maestro.creator": r.provenance.creator},
                f"{r.project}/{r.artifact_id}:{r.version_id}",
            )
            return replace(r, manifest_digest=stored.manifest_digest)

        return self.store.create_version(record, content.decode(), "", store_blob)


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[Versions]:
    sql = SqliteSql(tmp_path / "maestro.db", MIGRATIONS)
    yield Versions(RolloutStore(sql), OciLayout(tmp_path / "oci"))
    sql.close()


@contextlib.asynccontextmanager
async def running(mirror: RegistryMirror) -> AsyncIterator[RegistryMirror]:
    await mirror.start()
    try:
        yield mirror
    finally:
        await mirror.stop(grace_s=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_submitted_version_is_pushed_and_pulls_back_byte_for_byte(
    versions: Versions, registry: RunningRegistry
) -> None:
    content = prompt("mirror-direct").encode()
    record = versions.create("support-answer", content)
    assert record.version_id == "v1"
    assert record.manifest_digest
    mirror = RegistryMirror(versions.layout, registry.address, insecure=True, backoff_s=0.05)
    async with running(mirror):
        with capture_logs() as logs:
            mirror.submit(record)  # only queues
            assert mirror.stats.pending == 1
            await asyncio.wait_for(mirror.drain(), 60)
    assert (mirror.stats.pushed, mirror.stats.failed) == (1, 0), logs
    pushed = [entry for entry in logs if entry["event"] == "rollouts.mirror_pushed"]
    assert len(pushed) == 1
    assert pushed[0]["target"] == f"{registry.address}/projects/acme/prompts/support-answer:v1"
    assert pushed[0]["manifest_digest"] == record.manifest_digest

    pulled = await asyncio.to_thread(pull_version, registry.address, record, True)
    assert pulled == content
    assert content_digest(pulled) == record.digest
    # By tag too: the registry holds the layout's exact manifest bytes.
    manifest_bytes, by_tag = await asyncio.to_thread(
        oci.pull, target_of(registry.address, record), expected_digest=record.digest, insecure=True
    )
    assert by_tag == content
    assert manifest_bytes == versions.layout.manifest_bytes(record.manifest_digest)
    assert content_digest(manifest_bytes) == record.manifest_digest


async def test_a_registry_down_at_first_is_retried_until_it_comes_up(
    versions: Versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.environ.get("MAESTRO_TEST_REGISTRY"):
        pytest.skip("needs a registry this test starts itself")
    content = prompt("mirror-late-registry").encode()
    record = versions.create("late-registry", content)
    port = _free_port()  # nothing listens there yet: the registry starts on it later
    monkeypatch.setattr(registry_support, "_free_port", lambda: port)
    mirror = RegistryMirror(
        versions.layout,
        f"127.0.0.1:{port}",
        insecure=True,
        max_attempts=200,  # bounded: 200 attempts at most 0.2 s apart
        backoff_s=0.02,
        max_backoff_s=0.2,
    )
    with contextlib.ExitStack() as stack, capture_logs() as logs:
        async with running(mirror):
            mirror.submit(record)
            for _ in range(3000):  # bounded: 30 s
                if mirror.stats.attempts >= 2:
                    break
                await asyncio.sleep(0.01)
            assert mirror.stats.attempts >= 2
            assert (mirror.stats.pushed, mirror.stats.failed) == (0, 0)  # still retrying
            late = await asyncio.to_thread(stack.enter_context, registry_server())
            assert late.address == f"127.0.0.1:{port}"
            await asyncio.wait_for(mirror.drain(), 60)
            assert (mirror.stats.pushed, mirror.stats.failed) == (1, 0)
            assert mirror.stats.attempts >= 3
            pulled = await asyncio.to_thread(pull_version, late.address, record, True)
    assert pulled == content
    retries = [entry for entry in logs if entry["event"] == "rollouts.mirror_retrying"]
    assert retries
    assert all(f"127.0.0.1:{port}" in entry["error"] for entry in retries)
    assert [entry["event"] for entry in logs].count("rollouts.mirror_pushed") == 1
    assert not [entry for entry in logs if entry["event"] == "rollouts.mirror_failed"]


async def test_attempts_are_bounded_and_the_failure_is_logged(versions: Versions) -> None:
    record = versions.create("never-up", prompt("mirror-never").encode())
    mirror = RegistryMirror(
        versions.layout, f"127.0.0.1:{_free_port()}", insecure=True, max_attempts=3, backoff_s=0.01
    )
    async with running(mirror):
        with capture_logs() as logs:
            mirror.submit(record)
            await asyncio.wait_for(mirror.drain(), 60)
    assert (mirror.stats.attempts, mirror.stats.pushed, mirror.stats.failed) == (3, 0, 1)
    failed = [entry for entry in logs if entry["event"] == "rollouts.mirror_failed"]
    assert len(failed) == 1
    assert failed[0]["version"] == record.name
    assert "RegistryError" in failed[0]["error"]


async def test_a_version_damaged_in_the_local_layout_is_not_retried(
    versions: Versions, registry: RunningRegistry
) -> None:
    content = prompt("mirror-damaged").encode()
    record = versions.create("damaged", content)
    versions.layout.blob_path(record.digest).write_bytes(content.replace(b"mirror", b"MIRROR"))
    mirror = RegistryMirror(versions.layout, registry.address, insecure=True, backoff_s=0.01)
    async with running(mirror):
        with capture_logs() as logs:
            mirror.submit(record)
            await asyncio.wait_for(mirror.drain(), 60)
    assert (mirror.stats.attempts, mirror.stats.pushed, mirror.stats.failed) == (1, 0, 1)
    (failed,) = [entry for entry in logs if entry["event"] == "rollouts.mirror_failed"]
    assert "CorruptArtifact" in failed["error"]
    assert record.digest in failed["error"]


async def test_a_blob_tampered_in_the_registry_fails_the_pull_naming_both_digests(
    versions: Versions, registry: RunningRegistry
) -> None:
    if registry.storage is None:
        pytest.skip("an external registry's storage is not reachable")
    content = prompt("mirror-tampered").encode()
    record = versions.create("tampered", content)
    mirror = RegistryMirror(versions.layout, registry.address, insecure=True, backoff_s=0.05)
    async with running(mirror):
        mirror.submit(record)
        await asyncio.wait_for(mirror.drain(), 60)
    assert mirror.stats.pushed == 1

    on_disk = registry.blob_path(record.digest)
    assert on_disk.read_bytes() == content
    on_disk.write_bytes(content.replace(b"product", b"PRODUCT"))  # same size, other bytes
    with pytest.raises(CorruptArtifact) as caught:
        await asyncio.to_thread(pull_version, registry.address, record, True)
    assert record.digest in str(caught.value)
    assert content_digest(on_disk.read_bytes()) in str(caught.value)


async def test_a_version_created_through_the_server_is_mirrored(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    server: RunningServer = await start_server(
        tmp_path,
        **{"rollouts.registry.address": registry.address, "rollouts.registry.insecure": True},
    )
    try:
        plane = server.plane.rollouts
        assert plane is not None
        mirror = getattr(plane, "mirror", None)
        if not isinstance(mirror, RegistryMirror):
            pytest.skip("RolloutPlane.mirror is not wired yet (rollouts.registry)")
        async with server.client(server.alpha_key) as alpha:
            created = await push_prompt(alpha, "mirrored-by-the-server")
        await asyncio.wait_for(mirror.drain(), 60)
        record = await plane.store.aio(
            plane.store.get_version, "alpha", "support-answer", created.name.rpartition("/")[2]
        )
        assert record.manifest_digest == created.manifest_digest
        pulled = await asyncio.to_thread(pull_version, registry.address, record, True)
        assert pulled == prompt("mirrored-by-the-server").encode()
        assert content_digest(pulled) == created.digest
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
