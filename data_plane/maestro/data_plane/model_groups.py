"""ListModels: the model groups of a project's snapshot, filtered and paged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from maestro.core import paging
from maestro.core.paging import BOOL, STRING, Kind, parse_filter
from maestro.routing.layers import GLOBAL_PROJECT
from maestro.routing.snapshots import Published
from maestro.routing.spec import DeploymentSpec

DeploymentFilter = Callable[[DeploymentSpec], bool]


@dataclass(frozen=True, slots=True)
class ModelGroupView:
    name: str
    model: str
    aliases: tuple[str, ...]
    from_global_config: bool
    deployments: tuple[DeploymentSpec, ...]


_FIELDS: dict[str, Kind] = {"provider": STRING, "in_house": BOOL, "jurisdiction": STRING}


def parse_model_filter(text: str) -> list[DeploymentFilter]:
    """`provider = "vllm" AND in_house = true AND jurisdiction = "EU"`, any subset."""
    return [_attribute_is(field, value) for field, value in parse_filter(text, _FIELDS)]


def _attribute_is(name: str, wanted: object) -> DeploymentFilter:
    def check(deployment: DeploymentSpec) -> bool:
        return bool(getattr(deployment, name) == wanted)

    return check


def model_groups(published: Published, parent: str, filter_text: str) -> list[ModelGroupView]:
    checks = parse_model_filter(filter_text)
    snapshot = published.snapshot
    aliases: dict[str, list[str]] = {}
    for alias, group in snapshot.spec.aliases.items():
        aliases.setdefault(group, []).append(alias)
    groups = []
    for group, span in zip(snapshot.group_names, snapshot.group_slices, strict=True):
        deployments = snapshot.deployments[span]
        if checks and not any(all(check(d) for check in checks) for d in deployments):
            continue
        groups.append(
            ModelGroupView(
                name=f"{parent}/modelGroups/{quote(group, safe='')}",
                model=group,
                aliases=tuple(sorted(aliases.get(group, ()))),
                from_global_config=published.project == GLOBAL_PROJECT,
                deployments=tuple(deployments),
            )
        )
    return sorted(groups, key=lambda g: g.model)


def list_model_groups(
    published: Published, parent: str, filter_text: str, page_size: int, page_token: str
) -> paging.Page[ModelGroupView]:
    """A page of the snapshot's model groups, by name."""
    groups = model_groups(published, parent, filter_text)
    return paging.page_in_memory(
        groups, page_size, page_token, f"models:{parent}", lambda g: [g.model]
    )
