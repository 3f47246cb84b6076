"""The PostgreSQL store: a psycopg connection pool, the migrations, and LISTEN/NOTIFY.

Several control-plane replicas share one database. Migrations run at start in one transaction
under an advisory lock, so replicas starting together apply each exactly once. `listen` keeps
one asyncio connection in LISTEN mode and hands each notification's payload to a callback on the
event loop, which is how a change on one replica reaches the others within milliseconds instead
of a poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from maestro.control_plane.store import migrations
from maestro.control_plane.store.errors import RowConflict, RowNotFound, StoreError
from maestro.control_plane.store.migrations import Migration
from maestro.control_plane.store.sql import Row, Tx, json_text, to_pyformat
from maestro.core.errors import FieldViolation, InvalidArgument

_LOCK_ID = 0x6D61_6573  # advisory lock key: 'maes'


class PostgresTx:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def pipeline(self) -> AbstractContextManager[None]:
        return self._cursor.connection.pipeline()  # type: ignore[no-any-return]

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(to_pyformat(sql), tuple(params))
        return list(self._cursor.fetchall()) if self._cursor.description else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(to_pyformat(sql), tuple(params))
        row = self._cursor.fetchone() if self._cursor.description else None
        return dict(row) if row is not None else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(to_pyformat(sql), tuple(params))
        return int(self._cursor.rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(to_pyformat(sql), rows)


def store_error(error: psycopg.IntegrityError) -> StoreError:
    if isinstance(error, pg_errors.UniqueViolation):
        return RowConflict(str(error))
    if isinstance(error, pg_errors.ForeignKeyViolation):
        return RowNotFound(str(error))
    return StoreError(str(error))


class PostgresSql:
    kind = "postgres"
    lock_rows = " FOR UPDATE SKIP LOCKED"
    lock_row = " FOR UPDATE"
    inline = False
    shared = True

    def __init__(
        self,
        dsn: str,
        schema: Sequence[Migration],
        *,
        min_size: int = 1,
        max_size: int = 8,
    ) -> None:
        self._dsn = dsn
        self._pool = _pool(dsn, min_size, max_size, autocommit=False)
        # Reads run outside a transaction (autocommit): one round trip per statement instead of
        # three; each read is one statement, or a few whose consistency does not matter.
        self._reads = _pool(dsn, min_size, max_size, autocommit=True)
        self._listeners: list[asyncio.Task[None]] = []
        try:
            self._migrate(schema)
        except BaseException:
            self.close()
            raise

    def _migrate(self, schema: Sequence[Migration]) -> None:
        migrations.check_order(schema)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cursor = conn.cursor(row_factory=dict_row)
            columns = {
                row["column_name"]
                for row in cursor.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = %s",
                    (migrations.TABLE,),
                ).fetchall()
            }
            legacy: list[int] = []
            if columns and "slice" not in columns:
                legacy = [
                    int(row["version"])
                    for row in cursor.execute(f"SELECT version FROM {migrations.TABLE}").fetchall()
                ]
                conn.execute(f"DROP TABLE {migrations.TABLE}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {migrations.TABLE} ("
                "slice TEXT NOT NULL, version INTEGER NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (slice, version))"
            )
            for version in legacy:
                conn.execute(
                    f"INSERT INTO {migrations.TABLE} (slice, version) VALUES (%s, %s)",
                    (migrations.LEGACY_POSTGRES_SLICE, version),
                )
            applied = [
                (row["slice"], int(row["version"]))
                for row in cursor.execute(f"SELECT slice, version FROM {migrations.TABLE}")
            ]
            for migration in migrations.pending(schema, applied):
                conn.execute(migration.render("postgres").encode())
                conn.execute(
                    f"INSERT INTO {migrations.TABLE} (slice, version) VALUES (%s, %s)",
                    (migration.slice, migration.version),
                )

    @contextmanager
    def write(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                yield PostgresTx(cursor)
        except psycopg.IntegrityError as error:
            raise store_error(error) from error
        except psycopg.DataError as error:
            raise unstorable(error) from error

    @contextmanager
    def read(self) -> Iterator[Tx]:
        try:
            with self._reads.connection() as conn, conn.cursor() as cursor:
                yield PostgresTx(cursor)
        except psycopg.DataError as error:
            raise unstorable(error) from error

    def json_in(self, value: Any) -> str:
        return json_text(value)

    def json_out(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str | bytes) else value

    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        tx.run("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """Call `callback(payload)` on the event loop for each NOTIFY on `channel`, from an
        asyncio connection (no thread between the socket and the loop); reconnects when the
        database restarts. `on_reconnect` is called each time listening starts, the first time
        included: what was committed before (or while disconnected) was not notified to it."""

        async def loop() -> None:
            while True:
                try:
                    conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                    async with conn:
                        await conn.execute(f"LISTEN {channel}".encode())  # a fixed channel name
                        if on_reconnect is not None:
                            on_reconnect()
                        async for note in conn.notifies():
                            callback(note.payload)
                except psycopg.OperationalError:
                    await asyncio.sleep(0.5)

        self._listeners.append(asyncio.create_task(loop(), name=f"pg-listen-{channel}"))

    async def stop_listening(self) -> None:
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        self._listeners.clear()

    def close(self) -> None:
        self._pool.close()
        self._reads.close()


def _pool(dsn: str, min_size: int, max_size: int, *, autocommit: bool) -> ConnectionPool:
    return ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": autocommit},
        open=True,
    )


def unstorable(error: psycopg.DataError) -> InvalidArgument:
    """A value PostgreSQL cannot hold (a NUL character in text or JSON, a number out of range):
    the request's doing, so INVALID_ARGUMENT rather than INTERNAL. SQLite holds such values."""
    return InvalidArgument(
        [
            FieldViolation(
                "request",
                "a value cannot be stored: text must not contain NUL (U+0000) characters and "
                "numbers must be in range",
            )
        ],
        reason="UNSTORABLE_VALUE",
    )
