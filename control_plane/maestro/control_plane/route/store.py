"""SQL for routing-config revisions: an append-only history per project.

Appending locks the project's row first (PostgreSQL), so replicas applying at once take turns
and revision numbers never fork; each append notifies `CHANGES_CHANNEL` with the project's name,
which is how the other replicas learn of it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from maestro.control_plane.store.errors import RowNotFound
from maestro.control_plane.store.sql import Row, Sql
from maestro.routing.policy import PolicyModule
from maestro.routing.snapshots import Revision

CHANGES_CHANNEL = "maestro_route_config"


def digest_of(config_yaml: str, modules: tuple[PolicyModule, ...]) -> str:
    material = json.dumps([config_yaml, [[m.name, m.source] for m in modules]])
    return hashlib.sha256(material.encode()).hexdigest()


def _revision(row: Row) -> Revision:
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
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    @property
    def sql(self) -> Sql:
        return self._sql

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
        request id was used before; None when `expected_revision` is not the current one.
        Raises RowNotFound when the project does not exist."""
        with self._sql.write() as tx:
            locked = tx.one(
                f"SELECT name FROM projects WHERE name = ?{self._sql.lock_row}", (project,)
            )
            if locked is None:
                raise RowNotFound(f"project {project!r} does not exist")
            if request_id:
                row = tx.one(
                    "SELECT * FROM route_config_revisions WHERE project = ? AND request_id = ?",
                    (project, request_id),
                )
                if row is not None:
                    return _revision(row), False
            latest = tx.one(
                "SELECT COALESCE(MAX(revision), 0) AS current FROM route_config_revisions"
                " WHERE project = ?",
                (project,),
            )
            current = int(latest["current"]) if latest else 0
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
            tx.run(
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
            self._sql.notify(tx, CHANGES_CHANNEL, project)
        return revision, True

    def ensure_project(self, project: str) -> None:
        """Create a reserved project's row (`projects/global`) if it is missing."""
        with self._sql.write() as tx:
            tx.run(
                "INSERT INTO projects(name, display_name, create_time) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                (project, "reserved", datetime.now(UTC).isoformat()),
            )

    def latest(self, project: str) -> Revision | None:
        with self._sql.read() as tx:
            row = tx.one(
                "SELECT * FROM route_config_revisions WHERE project = ? "
                "ORDER BY revision DESC LIMIT 1",
                (project,),
            )
        return _revision(row) if row else None

    def get(self, project: str, revision: int) -> Revision | None:
        with self._sql.read() as tx:
            row = tx.one(
                "SELECT * FROM route_config_revisions WHERE project = ? AND revision = ?",
                (project, revision),
            )
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
        with self._sql.read() as tx:
            return [_revision(row) for row in tx.all(query, params)]

    def projects_with_config(self) -> list[str]:
        with self._sql.read() as tx:
            rows = tx.all("SELECT DISTINCT project FROM route_config_revisions")
        return [row["project"] for row in rows]
