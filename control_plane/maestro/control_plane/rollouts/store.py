"""The rollout store: artifacts, versions, traffic splits, rollouts and the audit chain, over
`store.sql.Sql`.

Every change of a rollout is one transaction that also rewrites the project's traffic splits
(from the artifacts' stable versions and the weights of their live rollouts) and appends the
change's audit events to the project's hash chain. The project's `artifact_traffic` row is
locked first, so changes of one project are serialised and the chain has no forks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

from maestro.control_plane.graph.store import call_store
from maestro.control_plane.rollouts.audit import GENESIS, chain_hash
from maestro.control_plane.rollouts.records import (
    NO_ROLLOUT,
    Action,
    AnalysisResult,
    Approval,
    ArtifactRecord,
    AuditEvent,
    EvalGateSpec,
    Hold,
    Kind,
    Measurement,
    Outcome,
    Provenance,
    RolloutRecord,
    RolloutSpec,
    SloBurnSpec,
    SloWindow,
    State,
    Step,
    Strategy,
    TemplateSpec,
    VersionRecord,
)
from maestro.control_plane.store.errors import once_more_on_conflict
from maestro.control_plane.store.sql import Row, Sql, Tx
from maestro.core.errors import Aborted, AlreadyExists, FieldViolation, InvalidArgument, NotFound
from maestro.routing.traffic import joined_version

T = TypeVar("T")
CHANGES_CHANNEL = "maestro_traffic"
"""Replicas hear `projects/{id}` here when a project's traffic splits change."""
_LIVE = (int(State.PROGRESSING), int(State.PAUSED), int(State.ANALYZING))
_LIVE_SQL = f"state IN ({', '.join(str(s) for s in _LIVE)})"
"""The states of a rollout that has not ended, as a WHERE condition (constants, no input)."""

Splits = dict[str, list[tuple[str, int]]]
"""{artifact id: [(version id, weight), ...]}, candidate first; weights sum to 100."""


# -- JSON forms ---------------------------------------------------------------------------------


def _template(body: Mapping[str, Any]) -> TemplateSpec:
    gate = body.get("eval_gate")
    burn = body.get("slo_burn")
    return TemplateSpec(
        body["name"],
        EvalGateSpec(**gate) if gate else None,
        SloBurnSpec(
            burn["indicator"],
            float(burn["objective_ratio"]),
            tuple(SloWindow(**w) for w in burn["windows"]),
            float(burn["latency_threshold_ms"]),
            int(burn["min_request_count"]),
        )
        if burn
        else None,
    )


def spec_from_json(body: Mapping[str, Any]) -> RolloutSpec:
    strategy = body["strategy"]
    return RolloutSpec(
        body["artifact_id"],
        body["stable_version"],
        body["candidate_version"],
        Strategy(
            tuple(
                Step(
                    s["set_weight"],
                    s["pause_s"],
                    tuple(_template(t) for t in s["analysis"]),
                )
                for s in strategy["steps"]
            ),
            tuple(_template(t) for t in strategy["background"]),
            float(strategy["background_interval_s"]),
        ),
        body["description"],
        int(body["rollback_revisions"]),
        bool(body["automated"]),
        body["creator"],
        int(body["required_approvals"]),
    )


def analysis_from_json(body: Mapping[str, Any]) -> AnalysisResult:
    return AnalysisResult(
        **{
            **body,
            "outcome": Outcome(body["outcome"]),
            "measurements": tuple(Measurement(**m) for m in body["measurements"]),
        }
    )


def event_from_json(body: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(
        **{
            **body,
            "action": Action(body["action"]),
            "state_before": State(body["state_before"]),
            "state_after": State(body["state_after"]),
            "measurements": tuple(Measurement(**m) for m in body["measurements"]),
        }
    )


def _version_created(version: VersionRecord, request_id: str) -> AuditEvent:
    return AuditEvent(
        project=version.project,
        rollout_id=NO_ROLLOUT,
        action=Action.VERSION_CREATED,
        actor=version.provenance.creator,
        revision=0,
        state_before=State.UNSPECIFIED,
        state_after=State.UNSPECIFIED,
        step_index=0,
        weight_before=0,
        weight_after=0,
        stable_version="",
        candidate_version=version.name,
        candidate_digest=version.digest,
        reason=version.description,
        request_id=request_id,
        create_time=version.create_time,
    )


class RolloutStore:
    def __init__(self, sql: Sql, config_version: Callable[[str], str] = lambda _: "") -> None:
        """`config_version(project id)`: the version of the project's routing config snapshot
        now, the first part of the snapshot version a weight change is published in."""
        self.sql = sql
        self.config_version = config_version

    async def aio(self, call: Callable[..., T], *args: Any) -> T:
        return await call_store(self.sql, call, *args)

    # -- versions -------------------------------------------------------------------------------

    def _version(self, row: Row) -> VersionRecord:
        return VersionRecord(
            row["project"],
            row["artifact_id"],
            row["version_id"],
            Kind(row["kind"]),
            row["description"],
            row["media_type"],
            row["digest"],
            row["manifest_digest"],
            int(row["size_bytes"]),
            Provenance(**self.sql.json_out(row["provenance"])),
            float(row["create_time"]),
            int(row["seq"]),
        )

    @once_more_on_conflict
    def create_version(
        self,
        record: VersionRecord,
        content: str,
        request_id: str,
        store_blob: Callable[[VersionRecord], VersionRecord],
    ) -> VersionRecord:
        """Insert a version (and its artifact with the first one). `record.version_id` empty:
        `v<N>`. `store_blob` gives the record its manifest digest once the checks pass, before
        the insert (it must not do I/O: the transaction is open)."""
        with self.sql.write() as tx:
            head = self._chain_head(tx, record.project)  # first, as every change locks it
            if request_id:
                done = tx.one(
                    "SELECT * FROM artifact_versions WHERE project = ? AND request_id = ?",
                    (record.project, request_id),
                )
                if done is not None:
                    return self._version(done)
            artifact = tx.one(
                "SELECT kind, version_count FROM artifacts WHERE project = ? AND artifact_id = ?"
                + self.sql.lock_row,
                (record.project, record.artifact_id),
            )
            if artifact is None:
                count = 0
                tx.run(
                    "INSERT INTO artifacts (project, artifact_id, kind, earlier_stable) "
                    "VALUES (?, ?, ?, ?)",
                    (record.project, record.artifact_id, int(record.kind), self.sql.json_in([])),
                )
            else:
                count = int(artifact["version_count"])
                if Kind(artifact["kind"]) != record.kind:
                    raise InvalidArgument(
                        [
                            FieldViolation(
                                "artifact_version.kind",
                                f"artifact {record.artifact} holds "
                                f"{Kind(artifact['kind']).label} versions; a {record.kind.label} "
                                "is another artifact",
                            )
                        ],
                        reason="ARTIFACT_KIND_MISMATCH",
                    )
            same = tx.one(
                "SELECT version_id FROM artifact_versions "
                "WHERE project = ? AND artifact_id = ? AND digest = ?",
                (record.project, record.artifact_id, record.digest),
            )
            if same is not None:
                raise AlreadyExists(
                    f"version {record.artifact}/versions/{same['version_id']} has the same "
                    f"content ({record.digest}); identical content is the same version",
                    reason="ARTIFACT_VERSION_EXISTS",
                    metadata={"version": f"{record.artifact}/versions/{same['version_id']}"},
                )
            version_id = record.version_id or f"v{count + 1}"
            taken = tx.one(
                "SELECT 1 AS x FROM artifact_versions "
                "WHERE project = ? AND artifact_id = ? AND version_id = ?",
                (record.project, record.artifact_id, version_id),
            )
            if taken is not None:
                raise AlreadyExists(
                    f"version {record.artifact}/versions/{version_id} exists already; versions "
                    "are immutable",
                    reason="ARTIFACT_VERSION_EXISTS",
                )
            stored = store_blob(replace(record, version_id=version_id, seq=count + 1))
            tx.run(
                "INSERT INTO artifact_versions (project, artifact_id, version_id, seq, kind, "
                "description, media_type, digest, manifest_digest, size_bytes, provenance, "
                "content, request_id, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.project,
                    stored.artifact_id,
                    stored.version_id,
                    stored.seq,
                    int(stored.kind),
                    stored.description,
                    stored.media_type,
                    stored.digest,
                    stored.manifest_digest,
                    stored.size_bytes,
                    self.sql.json_in(asdict(stored.provenance)),
                    content,
                    request_id or None,
                    stored.create_time,
                ),
            )
            tx.run(
                "UPDATE artifacts SET version_count = ? WHERE project = ? AND artifact_id = ?",
                (count + 1, stored.project, stored.artifact_id),
            )
            self._append_events(tx, head, [_version_created(stored, request_id)], "")
        return stored

    def get_version(self, project: str, artifact_id: str, version_id: str) -> VersionRecord:
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT * FROM artifact_versions "
                "WHERE project = ? AND artifact_id = ? AND version_id = ?",
                (project, artifact_id, version_id),
            )
        if row is None:
            raise NotFound(
                f"artifact version projects/{project}/artifacts/{artifact_id}/versions/"
                f"{version_id} not found",
                reason="ARTIFACT_VERSION_NOT_FOUND",
            )
        return self._version(row)

    def version_content(self, project: str, artifact_id: str, version_id: str) -> str:
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT content FROM artifact_versions "
                "WHERE project = ? AND artifact_id = ? AND version_id = ?",
                (project, artifact_id, version_id),
            )
        if row is None:
            raise NotFound("artifact version not found", reason="ARTIFACT_VERSION_NOT_FOUND")
        return str(row["content"])

    def list_versions(
        self,
        project: str,
        artifact_id: str | None,
        after: list[Any] | None,
        limit: int,
        where: Mapping[str, Any],
    ) -> list[VersionRecord]:
        """Newest first: by creation time, then artifact, then sequence."""
        sql = "SELECT * FROM artifact_versions WHERE project = ?"
        params: list[Any] = [project]
        if artifact_id is not None:
            sql += " AND artifact_id = ?"
            params.append(artifact_id)
        for column, value in where.items():
            sql += f" AND {column} = ?"
            params.append(value)
        if after is not None:
            sql += (
                " AND (create_time < ? OR (create_time = ? AND (artifact_id > ? OR "
                "(artifact_id = ? AND seq < ?))))"
            )
            params += [after[0], after[0], after[1], after[1], after[2]]
        with self.sql.read() as tx:
            rows = tx.all(
                sql + " ORDER BY create_time DESC, artifact_id, seq DESC LIMIT ?",
                [*params, limit],
            )
        return [self._version(row) for row in rows]

    def artifact(self, project: str, artifact_id: str) -> ArtifactRecord | None:
        with self.sql.read() as tx:
            return self._artifact(tx, project, artifact_id, lock=False)

    def _artifact(
        self, tx: Tx, project: str, artifact_id: str, *, lock: bool
    ) -> ArtifactRecord | None:
        row = tx.one(
            "SELECT * FROM artifacts WHERE project = ? AND artifact_id = ?"
            + (self.sql.lock_row if lock else ""),
            (project, artifact_id),
        )
        if row is None:
            return None
        return ArtifactRecord(
            project,
            artifact_id,
            Kind(row["kind"]),
            row["stable_version"],
            tuple(self.sql.json_out(row["earlier_stable"])),
        )

    # -- rollouts -------------------------------------------------------------------------------

    def _rollout(self, row: Row) -> RolloutRecord:
        return RolloutRecord(
            row["project"],
            row["rollout_id"],
            spec_from_json(self.sql.json_out(row["spec"])),
            State(row["state"]),
            row["state_reason"],
            int(row["step_index"]),
            int(row["weight"]),
            float(row["pause_end"]) if row["pause_end"] is not None else None,
            tuple(analysis_from_json(a) for a in self.sql.json_out(row["analyses"])),
            row["snapshot_version"],
            int(row["revision"]),
            float(row["create_time"]),
            float(row["update_time"]),
            tuple(Approval(**a) for a in self.sql.json_out(row["approvals"])),
            Hold(row["hold"]),
            int(row["analysis_attempt"]),
        )

    def get_rollout(self, project: str, rollout_id: str) -> RolloutRecord:
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT * FROM rollouts WHERE project = ? AND rollout_id = ?",
                (project, rollout_id),
            )
        if row is None:
            raise NotFound(
                f"rollout projects/{project}/rollouts/{rollout_id} not found",
                reason="ROLLOUT_NOT_FOUND",
            )
        return self._rollout(row)

    def list_rollouts(
        self,
        project: str,
        after: list[Any] | None,
        limit: int,
        where: Mapping[str, Any],
        order: str,
    ) -> list[RolloutRecord]:
        """`order`: 'create_time desc', 'create_time' or 'update_time desc'; the id breaks
        ties the same way."""
        column, _, direction = order.partition(" ")
        descending = direction == "desc"
        sql = "SELECT * FROM rollouts WHERE project = ?"
        params: list[Any] = [project]
        for name, value in where.items():
            sql += f" AND {name} = ?"
            params.append(value)
        if after is not None:
            op = "<" if descending else ">"
            sql += f" AND ({column} {op} ? OR ({column} = ? AND rollout_id {op} ?))"
            params += [after[0], after[0], after[1]]
        way = "DESC" if descending else "ASC"
        with self.sql.read() as tx:
            rows = tx.all(
                sql + f" ORDER BY {column} {way}, rollout_id {way} LIMIT ?", [*params, limit]
            )
        return [self._rollout(row) for row in rows]

    def live_rollouts(self) -> list[RolloutRecord]:
        """Every rollout that has not ended, of every project (for the controller)."""
        with self.sql.read() as tx:
            rows = tx.all(f"SELECT * FROM rollouts WHERE {_LIVE_SQL}")
        return [self._rollout(row) for row in rows]

    @once_more_on_conflict
    def create_rollout(
        self,
        record: RolloutRecord,
        request_id: str,
        events: Callable[[RolloutRecord, ArtifactRecord], Sequence[AuditEvent]],
        check: Callable[[ArtifactRecord, RolloutRecord | None], None],
    ) -> tuple[RolloutRecord, int] | RolloutRecord:
        """Insert a rollout. `check(artifact, live)` refuses it (the artifact's stable version,
        a live rollout of the artifact); on the artifact's first rollout its stable version is
        set to the rollout's. Returns (rollout, traffic revision), or the rollout a retried
        request created."""
        with self.sql.write() as tx:
            self._chain_head(tx, record.project)  # serialises the project's changes
            if request_id:
                done = tx.one(
                    "SELECT * FROM rollouts WHERE project = ? AND request_id = ?",
                    (record.project, request_id),
                )
                if done is not None:
                    return self._rollout(done)
            artifact = self._artifact(tx, record.project, record.spec.artifact_id, lock=True)
            if artifact is None:
                raise NotFound(f"artifact {record.artifact} not found", reason="ARTIFACT_NOT_FOUND")
            check(artifact, self._live_of(tx, record.project, record.spec.artifact_id))
            if tx.one(
                "SELECT 1 AS x FROM rollouts WHERE project = ? AND rollout_id = ?",
                (record.project, record.rollout_id),
            ):
                raise AlreadyExists(
                    f"rollout {record.name} exists already", reason="ROLLOUT_EXISTS"
                )
            if not artifact.stable_version:
                tx.run(
                    "UPDATE artifacts SET stable_version = ? WHERE project = ? AND artifact_id = ?",
                    (record.spec.stable_version, record.project, record.spec.artifact_id),
                )
            revision = self._write_traffic_and_events(
                tx, record, list(events(record, artifact)), new=True, request_id=request_id
            )
        return replace(
            record, snapshot_version=joined_version(self.config_version(record.project), revision)
        ), revision

    def request_seen(self, tx: Tx, rollout: RolloutRecord, request_id: str) -> bool:
        """Whether a call with `request_id` changed `rollout` already (its audit log says so)."""
        row = tx.one(
            "SELECT 1 AS x FROM rollout_audit "
            "WHERE project = ? AND rollout_id = ? AND request_id = ?",
            (rollout.project, rollout.rollout_id, request_id),
        )
        return row is not None

    def other_rollout(self, tx: Tx, rollout: RolloutRecord) -> str | None:
        """The name of another rollout of `rollout`'s artifact that is live or was created
        after it (read in the caller's transaction), if any."""
        row = tx.one(
            "SELECT rollout_id FROM rollouts WHERE project = ? AND artifact_id = ? "
            f"AND rollout_id <> ? AND (create_time > ? OR {_LIVE_SQL})",
            (rollout.project, rollout.spec.artifact_id, rollout.rollout_id, rollout.create_time),
        )
        return f"projects/{rollout.project}/rollouts/{row['rollout_id']}" if row else None

    def live_of(self, project: str, artifact_id: str) -> RolloutRecord | None:
        """The artifact's rollout that has not ended, if any."""
        with self.sql.read() as tx:
            return self._live_of(tx, project, artifact_id)

    def _live_of(self, tx: Tx, project: str, artifact_id: str) -> RolloutRecord | None:
        row = tx.one(
            f"SELECT * FROM rollouts WHERE project = ? AND artifact_id = ? AND {_LIVE_SQL}",
            (project, artifact_id),
        )
        return self._rollout(row) if row is not None else None

    def change_rollout(
        self,
        project: str,
        rollout_id: str,
        change: Callable[
            [RolloutRecord, ArtifactRecord, Tx], tuple[RolloutRecord, list[AuditEvent]] | None
        ],
    ) -> tuple[RolloutRecord, int | None]:
        """Apply `change(current, artifact, tx)` to a rollout in one transaction: it returns the
        new record and its audit events, or None to leave the rollout as it is. The traffic
        splits are rewritten when the weight, state or stable version changed. Returns the
        rollout and the new traffic revision (None when unchanged)."""
        with self.sql.write() as tx:
            self._chain_head(tx, project)
            row = tx.one(
                "SELECT * FROM rollouts WHERE project = ? AND rollout_id = ?" + self.sql.lock_row,
                (project, rollout_id),
            )
            if row is None:
                raise NotFound(
                    f"rollout projects/{project}/rollouts/{rollout_id} not found",
                    reason="ROLLOUT_NOT_FOUND",
                )
            current = self._rollout(row)
            artifact = self._artifact(tx, project, current.spec.artifact_id, lock=True)
            assert artifact is not None  # a rollout's artifact is never deleted
            changed = change(current, artifact, tx)
            if changed is None:
                return current, None
            record, events = changed
            if record.revision != current.revision + 1:
                raise Aborted("the rollout changed meanwhile", reason="ROLLOUT_CHANGED")
            if record.state == State.PROMOTED and current.state != State.PROMOTED:
                earlier = [artifact.stable_version, *artifact.earlier_stable][:10]
                tx.run(
                    "UPDATE artifacts SET stable_version = ?, earlier_stable = ? "
                    "WHERE project = ? AND artifact_id = ?",
                    (
                        record.spec.candidate_version,
                        self.sql.json_in(earlier),
                        project,
                        record.spec.artifact_id,
                    ),
                )
            traffic_moved = (record.weight, record.state) != (current.weight, current.state)
            revision = self._write_traffic_and_events(
                tx, record, events, new=False, request_id="", traffic=traffic_moved
            )
        return record, revision if traffic_moved else None

    def _write_traffic_and_events(
        self,
        tx: Tx,
        record: RolloutRecord,
        events: list[AuditEvent],
        *,
        new: bool,
        request_id: str,
        traffic: bool = True,
    ) -> int:
        head = self._chain_head(tx, record.project)
        revision = int(head["revision"])
        if traffic:
            revision += 1
            splits = self._splits(tx, record)
            tx.run(
                "UPDATE artifact_traffic SET revision = ?, splits = ? WHERE project = ?",
                (revision, self.sql.json_in(splits), record.project),
            )
            self.sql.notify(tx, CHANGES_CHANNEL, f"projects/{record.project}")
            record = replace(
                record,
                snapshot_version=joined_version(self.config_version(record.project), revision),
            )
        body = (
            self.sql.json_in(asdict(record.spec)),
            int(record.state),
            record.state_reason,
            str(record.hold),
            record.analysis_attempt,
            record.step_index,
            record.weight,
            record.pause_end,
            self.sql.json_in([asdict(a) for a in record.analyses]),
            self.sql.json_in([asdict(a) for a in record.approvals]),
            record.snapshot_version,
            record.revision,
            record.update_time,
        )
        if new:
            tx.run(
                "INSERT INTO rollouts (spec, state, state_reason, hold, analysis_attempt, "
                "step_index, weight, pause_end, analyses, approvals, snapshot_version, revision, "
                "update_time, project, rollout_id, artifact_id, stable_version, "
                "candidate_version, request_id, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *body,
                    record.project,
                    record.rollout_id,
                    record.spec.artifact_id,
                    record.spec.stable_version,
                    record.spec.candidate_version,
                    request_id or None,
                    record.create_time,
                ),
            )
        else:
            tx.run(
                "UPDATE rollouts SET spec = ?, state = ?, state_reason = ?, hold = ?, "
                "analysis_attempt = ?, step_index = ?, "
                "weight = ?, pause_end = ?, analyses = ?, approvals = ?, snapshot_version = ?, "
                "revision = ?, "
                "update_time = ? WHERE project = ? AND rollout_id = ?",
                (*body, record.project, record.rollout_id),
            )
        self._append_events(tx, head, events, record.snapshot_version if traffic else "")
        return revision

    def _chain_head(self, tx: Tx, project: str) -> Row:
        """The project's traffic row (the chain's head), locked; created on first use."""
        row = tx.one(
            "SELECT * FROM artifact_traffic WHERE project = ?" + self.sql.lock_row, (project,)
        )
        if row is None:
            tx.run(
                "INSERT INTO artifact_traffic (project, revision, splits, audit_seq, audit_hash) "
                "VALUES (?, 0, ?, 0, ?)",
                (project, self.sql.json_in({}), GENESIS),
            )
            row = tx.one(
                "SELECT * FROM artifact_traffic WHERE project = ?" + self.sql.lock_row, (project,)
            )
            assert row is not None
        return row

    def _splits(self, tx: Tx, record: RolloutRecord) -> Splits:
        """The project's traffic splits as they stand in `tx` with `record` written."""
        splits: Splits = {}
        stable_rows = tx.all(
            "SELECT artifact_id, stable_version FROM artifacts "
            "WHERE project = ? AND stable_version <> ''",
            (record.project,),
        )
        live = {r.spec.artifact_id: r for r in self._live_rollouts_of(tx, record.project)}
        if record.ended:
            live.pop(record.spec.artifact_id, None)
        else:
            live[record.spec.artifact_id] = record
        for row in stable_rows:
            artifact_id, stable = row["artifact_id"], row["stable_version"]
            rollout = live.get(artifact_id)
            if record.spec.artifact_id == artifact_id and record.state == State.PROMOTED:
                stable = record.spec.candidate_version
            if rollout is None or rollout.weight <= 0:
                splits[artifact_id] = [(stable, 100)]
            elif rollout.weight >= 100:
                splits[artifact_id] = [(rollout.spec.candidate_version, 100)]
            else:
                splits[artifact_id] = [
                    (rollout.spec.candidate_version, rollout.weight),
                    (stable, 100 - rollout.weight),
                ]
        return splits

    def _live_rollouts_of(self, tx: Tx, project: str) -> list[RolloutRecord]:
        rows = tx.all(f"SELECT * FROM rollouts WHERE project = ? AND {_LIVE_SQL}", (project,))
        return [self._rollout(row) for row in rows]

    def _append_events(
        self, tx: Tx, head: Row, events: Sequence[AuditEvent], snapshot_version: str
    ) -> None:
        if not events:
            return
        project = head["project"]
        seq, previous = int(head["audit_seq"]), str(head["audit_hash"])
        now = time.time()
        for event in events:
            seq += 1
            linked = replace(
                event,
                seq=seq,
                event_id=event.event_id or f"{seq:010d}",
                create_time=event.create_time or now,
                snapshot_version=event.snapshot_version
                or (snapshot_version if event.action == Action.WEIGHT_CHANGED else ""),
                previous_hash=previous,
                event_hash="",
            )
            linked = replace(linked, event_hash=chain_hash(previous, linked))
            previous = linked.event_hash
            tx.run(
                "INSERT INTO rollout_audit (project, seq, rollout_id, event_id, action, actor, "
                "candidate_version, eval_run, request_id, body, previous_hash, event_hash, "
                "create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project,
                    seq,
                    linked.rollout_id,
                    linked.event_id,
                    int(linked.action),
                    linked.actor,
                    linked.candidate_version,
                    linked.eval_run,
                    linked.request_id,
                    self.sql.json_in(asdict(linked)),
                    linked.previous_hash,
                    linked.event_hash,
                    linked.create_time,
                ),
            )
        tx.run(
            "UPDATE artifact_traffic SET audit_seq = ?, audit_hash = ? WHERE project = ?",
            (seq, previous, project),
        )

    # -- traffic --------------------------------------------------------------------------------

    def traffic(self, project: str) -> tuple[int, Splits, dict[tuple[str, str], Row]]:
        """A project's splits at their revision, with the versions they name (metadata and
        content) by (artifact id, version id)."""
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT revision, splits FROM artifact_traffic WHERE project = ?", (project,)
            )
            if row is None:
                return 0, {}, {}
            splits: Splits = {
                a: [(v, int(w)) for v, w in shares]
                for a, shares in self.sql.json_out(row["splits"]).items()
            }
            versions: dict[tuple[str, str], Row] = {}
            for artifact_id, shares in splits.items():
                for version_id, _ in shares:
                    found = tx.one(
                        "SELECT version_id, kind, digest, media_type, content FROM "
                        "artifact_versions "
                        "WHERE project = ? AND artifact_id = ? AND version_id = ?",
                        (project, artifact_id, version_id),
                    )
                    if found is not None:
                        versions[(artifact_id, version_id)] = found
        return int(row["revision"]), splits, versions

    def projects_with_traffic(self) -> list[str]:
        with self.sql.read() as tx:
            return [r["project"] for r in tx.all("SELECT project FROM artifact_traffic")]

    # -- audit ----------------------------------------------------------------------------------

    def _event(self, row: Row) -> AuditEvent:
        body = self.sql.json_out(row["body"])
        return replace(event_from_json(body), seq=int(row["seq"]))

    def list_events(
        self,
        project: str,
        rollout_id: str | None,
        after: list[Any] | None,
        limit: int,
        where: Mapping[str, Any],
        descending: bool,
        since: float | None = None,
    ) -> list[AuditEvent]:
        sql = "SELECT * FROM rollout_audit WHERE project = ?"
        params: list[Any] = [project]
        if rollout_id is not None:
            sql += " AND rollout_id = ?"
            params.append(rollout_id)
        for column, value in where.items():
            sql += f" AND {column} = ?"
            params.append(value)
        if since is not None:
            sql += " AND create_time > ?"
            params.append(since)
        if after is not None:
            sql += " AND seq < ?" if descending else " AND seq > ?"
            params.append(after[0])
        way = "DESC" if descending else "ASC"
        with self.sql.read() as tx:
            rows = tx.all(sql + f" ORDER BY seq {way} LIMIT ?", [*params, limit])
        return [self._event(row) for row in rows]

    def get_event(self, project: str, rollout_id: str, event_id: str) -> AuditEvent:
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT * FROM rollout_audit WHERE project = ? AND rollout_id = ? AND event_id = ?",
                (project, rollout_id, event_id),
            )
        if row is None:
            raise NotFound(
                f"audit event projects/{project}/rollouts/{rollout_id}/auditEvents/{event_id} "
                "not found",
                reason="AUDIT_EVENT_NOT_FOUND",
            )
        return self._event(row)

    def events_after_revision(
        self, project: str, rollout_id: str, revision: int
    ) -> list[AuditEvent]:
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT * FROM rollout_audit WHERE project = ? AND rollout_id = ? ORDER BY seq",
                (project, rollout_id),
            )
        return [e for e in (self._event(r) for r in rows) if e.revision > revision]

    def chain(self, project: str) -> list[AuditEvent]:
        """The project's whole audit chain in order, for verification: each event is its hashed
        body with the columns readers filter on laid over it, so an edit to either shows."""
        with self.sql.read() as tx:
            rows = tx.all("SELECT * FROM rollout_audit WHERE project = ? ORDER BY seq", (project,))
        return [
            replace(
                self._event(row),
                rollout_id=row["rollout_id"],
                event_id=row["event_id"],
                action=Action(int(row["action"])),
                actor=row["actor"],
                candidate_version=row["candidate_version"],
                eval_run=row["eval_run"],
                request_id=row["request_id"],
                previous_hash=row["previous_hash"],
                event_hash=row["event_hash"],
                create_time=float(row["create_time"]),
            )
            for row in rows
        ]

    def chain_head(self, project: str) -> tuple[int, str]:
        """(seq, hash) of the project's last audit event as its traffic row records it."""
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT audit_seq, audit_hash FROM artifact_traffic WHERE project = ?", (project,)
            )
        return (int(row["audit_seq"]), str(row["audit_hash"])) if row else (0, GENESIS)

    def audit_projects(self) -> list[str]:
        """Projects with an audit chain (by their heads too: a chain whose events were all
        deleted still has one)."""
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT project FROM artifact_traffic WHERE audit_seq > 0 "
                "UNION SELECT DISTINCT project FROM rollout_audit"
            )
        return sorted({r["project"] for r in rows})
