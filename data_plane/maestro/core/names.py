"""Resource names (AIP-122): parse and validate `projects/{project}/...` strings."""

from __future__ import annotations

import re

from maestro.core.errors import FieldViolation, InvalidArgument

PROJECT_ID = r"[a-z][a-z0-9-]{0,62}"
RESOURCE_ID = r"[a-z0-9][a-z0-9-]{0,62}"
PROJECT_ID_RE = re.compile(rf"^{PROJECT_ID}$")
# `global` holds operator-owned config and the global kill switch; `builtin` the read-only
# built-in recipes. Neither can be created as a tenant project.
RESERVED_PROJECT_IDS = frozenset({"global", "builtin"})
_PROJECT_NAME = re.compile(rf"^projects/({PROJECT_ID})$")
_API_KEY_NAME = re.compile(rf"^projects/({PROJECT_ID})/apiKeys/({RESOURCE_ID})$")


def project_name(project_id: str) -> str:
    return f"projects/{project_id}"


def parse_project_name(value: str, field: str) -> str:
    """Return the project id of `projects/{project}`, or raise INVALID_ARGUMENT on `field`."""
    match = _PROJECT_NAME.fullmatch(value)
    if match is None:
        raise InvalidArgument([_violation(field, value, "projects/{project}")])
    return match.group(1)


def parse_api_key_name(value: str, field: str) -> tuple[str, str]:
    """Return (project id, key id) of `projects/{project}/apiKeys/{api_key}`."""
    match = _API_KEY_NAME.fullmatch(value)
    if match is None:
        raise InvalidArgument([_violation(field, value, "projects/{project}/apiKeys/{api_key}")])
    return match.group(1), match.group(2)


def _violation(field: str, value: str, pattern: str) -> FieldViolation:
    if not value:
        return FieldViolation(field, f"required; expected a resource name like {pattern}")
    shown = value if len(value) <= 80 else value[:77] + "..."
    return FieldViolation(
        field,
        f"{shown!r} is not a valid resource name; expected {pattern} where ids are lower-case "
        "letters, digits and hyphens (1-63 characters)",
    )
