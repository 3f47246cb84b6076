"""Who is calling: API keys, their hashes, and the principal of the current RPC.

Keys look like `mk_<key id>_<secret>`; the store keeps only the SHA-256 of the whole key (the
secret has 256 bits of entropy, so a fast hash is the standard choice, as for GitHub or Stripe
tokens). The principal of the RPC being served lives in a context variable set by the auth
interceptor, so domain code reads it without threading it through every call.

Each key carries scopes (what it may do) and a named identity (who holds it). Scopes are
checked per RPC (`maestro.core.rpc.scopes`) and, where the resource decides (the global layer,
the global kill switch, another key's metadata), by the domain service with `require_scope`.
The identity makes dual control mean two people: approvals count distinct identities, and the
identity that started a run cannot approve its gates.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
from dataclasses import dataclass

from maestro.core.errors import FieldViolation, InvalidArgument, PermissionDenied

KEY_PREFIX = "mk_"
PREFIX_SHOWN = 12

ADMIN = "admin"
"""Keys, routing config, recipes and the project's kill switch."""
INFERENCE = "inference"
"""Chat completions, routing decisions, and agent runs (start, follow, cancel)."""
APPROVER = "approver"
"""Decisions on human approval gates."""
DATA_PLANE = "data-plane"
"""A data plane following the control plane: WatchConfig and ReportObservations."""
OPERATOR = "operator"
"""The operator's own: the global routing layer and the global kill switch. Granted only by the
operator's CLI (`maestro admin create-key --scope operator`) or by another operator key."""
TENANT_SCOPES = frozenset({ADMIN, INFERENCE, APPROVER, DATA_PLANE})
ALL_SCOPES = TENANT_SCOPES | {OPERATOR}
MAX_IDENTITY = 128


@dataclass(frozen=True, slots=True)
class Principal:
    """The project a call acts for, the key that proved it, what it may do and who holds it.

    `api_key` is None for Maestro's own calls (routing files, agent steps) and in insecure dev
    mode; those act with every scope.
    """

    project_id: str
    api_key: str | None
    scopes: frozenset[str] = ALL_SCOPES
    identity: str = ""

    @property
    def who(self) -> str:
        """The identity approvals and audit records name: the key's holder, else the key."""
        return self.identity or self.api_key or f"maestro:{self.project_id}"


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


def require_scope(principal: Principal, *accepted: str) -> None:
    """PERMISSION_DENIED unless the caller's key has one of the `accepted` scopes."""
    if principal.scopes.isdisjoint(accepted):
        raise PermissionDenied(
            f"this API key lacks the scope this call needs: one of {sorted(accepted)} "
            f"(it has {sorted(principal.scopes)})",
            reason="SCOPE_MISSING",
            metadata={"needed": ",".join(sorted(accepted))},
        )


def parse_scopes(values: list[str] | tuple[str, ...], field: str) -> frozenset[str]:
    """Validate scope names from a caller; INVALID_ARGUMENT on `field` for an unknown one."""
    unknown = sorted(set(values) - ALL_SCOPES)
    if unknown:
        raise InvalidArgument(
            [FieldViolation(field, f"unknown scopes {unknown}; known: {sorted(ALL_SCOPES)}")]
        )
    return frozenset(values)


def identity_violations(value: str, field: str) -> list[FieldViolation]:
    """An identity is 1-128 printable characters, such as an e-mail address or a user id."""
    if len(value) > MAX_IDENTITY:
        return [FieldViolation(field, f"at most {MAX_IDENTITY} characters")]
    if value != value.strip() or not value.isprintable():
        return [FieldViolation(field, "printable characters, no surrounding spaces")]
    return []


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, secret, secret[:PREFIX_SHOWN], hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
