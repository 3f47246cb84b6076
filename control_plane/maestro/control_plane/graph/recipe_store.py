"""The recipe store: each project's recipes and every revision of them.

A run pins the revision it was created with (`agent_runs.recipe_source`), so a recipe may change
while runs of it go on; it may not be deleted while one of them is unfinished. Written once over
`store.sql.Sql`, like the run store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from maestro.control_plane.graph.records import UNFINISHED, RecipeRecord
from maestro.control_plane.graph.store import call_store
from maestro.control_plane.store.errors import once_more_on_conflict
from maestro.control_plane.store.sql import Row, Sql
from maestro.core.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound

T = TypeVar("T")


class RecipeStore:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    async def aio(self, call: Callable[..., T], *args: Any) -> T:
        return await call_store(self.sql, call, *args)

    def _recipe(self, row: Row, project: str, recipe_id: str) -> RecipeRecord:
        return RecipeRecord(
            project,
            recipe_id,
            row["revision_id"],
            row.get("display_name", ""),
            row["source_yaml"],
            float(row["create_time"]),
            float(row.get("update_time") or row["create_time"]),
        )

    @once_more_on_conflict
    def put_recipe(
        self,
        project: str,
        recipe_id: str,
        source_yaml: str,
        display_name: str,
        *,
        create: bool,
        etag: str = "",
    ) -> RecipeRecord:
        """Create a recipe, or give an existing one a new revision."""
        now = time.time()
        revision = uuid.uuid4().hex[:12]
        with self.sql.write() as tx:
            # Locked, and changed in place below: concurrent updates queue on the row instead
            # of racing a delete and re-insert of it.
            row = tx.one(
                "SELECT * FROM graph_recipes WHERE project = ? AND recipe_id = ?"
                + self.sql.lock_row,
                (project, recipe_id),
            )
            if create and row is not None:
                raise AlreadyExists(
                    f"recipe projects/{project}/recipes/{recipe_id} exists already",
                    reason="RECIPE_EXISTS",
                )
            if not create and row is None:
                raise NotFound(
                    f"recipe projects/{project}/recipes/{recipe_id} not found",
                    reason="RECIPE_NOT_FOUND",
                )
            if row is not None and etag and etag != row["revision_id"]:
                raise Aborted("the recipe changed since it was read", reason="ETAG_MISMATCH")
            created = float(row["create_time"]) if row is not None else now
            if row is not None:
                tx.run(
                    "UPDATE graph_recipes SET revision_id = ?, display_name = ?, source_yaml = ?, "
                    "update_time = ? WHERE project = ? AND recipe_id = ?",
                    (revision, display_name, source_yaml, now, project, recipe_id),
                )
            else:  # a concurrent create wins the key: RowConflict, and the retry says exists
                tx.run(
                    "INSERT INTO graph_recipes (project, recipe_id, revision_id, display_name, "
                    "source_yaml, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (project, recipe_id, revision, display_name, source_yaml, created, now),
                )
            tx.run(
                "INSERT INTO graph_recipe_revisions (project, recipe_id, revision_id, "
                "source_yaml, create_time) VALUES (?, ?, ?, ?, ?)",
                (project, recipe_id, revision, source_yaml, now),
            )
        return RecipeRecord(project, recipe_id, revision, display_name, source_yaml, created, now)

    def get_recipe(self, project: str, recipe_id: str, revision: str = "") -> RecipeRecord:
        with self.sql.read() as tx:
            head = tx.one(
                "SELECT * FROM graph_recipes WHERE project = ? AND recipe_id = ?",
                (project, recipe_id),
            )
            row = head
            if head is not None and revision and revision != head["revision_id"]:
                row = tx.one(
                    "SELECT * FROM graph_recipe_revisions WHERE project = ? AND recipe_id = ? "
                    "AND revision_id = ?",
                    (project, recipe_id, revision),
                )
        if head is None or row is None:
            what = f"@{revision}" if head is not None else ""
            raise NotFound(
                f"recipe projects/{project}/recipes/{recipe_id}{what} not found",
                reason="RECIPE_NOT_FOUND",
            )
        record = self._recipe(row, project, recipe_id)
        if row is not head:
            return RecipeRecord(
                project,
                recipe_id,
                record.revision_id,
                head["display_name"],
                record.source_yaml,
                float(head["create_time"]),
                record.create_time,
            )
        return record

    def list_recipes(self, project: str, after: str | None, limit: int) -> list[RecipeRecord]:
        sql, params = "SELECT * FROM graph_recipes WHERE project = ?", [project]
        if after is not None:
            sql += " AND recipe_id > ?"
            params.append(after)
        with self.sql.read() as tx:
            rows = tx.all(sql + " ORDER BY recipe_id LIMIT ?", [*params, limit])
        return [self._recipe(row, project, row["recipe_id"]) for row in rows]

    def delete_recipe(self, project: str, recipe_id: str, etag: str = "") -> None:
        name = f"projects/{project}/recipes/{recipe_id}"
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT revision_id FROM graph_recipes WHERE project = ? AND recipe_id = ?",
                (project, recipe_id),
            )
            if row is None:
                raise NotFound(f"recipe {name} not found", reason="RECIPE_NOT_FOUND")
            if etag and etag != row["revision_id"]:
                raise Aborted("the recipe changed since it was read", reason="ETAG_MISMATCH")
            marks = ", ".join("?" * len(UNFINISHED))
            busy = tx.one(
                f"SELECT name FROM agent_runs WHERE recipe = ? AND status IN ({marks}) LIMIT 1",
                [name, *(int(s) for s in UNFINISHED)],
            )
            if busy is not None:
                raise FailedPrecondition(
                    f"run {busy['name']} of this recipe is not finished",
                    reason="RECIPE_IN_USE",
                    metadata={"run": busy["name"]},
                )
            for table in ("graph_recipes", "graph_recipe_revisions"):
                tx.run(
                    f"DELETE FROM {table} WHERE project = ? AND recipe_id = ?", (project, recipe_id)
                )
