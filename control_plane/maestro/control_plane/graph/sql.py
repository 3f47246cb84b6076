"""The two SQL databases the run store speaks, behind one small interface.

The run store's logic is written once, in `?`-placeholder SQL that both SQLite and PostgreSQL
accept; a `Sql` gives it transactions and says the little that differs: the placeholder style,
whether a locking read needs `FOR UPDATE SKIP LOCKED`, how JSON columns come back, and how to
wake other replicas (PostgreSQL `NOTIFY`; SQLite replicas share a host and poll).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import orjson

from maestro.control_plane.store.sqlite import Database

Row = dict[str, Any]


def json_text(value: Any) -> str:
    """JSON as text (SQLite stores bytes as BLOB); orjson is several times faster than json."""
    return orjson.dumps(value).decode()


class Tx(Protocol):
    """One open transaction."""

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        ...

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Execute once per row of parameters."""
        ...

    def pipeline(self) -> AbstractContextManager[None]:
        """Statements inside are sent without waiting for each answer (PostgreSQL pipeline
        mode); their results must not be read there."""
        ...


class Sql(Protocol):
    kind: str
    lock_rows: str
    """Suffix of a SELECT whose rows the transaction will update: PostgreSQL locks them."""
    lock_row: str
    """Suffix of a SELECT of the one row the transaction will update (waits for its lock)."""
    inline: bool
    """Calls are quick enough to make on the event loop: a thread hop costs more (about 0.1 ms
    here) than a SQLite commit that does not fsync."""

    def write(self) -> AbstractContextManager[Tx]: ...
    def read(self) -> AbstractContextManager[Tx]: ...
    def json_in(self, value: Any) -> str: ...
    def json_out(self, value: Any) -> Any: ...
    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        """Wake listeners of `channel` on other replicas when `tx` commits (no-op on SQLite)."""
        ...

    def close(self) -> None: ...


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
    """The embedded store: the process's SQLite database (WAL), whose migrations carry the graph
    schema."""

    kind = "sqlite"
    lock_rows = ""
    lock_row = ""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.inline = database.synchronous == "normal"

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self._database.transaction() as conn:
            yield _SqliteTx(conn)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._database.read() as conn:
            yield _SqliteTx(conn)

    def json_in(self, value: Any) -> str:
        return json_text(value)

    def json_out(self, value: Any) -> Any:
        return orjson.loads(value) if isinstance(value, str | bytes) else value

    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        return None

    def close(self) -> None:
        return None


_PLACEHOLDER = re.compile(r"\?")


def to_pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (the store's SQL has no literal `?` or `%`)."""
    return _PLACEHOLDER.sub("%s", sql)


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
