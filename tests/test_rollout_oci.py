"""Artifact versions as OCI artifacts: the on-disk image layout and a real registry round trip.

The registry is CNCF Distribution (Debian's `docker-registry`) on a loopback port, plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maestro.control_plane.rollouts.oci import (
    ARTIFACT_TYPE_PREFIX,
    ArtifactMissing,
    CorruptArtifact,
    OciLayout,
    RegistryError,
    build_manifest,
    content_digest,
    pull,
    push,
    repository,
)
from tests.registry_support import (
    TEST_HTPASSWD,
    TEST_PASSWORD,
    TEST_USER,
    RunningRegistry,
    registry_server,
)

PROMPT = b"system: You answer support questions.\nuser: {{question}}\n"
YAML = "application/yaml"
PROVENANCE = {
    "org.opencontainers.image.source": "https://git.example.com/acme/prompts",
    "org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
    "org.opencontainers.image.created": "2026-01-02T03:04:05Z",
    "dev.maestro.project": "acme",
    "dev.maestro.version": "v1",
}


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with registry_server() as running:
        yield running


def _sha256_name(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_same_content_and_annotations_give_the_same_manifest_digest_and_one_index_entry(
    tmp_path: Path,
) -> None:
    first = build_manifest(PROMPT, YAML, "prompt", PROVENANCE)
    again = build_manifest(PROMPT, YAML, "prompt", dict(reversed(list(PROVENANCE.items()))))
    assert first == again
    other = build_manifest(PROMPT, YAML, "prompt", {**PROVENANCE, "dev.maestro.version": "v2"})
    assert content_digest(other) != content_digest(first)

    layout = OciLayout(tmp_path / "layout")
    one = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    two = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    assert one == two
    assert one.manifest_digest == content_digest(first)
    assert one.digest == content_digest(PROMPT)
    assert one.size_bytes == len(PROMPT)
    index = json.loads((tmp_path / "layout" / "index.json").read_bytes())
    assert [entry["digest"] for entry in index["manifests"]] == [one.manifest_digest]


def test_manifest_is_an_oci_1_1_artifact_with_the_empty_config_and_canonical_json() -> None:
    data = build_manifest(PROMPT, YAML, "agent", PROVENANCE)
    manifest = json.loads(data)
    assert data == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == f"{ARTIFACT_TYPE_PREFIX}agent.v1"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": content_digest(b"{}"),
        "size": 2,
    }
    assert manifest["layers"] == [
        {
            "mediaType": YAML,
            "digest": content_digest(PROMPT),
            "size": len(PROMPT),
            "annotations": {"org.opencontainers.image.title": "agent.yaml"},
        }
    ]
    assert manifest["annotations"] == PROVENANCE


def test_layout_is_a_valid_oci_image_layout_with_blobs_named_by_their_sha256(
    tmp_path: Path,
) -> None:
    root = tmp_path / "layout"
    layout = OciLayout(root)
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    recipe = layout.put(b"steps: []\n", YAML, "recipe", {}, "triage:v7")

    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    by_name = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}
    assert by_name["support-answer:v1"]["digest"] == stored.manifest_digest
    assert by_name["triage:v7"]["digest"] == recipe.manifest_digest
    assert by_name["triage:v7"]["artifactType"] == f"{ARTIFACT_TYPE_PREFIX}recipe.v1"
    for entry in index["manifests"]:
        manifest_path = root / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")
        assert entry["size"] == manifest_path.stat().st_size
        manifest = json.loads(manifest_path.read_bytes())
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob = root / "blobs" / "sha256" / descriptor["digest"].removeprefix("sha256:")
            assert blob.stat().st_size == descriptor["size"]
    blobs = sorted((root / "blobs" / "sha256").iterdir())
    assert len(blobs) == 5  # two contents, two manifests, one shared empty config
    for blob in blobs:
        assert _sha256_name(blob) == f"sha256:{blob.name}"
    assert layout.content(stored.manifest_digest) == PROMPT
    assert layout.manifest(stored.manifest_digest)["annotations"] == PROVENANCE


def test_edited_content_blob_in_the_layout_raises_corrupt_artifact_naming_the_blob(
    tmp_path: Path,
) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    blob = tmp_path / "layout" / "blobs" / "sha256" / stored.digest.removeprefix("sha256:")
    blob.write_bytes(PROMPT.replace(b"support", b"SUPPORT"))
    with pytest.raises(CorruptArtifact, match=stored.digest):
        layout.content(stored.manifest_digest)


def test_missing_version_in_the_layout_raises_artifact_missing(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    absent = content_digest(b"never stored")
    with pytest.raises(ArtifactMissing, match=absent):
        layout.content(absent)
    assert issubclass(ArtifactMissing, FileNotFoundError)


def test_push_then_pull_through_a_real_registry_returns_the_exact_bytes_and_digest(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    repo = repository("acme", "prompt", "support-answer")
    assert repo == "projects/acme/prompts/support-answer"

    pushed = push(layout, stored.manifest_digest, f"{registry.address}/{repo}:v1", insecure=True)
    assert pushed == stored.manifest_digest

    by_tag = pull(f"{registry.address}/{repo}:v1", expected_digest=stored.digest, insecure=True)
    by_digest = pull(
        f"{registry.address}/{repo}@{stored.manifest_digest}",
        expected_digest=stored.digest,
        insecure=True,
    )
    for manifest_bytes, content in (by_tag, by_digest):
        assert content == PROMPT
        assert manifest_bytes == layout.manifest_bytes(stored.manifest_digest)
        assert content_digest(manifest_bytes) == stored.manifest_digest

    # Pushing the same version again is a no-op that reports the same digest.
    assert push(layout, stored.manifest_digest, f"{registry.address}/{repo}:v1", insecure=True) == (
        stored.manifest_digest
    )


def test_pull_with_a_wrong_expected_digest_raises_corrupt_artifact_naming_both_digests(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v2")
    target = f"{registry.address}/{repository('acme', 'prompt', 'support-answer')}:v2"
    push(layout, stored.manifest_digest, target, insecure=True)
    wrong = content_digest(b"some other prompt")
    with pytest.raises(CorruptArtifact) as caught:
        pull(target, expected_digest=wrong, insecure=True)
    assert stored.digest in str(caught.value)
    assert wrong in str(caught.value)


def test_content_blob_tampered_in_registry_storage_is_detected_on_pull(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    content = b"steps:\n  - classify\n  - answer\n"
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(content, YAML, "recipe", PROVENANCE, "triage:v1")
    target = f"{registry.address}/{repository('acme', 'recipe', 'triage')}@{stored.manifest_digest}"
    push(layout, stored.manifest_digest, target, insecure=True)

    on_disk = registry.blob_path(stored.digest)
    assert on_disk.read_bytes() == content
    on_disk.write_bytes(content.replace(b"answer", b"ANSWER"))  # same size, other bytes

    with pytest.raises(CorruptArtifact) as caught:
        pull(target, expected_digest=stored.digest, insecure=True)
    assert stored.digest in str(caught.value)
    assert content_digest(on_disk.read_bytes()) in str(caught.value)


def test_manifest_tampered_in_registry_storage_is_detected_on_pull_by_digest(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v3")
    target = (
        f"{registry.address}/{repository('acme', 'prompt', 'support-answer')}"
        f"@{stored.manifest_digest}"
    )
    push(layout, stored.manifest_digest, target, insecure=True)

    on_disk = registry.blob_path(stored.manifest_digest)
    on_disk.write_bytes(on_disk.read_bytes().replace(b"acme", b"evil"))  # still valid JSON

    with pytest.raises(CorruptArtifact, match=stored.manifest_digest):
        pull(target, expected_digest=stored.digest, insecure=True)


def test_push_and_pull_with_basic_auth_against_an_htpasswd_registry(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    with registry_server(htpasswd=TEST_HTPASSWD) as locked:
        target = f"{locked.address}/{repository('acme', 'prompt', 'support-answer')}:v1"
        with pytest.raises(RegistryError, match="401"):
            push(layout, stored.manifest_digest, target, insecure=True)
        with pytest.raises(RegistryError, match="UNAUTHORIZED"):
            push(
                layout,
                stored.manifest_digest,
                target,
                insecure=True,
                username=TEST_USER,
                password="wrong",
            )
        credentials = {"username": TEST_USER, "password": TEST_PASSWORD}
        assert (
            push(layout, stored.manifest_digest, target, insecure=True, **credentials)
            == stored.manifest_digest
        )
        _, content = pull(target, expected_digest=stored.digest, insecure=True, **credentials)
        assert content == PROMPT


def test_pull_of_an_absent_tag_raises_artifact_missing(registry: RunningRegistry) -> None:
    target = f"{registry.address}/{repository('acme', 'prompt', 'never-pushed')}:v1"
    with pytest.raises(ArtifactMissing):
        pull(target, expected_digest=content_digest(PROMPT), insecure=True)


def test_repository_names_are_lowercase_oci_path_components() -> None:
    assert repository("acme-corp", "agent", "triage.v2") == "projects/acme-corp/agents/triage.v2"
    for bad in ("Acme", "a/b", "", "-x", "x_"):
        with pytest.raises(ValueError, match="repository path component"):
            repository(bad, "prompt", "p")


def test_unreachable_registry_raises_registry_error(
    tmp_path: Path,
) -> None:
    layout = OciLayout(tmp_path / "layout")
    stored = layout.put(PROMPT, YAML, "prompt", PROVENANCE, "support-answer:v1")
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        target = f"{address}/{repository('acme', 'prompt', 'support-answer')}:v1"
        with pytest.raises(RegistryError, match=address):
            push(layout, stored.manifest_digest, target, insecure=True)
        with pytest.raises(RegistryError, match=address):
            pull(target, expected_digest=stored.digest, insecure=True)


def test_concurrent_puts_from_threads_keep_every_version_in_the_index(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    layouts = [OciLayout(root) for _ in range(4)]  # several handles on one directory share a lock

    def put(n: int) -> str:
        body = PROMPT + f"# revision {n}\n".encode()
        return layouts[n % 4].put(body, YAML, "prompt", PROVENANCE, f"p:v{n}").manifest_digest

    with ThreadPoolExecutor(max_workers=16) as pool:
        digests = set(pool.map(put, range(64)))
    index = json.loads((root / "index.json").read_bytes())
    assert {entry["digest"] for entry in index["manifests"]} == digests
    assert len(index["manifests"]) == 64
