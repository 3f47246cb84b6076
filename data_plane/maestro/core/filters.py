"""List filters (AIP-160, the subset Maestro serves): `field = value` comparisons joined by AND.

A value is a quoted string, `true`/`false`, or a bare enum name, as the field's kind says.
Anything else is INVALID_ARGUMENT on `filter`, with the accepted forms in the message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from maestro.core.errors import FieldViolation, InvalidArgument

STRING, BOOL = "string", "bool"
Kind = str | frozenset[str]
"""STRING, BOOL, or the allowed enum names."""
_COMPARISON = re.compile(r'^\s*([a-z_]+)\s*=\s*(?:"([^"]*)"|([A-Za-z_]+))\s*$')


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
