"""ListModels: the model groups of a project's snapshot, filtered and paged."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from maestro.control_plane.errors import FieldViolation, InvalidArgument
from maestro.control_plane.route.config import DeploymentSpec
from maestro.control_plane.route.layers import GLOBAL_PROJECT
from maestro.control_plane.route.registry import Published

_COMPARISON = re.compile(r'^\s*(provider|in_house|jurisdiction)\s*=\s*("([^"]*)"|true|false)\s*$')
DeploymentFilter = Callable[[DeploymentSpec], bool]


@dataclass(frozen=True, slots=True)
class ModelGroupView:
    name: str
    model: str
    aliases: tuple[str, ...]
    from_global_config: bool
    deployments: tuple[DeploymentSpec, ...]


def _attribute_is(name: str, wanted: object) -> DeploymentFilter:
    def check(deployment: DeploymentSpec) -> bool:
        return bool(getattr(deployment, name) == wanted)

    return check


def parse_filter(text: str) -> list[DeploymentFilter]:
    """`provider = "vllm" AND in_house = true AND jurisdiction = "EU"`, any subset."""
    if not text.strip():
        return []
    checks: list[DeploymentFilter] = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _COMPARISON.match(part)
        if match is None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "filter",
                        f'cannot read {part.strip()!r}; use provider = "...", '
                        'in_house = true|false or jurisdiction = "..." joined by AND',
                    )
                ]
            )
        field, literal, quoted = match.group(1), match.group(2), match.group(3)
        if field == "in_house":
            if quoted is not None:
                raise InvalidArgument([FieldViolation("filter", "in_house takes true or false")])
            checks.append(_attribute_is("in_house", literal == "true"))
        elif quoted is None:
            raise InvalidArgument([FieldViolation("filter", f"{field} takes a quoted string")])
        else:
            checks.append(_attribute_is(field, quoted))
    return checks


def model_groups(published: Published, parent: str, filter_text: str) -> list[ModelGroupView]:
    checks = parse_filter(filter_text)
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
