"""Keeping secrets out of what Maestro prints: logs, `maestro check-config`, error text.

Two rules. A value under a secret-looking key (`api_key`, `authorization`, `password`,
`secret`, `token`, `dsn`, ...) is replaced, except that a DSN keeps its host and database so an
operator can still see where it points. In any other text, Maestro API keys (`mk_<id>_<secret>`
keep `mk_<id>_`, the part the key list shows anyway) and DSN passwords are masked wherever they
appear, since a key pasted into a model name or an exception message is still a key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    r"(?:^|[_.\-])(?:api[_\-]?key|authorization|password|passwd|secret|token|dsn|"
    r"credentials?|private[_\-]?key)(?:$|[_.\-])",
    re.IGNORECASE,
)
"""Key names whose values are secrets: whole segments, so `completion_tokens` is not one."""
_API_KEY = re.compile(r"\bmk_([A-Za-z0-9]+)_[A-Za-z0-9_\-]+")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*):[^@/\s]*@")
_KV_PASSWORD = re.compile(
    r"\b(password|passwd|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE
)
_MAX_DEPTH = 8


def is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def redact_dsn(dsn: str) -> str:
    """A connection string with its password masked, the rest kept: `postgresql://u:***@h/db`
    and `host=h dbname=db password=***`."""
    return _KV_PASSWORD.sub(rf"\1\2{MASK}", _URL_PASSWORD.sub(rf"\1:{MASK}@", dsn))


def redact_text(text: str) -> str:
    """`text` with every API key and DSN password in it masked."""
    if "mk_" in text:
        text = _API_KEY.sub(rf"mk_\1_{MASK}", text)
    if "@" in text or "=" in text:
        text = redact_dsn(text)
    return text


def redact_value(key: str, value: Any, depth: int = 0) -> Any:
    """`value` as printed under `key`: masked if the key names a secret (a DSN keeps its host
    and database; empty and unset values stay visible, so `unset` is still readable), else
    with secrets inside it masked."""
    if is_secret_key(key) and value not in (None, ""):
        if isinstance(value, str) and "dsn" in key.lower():
            return redact_dsn(value)
        return MASK
    return redact(value, depth)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` (JSON-like: mappings, lists, strings, scalars) with secrets masked."""
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, depth + 1) for item in value]
    return value


def redact_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: every field of a log event, redacted (run it last before the
    renderer, after exceptions were formatted into text)."""
    return {key: redact_value(key, value) for key, value in event.items()}
