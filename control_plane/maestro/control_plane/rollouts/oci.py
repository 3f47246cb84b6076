"""Artifact versions (prompt, agent and recipe versions) as OCI artifacts, content-addressed.

Why OCI: every registry a platform team already runs (Harbor, ECR, GHCR, Artifact Registry,
Distribution) stores them with its access control and replication; cosign signs and oras/crane
copy them without knowing Maestro; and Argo-style GitOps pins a version by manifest digest.

Each version is one OCI image manifest v1.1: `artifactType` `application/vnd.maestro.<kind>.v1`,
the empty config descriptor, one layer holding the content and the provenance annotations. The
manifest bytes are canonical JSON, so equal content and annotations give an equal digest. Locally
the versions live in an OCI image layout directory (`OciLayout`); `push` and `pull` move them to
and from a registry with oras-py, sending the layout's own manifest bytes so that the digest a
registry reports is the one recorded here.

Repository naming in a registry: `projects/<project>/<kind>s/<name>` (see `repository`), tagged
with the version label, e.g. `registry.example.com/projects/acme/prompts/support-answer:v3`;
pin by digest with `...support-answer@sha256:<hex>`.

Blocking I/O throughout: callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import oras.container  # type: ignore[import-untyped]
import oras.provider  # type: ignore[import-untyped]
import requests

ARTIFACT_TYPE_PREFIX = "application/vnd.maestro."
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONTENT = b"{}"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
TITLE_ANNOTATION = "org.opencontainers.image.title"
LAYOUT_VERSION = "1.0.0"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_KIND = re.compile(r"[a-z][a-z0-9-]*")
# The OCI distribution spec's repository-name grammar (one path component).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")


class CorruptArtifact(Exception):
    """Bytes whose sha256 (or size) is not the digest (or size) that names them."""


class ArtifactMissing(FileNotFoundError):
    """No blob or manifest with that digest (in the layout, or in the registry)."""


class RegistryError(Exception):
    """The registry refused a request or could not be reached."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    digest: str  # "sha256:<64 hex>" of the content
    manifest_digest: str  # "sha256:<64 hex>" of the OCI manifest JSON bytes
    size_bytes: int


def content_digest(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


def _check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


def repository(project: str, kind: str, name: str) -> str:
    """The registry repository of an artifact: `projects/<project>/<kind>s/<name>`.

    Every part must already be a valid lowercase OCI path component ([a-z0-9] separated by
    `.`, `_`, `__` or dashes); nothing is folded, so two artifacts never share a repository."""
    for part in (project, kind, name):
        if not _COMPONENT.fullmatch(part):
            raise ValueError(f"not a valid OCI repository path component: {part!r}")
    return f"projects/{project}/{kind}s/{name}"


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _title(kind: str, media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    if base.endswith(("yaml", "+yml", "/yml")):
        return f"{kind}.yaml"
    if base.endswith("json"):
        return f"{kind}.json"
    return f"{kind}.txt"


def _empty_descriptor() -> dict[str, Any]:
    return {
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": content_digest(EMPTY_CONTENT),
        "size": len(EMPTY_CONTENT),
    }


def build_manifest(
    content: bytes, media_type: str, kind: str, annotations: Mapping[str, str]
) -> bytes:
    """The OCI image manifest (v1.1 artifact form) of one version, as canonical JSON bytes."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"artifact kind must match [a-z][a-z0-9-]*: {kind!r}")
    if not media_type:
        raise ValueError("media_type is required")
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": f"{ARTIFACT_TYPE_PREFIX}{kind}.v1",
        "config": _empty_descriptor(),
        "layers": [
            {
                "mediaType": media_type,
                "digest": content_digest(content),
                "size": len(content),
                "annotations": {TITLE_ANNOTATION: _title(kind, media_type)},
            }
        ],
    }
    if annotations:
        manifest["annotations"] = {str(k): str(v) for k, v in annotations.items()}
    return _canonical(manifest)


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A manifest of one version, structurally checked (one layer, well-formed digests)."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise CorruptArtifact(f"manifest {where} is not JSON: {exc}") from exc
    try:
        ok = (
            isinstance(manifest, dict)
            and manifest.get("schemaVersion") == 2
            and manifest.get("mediaType") == MANIFEST_MEDIA_TYPE
            and isinstance(manifest["layers"], list)
            and len(manifest["layers"]) == 1
            and _DIGEST.fullmatch(manifest["layers"][0]["digest"]) is not None
            and isinstance(manifest["layers"][0]["size"], int)
            and _DIGEST.fullmatch(manifest["config"]["digest"]) is not None
            and isinstance(manifest["config"]["size"], int)
        )
    except (KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise CorruptArtifact(f"manifest {where} is not a one-layer OCI image manifest")
    return cast(dict[str, Any], manifest)


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(root: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(root, threading.Lock())


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class OciLayout:
    """An OCI image layout directory (oci-layout, index.json, blobs/sha256/...) holding every
    version.

    `index.json` lists each stored manifest once per ref name
    (`org.opencontainers.image.ref.name`); putting a different manifest under a ref name that
    is already there moves that name, and the old manifest stays readable by digest. Writers in
    one process serialise on a lock per directory; every file is replaced atomically.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._blobs = self.root / "blobs" / "sha256"
        self._lock = _lock_for(self.root)
        with self._lock:
            self._blobs.mkdir(parents=True, exist_ok=True)
            if not (self.root / "oci-layout").exists():
                _write_atomically(
                    self.root / "oci-layout", _canonical({"imageLayoutVersion": LAYOUT_VERSION})
                )
            if not (self.root / "index.json").exists():
                _write_atomically(self.root / "index.json", _canonical(self._empty_index()))

    @staticmethod
    def _empty_index() -> dict[str, Any]:
        return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}

    def blob_path(self, digest: str) -> Path:
        return self._blobs / _check_digest(digest).removeprefix("sha256:")

    def _write_blob(self, data: bytes) -> str:
        digest = content_digest(data)
        path = self.blob_path(digest)
        if path.exists():
            try:
                self._read_blob(digest, len(data), "existing")
                return digest
            except CorruptArtifact:
                pass  # rewrite a damaged copy with the right bytes
        _write_atomically(path, data)
        return digest

    def _read_blob(self, digest: str, size: int | None, what: str) -> bytes:
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"{what} blob {digest} is not in {self.root}") from exc
        actual = content_digest(data)
        if actual != digest:
            raise CorruptArtifact(f"{what} blob {digest} ({path}) holds bytes hashing to {actual}")
        if size is not None and len(data) != size:
            raise CorruptArtifact(
                f"{what} blob {digest} ({path}) is {len(data)} bytes, its descriptor says {size}"
            )
        return data

    def _index(self) -> dict[str, Any]:
        try:
            index = json.loads((self.root / "index.json").read_bytes())
        except FileNotFoundError:
            return self._empty_index()
        except ValueError as exc:
            raise CorruptArtifact(f"{self.root / 'index.json'} is not JSON: {exc}") from exc
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise CorruptArtifact(f"{self.root / 'index.json'} is not an OCI image index")
        return cast(dict[str, Any], index)

    def put(
        self,
        content: bytes,
        media_type: str,
        kind: str,
        annotations: Mapping[str, str],
        ref_name: str,
    ) -> StoredVersion:
        """Store one version (content, empty config, manifest) and name it in index.json."""
        manifest = build_manifest(content, media_type, kind, annotations)
        descriptor = {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": f"{ARTIFACT_TYPE_PREFIX}{kind}.v1",
            "digest": content_digest(manifest),
            "size": len(manifest),
            "annotations": {REF_NAME_ANNOTATION: ref_name},
        }
        with self._lock:
            digest = self._write_blob(content)
            self._write_blob(EMPTY_CONTENT)
            manifest_digest = self._write_blob(manifest)
            index = self._index()
            entries: list[Any] = index["manifests"]
            if descriptor not in entries:
                index["manifests"] = [
                    entry
                    for entry in entries
                    if not (
                        isinstance(entry, dict)
                        and entry.get("annotations", {}).get(REF_NAME_ANNOTATION) == ref_name
                    )
                ] + [descriptor]
                _write_atomically(self.root / "index.json", _canonical(index))
        return StoredVersion(
            digest=digest, manifest_digest=manifest_digest, size_bytes=len(content)
        )

    def manifest_bytes(self, manifest_digest: str) -> bytes:
        """The manifest's exact bytes, verified against its digest."""
        return self._read_blob(manifest_digest, None, "manifest")

    def manifest(self, manifest_digest: str) -> dict[str, Any]:
        return _parse_manifest(self.manifest_bytes(manifest_digest), manifest_digest)

    def content(self, manifest_digest: str) -> bytes:
        """The version's content, with the manifest's and the content's digests and sizes
        verified."""
        layer = self.manifest(manifest_digest)["layers"][0]
        return self._read_blob(layer["digest"], layer["size"], "content")


class _Registry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's registry client without its retry loop: `Registry.do_request` sleeps
    2 + 3**n seconds between five tries on any error (over two minutes for a registry that is
    down); a control-plane call should fail fast and let its caller decide."""

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        try:
            response: requests.Response = oras.provider.Registry.do_request.__wrapped__(
                self, url, method, data=data, headers=headers, json=json, stream=stream
            )
        except requests.RequestException as exc:
            raise RegistryError(f"{method} {url}: {exc}") from exc
        except ValueError as exc:  # oras: "Cannot respond to request for authentication."
            raise RegistryError(f"{method} {url}: {exc}") from exc
        return response


def _client(container: Any, insecure: bool, username: str, password: str) -> _Registry:
    """An oras registry client for the target's registry, with the auth it asks for.

    oras-py's default "token" backend follows Bearer challenges (anonymous, or with the given
    credentials, or with those of ~/.docker/config.json when none are given) but mistakes a
    Basic challenge's realm (htpasswd registries) for a token URL; so `/v2/` is probed first and
    a Basic challenge gets oras's "basic" backend, which sends the credentials on every retry."""
    scheme = "http" if insecure else "https"
    try:
        probe = requests.get(f"{scheme}://{container.registry}/v2/", timeout=30)
    except requests.RequestException as exc:
        raise RegistryError(f"GET {scheme}://{container.registry}/v2/: {exc}") from exc
    basic = probe.status_code == 401 and probe.headers.get(
        "Www-Authenticate", ""
    ).lower().startswith("basic")
    registry = _Registry(
        hostname=container.registry, insecure=insecure, auth_backend="basic" if basic else "token"
    )
    if username:
        registry.auth.set_basic_auth(username, password)
    else:
        registry.auth.load_configs(container)
        if basic and not getattr(registry.auth, "_basic_auth", None):
            raise RegistryError(
                f"{container.registry} answered 401 with a Basic challenge and no credentials "
                "were given"
            )
    return registry


def _expect(response: requests.Response, what: str, codes: tuple[int, ...]) -> None:
    if response.status_code == 404:
        raise ArtifactMissing(f"{what}: the registry answered 404: {response.text[:500]}")
    if response.status_code not in codes:
        raise RegistryError(
            f"{what}: the registry answered {response.status_code}: {response.text[:500]}"
        )


def push(
    layout: OciLayout,
    manifest_digest: str,
    target: str,
    *,
    insecure: bool = False,
    username: str = "",
    password: str = "",
) -> str:
    """Push one stored version (its blobs, then its manifest bytes unchanged) to `target`
    (`host[:port]/repository:tag` or `...@sha256:<hex>`); the registry's digest of the manifest,
    which is `manifest_digest`. `insecure` means plain HTTP."""
    manifest_bytes = layout.manifest_bytes(manifest_digest)
    manifest = _parse_manifest(manifest_bytes, manifest_digest)
    layout.content(manifest_digest)  # every blob verified before any leaves
    container = oras.container.Container(target)
    registry = _client(container, insecure, username, password)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        what = f"upload of blob {descriptor['digest']} to {target}"
        try:
            response = registry.upload_blob(
                str(layout.blob_path(descriptor["digest"])), container, dict(descriptor)
            )
        except ValueError as exc:  # oras: no upload session (e.g. 401 on the POST)
            raise RegistryError(f"{what}: {exc}") from exc
        _expect(response, what, (200, 201, 202))
    url = f"{registry.prefix}://{container.manifest_url()}"
    response = registry.do_request(
        url, "PUT", data=manifest_bytes, headers={"Content-Type": MANIFEST_MEDIA_TYPE}
    )
    _expect(response, f"upload of manifest {manifest_digest} to {target}", (200, 201))
    pushed = response.headers.get("Docker-Content-Digest")
    if not pushed:  # the header is optional in the OCI distribution spec: hash what it serves
        served = registry.do_request(url, "GET", headers={"Accept": MANIFEST_MEDIA_TYPE})
        _expect(served, f"manifest {target}", (200,))
        pushed = content_digest(served.content)
    if pushed != manifest_digest:
        raise CorruptArtifact(f"registry stored manifest {manifest_digest} at {target} as {pushed}")
    return str(pushed)


def pull(
    target: str,
    *,
    expected_digest: str,
    insecure: bool = False,
    username: str = "",
    password: str = "",
) -> tuple[bytes, bytes]:
    """Fetch a version's manifest and content from `target`: (manifest bytes, content).

    The manifest's sha256 must be the target's digest when the target names one, its one layer
    must be `expected_digest` (the version's content digest), and the content's sha256 must be
    `expected_digest`; otherwise `CorruptArtifact`, naming the digests."""
    _check_digest(expected_digest)
    container = oras.container.Container(target)
    registry = _client(container, insecure, username, password)
    response = registry.do_request(
        f"{registry.prefix}://{container.manifest_url()}",
        "GET",
        headers={"Accept": MANIFEST_MEDIA_TYPE},
    )
    _expect(response, f"manifest {target}", (200,))
    manifest_bytes = bytes(response.content)
    if container.digest:
        actual = content_digest(manifest_bytes)
        if actual != container.digest:
            raise CorruptArtifact(
                f"manifest {target}: the registry sent bytes hashing to {actual}, "
                f"not {container.digest}"
            )
    layer = _parse_manifest(manifest_bytes, target)["layers"][0]
    if layer["digest"] != expected_digest:
        raise CorruptArtifact(
            f"manifest {target} has content {layer['digest']}, expected {expected_digest}"
        )
    blob = registry.get_blob(container, expected_digest)
    _expect(blob, f"content blob {expected_digest} of {target}", (200,))
    content = bytes(blob.content)
    actual = content_digest(content)
    if actual != expected_digest:
        raise CorruptArtifact(
            f"content blob {expected_digest} of {target}: the registry sent bytes hashing to "
            f"{actual}, expected {expected_digest}"
        )
    if len(content) != layer["size"]:
        raise CorruptArtifact(
            f"content blob {expected_digest} of {target} is {len(content)} bytes, "
            f"its descriptor says {layer['size']}"
        )
    return manifest_bytes, content
