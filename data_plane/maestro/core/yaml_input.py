"""YAML that callers send (routing configs, agent recipes): anchors and aliases are refused.

An alias makes a node appear again wherever it is named, so a few hundred bytes (the "billion
laughs" document: nine aliases of nine aliases of ...) describe 10^9 strings. PyYAML builds them
as shared references, cheaply, but whatever walks the result (pydantic validation, JSON dumps,
config merges) expands them, and a `validate_only` ApplyConfig would pin a core and fill memory.
No config or recipe needs them, so `reject_aliases` refuses any anchor (`&`) or alias (`*`)
before a document is built: it reads libyaml's parse events, which a billion-laughs document has
a few dozen of, and never composes nodes.
"""

from __future__ import annotations

from typing import Final

import yaml

from maestro.core.errors import FieldViolation, InvalidArgument

__all__ = ["reject_aliases"]

# libyaml's parser; PyYAML's pure-Python one where the C extension is missing.
_Loader: Final[type[yaml.SafeLoader]] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def reject_aliases(text: str, field: str) -> None:
    """INVALID_ARGUMENT on `field`, at the line and column of the first anchor or alias in
    `text`, if it has one. Text with neither `&` nor `*` anywhere has none and is not parsed
    (the usual case: no extra cost). Syntax errors are left to the loader, which reports them.
    """
    if "&" not in text and "*" not in text:
        return
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                raise InvalidArgument(
                    [
                        FieldViolation(
                            field,
                            f"{where}YAML anchors and aliases (& and *) are not accepted; write "
                            "the value out",
                        )
                    ]
                )
    except yaml.YAMLError:
        return
