"""Recipes as GraphService serves them: each project's own (stored, with every revision) and the
built-in ones, which live in the reserved project `builtin`: readable by everyone, runnable in
any project, never writable. A recipe revision is parsed once per process.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from maestro.control_plane.graph.recipe import Recipe, parse_recipe
from maestro.control_plane.graph.recipe_store import RecipeStore
from maestro.control_plane.graph.records import RecipeRecord
from maestro.control_plane.graph.store import etag_of
from maestro.core import names, paging
from maestro.core.auth import Principal, require_project
from maestro.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied

BUILTIN = "builtin"
_RECIPE = re.compile(rf"^projects/({names.PROJECT_ID})/recipes/({names.RESOURCE_ID})(?:@(\w+))?$")


def builtin_recipes() -> dict[str, RecipeRecord]:
    folder = resources.files("maestro.control_plane.graph") / "recipes"
    out = {}
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".yaml"):
            recipe_id = item.name.removesuffix(".yaml").replace("_", "-")
            source = item.read_text()
            revision = etag_of(source)[:12]
            out[recipe_id] = RecipeRecord(BUILTIN, recipe_id, revision, recipe_id, source, 0.0, 0.0)
    return out


class RecipeCatalog:
    def __init__(self, store: RecipeStore) -> None:
        self.store = store
        self.builtins = builtin_recipes()
        self._parsed: dict[str, Recipe] = {}

    def name_parts(self, name: str, field: str) -> tuple[str, str, str]:
        """(project, recipe id, revision or "") of `projects/{p}/recipes/{r}[@revision]`;
        INVALID_ARGUMENT naming `field` otherwise."""
        match = _RECIPE.fullmatch(name)
        if match is None:
            raise InvalidArgument(
                [FieldViolation(field, "expected projects/{project}/recipes/{recipe}[@revision]")]
            )
        return match.group(1), match.group(2), match.group(3) or ""

    async def get(self, principal: Principal, name: str) -> RecipeRecord:
        project, recipe_id, revision = self.name_parts(name, "name")
        if project == BUILTIN:
            record = self.builtins.get(recipe_id)
            if record is None or (revision and revision != record.revision_id):
                raise NotFound(f"recipe {name!r} not found", reason="RECIPE_NOT_FOUND")
            return record
        require_project(principal, project)
        return await self.store.aio(self.store.get_recipe, project, recipe_id, revision)

    def parsed(self, record: RecipeRecord) -> Recipe:
        key = f"{record.name}@{record.revision_id}"
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = parse_recipe(record.source_yaml)
            self._parsed[key] = parsed
        return parsed

    async def page(
        self, principal: Principal, parent: str, size: int, token: str
    ) -> tuple[list[RecipeRecord], str]:
        project = names.parse_project_name(parent, "parent")
        limit = paging.page_size(size)
        after = paging.decode_token(token, parent)
        if project == BUILTIN:
            items = [r for k, r in self.builtins.items() if after is None or k > after[0]]
        else:
            require_project(principal, project)
            items = await self.store.aio(
                self.store.list_recipes, project, after[0] if after else None, limit + 1
            )
        return paging.page_of(items, limit, parent, lambda r: [r.recipe_id])

    async def put(
        self,
        principal: Principal,
        project: str,
        recipe_id: str,
        source: str,
        display_name: str,
        *,
        create: bool,
        etag: str = "",
    ) -> RecipeRecord:
        """Create a recipe, or give it a new revision; a bad recipe is INVALID_ARGUMENT naming
        each problem's field and line, and nothing is stored."""
        if project == BUILTIN:
            raise PermissionDenied("built-in recipes are read-only", reason="BUILTIN_READ_ONLY")
        require_project(principal, project)
        parse_recipe(source)
        return await self.store.aio(
            functools.partial(self.store.put_recipe, create=create, etag=etag),
            project,
            recipe_id,
            source,
            display_name,
        )

    async def delete(self, principal: Principal, name: str, etag: str) -> None:
        project, recipe_id, _ = self.name_parts(name, "name")
        if project == BUILTIN:
            raise PermissionDenied("built-in recipes are read-only", reason="BUILTIN_READ_ONLY")
        require_project(principal, project)
        await self.store.aio(self.store.delete_recipe, project, recipe_id, etag)
