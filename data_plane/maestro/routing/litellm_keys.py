"""What Maestro does with each key of a LiteLLM proxy config: honoured, refused, or ignored.

(Skeleton: the key table and its checks are filled in by issue 16's key-table work.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from maestro.core.errors import FieldViolation


def refusals(raw: Mapping[str, Any], field: str) -> list[FieldViolation]:
    """Field violations for every key of `raw` that Maestro refuses."""
    return []


def note_ignored(raw: Mapping[str, Any]) -> None:
    """Log, once per distinct set, the keys of `raw` that Maestro ignores."""
