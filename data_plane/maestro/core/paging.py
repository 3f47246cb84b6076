"""What every List method shares: pagination (AIP-158: page sizes, opaque page tokens, pages) and
filters (AIP-160, the subset Maestro serves: `field = value` comparisons joined by AND).

A token is URL-safe base64 of a small JSON object: the sort key of the last item returned, and
the scope it was issued for (the list and its parent), so a token replayed against another list
is rejected. Lists read from a store fetch `limit + 1` rows after the token's key and cut them
with `page_of`; lists computed in memory are cut with `page_in_memory`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

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


class Page(NamedTuple, Generic[T]):
    """One page of a list, and the token for the next ("" on the last page)."""

    items: list[T]
    next_page_token: str


def page_of(fetched: Sequence[T], limit: int, scope: str, key: Callable[[T], list[Any]]) -> Page[T]:
    """A page from `limit + 1` fetched items: the first `limit`, and the token continuing after
    the last of them ("" when the extra item shows there is no more)."""
    items = list(fetched[:limit])
    return Page(items, encode_token(scope, key(items[-1])) if len(fetched) > limit else "")


def page_in_memory(
    ordered: Sequence[T],
    requested_size: int,
    page_token: str,
    scope: str,
    key: Callable[[T], list[Any]],
) -> Page[T]:
    """A page of items already sorted by `key`: those after the token's key, at most the page
    size. Validates `page_size` and `page_token` (INVALID_ARGUMENT)."""
    size = page_size(requested_size)
    after = decode_token(page_token, scope)
    remaining = [item for item in ordered if key(item) > after] if after is not None else ordered
    return page_of(remaining, size, scope, key)


# -- filters --------------------------------------------------------------------------------
# A value is a quoted string, `true`/`false`, or a bare enum name, as the field's kind says.
# Anything else is INVALID_ARGUMENT on `filter`, with the accepted forms in the message.

STRING, BOOL = "string", "bool"
Kind = str | frozenset[str]
"""STRING, BOOL, or the allowed enum names."""
_COMPARISON = re.compile(r'^\s*([a-z_][a-z_.]*)\s*=\s*(?:"([^"]*)"|([A-Za-z_]+))\s*$')


def parse_filter(text: str, fields: Mapping[str, Kind]) -> list[tuple[str, str | bool]]:
    """The (field, value) comparisons of `text`; [] for an empty filter."""
    if not text.strip():
        return []
    out: list[tuple[str, str | bool]] = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _COMPARISON.match(part)
        field = match.group(1) if match else ""
        kind = fields.get(field)
        if match is None or kind is None:
            raise _invalid(part, fields)
        quoted, bare = match.group(2), match.group(3)
        if kind == STRING and quoted is not None:
            out.append((field, quoted))
        elif kind == BOOL and bare in ("true", "false"):
            out.append((field, bare == "true"))
        elif isinstance(kind, frozenset) and bare in kind:
            out.append((field, bare))
        else:
            raise _invalid(part, fields)
    return out


def _invalid(part: str, fields: Mapping[str, Kind]) -> InvalidArgument:
    forms = []
    for field, kind in fields.items():
        if kind == STRING:
            forms.append(f'{field} = "..."')
        elif kind == BOOL:
            forms.append(f"{field} = true|false")
        else:
            forms.append(f"{field} = {'|'.join(sorted(kind))}")
    return InvalidArgument(
        [
            FieldViolation(
                "filter", f"cannot read {part.strip()!r}; use {', '.join(forms)}, joined by AND"
            )
        ]
    )
