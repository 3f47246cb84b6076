"""RolloutService logic: artifact versions, rollouts and their verbs, the audit trail. No grpc.

Every verb is a transition (transitions.py) applied in one store transaction; when the traffic
splits changed, the project's new splits are published to the snapshot registry before the call
returns, so an abort has taken traffic off the candidate by the time the caller hears back.
The controller (controller.py) drives the steps; the verbs wake it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from maestro.control_plane.rollouts import transitions as t
from maestro.control_plane.rollouts.audit import ChainProblem, verify_chain
from maestro.control_plane.rollouts.freeze import FreezeCalendar
from maestro.control_plane.rollouts.records import (
    ENDED,
    RETRYABLE,
    Action,
    Approval,
    ArtifactRecord,
    AuditEvent,
    Hold,
    Kind,
    RolloutRecord,
    RolloutSpec,
    State,
    VersionRecord,
)
from maestro.control_plane.rollouts.store import RolloutStore
from maestro.control_plane.rollouts.strategy import strategy_violations
from maestro.control_plane.store.sql import Tx
from maestro.core import paging
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
)
from maestro.routing.traffic import ProjectTraffic, TrafficSplit, VersionShare

log = structlog.get_logger(__name__)
MAX_CONTENT_BYTES = 4 * 1024 * 1024
MAX_REASON = 2000
RENDERED_KINDS = (Kind.PROMPT, Kind.AGENT)
"""Kinds the data plane renders, so their content travels in the traffic splits."""


class ContentCheck(Protocol):
    def __call__(self, kind: Kind, media_type: str, content: bytes) -> str:
        """Raise InvalidArgument (field `content`) unless `content` parses as `kind`; return
        its autonomy level (`L1`..`L4`, or "" where the kind has none)."""


class VersionBlobs(Protocol):
    def manifest_digest(self, version: VersionRecord, content: bytes) -> str:
        """The digest the version's OCI manifest will have (pure: no I/O)."""

    def write(self, version: VersionRecord, content: bytes) -> None:
        """Write the version's blobs and index entry (blocking I/O)."""


class VersionMirror(Protocol):
    def submit(self, version: VersionRecord) -> None:
        """Queue a new version for the registry; never waits."""


class Controller(Protocol):
    def wake(self, project: str, rollout_id: str) -> None: ...
    def cancel_analysis(self, project: str, rollout_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class VersionView:
    record: VersionRecord
    stable: bool
    weight: int
    content: bytes = b""
    eval_runs: tuple[str, ...] = ()
    """Eval runs whose target is this version, newest first (GetArtifactVersion only)."""


class RolloutService:
    def __init__(
        self,
        store: RolloutStore,
        publish: Callable[[ProjectTraffic], Awaitable[object]],
        check_content: ContentCheck,
        freeze: FreezeCalendar,
        blobs: VersionBlobs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`publish` puts a project's splits in the snapshot registry; `blobs` keeps each
        version's OCI layout."""
        self.store = store
        self._publish = publish
        self._check_content = check_content
        self.freeze = freeze
        self._blobs = blobs
        self.clock = clock
        self.controller: Controller | None = None
        self.mirror: VersionMirror | None = None
        """Pushes each new version to the OCI registry, off the request path."""
        self.listeners: list[Callable[[RolloutRecord, list[AuditEvent]], None]] = []
        """Told of each committed change and its events, after the traffic is published; they
        must not block (notifications queue and deliver elsewhere)."""
        self.eval_runs_of: Callable[[str, str], Awaitable[tuple[str, ...]]] | None = None
        """(project id, version name) -> eval runs whose target is the version, newest first, at
        most 50; set by the wiring when EvalService runs beside."""
        self.kill_switch: Callable[[str], Awaitable[str]] | None = None
        """The kill switch in effect for a project id ("" when none): an engaged one refuses
        starting, resuming, retrying and promoting (GraphService's, set by the wiring)."""
        self.current_traffic: Callable[[str], ProjectTraffic | None] = lambda _: None
        """The splits the data plane serves now (the registry's), for versions' weights."""
        self.changes = asyncio.Condition()
        """Notified after every change of any rollout (WatchRollout waits on it)."""
        self.generation = 0
        """Counts those changes."""

    async def _changed(self) -> None:
        async with self.changes:
            self.generation += 1
            self.changes.notify_all()

    # -- traffic --------------------------------------------------------------------------------

    async def publish_traffic(self, project: str) -> ProjectTraffic:
        """Read the project's splits as stored and publish them (at start, after a change, and
        when a replica says they changed)."""
        revision, splits, versions = await self.store.aio(self.store.traffic, project)
        name = f"projects/{project}"
        traffic = ProjectTraffic(
            name,
            revision,
            {
                f"{name}/artifacts/{artifact_id}": TrafficSplit(
                    f"{name}/artifacts/{artifact_id}",
                    tuple(
                        _share(name, artifact_id, version_id, weight, versions)
                        for version_id, weight in shares
                    ),
                )
                for artifact_id, shares in splits.items()
            },
        )
        await self._publish(traffic)
        return traffic

    async def publish_all(self) -> None:
        """Publish every project's splits (at start): one project's that cannot be published
        (a stored version its data plane refuses) is logged, and the others still are."""
        for project in await self.store.aio(self.store.projects_with_traffic):
            try:
                await self.publish_traffic(project)
            except MaestroError:
                log.exception("rollouts.publish_failed", project=project)

    # -- versions -------------------------------------------------------------------------------

    async def create_version(
        self,
        principal: Principal,
        project: str,
        artifact_id: str,
        version: VersionRecord,
        content: bytes,
        request_id: str,
    ) -> VersionRecord:
        require_project(principal, project)
        if len(content) > MAX_CONTENT_BYTES:
            raise InvalidArgument([FieldViolation("content", "at most 4 MiB")])
        if not content:
            raise InvalidArgument(
                [FieldViolation("content", "exactly one of content_bytes and content_text")]
            )
        await asyncio.to_thread(self._check_content, version.kind, version.media_type, content)
        try:
            text = content.decode()
        except UnicodeDecodeError:
            raise InvalidArgument([FieldViolation("content", "must be UTF-8 text")]) from None
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        record = replace(
            version,
            project=project,
            artifact_id=artifact_id,
            digest=digest,
            size_bytes=len(content),
            create_time=self.clock(),
            provenance=replace(
                version.provenance,
                creator=principal.api_key or principal.who,
                provenance_id=f"prov-{digest[7:23]}",
            ),
        )
        blobs = self._blobs

        def with_manifest(r: VersionRecord) -> VersionRecord:
            if blobs is None:
                return r
            return replace(r, manifest_digest=blobs.manifest_digest(r, content))

        stored = await self.store.aio(
            self.store.create_version, record, text, request_id, with_manifest
        )
        if blobs is not None:
            try:
                await asyncio.to_thread(blobs.write, stored, content)
            except OSError:  # the version stands (the database is the record); say so loudly
                log.exception("rollouts.layout_write_failed", version=stored.name)
        if self.mirror is not None:
            self.mirror.submit(stored)
        log.info("rollouts.version_created", version=stored.name, digest=stored.digest)
        return stored

    async def get_version(
        self, principal: Principal, project: str, artifact_id: str, version_id: str, content: bool
    ) -> VersionView:
        require_project(principal, project)
        record = await self.store.aio(self.store.get_version, project, artifact_id, version_id)
        body = b""
        if content:
            text = await self.store.aio(
                self.store.version_content, project, artifact_id, version_id
            )
            body = text.encode()
        view = await self._view(record, body)
        if self.eval_runs_of is not None:
            view = replace(view, eval_runs=await self.eval_runs_of(project, record.name))
        return view

    async def _view(
        self,
        record: VersionRecord,
        content: bytes = b"",
        artifacts: dict[str, ArtifactRecord | None] | None = None,
    ) -> VersionView:
        """A version with its stable flag and weight; `artifacts` caches the artifacts read,
        so a page of versions reads each artifact once."""
        known = {} if artifacts is None else artifacts
        if record.artifact_id not in known:
            known[record.artifact_id] = await self.store.aio(
                self.store.artifact, record.project, record.artifact_id
            )
        artifact = known[record.artifact_id]
        stable = artifact is not None and artifact.stable_version == record.version_id
        return VersionView(record, stable, self._weight_of(record), content)

    def _weight_of(self, record: VersionRecord) -> int:
        traffic = self._current_traffic(record.project)
        split = traffic.split(record.artifact) if traffic is not None else None
        return split.share_of(record.name) if split is not None else 0

    def _current_traffic(self, project: str) -> ProjectTraffic | None:
        return self.current_traffic(f"projects/{project}")

    async def list_versions(
        self,
        principal: Principal,
        project: str,
        artifact_id: str | None,
        size: int,
        token: str,
        filter_text: str,
    ) -> paging.Page[VersionView]:
        require_project(principal, project)
        where: dict[str, Any] = {}
        stable_filter: bool | None = None
        commit: str | None = None
        for field, value in paging.parse_filter(
            filter_text,
            {
                "kind": frozenset(k.name for k in Kind),
                "digest": paging.STRING,
                "stable": paging.BOOL,
                "provenance.source_commit": paging.STRING,
            },
        ):
            if field == "stable":
                stable_filter = bool(value)
            elif field == "provenance.source_commit":
                commit = str(value)
            elif field == "kind":
                where["kind"] = int(Kind[str(value)])
            else:
                where[field] = value
        limit = paging.page_size(size)
        scope = f"versions:{project}:{artifact_id}:{filter_text}"
        after = paging.decode_token(token, scope)
        views: list[VersionView] = []
        artifacts: dict[str, ArtifactRecord | None] = {}
        cursor = after
        while len(views) <= limit:
            rows = await self.store.aio(
                self.store.list_versions, project, artifact_id, cursor, limit + 1, where
            )
            for row in rows:
                view = await self._view(row, artifacts=artifacts)
                if stable_filter is not None and view.stable != stable_filter:
                    continue
                if commit is not None and row.provenance.source_commit != commit:
                    continue
                views.append(view)
            if len(rows) <= limit:
                break
            last = rows[-1]
            cursor = [last.create_time, last.artifact_id, last.seq]
        return paging.page_of(
            views,
            limit,
            scope,
            lambda v: [v.record.create_time, v.record.artifact_id, v.record.seq],
        )

    # -- rollouts -------------------------------------------------------------------------------

    async def create_rollout(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        spec: RolloutSpec,
        request_id: str,
        validate_only: bool,
    ) -> RolloutRecord:
        require_project(principal, project)
        violations = strategy_violations(
            spec.strategy, project, "rollout.strategy", automated=spec.automated
        )
        if not 0 <= spec.rollback_revisions <= 10:
            violations.append(FieldViolation("rollout.rollback_window.revisions", "0 to 10"))
        if spec.stable_version == spec.candidate_version:
            violations.append(
                FieldViolation("rollout.candidate_version", "must differ from stable_version")
            )
        if violations:
            raise InvalidArgument(violations)
        candidate = await self.store.aio(
            self.store.get_version, project, spec.artifact_id, spec.candidate_version
        )
        await self.store.aio(self.store.get_version, project, spec.artifact_id, spec.stable_version)
        content = await self.store.aio(
            self.store.version_content, project, spec.artifact_id, spec.candidate_version
        )
        await self._refuse_when_stopped(project, self.clock(), "start a rollout")
        level = await asyncio.to_thread(
            self._check_content, candidate.kind, candidate.media_type, content.encode()
        )
        now = self.clock()
        spec = replace(
            spec,
            creator=principal.who,
            required_approvals=2 if _needs_dual_control(level) else 0,
        )
        record = RolloutRecord(
            project,
            rollout_id or f"r-{uuid.uuid4().hex[:12]}",
            spec,
            State.PROGRESSING,
            "",
            0,
            0,
            None,
            (),
            "",
            1,
            now,
            now,
        )

        def check(artifact: ArtifactRecord, live: RolloutRecord | None) -> None:
            if live is not None:
                raise FailedPrecondition(
                    f"rollout {live.name} of {record.artifact} has not ended ({live.state.name})",
                    reason="ROLLOUT_IN_PROGRESS",
                )
            if artifact.stable_version and artifact.stable_version != spec.stable_version:
                raise FailedPrecondition(
                    f"the stable version of {record.artifact} is "
                    f"{record.version_name(artifact.stable_version)}, not "
                    f"{record.version_name(spec.stable_version)}",
                    reason="STABLE_VERSION_MISMATCH",
                )

        def events(r: RolloutRecord, artifact: ArtifactRecord) -> list[AuditEvent]:
            fast = spec.candidate_version in artifact.earlier_stable[: spec.rollback_revisions]
            reason = spec.description
            if fast:
                reason = (
                    f"rollbackWindow: {record.version_name(spec.candidate_version)} was stable "
                    "recently, so it goes to 100% without steps"
                )
            created = t.event(r, r, Action.CREATED, principal.who, candidate.digest, reason=reason)
            return [replace(created, request_id=request_id)]

        if validate_only:  # the same checks as a real start, nothing written
            artifact = await self.store.aio(self.store.artifact, project, spec.artifact_id)
            if artifact is None:
                raise NotFound(f"artifact {record.artifact} not found", reason="ARTIFACT_NOT_FOUND")
            check(artifact, await self.store.aio(self.store.live_of, project, spec.artifact_id))
            return record
        result = await self.store.aio(self.store.create_rollout, record, request_id, events, check)
        if isinstance(result, RolloutRecord):
            return result  # a retried request
        created, _ = result
        artifact = await self.store.aio(self.store.artifact, project, spec.artifact_id)
        if (
            artifact is not None
            and spec.candidate_version in artifact.earlier_stable[: spec.rollback_revisions]
        ):
            created = await self._fast_rollback(created)
        await self.publish_traffic(project)
        await self._changed()
        self._tell(
            created,
            [t.event(created, created, Action.CREATED, principal.who, candidate.digest)],
        )
        self._wake(created)
        return created

    async def _fast_rollback(self, r: RolloutRecord) -> RolloutRecord:
        """Argo's rollbackWindow: skip the steps; the controller promotes at once (dual
        control and freeze windows still apply)."""

        def skip(current: RolloutRecord, artifact: ArtifactRecord, tx: Tx) -> t.Change:
            after = t.bump(current, self.clock(), step_index=len(current.spec.strategy.steps))
            return after, []

        changed, _ = await self.store.aio(self.store.change_rollout, r.project, r.rollout_id, skip)
        return changed

    async def get_rollout(
        self, principal: Principal, project: str, rollout_id: str
    ) -> RolloutRecord:
        require_project(principal, project)
        return await self.store.aio(self.store.get_rollout, project, rollout_id)

    async def list_rollouts(
        self,
        principal: Principal,
        project: str,
        size: int,
        token: str,
        filter_text: str,
        order_by: str,
    ) -> paging.Page[RolloutRecord]:
        require_project(principal, project)
        order = " ".join(order_by.split()) or "create_time desc"
        if order not in ("create_time desc", "create_time", "update_time desc"):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "order_by", "one of 'create_time desc', 'create_time', 'update_time desc'"
                    )
                ]
            )
        where: dict[str, Any] = {}
        for field, value in paging.parse_filter(
            filter_text,
            {
                "artifact": paging.STRING,
                "state": frozenset(x.name for x in State),
                "stable_version": paging.STRING,
                "candidate_version": paging.STRING,
            },
        ):
            if field == "artifact":
                where["artifact_id"] = str(value).rpartition("/")[2]
            elif field in ("stable_version", "candidate_version"):
                # `projects/{p}/artifacts/{a}/versions/{v}`: the artifact and the version id
                artifact, _, version = str(value).partition("/versions/")
                where[field] = version
                where["artifact_id"] = artifact.rpartition("/")[2]
            else:
                where["state"] = int(State[str(value)])
        limit = paging.page_size(size)
        scope = f"rollouts:{project}:{filter_text}:{order}"
        after = paging.decode_token(token, scope)
        column = order.split()[0]
        rows = await self.store.aio(
            self.store.list_rollouts, project, after, limit + 1, where, order
        )
        return paging.page_of(rows, limit, scope, lambda r: [getattr(r, column), r.rollout_id])

    # -- verbs ----------------------------------------------------------------------------------

    async def _change(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        change: Callable[[RolloutRecord, ArtifactRecord, str], t.Change | None],
        request_id: str = "",
        *,
        exclusive: bool = False,
    ) -> RolloutRecord:
        """Apply a verb's transition. A retried call (a `request_id` already in the rollout's
        audit log) changes nothing and returns the rollout as it stands: a retried promotion
        never skips a second step."""
        require_project(principal, project)

        def apply(current: RolloutRecord, artifact: ArtifactRecord, tx: Tx) -> t.Change | None:
            if request_id and self.store.request_seen(tx, current, request_id):
                return None  # a retried call: done already, checked in the same transaction
            if exclusive:  # the rollout goes live again: no other of its artifact may be
                other = self.store.other_rollout(tx, current)
                if other is not None:
                    raise FailedPrecondition(
                        f"rollout {other} of {current.artifact} started since",
                        reason="NEWER_ROLLOUT",
                    )
            if etag and etag != current.etag:
                raise Aborted(
                    f"rollout {current.name} changed since it was read (etag {current.etag})",
                    reason="ETAG_MISMATCH",
                )
            digest = tx.one(
                "SELECT digest FROM artifact_versions WHERE project = ? AND artifact_id = ? "
                "AND version_id = ?",
                (project, current.spec.artifact_id, current.spec.candidate_version),
            )
            made = change(current, artifact, str(digest["digest"]) if digest else "")
            happened[:] = made[1] if made is not None else []
            return made

        happened: list[AuditEvent] = []
        record, traffic = await self.store.aio(
            self.store.change_rollout, project, rollout_id, apply
        )
        if traffic is not None:
            await self.publish_traffic(project)
        await self._changed()
        self._tell(record, happened)
        return record

    def _tell(self, record: RolloutRecord, events: list[AuditEvent]) -> None:
        """Hand a committed change to the listeners (notifications): each only queues it."""
        if not events:
            return
        for listener in self.listeners:
            try:
                listener(record, events)
            except Exception:  # a listener's bug never fails a rollback
                log.exception("rollouts.listener_failed", rollout=record.name)

    async def apply(
        self,
        project: str,
        rollout_id: str,
        change: Callable[[RolloutRecord, ArtifactRecord, str], t.Change | None],
    ) -> RolloutRecord:
        """A controller transition (no principal, no etag)."""
        return await self._change(Principal(project, None), project, rollout_id, "", change)

    async def pause(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        reason: str,
        request_id: str,
    ) -> RolloutRecord:
        def change(r: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            _not_ended(r, "pause")
            if r.state == State.PAUSED:
                return None
            return t.pause(
                r,
                self.clock(),
                principal.who,
                digest,
                hold=Hold.MANUAL,
                until=None,
                reason=_reason(reason, "paused by PauseRollout"),
                request_id=request_id,
            )

        return await self._change(principal, project, rollout_id, etag, change, request_id)

    async def resume(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        reason: str,
        request_id: str,
    ) -> RolloutRecord:
        await self._refuse_when_stopped(project, self.clock(), "resume a rollout")

        def change(r: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            if r.state != State.PAUSED:
                raise FailedPrecondition(
                    f"rollout {r.name} is {r.state.name}, not PAUSED", reason="NOT_PAUSED"
                )
            if r.hold == Hold.APPROVALS:
                raise FailedPrecondition(
                    f"rollout {r.name} waits for {r.spec.required_approvals} approvals (dual "
                    f"control); it has {len(r.approvals)}: use ApproveRollout",
                    reason="APPROVALS_REQUIRED",
                )
            return t.resume(
                r,
                self.clock(),
                principal.who,
                digest,
                reason=_reason(reason, "resumed"),
                request_id=request_id,
            )

        record = await self._change(principal, project, rollout_id, etag, change, request_id)
        self._wake(record)
        return record

    async def promote(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        full: bool,
        reason: str,
        request_id: str,
    ) -> RolloutRecord:
        await self._refuse_when_stopped(project, self.clock(), "promote")
        why = _reason(reason, "promoted by PromoteRollout")

        def change(r: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            _not_ended(r, "promote")
            if full or r.step_index >= len(r.spec.strategy.steps) - 1:
                _approved(r)
                return t.promote(
                    r, self.clock(), principal.who, digest, reason=why, request_id=request_id
                )
            after = t.bump(
                r,
                self.clock(),
                step_index=r.step_index + 1,
                state=State.PROGRESSING,
                hold=Hold.NONE,
                pause_end=None,
                state_reason="",
            )
            return after, [
                t.event(
                    r,
                    after,
                    Action.STEP_SKIPPED,
                    principal.who,
                    digest,
                    reason=why,
                    request_id=request_id,
                )
            ]

        record = await self._change(principal, project, rollout_id, etag, change, request_id)
        if self.controller is not None:
            self.controller.cancel_analysis(project, rollout_id)
        self._wake(record)
        return record

    async def abort(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        reason: str,
        request_id: str,
    ) -> RolloutRecord:
        if not reason.strip():
            raise InvalidArgument(
                [FieldViolation("reason", "required: say why, for the audit log")]
            )

        def change(r: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            if r.state == State.ABORTED:
                return None
            _not_ended(r, "abort")
            return t.to_zero(
                r,
                self.clock(),
                principal.who,
                digest,
                state=State.ABORTED,
                action=Action.ABORTED,
                reason=reason[:MAX_REASON],
                request_id=request_id,
            )

        record = await self._change(principal, project, rollout_id, etag, change, request_id)
        if self.controller is not None:
            self.controller.cancel_analysis(project, rollout_id)
        self._wake(record)
        return record

    async def abort_all(self, project: str | None, actor: str, reason: str) -> list[RolloutRecord]:
        """Abort every live rollout of a project, or of every project (None): the kill
        switch. One that cannot be aborted is logged and the others still are."""
        aborted = []
        for live in await self.store.aio(self.store.live_rollouts):
            if project is not None and live.project != project:
                continue
            principal = Principal(live.project, None, identity=actor)
            why = f"kill switch: {reason}"
            try:
                aborted.append(
                    await self.abort(principal, live.project, live.rollout_id, "", why, "")
                )
            except FailedPrecondition:  # it ended meanwhile
                continue
            except MaestroError:
                log.exception("rollouts.kill_switch_abort_failed", rollout=live.name)
        return aborted

    async def retry(
        self,
        principal: Principal,
        project: str,
        rollout_id: str,
        etag: str,
        reason: str,
        request_id: str,
    ) -> RolloutRecord:
        await self._refuse_when_stopped(project, self.clock(), "retry a rollout")

        def change(r: RolloutRecord, artifact: ArtifactRecord, digest: str) -> t.Change | None:
            if r.state not in RETRYABLE:
                raise FailedPrecondition(
                    f"rollout {r.name} is {r.state.name}; only ROLLED_BACK, ABORTED or FAILED "
                    "rollouts can be retried",
                    reason="NOT_RETRYABLE",
                )
            if artifact.stable_version != r.spec.stable_version:
                raise FailedPrecondition(
                    f"the stable version of {r.artifact} is now "
                    f"{r.version_name(artifact.stable_version)}; start a new rollout",
                    reason="STABLE_VERSION_MISMATCH",
                )
            after = t.bump(
                r,
                self.clock(),
                state=State.PROGRESSING,
                step_index=0,
                weight=0,
                hold=Hold.NONE,
                pause_end=None,
                state_reason="",
                approvals=(),
            )
            return after, [
                t.event(
                    r,
                    after,
                    Action.RETRIED,
                    principal.who,
                    digest,
                    reason=reason,
                    request_id=request_id,
                )
            ]

        record = await self._change(
            principal, project, rollout_id, etag, change, request_id, exclusive=True
        )
        self._wake(record)
        return record

    async def approve(
        self, principal: Principal, project: str, rollout_id: str, reason: str, request_id: str
    ) -> RolloutRecord:
        if not reason.strip():
            raise InvalidArgument(
                [FieldViolation("reason", "required: say why, for the audit log")]
            )
        who = principal.who

        def change(r: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            _not_ended(r, "approve")
            if any(a.approver == who for a in r.approvals):
                if request_id:
                    return None
                raise FailedPrecondition(
                    f"{who} approved rollout {r.name} already; dual control needs another approver",
                    reason="ALREADY_APPROVED",
                )
            if who == r.spec.creator:
                raise FailedPrecondition(
                    "the rollout's creator cannot approve it (dual control)",
                    reason="CREATOR_CANNOT_APPROVE",
                )
            after = t.bump(
                r,
                self.clock(),
                approvals=(*r.approvals, Approval(who, reason[:MAX_REASON], self.clock())),
            )
            return after, [
                t.event(
                    r, after, Action.APPROVED, who, digest, reason=reason, request_id=request_id
                )
            ]

        record = await self._change(principal, project, rollout_id, "", change, request_id)
        self._wake(record)
        return record

    async def _refuse_when_stopped(self, project: str, now: float, what: str) -> None:
        """FAILED_PRECONDITION inside a freeze window or while a kill switch is engaged."""
        self.freeze.refuse_inside(project, now, what)
        switch = await self.kill_switch(project) if self.kill_switch is not None else ""
        if switch:
            raise FailedPrecondition(
                f"cannot {what}: kill switch {switch} is engaged", reason="KILL_SWITCH_ENGAGED"
            )

    def _wake(self, record: RolloutRecord) -> None:
        """Wake the rollout's driver; an ended rollout's driver then exits (with its background
        analyses) instead of waiting on a timer that no longer matters."""
        if self.controller is not None:
            self.controller.wake(record.project, record.rollout_id)

    # -- audit ----------------------------------------------------------------------------------

    async def get_event(
        self, principal: Principal, project: str, rollout_id: str, event_id: str
    ) -> AuditEvent:
        require_project(principal, project)
        return await self.store.aio(self.store.get_event, project, rollout_id, event_id)

    async def list_events(
        self,
        principal: Principal,
        project: str,
        rollout_id: str | None,
        size: int,
        token: str,
        filter_text: str,
        order_by: str,
    ) -> paging.Page[AuditEvent]:
        require_project(principal, project)
        order = " ".join(order_by.split()) or "create_time"
        if order not in ("create_time", "create_time desc"):
            raise InvalidArgument(
                [FieldViolation("order_by", "one of 'create_time', 'create_time desc'")]
            )
        where: dict[str, Any] = {}
        since: float | None = None
        for field, value in paging.parse_filter(
            filter_text,
            {
                "action": frozenset(a.name for a in Action),
                "actor": paging.STRING,
                "candidate_version": paging.STRING,
                "eval_run": paging.STRING,
                "create_time_after": paging.STRING,
            },
        ):
            if field == "create_time_after":
                since = _time_of(str(value))
            elif field == "action":
                where["action"] = int(Action[str(value)])
            else:
                where[field] = value
        limit = paging.page_size(size)
        scope = f"audit:{project}:{rollout_id}:{filter_text}:{order}"
        after = paging.decode_token(token, scope)
        rows = await self.store.aio(
            self.store.list_events,
            project,
            rollout_id,
            after,
            limit + 1,
            where,
            order.endswith("desc"),
            since,
        )
        return paging.page_of(rows, limit, scope, lambda e: [e.seq])

    async def verify(self, project: str) -> list[ChainProblem]:
        events = await self.store.aio(self.store.chain, project)
        return verify_chain(events, await self.store.aio(self.store.chain_head, project))


def _share(
    project_name: str,
    artifact_id: str,
    version_id: str,
    weight: int,
    versions: Mapping[tuple[str, str], Mapping[str, Any]],
) -> VersionShare:
    row = versions.get((artifact_id, version_id), {})
    kind = Kind(int(row.get("kind", Kind.RECIPE)))
    return VersionShare(
        f"{project_name}/artifacts/{artifact_id}/versions/{version_id}",
        weight,
        str(row.get("digest", "")),
        str(row.get("media_type", "")),
        str(row.get("content", "")).encode() if kind in RENDERED_KINDS else b"",
    )


def _not_ended(r: RolloutRecord, verb: str) -> None:
    if r.state in ENDED:
        raise FailedPrecondition(
            f"rollout {r.name} has ended ({r.state.name}); cannot {verb} it",
            reason="ROLLOUT_ENDED",
        )


def _approved(r: RolloutRecord) -> None:
    if len(r.approvals) < r.spec.required_approvals:
        raise FailedPrecondition(
            f"rollout {r.name} needs {r.spec.required_approvals} approvals before the candidate "
            f"takes all traffic (dual control); it has {len(r.approvals)}",
            reason="APPROVALS_REQUIRED",
        )


def _reason(given: str, default: str) -> str:
    return (given.strip() or default)[:MAX_REASON]


def _time_of(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(
            [FieldViolation("filter", f"create_time {text[:40]!r} is not an RFC 3339 time")]
        ) from None


def _needs_dual_control(autonomy: str) -> bool:
    """An agent or recipe version at autonomy L3 or above."""
    return autonomy in ("L3", "L4")
