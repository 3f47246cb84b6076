"""The projects slice's tables: projects (tenants) and their API keys."""

from __future__ import annotations

from maestro.control_plane.store.migrations import Migration

MIGRATIONS = (
    Migration(
        "projects",
        1,
        """
        CREATE TABLE projects (
            name          TEXT PRIMARY KEY,          -- 'projects/{project}'
            display_name  TEXT NOT NULL DEFAULT '',
            create_time   TEXT NOT NULL              -- RFC 3339, UTC
        );
        CREATE TABLE api_keys (
            name          TEXT PRIMARY KEY,          -- 'projects/{project}/apiKeys/{id}'
            project       TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
            display_name  TEXT NOT NULL DEFAULT '',
            prefix        TEXT NOT NULL,
            secret_sha256 TEXT NOT NULL UNIQUE,
            request_id    TEXT,
            create_time   TEXT NOT NULL
        );
        CREATE INDEX api_keys_by_project ON api_keys(project, create_time DESC, name DESC);
        CREATE UNIQUE INDEX api_keys_by_request ON api_keys(project, request_id)
            WHERE request_id IS NOT NULL;
        """,
    ),
    Migration(
        "projects",
        2,
        # Keys minted before scopes existed could do everything a tenant can; they keep that,
        # and their identity stays their own name ('' -> the key's name).
        """
        ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL
            DEFAULT 'admin approver data-plane inference';
        ALTER TABLE api_keys ADD COLUMN principal TEXT NOT NULL DEFAULT '';
        """,
    ),
)
