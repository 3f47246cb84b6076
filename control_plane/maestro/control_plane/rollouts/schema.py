"""The rollout slice's tables: artifacts and their versions, each project's traffic splits,
rollouts and the hash-chained audit log. Written once for SQLite and PostgreSQL; times are
epoch seconds."""

from __future__ import annotations

from maestro.control_plane.store.migrations import Migration

MIGRATIONS = (
    Migration(
        "rollouts",
        1,
        """
        CREATE TABLE artifacts (
            project         TEXT NOT NULL,
            artifact_id     TEXT NOT NULL,
            kind            INTEGER NOT NULL,          -- records.Kind, fixed by the first version
            stable_version  TEXT NOT NULL DEFAULT '',  -- version id; '' before a first rollout
            earlier_stable  {json} NOT NULL,           -- version ids, newest first
            version_count   BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (project, artifact_id)
        );
        CREATE TABLE artifact_versions (
            project         TEXT NOT NULL,
            artifact_id     TEXT NOT NULL,
            version_id      TEXT NOT NULL,
            seq             BIGINT NOT NULL,           -- 1, 2, ... per artifact
            kind            INTEGER NOT NULL,
            description     TEXT NOT NULL DEFAULT '',
            media_type      TEXT NOT NULL,
            digest          TEXT NOT NULL,
            manifest_digest TEXT NOT NULL,
            size_bytes      BIGINT NOT NULL,
            provenance      {json} NOT NULL,           -- records.Provenance
            content         TEXT NOT NULL,             -- UTF-8 (every kind is text)
            request_id      TEXT,
            create_time     {real} NOT NULL,
            PRIMARY KEY (project, artifact_id, version_id)
        );
        CREATE UNIQUE INDEX artifact_versions_by_digest
            ON artifact_versions(project, artifact_id, digest);
        CREATE UNIQUE INDEX artifact_versions_by_request
            ON artifact_versions(project, request_id);
        CREATE INDEX artifact_versions_by_time
            ON artifact_versions(project, create_time DESC, artifact_id, seq DESC);
        CREATE TABLE artifact_traffic (
            project         TEXT NOT NULL PRIMARY KEY,
            revision        BIGINT NOT NULL,           -- increases with every change
            splits          {json} NOT NULL,           -- {artifact id: [[version id, weight]...]}
            audit_seq       BIGINT NOT NULL DEFAULT 0, -- the audit chain's head
            audit_hash      TEXT NOT NULL
        );
        CREATE TABLE rollouts (
            project         TEXT NOT NULL,
            rollout_id      TEXT NOT NULL,
            artifact_id     TEXT NOT NULL,
            spec            {json} NOT NULL,           -- records.RolloutSpec
            state           INTEGER NOT NULL,          -- records.State
            state_reason    TEXT NOT NULL DEFAULT '',
            hold            TEXT NOT NULL DEFAULT '',  -- why PAUSED: records.Hold
            analysis_attempt BIGINT NOT NULL DEFAULT 0,
            stable_version  TEXT NOT NULL,             -- version ids, for filters
            candidate_version TEXT NOT NULL,
            step_index      INTEGER NOT NULL DEFAULT 0,
            weight          INTEGER NOT NULL DEFAULT 0,
            pause_end       {real},
            analyses        {json} NOT NULL,
            approvals       {json} NOT NULL,           -- records.Approval, oldest first
            snapshot_version TEXT NOT NULL DEFAULT '',
            revision        BIGINT NOT NULL,
            request_id      TEXT,
            create_time     {real} NOT NULL,
            update_time     {real} NOT NULL,
            PRIMARY KEY (project, rollout_id)
        );
        CREATE INDEX rollouts_by_time ON rollouts(project, create_time DESC, rollout_id DESC);
        CREATE INDEX rollouts_by_state ON rollouts(state);
        CREATE UNIQUE INDEX rollouts_by_request ON rollouts(project, request_id);
        CREATE TABLE rollout_audit (
            project         TEXT NOT NULL,
            seq             BIGINT NOT NULL,           -- the project's chain order
            rollout_id      TEXT NOT NULL,
            event_id        TEXT NOT NULL,
            action          INTEGER NOT NULL,
            actor           TEXT NOT NULL,
            candidate_version TEXT NOT NULL,
            eval_run        TEXT NOT NULL DEFAULT '',
            request_id      TEXT NOT NULL DEFAULT '',  -- the caller's, for retried verbs
            body            {json} NOT NULL,           -- records.AuditEvent
            previous_hash   TEXT NOT NULL,
            event_hash      TEXT NOT NULL,
            create_time     {real} NOT NULL,
            PRIMARY KEY (project, seq)
        );
        CREATE UNIQUE INDEX rollout_audit_by_event ON rollout_audit(project, rollout_id, event_id);
        CREATE INDEX rollout_audit_by_rollout ON rollout_audit(project, rollout_id, seq);
        CREATE INDEX rollout_audit_by_request ON rollout_audit(project, rollout_id, request_id);
        """,
    ),
)
