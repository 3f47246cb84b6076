"""Artifact traffic splits: which version of a prompt, agent or recipe a call gets.

RolloutService sets the splits; they travel beside the routing config (in-process through the
`SnapshotRegistry`, to remote data planes in `RouteConfigSnapshot.traffic_splits`) and a call
that names an artifact gets a version from them with one hash and a short scan, no I/O.

Stickiness: a key hashes to one of 10,000 buckets; the split's first share owns the lowest
buckets, the next share the following ones, and so on. The controller lists the candidate first,
so the same key gets the same version while the split stands, and raising the candidate's weight
only moves keys from the stable version to the candidate, never back.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.artifacts import (
    CompiledArtifact,
    compile_artifact,
    kind_of,
    recipe_placeholder,
)

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class VersionShare:
    """One version of an artifact and its share of the artifact's traffic."""

    version: str  # 'projects/{p}/artifacts/{a}/versions/{v}'
    weight_percent: int
    digest: str  # 'sha256:...'
    media_type: str
    content: bytes = b""  # prompt and agent versions; empty for recipes


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """How one artifact's traffic is split; the weights sum to 100."""

    artifact: str  # 'projects/{p}/artifacts/{a}'
    shares: tuple[VersionShare, ...]
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds: list[int] = []
        total = 0
        for share in self.shares:
            total += share.weight_percent * (BUCKETS // 100)
            bounds.append(total)
        object.__setattr__(self, "_bounds", tuple(bounds))

    def pick(self, key: str = "") -> VersionShare:
        """The version for a call with `key` (sticky), or at random for an empty key."""
        if key:
            digest = hashlib.blake2b(f"{self.artifact}\0{key}".encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest, "big") % BUCKETS
        else:
            bucket = random.randrange(BUCKETS)  # a traffic split, not a secret
        for share, bound in zip(self.shares, self._bounds, strict=True):
            if bucket < bound:
                return share
        return self.shares[-1]

    def share_of(self, version: str) -> int:
        return next((s.weight_percent for s in self.shares if s.version == version), 0)


@dataclass(frozen=True, slots=True)
class ProjectTraffic:
    """Every traffic split of one project at one revision (which increases with each change)."""

    project: str  # 'projects/{p}'
    revision: int
    splits: Mapping[str, TrafficSplit]  # by artifact name

    def split(self, artifact: str) -> TrafficSplit | None:
        return self.splits.get(artifact)


def traffic_version(revision: int) -> str:
    """The traffic part of a snapshot version: `t{revision}`."""
    return f"t{revision}"


def snapshot_version(config_version: str, traffic: ProjectTraffic | None) -> str:
    """A project's snapshot version (RouteConfig and RouteConfigSnapshot `snapshot_version`):
    the config's (`{revision}` or `{revision}.{global revision}`), then `~t{traffic revision}`
    when the project has traffic splits; just `t{traffic revision}` for a project with splits
    and no config of its own. Either part changing changes it. The one place that spells it."""
    if traffic is None:
        return config_version
    return joined_version(config_version, traffic.revision)


def joined_version(config_version: str, traffic_revision: int) -> str:
    """`snapshot_version` from its two parts (see there)."""
    if not config_version:
        return traffic_version(traffic_revision)
    return f"{config_version}~{traffic_version(traffic_revision)}"


def parse_snapshot_version(version: str) -> tuple[str, int | None]:
    """(the config part, the traffic revision or None) of a `snapshot_version`."""
    config, tilde, traffic = version.rpartition("~")
    if not tilde:
        config, traffic = ("", version) if _TRAFFIC.fullmatch(version) else (version, "")
    if not _TRAFFIC.fullmatch(traffic):
        return version, None
    return config, int(traffic[1:])


_TRAFFIC = re.compile(r"t[0-9]{1,18}")


def check_traffic(traffic: ProjectTraffic) -> None:
    """INVALID_ARGUMENT unless every split of `traffic` is the project's own artifact, its
    versions are that artifact's, and its weights (0 to 100) sum to 100: a split received over
    the wire must not serve one tenant's artifact to another."""
    violations = []
    for name, split in traffic.splits.items():
        where = f"traffic_splits[{name[:200]}]"
        if split.artifact != name or not name.startswith(f"{traffic.project}/artifacts/"):
            violations.append(FieldViolation(where, f"not an artifact of {traffic.project}"))
            continue
        if not split.shares:
            violations.append(FieldViolation(where, "no version"))
        if any(not 0 <= s.weight_percent <= 100 for s in split.shares) or (
            sum(s.weight_percent for s in split.shares) != 100
        ):
            violations.append(FieldViolation(where, "weights must be 0 to 100 and sum to 100"))
        for share in split.shares:
            if not share.version.startswith(f"{name}/versions/"):
                violations.append(
                    FieldViolation(where, f"{share.version[:200]} is not a version of {name}")
                )
    if violations:
        raise InvalidArgument(violations)


def compile_versions(
    traffic: ProjectTraffic, known: Mapping[tuple[str, str], CompiledArtifact]
) -> dict[tuple[str, str], CompiledArtifact]:
    """Compile each version `traffic` lists that `known` lacks, by (media type, digest)
    (CPU-bound: run it off the event loop). A recipe is held as a placeholder: its content stays
    with the control plane. The digest is checked against the content: compiled versions are
    shared by digest, so a wrong one must never make a call render another version's (or
    another tenant's) content. Raises InvalidArgument naming the version."""
    out: dict[tuple[str, str], CompiledArtifact] = {}
    for split in traffic.splits.values():
        for share in split.shares:
            key = (share.media_type, share.digest)
            if key in known or key in out:
                continue
            field_name = f"{share.version[:200]}.content"
            try:
                if kind_of(share.media_type) == "recipe":
                    out[key] = recipe_placeholder()
                    continue
                if content_digest(share.content) != share.digest:
                    raise InvalidArgument(
                        [FieldViolation(field_name, "does not match the version's digest")]
                    )
                out[key] = compile_artifact(share.media_type, share.content)
            except InvalidArgument as error:
                raise InvalidArgument(
                    [
                        FieldViolation(field_name, f"{v.field}: {v.description}")
                        if not v.field.startswith(share.version[:200])
                        else v
                        for v in error.violations
                    ]
                ) from None
    return out


def content_digest(content: bytes) -> str:
    """`sha256:<64 hex digits>` of a version's content (ArtifactVersion.digest)."""
    return f"sha256:{hashlib.sha256(content).hexdigest()}"
