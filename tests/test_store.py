"""The one store layer, on SQLite and on a real PostgreSQL: transactions, typed errors, the
projects/keys and route-config slices, and migrations recorded per slice."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from maestro.control_plane.projects.store import ApiKeyRecord, ProjectStore
from maestro.control_plane.route.store import RouteConfigStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.errors import RowConflict, RowNotFound
from maestro.control_plane.store.migrations import Migration
from maestro.control_plane.store.postgres import PostgresSql
from maestro.control_plane.store.sql import Sql
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.routing.policy import PolicyModule
from maestro.routing.snapshots import Revision

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _key(name: str, project: str = "projects/alpha", at: datetime = NOW) -> ApiKeyRecord:
    return ApiKeyRecord(
        f"{project}/apiKeys/{name}", project, name, "mk_" + name, at, frozenset({"inference"}), ""
    )


def _append(
    store: RouteConfigStore,
    project: str = "projects/alpha",
    *,
    request_id: str | None = None,
    expected_revision: int | None = None,
) -> tuple[Revision, bool] | None:
    return store.append(
        project,
        "model_list: []",
        (),
        description="",
        creator="",
        request_id=request_id,
        expected_revision=expected_revision,
    )


# -- the layer ------------------------------------------------------------------------------


def test_a_failed_transaction_stores_nothing(store_sql: Sql) -> None:
    def insert_then_crash() -> None:
        with store_sql.write() as tx:
            tx.run(
                "INSERT INTO projects(name, display_name, create_time) "
                "VALUES ('projects/x', '', '')"
            )
            raise RuntimeError("crash half-way")

    with pytest.raises(RuntimeError):
        insert_then_crash()
    assert ProjectStore(store_sql).get_project("projects/x") is None


def test_a_duplicate_key_is_a_row_conflict_and_leaves_the_first_row(store_sql: Sql) -> None:
    projects = ProjectStore(store_sql)
    projects.create_project("projects/alpha", "", NOW)
    projects.insert_key(_key("a"), "same-hash", None)
    with pytest.raises(RowConflict):
        projects.insert_key(_key("b"), "same-hash", None)
    assert projects.find_key_by_hash("same-hash") == _key("a")


def test_a_missing_referenced_row_is_row_not_found(store_sql: Sql) -> None:
    with pytest.raises(RowNotFound):
        ProjectStore(store_sql).insert_key(_key("a", "projects/ghost"), "h", None)


# -- projects and keys ----------------------------------------------------------------------


def test_creating_an_existing_project_keeps_the_original(store_sql: Sql) -> None:
    store = ProjectStore(store_sql)
    assert store.create_project("projects/alpha", "first", NOW) is not None
    assert store.create_project("projects/alpha", "second", NOW) is None
    record = store.get_project("projects/alpha")
    assert record is not None
    assert (record.display_name, record.create_time) == ("first", NOW)


def test_a_key_retried_with_its_request_id_returns_the_first_key(store_sql: Sql) -> None:
    store = ProjectStore(store_sql)
    store.create_project("projects/alpha", "", NOW)
    first, created = store.insert_key(_key("a"), "h1", "req-1")
    again, created_again = store.insert_key(_key("b"), "h2", "req-1")
    assert (created, created_again) == (True, False)
    assert again == first
    assert store.find_key_by_hash("h2") is None


def test_keys_list_newest_first_in_pages_and_deleting_one_removes_it(store_sql: Sql) -> None:
    store = ProjectStore(store_sql)
    store.create_project("projects/alpha", "", NOW)
    for index in range(5):
        store.insert_key(_key(f"k{index}", at=NOW + timedelta(seconds=index)), f"h{index}", None)
    first = store.list_keys("projects/alpha", 2, None)
    last = first[-1]
    rest = store.list_keys("projects/alpha", 10, (last.create_time.isoformat(), last.name))
    assert [k.display_name for k in [*first, *rest]] == ["k4", "k3", "k2", "k1", "k0"]
    assert store.delete_key("projects/alpha/apiKeys/k2") is True
    assert store.delete_key("projects/alpha/apiKeys/k2") is False
    assert store.get_key("projects/alpha/apiKeys/k2") is None


def test_keys_of_one_project_are_not_listed_for_another(store_sql: Sql) -> None:
    store = ProjectStore(store_sql)
    for project in ("projects/alpha", "projects/beta"):
        store.create_project(project, "", NOW)
    store.insert_key(_key("a"), "h", None)
    assert store.list_keys("projects/beta", 10, None) == []


# -- route configs --------------------------------------------------------------------------


def test_revisions_number_from_one_and_keep_their_content(store_sql: Sql) -> None:
    ProjectStore(store_sql).create_project("projects/alpha", "", NOW)
    store = RouteConfigStore(store_sql)
    modules = (PolicyModule("routing.rego", "package maestro.routing"),)
    first = store.append(
        "projects/alpha", "a: 1", modules, description="d", creator="k",
        request_id=None, expected_revision=0,
    )  # fmt: skip
    second = _append(store, expected_revision=1)
    assert first is not None
    assert second is not None
    assert (first[0].revision, second[0].revision) == (1, 2)
    stored = store.get("projects/alpha", 1)
    assert stored == first[0]
    assert stored is not None
    assert stored.policy_modules == modules
    assert [r.revision for r in store.page("projects/alpha", 10, None)] == [2, 1]
    assert [r.revision for r in store.page("projects/alpha", 10, 2)] == [1]
    assert store.projects_with_config() == ["projects/alpha"]


def test_an_append_expecting_an_old_revision_is_refused(store_sql: Sql) -> None:
    ProjectStore(store_sql).create_project("projects/alpha", "", NOW)
    store = RouteConfigStore(store_sql)
    _append(store, expected_revision=0)
    assert _append(store, expected_revision=0) is None
    latest = store.latest("projects/alpha")
    assert latest is not None
    assert latest.revision == 1


def test_an_append_retried_with_its_request_id_returns_the_first_revision(store_sql: Sql) -> None:
    ProjectStore(store_sql).create_project("projects/alpha", "", NOW)
    store = RouteConfigStore(store_sql)
    first = _append(store, request_id="r")
    again = _append(store, request_id="r")
    assert first is not None
    assert again is not None
    assert again == (first[0], False)


def test_an_append_to_a_missing_project_is_row_not_found(store_sql: Sql) -> None:
    with pytest.raises(RowNotFound):
        _append(RouteConfigStore(store_sql), "projects/ghost")


def test_concurrent_appends_never_fork_revision_numbers(store_sql: Sql) -> None:
    """Writers that do not say which revision they expect all land, one number each."""
    ProjectStore(store_sql).create_project("projects/alpha", "", NOW)
    store = RouteConfigStore(store_sql)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(10):
                _append(store)
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    numbers = [r.revision for r in store.page("projects/alpha", 100, None)]
    assert numbers == list(range(40, 0, -1))


# -- migrations -----------------------------------------------------------------------------


def test_reopening_keeps_data_and_applies_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "maestro.db"
    first = SqliteSql(path, MIGRATIONS)
    ProjectStore(first).create_project("projects/alpha", "Alpha", NOW)
    first.close()
    second = SqliteSql(path, MIGRATIONS)
    with second.read() as tx:
        applied = tx.all(
            "SELECT slice, version FROM maestro_schema_migrations ORDER BY slice, version"
        )
    record = ProjectStore(second).get_project("projects/alpha")
    second.close()
    assert [(r["slice"], r["version"]) for r in applied] == [
        (m.slice, m.version) for m in sorted(MIGRATIONS, key=lambda m: (m.slice, m.version))
    ]
    assert record is not None
    assert record.display_name == "Alpha"


def test_postgres_replicas_starting_apply_each_migration_once(postgres_dsn: str) -> None:
    replicas = [PostgresSql(postgres_dsn, MIGRATIONS) for _ in range(2)]
    for replica in replicas:
        replica.close()
    with psycopg.connect(postgres_dsn) as conn:
        applied = conn.execute(
            "SELECT slice, version FROM maestro_schema_migrations ORDER BY slice, version"
        ).fetchall()
        state_type = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'agent_runs' AND column_name = 'state'"
        ).fetchone()
    assert applied == [
        (m.slice, m.version) for m in sorted(MIGRATIONS, key=lambda m: (m.slice, m.version))
    ]
    assert state_type == ("jsonb",)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_slice_added_later_gets_its_tables_in_an_existing_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What the coming scorecard and rollout slices do: append their own migrations."""
    later = (*MIGRATIONS, Migration("later", 1, "CREATE TABLE later_things (id TEXT PRIMARY KEY)"))

    def open_with(schema: tuple[Migration, ...]) -> Sql:
        if backend == "sqlite":
            return SqliteSql(tmp_path / "maestro.db", schema)
        return PostgresSql(request.getfixturevalue("postgres_dsn"), schema)

    before = open_with(MIGRATIONS)
    ProjectStore(before).create_project("projects/alpha", "", NOW)
    before.close()
    after = open_with(later)
    with after.write() as tx:
        tx.run("INSERT INTO later_things (id) VALUES ('x')")
    with after.read() as tx:
        things = tx.all("SELECT id FROM later_things")
        versions = tx.all("SELECT slice FROM maestro_schema_migrations WHERE slice = 'later'")
    kept = ProjectStore(after).get_project("projects/alpha")
    after.close()
    assert things == [{"id": "x"}]
    assert versions == [{"slice": "later"}]
    assert kept is not None


def test_migrations_out_of_order_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of order"):
        SqliteSql(tmp_path / "maestro.db", (*MIGRATIONS, Migration("later", 2, "SELECT 1")))
