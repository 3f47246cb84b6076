"""List pagination (AIP-158): page sizes and opaque page tokens.

A token is URL-safe base64 of a small JSON object: the sort key of the last item returned, and
the parent it was issued for, so a token replayed against another list is rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from maestro.control_plane.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced down; negative is an error."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(scope: str, after: list[Any]) -> str:
    raw = json.dumps({"s": scope, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, scope: str) -> list[Any] | None:
    """The sort key to continue after, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after = payload["a"]
        valid = payload["s"] == scope and isinstance(after, list)
    except (binascii.Error, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument(
            [
                FieldViolation(
                    "page_token", "not a token returned by this list; start over without it"
                )
            ]
        )
    return list(after)
