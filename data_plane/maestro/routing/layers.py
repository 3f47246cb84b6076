"""Global and project routing config: how the two layers combine into one snapshot.

The reserved project `global` holds the operators' config. A project routes with both layers:
- YAML: the project's `model_list` entries are added to the global ones, and an entry with the
  same `model_name` and deployment id replaces the global one; the other top-level blocks
  (`router_settings`, `router`, `policies`, `telemetry`, ...) override the global ones key by key.
- Rego: the layers are not merged (rules of one package combine with OR, so a project module
  could widen a global rule). Each layer compiles into its own table and a deployment must be
  allowed by both: `LayeredPolicy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import yaml

from maestro.routing.engine import BoolArray, PolicyView
from maestro.routing.spec import derived_deployment_id

GLOBAL_PROJECT = "projects/global"


def merge_layers(global_raw: dict[str, Any], project_raw: dict[str, Any]) -> dict[str, Any]:
    """The project's config data on top of the global config data (both already parsed)."""
    merged: dict[str, Any] = dict(global_raw)
    for key, value in project_raw.items():
        if key == "model_list":
            merged[key] = _merge_model_lists(global_raw.get(key) or [], value or [])
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def merged_yaml(merged: dict[str, Any]) -> str:
    return yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)


def _merge_model_lists(global_list: list[Any], project_list: list[Any]) -> list[Any]:
    by_key: dict[tuple[str, str], Any] = {}
    for entry in [*global_list, *project_list]:
        by_key[_entry_key(entry)] = entry  # a later (project) entry replaces an earlier one
    return list(by_key.values())


def _entry_key(entry: Any) -> tuple[str, str]:
    if not isinstance(entry, dict):
        return ("", repr(entry))  # invalid; validation reports it with its path
    name = str(entry.get("model_name", ""))
    info = entry.get("model_info") if isinstance(entry.get("model_info"), dict) else {}
    explicit = info.get("id") if info else None
    params = entry.get("litellm_params") if isinstance(entry.get("litellm_params"), dict) else {}
    full = {"api_base": None, "api_key": None, **(params or {})}
    return name, str(explicit) if explicit else derived_deployment_id(name, full)


class LayeredPolicy:
    """Two compiled policy tables over the same models: allowed only where both allow."""

    def __init__(self, outer: PolicyView, inner: PolicyView) -> None:
        if outer.models != inner.models:
            raise ValueError("layered policy tables must cover the same models, in order")
        self.models = inner.models
        self._outer = outer
        self._inner = inner
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
            found += [f"global policy: {r}" for r in self._outer.reasons(outer, model_index)]
        if not self._inner.allowed_row(inner)[model_index]:
            found += list(self._inner.reasons(inner, model_index))
        return tuple(found)
