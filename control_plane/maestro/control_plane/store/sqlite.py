"""The SQLite database: one file, WAL mode, schema migrations keyed by `PRAGMA user_version`.

Calls are synchronous and short; async callers run them in a worker thread (`asyncio.to_thread`)
so the event loop never blocks on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maestro.control_plane.graph.schema import sqlite_schema
from maestro.control_plane.store.errors import RowConflict, RowNotFound, StoreError

# Each entry migrates the schema from version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
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
    sqlite_schema(),
)


def store_error(error: sqlite3.IntegrityError) -> StoreError:
    """The store error an integrity error stands for (SQLite tells them apart by message)."""
    text = str(error)
    if "FOREIGN KEY" in text:
        return RowNotFound(text)
    if "UNIQUE" in text or "PRIMARY KEY" in text:
        return RowConflict(text)
    return StoreError(text)


class Database:
    """A SQLite connection shared by the threads that serve one process, serialised by a lock.

    `synchronous`: "normal" (default) syncs the WAL at checkpoints, not at every commit; a commit
    survives the process being killed (tested with SIGKILL) but the last ones may be lost if the
    machine loses power. "full" fsyncs every commit, which costs about 0.3 ms here.
    """

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be normal or full")
        self.synchronous = synchronous
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for index in range(version, len(MIGRATIONS)):
                # executescript commits any open transaction first, so each migration carries
                # its own BEGIN/COMMIT: the schema change and its version bump land together.
                script = MIGRATIONS[index]
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {index + 1}; COMMIT;"
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a write block in one IMMEDIATE transaction: all of it commits, or none of it."""
        with self._begin("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Run a read block in one deferred transaction: a consistent snapshot that takes no
        write lock, so readers in other processes are not serialised behind it (WAL)."""
        with self._begin("BEGIN DEFERRED") as conn:
            yield conn

    @contextmanager
    def _begin(self, statement: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute(statement)
            try:
                yield self._conn
            except sqlite3.IntegrityError as error:
                self._conn.execute("ROLLBACK")
                raise store_error(error) from error
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
