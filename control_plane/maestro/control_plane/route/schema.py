"""The route slice's table: the append-only history of each project's routing config."""

from __future__ import annotations

from maestro.control_plane.store.migrations import Migration

MIGRATIONS = (
    Migration(
        "route",
        1,
        """
        CREATE TABLE route_config_revisions (
            project        TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
            revision       INTEGER NOT NULL,            -- 1, 2, ... per project
            config_yaml    TEXT NOT NULL,
            policy_modules TEXT NOT NULL,               -- JSON [[name, source], ...]
            description    TEXT NOT NULL DEFAULT '',
            creator        TEXT NOT NULL DEFAULT '',
            digest         TEXT NOT NULL,               -- sha256 of yaml + modules
            request_id     TEXT,
            create_time    TEXT NOT NULL,
            PRIMARY KEY (project, revision)
        );
        CREATE UNIQUE INDEX route_config_by_request ON route_config_revisions(project, request_id)
            WHERE request_id IS NOT NULL;
        """,
    ),
)
