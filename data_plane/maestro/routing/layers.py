"""Global and project routing config: how the two layers combine into one snapshot.

The reserved project `global` holds the operators' config. A project routes with both layers:
- YAML: the project's `model_list` entries are added to the global ones, which the project cannot
  replace; content-tag confinement only narrows; the other top-level blocks override the global
  ones key by key (`merge_layers`).
- Rego: the layers are not merged (rules of one package combine with OR, so a project module
  could widen a global rule). Each layer compiles into its own table and a deployment must be
  allowed by both: `LayeredPolicy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import yaml

from maestro.routing.engine import BoolArray, PolicyView
from maestro.routing.spec import GLOBAL_OWNER, OWNER_KEY, SHARED_KEY, SHARED_STATE_KEYS

GLOBAL_PROJECT = "projects/global"


def merge_layers(global_raw: dict[str, Any], project_raw: dict[str, Any]) -> dict[str, Any]:
    """The project's config data on top of the global config data (both already parsed).

    The global layer is a floor the project cannot lower:
    - `model_list`: the project's entries are added; the operator's are kept as they are and
      marked as the operator's (`maestro_owner: global`), so their state is shared and no project
      entry can stand in for one (a project entry with the same id is a duplicate-id error);
      the global `router_settings` that shape that shared state (breaker, admission) are
      copied into them, and a project's `router_settings` do not reach them.
    - `policies.content_tags`: every tag confined by either layer stays confined; a tag both
      confine may go only to the models both allow.
    - other blocks (`router_settings`, `router`, `telemetry`, ...): the project's keys override
      the global ones key by key (weights, aliases, fallbacks are the project's to choose).
    """
    merged: dict[str, Any] = dict(global_raw)
    shared = _shared_state_defaults(global_raw)
    merged["model_list"] = [
        *(_stamped(e, GLOBAL_OWNER, shared) for e in global_raw.get("model_list") or []),
        *(_stamped(e, None) for e in project_raw.get("model_list") or []),
    ]
    for key, value in project_raw.items():
        if key == "model_list":
            continue
        if key == "policies" and isinstance(value, dict):
            merged[key] = _narrowed_policies(global_raw.get(key), value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def own_entries(raw: dict[str, Any], project: str) -> dict[str, Any]:
    """Config data whose every `model_list` entry names its owner: an entry the merge marked
    as the operator's stays so, every other entry is `project`'s."""
    if project == GLOBAL_PROJECT or not isinstance(raw.get("model_list"), list):
        return raw
    project_id = project.removeprefix("projects/")
    entries = [
        e if _owner_of(e) == GLOBAL_OWNER else _stamped(e, project_id) for e in raw["model_list"]
    ]
    return {**raw, "model_list": entries}


def merged_yaml(merged: dict[str, Any]) -> str:
    return yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)


def _owner_of(entry: Any) -> Any:
    info = entry.get("model_info") if isinstance(entry, dict) else None
    return info.get(OWNER_KEY) if isinstance(info, dict) else None


def _shared_state_defaults(global_raw: dict[str, Any]) -> dict[str, Any]:
    """The global layer's `router_settings` values for state all projects share
    (`spec.SHARED_STATE_KEYS`)."""
    settings = global_raw.get("router_settings")
    if not isinstance(settings, dict):
        return {}
    return {key: settings[key] for key in SHARED_STATE_KEYS if key in settings}


def _stamped(entry: Any, owner: str | None, shared: dict[str, Any] | None = None) -> Any:
    """A copy of a model_list entry owned by `owner` (None: the marks removed), carrying the
    operator's `shared` router settings when given."""
    if not isinstance(entry, dict):
        return entry  # invalid; validation reports it with its path
    info = entry.get("model_info")
    info = dict(info) if isinstance(info, dict) else {}
    info.pop(OWNER_KEY, None)
    info.pop(SHARED_KEY, None)
    if owner is not None:
        info[OWNER_KEY] = owner
    if shared:
        info[SHARED_KEY] = shared
    if not info and "model_info" not in entry:
        return dict(entry)
    return {**entry, "model_info": info}


def _narrowed_policies(global_value: Any, project_value: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(global_value, dict):
        return project_value
    merged = {**global_value, **project_value}
    outer, inner = global_value.get("content_tags"), project_value.get("content_tags")
    if isinstance(outer, dict) and isinstance(inner, dict):
        tags: dict[Any, Any] = dict(outer)
        for tag, models in inner.items():
            if tag in tags and isinstance(models, list) and isinstance(tags[tag], list):
                tags[tag] = [m for m in tags[tag] if m in models]
            elif tag not in tags:
                tags[tag] = models
        merged["content_tags"] = tags
    elif isinstance(outer, dict):
        merged["content_tags"] = outer
    return merged


class LayeredPolicy:
    """Two compiled policy tables over the same models: allowed only where both allow."""

    def __init__(
        self, outer: PolicyView, inner: PolicyView, outer_label: str = "global policy: "
    ) -> None:
        if outer.models != inner.models:
            raise ValueError("layered policy tables must cover the same models, in order")
        self.models = inner.models
        self._outer = outer
        self._inner = inner
        self._outer_label = outer_label
        self._rows: dict[int, BoolArray] = {}

    @property
    def row_count(self) -> int:
        return self._outer.row_count * self._inner.row_count

    def tag_key(self, tags: frozenset[str]) -> int:
        return self._outer.tag_key(tags) * self._inner.row_count + self._inner.tag_key(tags)

    def allowed_row(self, key: int) -> BoolArray:
        row = self._rows.get(key)
        if row is None:
            outer, inner = divmod(key, self._inner.row_count)
            row = np.logical_and(self._outer.allowed_row(outer), self._inner.allowed_row(inner))
            row.setflags(write=False)
            self._rows[key] = row
        return row

    def reasons(self, key: int, model_index: int) -> tuple[str, ...]:
        outer, inner = divmod(key, self._inner.row_count)
        found: list[str] = []
        if not self._outer.allowed_row(outer)[model_index]:
            found += [f"{self._outer_label}{r}" for r in self._outer.reasons(outer, model_index)]
        if not self._inner.allowed_row(inner)[model_index]:
            found += list(self._inner.reasons(inner, model_index))
        return tuple(found)
