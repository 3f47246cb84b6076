"""Who is calling: API keys, their hashes, and the principal of the current RPC.

Keys look like `mk_<key id>_<secret>`; the store keeps only the SHA-256 of the whole key (the
secret has 256 bits of entropy, so a fast hash is the standard choice, as for GitHub or Stripe
tokens). The principal of the RPC being served lives in a context variable set by the auth
interceptor, so domain code reads it without threading it through every call.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
from dataclasses import dataclass

from maestro.core.errors import PermissionDenied

KEY_PREFIX = "mk_"
PREFIX_SHOWN = 12


@dataclass(frozen=True, slots=True)
class Principal:
    """The project a call acts for, and the key that proved it (None in insecure dev mode)."""

    project_id: str
    api_key: str | None


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str
    prefix: str
    secret_sha256: str


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("maestro_principal")


def current_principal() -> Principal:
    """The principal of the RPC being served; the auth interceptor always sets one."""
    try:
        return _current.get()
    except LookupError:  # pragma: no cover - only reachable if the interceptor is missing
        raise PermissionDenied("no authenticated principal", reason="NO_PRINCIPAL") from None


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


def require_project(principal: Principal, project_id: str) -> None:
    """PERMISSION_DENIED unless the caller acts for `project_id`.

    Raised before any look-up, so the answer does not reveal whether the resource exists.
    """
    if principal.project_id != project_id:
        raise PermissionDenied(
            f"this API key acts for project {principal.project_id!r} and cannot access "
            f"resources of project {project_id!r}",
            reason="PROJECT_MISMATCH",
            metadata={"caller_project": principal.project_id, "resource_project": project_id},
        )


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, secret, secret[:PREFIX_SHOWN], hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
