"""Mirroring artifact versions to an OCI registry, off the request path.

`CreateArtifactVersion` writes the version to the server's OCI layout and commits it; then the
service hands the record to `RegistryMirror.submit`, which only queues it. One worker task pushes
the queued versions in order (`oci.push` in a worker thread: its blobs, then the layout's exact
manifest bytes, so the registry's digest is the recorded one), retrying a registry that refuses
or cannot be reached with exponential backoff for a bounded number of attempts, and logs
`rollouts.mirror_pushed` or `rollouts.mirror_failed`.

Each version goes to `{address}/projects/<project>/<kind>s/<artifact>:<version id>` (see
`oci.repository`). `pull_version` fetches one back pinned by its manifest digest and verifies
both digests, so what a consumer reads is byte for byte what was created.

The queue lives in memory: a version created just before the process stops, or one whose
attempts ran out, is not pushed again by this class (a later `submit` of the same record is).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from maestro.control_plane.config import RegistryConfig
from maestro.control_plane.rollouts import oci
from maestro.control_plane.rollouts.oci import OciLayout, RegistryError
from maestro.control_plane.rollouts.records import VersionRecord

log = structlog.get_logger(__name__)

DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 60.0
DEFAULT_MAX_PENDING = 10_000


def target_of(address: str, version: VersionRecord, *, by_digest: bool = False) -> str:
    """Where `version` lives in the registry at `address`: tagged with its version id, or
    pinned by its manifest digest."""
    repo = oci.repository(version.project, version.kind.label, version.artifact_id)
    if by_digest:
        return f"{address}/{repo}@{version.manifest_digest}"
    return f"{address}/{repo}:{version.version_id}"


@dataclass(frozen=True, slots=True)
class MirrorStats:
    pending: int  # queued, not yet taken by the worker
    attempts: int  # pushes tried, retries included
    pushed: int  # versions pushed
    failed: int  # versions given up on
    dropped: int  # versions never queued: the queue was full


class RegistryMirror:
    """Pushes every submitted version to one registry, one at a time, in submission order.

    `password_env` names the environment variable holding the password (read at each push, so
    a rotated secret is picked up); it must be set when the mirror is made. Only a
    `RegistryError` (the registry refused, or could not be reached) is retried: a version
    missing from or damaged in the local layout fails at once.
    """

    def __init__(
        self,
        layout: OciLayout,
        address: str,
        *,
        insecure: bool = False,
        username: str = "",
        password_env: str = "",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not address:
            raise ValueError("a registry mirror needs the registry's address (host:port)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if password_env and password_env not in os.environ:
            raise ValueError(
                f"rollouts.registry.password_env names {password_env}, which is not set"
            )
        self.layout = layout
        self.address = address.rstrip("/")
        self.insecure = insecure
        self.username = username
        self.password_env = password_env
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[VersionRecord] = asyncio.Queue(max_pending)
        self._worker: asyncio.Task[None] | None = None
        self._attempts = 0
        self._pushed = 0
        self._failed = 0
        self._dropped = 0

    @classmethod
    def from_config(cls, layout: OciLayout, config: RegistryConfig) -> RegistryMirror | None:
        """The mirror `rollouts.registry` asks for; None when it names no registry."""
        if not config.address:
            return None
        return cls(
            layout,
            config.address,
            insecure=config.insecure,
            username=config.username,
            password_env=config.password_env,
        )

    @property
    def stats(self) -> MirrorStats:
        return MirrorStats(
            self._queue.qsize(), self._attempts, self._pushed, self._failed, self._dropped
        )

    def target(self, version: VersionRecord) -> str:
        return target_of(self.address, version)

    def submit(self, version: VersionRecord) -> None:
        """Queue a committed version for pushing; never waits. Call it on the event loop's
        thread. A full queue drops the new version (logged as `rollouts.mirror_failed`)."""
        try:
            self._queue.put_nowait(version)
        except asyncio.QueueFull:
            self._dropped += 1
            log.error(
                "rollouts.mirror_failed",
                version=version.name,
                error=f"the mirror queue is full ({self._queue.maxsize} versions waiting)",
            )

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="rollouts-registry-mirror")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let the worker finish what is queued for up to `grace_s`, then cancel it."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace_s)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if self._queue.qsize():
            log.warning("rollouts.mirror_stopped", unpushed=self._queue.qsize())

    async def drain(self) -> None:
        """Wait until every version queued so far was pushed or given up on."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            version = await self._queue.get()
            try:
                await self.push(version)
            except Exception as exc:  # logged; the worker goes on with the next version
                self._failed += 1
                log.error(
                    "rollouts.mirror_failed",
                    version=version.name,
                    target=self._safe_target(version),
                    manifest_digest=version.manifest_digest,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                self._pushed += 1
            finally:
                self._queue.task_done()

    def _safe_target(self, version: VersionRecord) -> str:
        try:
            return self.target(version)
        except ValueError:
            return ""

    async def push(self, version: VersionRecord) -> str:
        """Push one version now, retried; the registry's manifest digest. Raises what the last
        attempt raised."""
        if not version.manifest_digest:
            raise ValueError(f"version {version.name} has no manifest digest (no OCI layout)")
        target = self.target(version)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "rollouts.mirror_retrying",
                version=version.name,
                target=target,
                attempt=state.attempt_number,
                of=self.max_attempts,
                error=str(error),
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
            + wait_random(0, self.backoff_s),
            retry=retry_if_exception_type(RegistryError),
            before_sleep=before_sleep,
            reraise=True,
        )
        pushed = ""
        async for attempt in retrying:
            with attempt:
                self._attempts += 1
                pushed = await asyncio.to_thread(
                    oci.push,
                    self.layout,
                    version.manifest_digest,
                    target,
                    insecure=self.insecure,
                    username=self.username,
                    password=os.environ[self.password_env] if self.password_env else "",
                )
        log.info(
            "rollouts.mirror_pushed",
            version=version.name,
            target=target,
            manifest_digest=pushed,
            attempts=attempt.retry_state.attempt_number,
        )
        return pushed


def pull_version(
    address: str,
    record: VersionRecord,
    insecure: bool = False,
    *,
    username: str = "",
    password: str = "",
) -> bytes:
    """A version's content from the registry at `address`, pinned by its manifest digest (by
    its tag when the record has none): the manifest's sha256 must be the record's manifest
    digest, its layer the record's content digest, and the content's sha256 that digest, else
    `oci.CorruptArtifact` naming the digests. Blocking: call it in a worker thread."""
    target = target_of(address.rstrip("/"), record, by_digest=bool(record.manifest_digest))
    _, content = oci.pull(
        target,
        expected_digest=record.digest,
        insecure=insecure,
        username=username,
        password=password,
    )
    return content


__all__ = ["MirrorStats", "RegistryMirror", "pull_version", "target_of"]
