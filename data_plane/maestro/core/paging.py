"""List pagination (AIP-158): page sizes and opaque page tokens.

A token is URL-safe base64 of a small JSON object: the sort key of the last item returned, and
the parent it was issued for, so a token replayed against another list is rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from maestro.core.errors import FieldViolation, InvalidArgument

T = TypeVar("T")
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


def page_of(
    fetched: Sequence[T], limit: int, scope: str, key: Callable[[T], list[Any]]
) -> tuple[list[T], str]:
    """A page from `limit + 1` fetched items: the first `limit`, and the token continuing after
    the last of them ("" when the extra item shows there is no more)."""
    items = list(fetched[:limit])
    return items, encode_token(scope, key(items[-1])) if len(fetched) > limit else ""
