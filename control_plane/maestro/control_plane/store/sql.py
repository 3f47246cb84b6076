"""The one SQL interface every slice stores through, whichever database is behind it.

A slice's store writes its SQL once, with `?` placeholders that both SQLite and PostgreSQL
accept; a `Sql` gives it transactions and says the little that differs: whether a locking read
needs `FOR UPDATE`, how JSON columns come back, and how to wake other replicas (PostgreSQL
`NOTIFY`/`LISTEN`; an SQLite file belongs to one process). Integrity errors come out as the
store errors of `errors.py`, never as a driver's exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import orjson

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
    """`sqlite` or `postgres`."""
    lock_rows: str
    """Suffix of a SELECT whose rows the transaction will update: PostgreSQL locks them."""
    lock_row: str
    """Suffix of a SELECT of the one row the transaction will update (waits for its lock)."""
    inline: bool
    """Calls are quick enough to make on the event loop: a thread hop costs more (about 0.1 ms
    here) than a SQLite commit that does not fsync."""
    shared: bool
    """Other processes (replicas) write the same database: changes they commit arrive through
    `listen`."""

    def write(self) -> AbstractContextManager[Tx]: ...
    def read(self) -> AbstractContextManager[Tx]: ...
    def json_in(self, value: Any) -> str: ...
    def json_out(self, value: Any) -> Any: ...
    def notify(self, tx: Tx, channel: str, payload: str) -> None:
        """Wake listeners of `channel` on every replica when `tx` commits (no-op on SQLite)."""
        ...

    def listen(
        self,
        channel: str,
        callback: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """Call `callback(payload)` on the event loop for each notification on `channel` from
        any replica (no-op on SQLite), and `on_reconnect()` each time listening starts (the
        first time included), since what was committed before it was not notified. Call it on
        the event loop."""
        ...

    async def stop_listening(self) -> None: ...
    def close(self) -> None: ...


_PLACEHOLDER = re.compile(r"\?")


def to_pyformat(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (the stores' SQL has no literal `?` or `%`)."""
    return _PLACEHOLDER.sub("%s", sql)
