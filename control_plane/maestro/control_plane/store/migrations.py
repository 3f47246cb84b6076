"""Schema migrations of every slice, recorded in one table on SQLite and PostgreSQL alike.

Each slice (projects, route, graph, and those to come) owns a numbered list of migrations in its
own `schema.py`; `maestro_schema_migrations` records `(slice, version)` once applied, so a slice
can add a migration without renumbering anyone else's. Migrations are written once, with `{json}`
(TEXT on SQLite, JSONB on PostgreSQL) and `{real}` (a double) where the dialects differ. Append
only: never edit a shipped migration.

Databases written before the table existed are recognised and recorded, not re-created: SQLite
files versioned by `PRAGMA user_version` (1: projects and keys, 2: route revisions, 3: graph),
and PostgreSQL databases whose table had one `version` column (graph only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLE = "maestro_schema_migrations"

LEGACY_SQLITE_VERSIONS: tuple[tuple[str, int], ...] = (("projects", 1), ("route", 1), ("graph", 1))
"""What `PRAGMA user_version` 1, 2 and 3 meant before the table existed."""
LEGACY_POSTGRES_SLICE = "graph"
"""The only slice a PostgreSQL database held before the table had a `slice` column."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a slice's schema. `sql` serves both dialects; `postgres_sql`, when given,
    replaces it on PostgreSQL (a data migration whose JSON functions differ, say)."""

    slice: str
    version: int
    sql: str
    postgres_sql: str | None = None

    def render(self, dialect: str) -> str:
        """The migration's SQL in one dialect (`sqlite` or `postgres`)."""
        if dialect == "postgres":
            sql = self.postgres_sql if self.postgres_sql is not None else self.sql
            return sql.replace("{json}", "JSONB").replace("{real}", "DOUBLE PRECISION")
        return self.sql.replace("{json}", "TEXT").replace("{real}", "REAL")


def pending(migrations: Sequence[Migration], applied: Iterable[tuple[str, int]]) -> list[Migration]:
    """The migrations not yet applied, in the order given (slices that depend on another's
    tables come after it)."""
    done = set(applied)
    return [m for m in migrations if (m.slice, m.version) not in done]


def check_order(migrations: Sequence[Migration]) -> None:
    """Each slice's versions must run 1, 2, 3, ... in the order given."""
    last: dict[str, int] = {}
    for m in migrations:
        if m.version != last.get(m.slice, 0) + 1:
            raise ValueError(f"migration {m.slice}/{m.version} is out of order")
        last[m.slice] = m.version
