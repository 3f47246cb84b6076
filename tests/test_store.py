"""The SQLite store: versioned migrations, atomic transactions, data kept across restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from maestro.control_plane.projects.store import ProjectStore
from maestro.control_plane.store.sqlite import MIGRATIONS, Database


def test_reopening_keeps_data_and_does_not_rerun_migrations(tmp_path: Path) -> None:
    path = tmp_path / "maestro.db"
    first = Database(path)
    ProjectStore(first).create_project("projects/alpha", "Alpha", datetime.now(UTC))
    first.close()
    second = Database(path)
    with second.read() as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    record = ProjectStore(second).get_project("projects/alpha")
    second.close()
    assert version == len(MIGRATIONS)
    assert record is not None
    assert record.display_name == "Alpha"


def test_failed_transaction_stores_nothing(tmp_path: Path) -> None:
    database = Database(tmp_path / "maestro.db")

    def insert_then_crash() -> None:
        with database.transaction() as conn:
            conn.execute(
                "INSERT INTO projects(name, display_name, create_time) "
                "VALUES ('projects/x', '', '')"
            )
            raise RuntimeError("crash half-way")

    with pytest.raises(RuntimeError):
        insert_then_crash()
    assert ProjectStore(database).get_project("projects/x") is None
    database.close()


def test_creating_an_existing_project_keeps_the_original(tmp_path: Path) -> None:
    database = Database(tmp_path / "maestro.db")
    store = ProjectStore(database)
    assert store.create_project("projects/alpha", "first", datetime.now(UTC)) is not None
    assert store.create_project("projects/alpha", "second", datetime.now(UTC)) is None
    record = store.get_project("projects/alpha")
    database.close()
    assert record is not None
    assert record.display_name == "first"
