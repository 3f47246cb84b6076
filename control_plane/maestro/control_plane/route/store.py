"""SQL for routing-config revisions: append-only history per project."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime

from maestro.control_plane.store.sqlite import Database
from maestro.routing.policy import PolicyModule
from maestro.routing.snapshots import Revision


def digest_of(config_yaml: str, modules: tuple[PolicyModule, ...]) -> str:
    material = json.dumps([config_yaml, [[m.name, m.source] for m in modules]])
    return hashlib.sha256(material.encode()).hexdigest()


def _revision(row: sqlite3.Row) -> Revision:
    modules = tuple(
        PolicyModule(name, source) for name, source in json.loads(row["policy_modules"])
    )
    return Revision(
        row["project"],
        row["revision"],
        row["config_yaml"],
        modules,
        row["description"],
        row["creator"],
        row["digest"],
        datetime.fromisoformat(row["create_time"]),
    )


class RouteConfigStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
        self,
        project: str,
        config_yaml: str,
        modules: tuple[PolicyModule, ...],
        *,
        description: str,
        creator: str,
        request_id: str | None,
        expected_revision: int | None,
    ) -> tuple[Revision, bool] | None:
        """Append the next revision. Returns (revision, created); an existing revision when the
        request id was used before; None when `expected_revision` is not the current one."""
        with self._db.transaction() as conn:
            if request_id:
                row = conn.execute(
                    "SELECT * FROM route_config_revisions WHERE project = ? AND request_id = ?",
                    (project, request_id),
                ).fetchone()
                if row is not None:
                    return _revision(row), False
            current = conn.execute(
                "SELECT COALESCE(MAX(revision), 0) FROM route_config_revisions WHERE project = ?",
                (project,),
            ).fetchone()[0]
            if expected_revision is not None and expected_revision != current:
                return None
            revision = Revision(
                project,
                current + 1,
                config_yaml,
                modules,
                description,
                creator,
                digest_of(config_yaml, modules),
                datetime.now(UTC),
            )
            conn.execute(
                "INSERT INTO route_config_revisions(project, revision, config_yaml, policy_modules,"
                " description, creator, digest, request_id, create_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project,
                    revision.revision,
                    config_yaml,
                    json.dumps([[m.name, m.source] for m in modules]),
                    description,
                    creator,
                    revision.digest,
                    request_id or None,
                    revision.create_time.isoformat(),
                ),
            )
        return revision, True

    def ensure_project(self, project: str) -> None:
        """Create a reserved project's row (`projects/global`) if it is missing."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO projects(name, display_name, create_time) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                (project, "reserved", datetime.now(UTC).isoformat()),
            )

    def latest(self, project: str) -> Revision | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT * FROM route_config_revisions WHERE project = ? "
                "ORDER BY revision DESC LIMIT 1",
                (project,),
            ).fetchone()
        return _revision(row) if row else None

    def get(self, project: str, revision: int) -> Revision | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT * FROM route_config_revisions WHERE project = ? AND revision = ?",
                (project, revision),
            ).fetchone()
        return _revision(row) if row else None

    def page(self, project: str, limit: int, before: int | None) -> list[Revision]:
        """Newest first, revisions below `before` when given."""
        query = "SELECT * FROM route_config_revisions WHERE project = ?"
        params: list[object] = [project]
        if before is not None:
            query += " AND revision < ?"
            params.append(before)
        query += " ORDER BY revision DESC LIMIT ?"
        params.append(limit)
        with self._db.read() as conn:
            return [_revision(row) for row in conn.execute(query, params).fetchall()]

    def projects_with_config(self) -> list[str]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT DISTINCT project FROM route_config_revisions").fetchall()
        return [row[0] for row in rows]
