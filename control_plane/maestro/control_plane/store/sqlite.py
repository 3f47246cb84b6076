"""The embedded store: one SQLite file in WAL mode, shared by the threads of one process.

Calls are synchronous and short; async callers run them in a worker thread (`asyncio.to_thread`)
or inline where a commit costs less than the thread hop (`inline`).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from maestro.control_plane.store import migrations
from maestro.control_plane.store.errors import RowConflict, RowNotFound, StoreError
from maestro.control_plane.store.migrations import Migration
from maestro.control_plane.store.sql import Row, Tx, json_text

_SLICE_NAME = re.compile(r"^[a-z_]+$")


def store_error(error: sqlite3.IntegrityError) -> StoreError:
    """The store error an integrity error stands for (SQLite tells them apart by message)."""
    text = str(error)
    if "FOREIGN KEY" in text:
        return RowNotFound(text)
    if "UNIQUE" in text or "PRIMARY KEY" in text:
        return RowConflict(text)
    return StoreError(text)


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(row) for row in self._conn.execute(sql, tuple(params))]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def pipeline(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


class SqliteSql:
    """A SQLite connection shared by the threads that serve one process, serialised by a lock.

    `synchronous`: "normal" (default) syncs the WAL at checkpoints, not at every commit; a commit
    survives the process being killed (tested with SIGKILL) but the last ones may be lost if the
    machine loses power. "full" fsyncs every commit, which costs about 0.3 ms here.
    """

    kind = "sqlite"
    lock_rows = ""
    lock_row = ""
    shared = False

    def __init__(
        self, path: Path, schema: Sequence[Migration], synchronous: str = "normal"
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be normal or full")
        self.synchronous = synchronous
        self.inline = synchronous == "normal"
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._migrate(schema)

    def _migrate(self, schema: Sequence[Migration]) -> None:
        migrations.check_order(schema)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._record_legacy()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            applied = [
                (row["slice"], row["version"])
                for row in self._conn.execute(f"SELECT slice, version FROM {migrations.TABLE}")
            ]
            for migration in migrations.pending(schema, applied):
                if not _SLICE_NAME.fullmatch(migration.slice):
                    raise ValueError(f"bad slice name {migration.slice!r}")
                # executescript commits any open transaction first, so each migration carries
                # its own BEGIN/COMMIT: the schema change and its record land together.
                self._conn.executescript(
                    f"BEGIN IMMEDIATE; {migration.render('sqlite')};"
                    f" INSERT INTO {migrations.TABLE} (slice, version, applied_at) VALUES"
                    f" ('{migration.slice}', {int(migration.version)}, '{_now()}'); COMMIT;"
                )

    def _record_legacy(self) -> None:
        """Create the migrations table; in a file that predates it, record what its
        `user_version` says was applied."""
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (migrations.TABLE,)
        ).fetchone()
        if exists:
            return
        self._conn.execute(
            f"CREATE TABLE {migrations.TABLE} (slice TEXT NOT NULL, version INTEGER NOT NULL,"
            " applied_at TEXT NOT NULL, PRIMARY KEY (slice, version))"
        )
        legacy = self._conn.execute("PRAGMA user_version").fetchone()[0]
        self._conn.executemany(
            f"INSERT INTO {migrations.TABLE} (slice, version, applied_at) VALUES (?, ?, ?)",
            [(s, v, _now()) for s, v in migrations.LEGACY_SQLITE_VERSIONS[:legacy]],
        )

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """One IMMEDIATE transaction: all of it commits, or none of it."""
        with self._begin("BEGIN IMMEDIATE") as conn:
            yield _SqliteTx(conn)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """One deferred transaction: a consistent snapshot that takes no write lock, so readers
        in other processes are not serialised behind it (WAL)."""
        with self._begin("BEGIN DEFERRED") as conn:
            yield _SqliteTx(conn)

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

    def json_in(self, value: Any) -> str:
        return json_text(value)

    def json_out(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str | bytes) else value

    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        return None

    def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        return None

    async def stop_listening(self) -> None:
        return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()
