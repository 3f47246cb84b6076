"""The PostgreSQL store: a psycopg connection pool, versioned migrations, and LISTEN/NOTIFY.

Several control-plane replicas share one database. Migrations are numbered and recorded in
`maestro_schema_migrations`; each runs in its own transaction under an advisory lock, so
replicas starting together apply each exactly once. `listen` keeps one asyncio
connection in LISTEN mode and hands each notification's payload to a callback on the event loop,
which is how a change on one replica wakes watchers and runtimes on the others within
milliseconds instead of a poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from maestro.control_plane.graph.schema import postgres_schema
from maestro.control_plane.graph.sql import PostgresTx, Tx, json_text

MIGRATIONS: tuple[str, ...] = (postgres_schema(),)
"""Append only; never edit a shipped one."""
_LOCK_ID = 0x6D61_6573  # advisory lock key: 'maes'


class PostgresSql:
    kind = "postgres"
    lock_rows = " FOR UPDATE SKIP LOCKED"
    lock_row = " FOR UPDATE"
    inline = False

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self._dsn = dsn
        self._pool = _pool(dsn, min_size, max_size, autocommit=False)
        # Reads run outside a transaction (autocommit): one round trip per statement instead of
        # three; each read is one statement, or a few whose consistency does not matter.
        self._reads = _pool(dsn, min_size, max_size, autocommit=True)
        self._listeners: list[asyncio.Task[None]] = []
        self._migrate()

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS maestro_schema_migrations ("
                "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cursor = conn.cursor(row_factory=dict_row)
            row = cursor.execute(
                "SELECT max(version) AS v FROM maestro_schema_migrations"
            ).fetchone()
            version = int(row["v"] or 0) if row is not None else 0
            for index in range(version, len(MIGRATIONS)):
                conn.execute(MIGRATIONS[index].encode())  # our own DDL, not a literal
                conn.execute(
                    "INSERT INTO maestro_schema_migrations (version) VALUES (%s)", (index + 1,)
                )

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield PostgresTx(cursor)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._reads.connection() as conn, conn.cursor() as cursor:
            yield PostgresTx(cursor)

    def json_in(self, value: Any) -> str:
        return json_text(value)

    def json_out(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str | bytes) else value

    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        tx.run("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str, callback: Callable[[str], None]) -> asyncio.Task[None]:
        """Call `callback(payload)` on the event loop for each NOTIFY on `channel`, from an
        asyncio connection (no thread between the socket and the loop); reconnects when the
        database restarts. Cancel the task to stop."""

        async def loop() -> None:
            while True:
                try:
                    conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                    async with conn:
                        await conn.execute(f"LISTEN {channel}".encode())  # a fixed channel name
                        async for note in conn.notifies():
                            callback(note.payload)
                except psycopg.OperationalError:
                    await asyncio.sleep(0.5)

        task = asyncio.create_task(loop(), name=f"pg-listen-{channel}")
        self._listeners.append(task)
        return task

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
