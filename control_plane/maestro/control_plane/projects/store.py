"""SQL for projects and API keys. Knows rows, not permissions: `service.py` decides who may ask."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from maestro.control_plane.store.sql import Row, Sql


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    name: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    name: str
    project: str
    display_name: str
    prefix: str
    create_time: datetime
    scopes: frozenset[str]
    principal: str
    """The identity holding the key; '' for keys minted before identities (their own name)."""


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        row["name"],
        row["project"],
        row["display_name"],
        row["prefix"],
        _time(row["create_time"]),
        frozenset(row["scopes"].split()),
        row["principal"],
    )


class ProjectStore:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    def create_project(self, name: str, display_name: str, now: datetime) -> ProjectRecord | None:
        """Insert a project; None if one with that name exists."""
        with self._sql.write() as tx:
            created = tx.run(
                "INSERT INTO projects(name, display_name, create_time) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING",
                (name, display_name, now.astimezone(UTC).isoformat()),
            )
        return ProjectRecord(name, display_name, now) if created else None

    def get_project(self, name: str) -> ProjectRecord | None:
        with self._sql.read() as tx:
            row = tx.one("SELECT * FROM projects WHERE name = ?", (name,))
        return (
            ProjectRecord(row["name"], row["display_name"], _time(row["create_time"]))
            if row
            else None
        )

    def insert_key(
        self, record: ApiKeyRecord, secret_sha256: str, request_id: str | None
    ) -> tuple[ApiKeyRecord, bool]:
        """Insert a key; with a `request_id` already used in that project, return that key.

        Returns (key, created). Raises RowNotFound when the project does not exist.
        """
        with self._sql.write() as tx:
            if request_id:
                row = tx.one(
                    "SELECT * FROM api_keys WHERE project = ? AND request_id = ?",
                    (record.project, request_id),
                )
                if row is not None:
                    return _key(row), False
            tx.run(
                "INSERT INTO api_keys(name, project, display_name, prefix, secret_sha256, "
                "request_id, create_time, scopes, principal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.project,
                    record.display_name,
                    record.prefix,
                    secret_sha256,
                    request_id or None,
                    record.create_time.astimezone(UTC).isoformat(),
                    " ".join(sorted(record.scopes)),
                    record.principal,
                ),
            )
        return record, True

    def get_key(self, name: str) -> ApiKeyRecord | None:
        with self._sql.read() as tx:
            row = tx.one("SELECT * FROM api_keys WHERE name = ?", (name,))
        return _key(row) if row else None

    def find_key_by_hash(self, secret_sha256: str) -> ApiKeyRecord | None:
        with self._sql.read() as tx:
            row = tx.one("SELECT * FROM api_keys WHERE secret_sha256 = ?", (secret_sha256,))
        return _key(row) if row else None

    def list_keys(
        self, project: str, limit: int, after: tuple[str, str] | None
    ) -> list[ApiKeyRecord]:
        """Keys of `project`, newest first, after the (create_time, name) sort key."""
        query = "SELECT * FROM api_keys WHERE project = ?"
        params: list[object] = [project]
        if after is not None:
            query += " AND (create_time, name) < (?, ?)"
            params += list(after)
        query += " ORDER BY create_time DESC, name DESC LIMIT ?"
        params.append(limit)
        with self._sql.read() as tx:
            return [_key(row) for row in tx.all(query, params)]

    def delete_key(self, name: str) -> bool:
        with self._sql.write() as tx:
            return tx.run("DELETE FROM api_keys WHERE name = ?", (name,)) > 0
