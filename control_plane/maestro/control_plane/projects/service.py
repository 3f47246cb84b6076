"""Project and API-key logic: who may see which project, key creation, verification, revocation.

No grpc here: inputs are plain values, outputs are records, failures are `errors` exceptions.
Store calls run in a worker thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from maestro.control_plane.projects.store import ApiKeyRecord, ProjectRecord, ProjectStore
from maestro.control_plane.store.errors import RowConflict, RowNotFound
from maestro.core import names, paging
from maestro.core.auth import (
    ADMIN,
    INFERENCE,
    OPERATOR,
    TENANT_SCOPES,
    Principal,
    hash_secret,
    identity_violations,
    new_key,
    parse_scopes,
    require_project,
    require_scope,
)
from maestro.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied

MAX_DISPLAY_NAME = 200
MAX_REJECTED_CACHED = 10_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    record: ApiKeyRecord
    secret: str  # empty when a retried request returns the key made by the first call


class ProjectService:
    def __init__(
        self,
        store: ProjectStore,
        *,
        key_cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = key_cache_ttl_s
        self._clock = clock
        # secret hash -> (principal, expiry). Bounded by the number of live keys.
        self._verified: dict[str, tuple[Principal, float]] = {}
        # secret hash -> expiry, for keys the store does not know (bounded, oldest dropped).
        self._rejected: OrderedDict[str, float] = OrderedDict()

    # -- authentication ---------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Principal | None:
        """The principal a key acts for, or None if the key is unknown or revoked."""
        digest = hash_secret(secret)
        cached = self._verified.get(digest)
        now = self._clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        rejected_until = self._rejected.get(digest)
        if rejected_until is not None and rejected_until > now:
            return None  # an unknown key asked again: no store look-up per guess
        record = await asyncio.to_thread(self._store.find_key_by_hash, digest)
        if record is None:
            self._verified.pop(digest, None)
            self._rejected[digest] = now + self._ttl
            if len(self._rejected) > MAX_REJECTED_CACHED:
                self._rejected.popitem(last=False)
            return None
        self._rejected.pop(digest, None)
        principal = Principal(
            names.parse_project_name(record.project, "project"),
            record.name,
            record.scopes,
            record.principal,
        )
        self._verified[digest] = (principal, now + self._ttl)
        return principal

    # -- projects ---------------------------------------------------------------------------

    def create_project(self, project_id: str, display_name: str = "") -> ProjectRecord:
        """Operator action (CLI), not an RPC: create a project or return the existing one."""
        if not names.PROJECT_ID_RE.fullmatch(project_id):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "project", "1-63 lower-case letters, digits, hyphens; starts with a letter"
                    )
                ]
            )
        if project_id in names.RESERVED_PROJECT_IDS:
            raise InvalidArgument(
                [FieldViolation("project", f"{project_id!r} is reserved for Maestro itself")]
            )
        name = names.project_name(project_id)
        created = self._store.create_project(name, display_name, datetime.now(UTC))
        existing = created or self._store.get_project(name)
        assert existing is not None
        return existing

    def create_key_offline(
        self,
        project_id: str,
        display_name: str,
        scopes: frozenset[str] = TENANT_SCOPES,
        identity: str = "",
    ) -> CreatedKey:
        """Operator action (CLI): mint a key for a project without an existing key; the only
        way, with another operator key, to grant `operator`."""
        violations = identity_violations(identity, "principal")
        if violations:
            raise InvalidArgument(violations)
        parse_scopes(tuple(scopes), "scopes")
        return self._insert_key(names.project_name(project_id), display_name, "", scopes, identity)

    async def get_project(self, principal: Principal, name: str) -> ProjectRecord:
        project_id = names.parse_project_name(name, "name")
        require_project(principal, project_id)
        record = await asyncio.to_thread(self._store.get_project, name)
        if record is None:
            raise NotFound(f"project {name!r} does not exist", reason="PROJECT_NOT_FOUND")
        return record

    async def list_projects(
        self, principal: Principal, page_size: int, page_token: str
    ) -> paging.Page[ProjectRecord]:
        paging.page_size(page_size)
        if paging.decode_token(page_token, "projects") is not None:
            return paging.Page([], "")  # a caller sees one project, so there is never a second page
        own = names.project_name(principal.project_id)
        record = await asyncio.to_thread(self._store.get_project, own)
        return paging.Page([record] if record else [], "")

    # -- API keys ---------------------------------------------------------------------------

    async def create_key(
        self,
        principal: Principal,
        parent: str,
        display_name: str,
        request_id: str,
        scopes: tuple[str, ...] = (),
        identity: str = "",
    ) -> CreatedKey:
        """Mint a key with `scopes` (default: inference only) held by `identity` (default: the
        minting key's holder). A key never grants more than the minting key has."""
        project_id = names.parse_project_name(parent, "parent")
        violations = _display_name_violations(display_name, "api_key.display_name")
        violations += identity_violations(identity, "api_key.principal")
        if len(request_id) > 64:
            violations.append(FieldViolation("request_id", "at most 64 characters (use a UUID)"))
        if violations:
            raise InvalidArgument(violations)
        granted = parse_scopes(scopes, "api_key.scopes") or frozenset({INFERENCE})
        require_project(principal, project_id)
        require_scope(principal, ADMIN, OPERATOR)
        _require_superset(principal, granted, "grant")
        await self.get_project(principal, parent)
        return await asyncio.to_thread(
            self._insert_key, parent, display_name, request_id, granted, identity or principal.who
        )

    def _insert_key(
        self,
        parent: str,
        display_name: str,
        request_id: str,
        scopes: frozenset[str],
        identity: str,
    ) -> CreatedKey:
        key = new_key()
        record = ApiKeyRecord(
            name=f"{parent}/apiKeys/{key.key_id}",
            project=parent,
            display_name=display_name,
            prefix=key.prefix,
            create_time=datetime.now(UTC),
            scopes=scopes,
            principal=identity,
        )
        try:
            stored, created = self._store.insert_key(record, key.secret_sha256, request_id or None)
        except RowConflict:
            # The same request id, committed by a concurrent call (on another replica) between
            # our look-up and our insert: the retry finds that call's key.
            stored, created = self._store.insert_key(record, key.secret_sha256, request_id or None)
        except RowNotFound:
            raise NotFound(
                f"project {parent!r} does not exist", reason="PROJECT_NOT_FOUND"
            ) from None
        return CreatedKey(stored, key.secret if created else "")

    async def get_key(self, principal: Principal, name: str) -> ApiKeyRecord:
        """Any key may read its own metadata (a data plane learns a caller's scopes this way);
        another key's needs admin."""
        project_id, _ = names.parse_api_key_name(name, "name")
        require_project(principal, project_id)
        if name != principal.api_key:
            require_scope(principal, ADMIN, OPERATOR)
        record = await asyncio.to_thread(self._store.get_key, name)
        if record is None:
            raise NotFound(f"API key {name!r} does not exist", reason="API_KEY_NOT_FOUND")
        return record

    async def list_keys(
        self, principal: Principal, parent: str, page_size: int, page_token: str
    ) -> paging.Page[ApiKeyRecord]:
        project_id = names.parse_project_name(parent, "parent")
        size = paging.page_size(page_size)
        after = paging.decode_token(page_token, parent)
        require_project(principal, project_id)
        after_key = (str(after[0]), str(after[1])) if after and len(after) == 2 else None
        rows = await asyncio.to_thread(self._store.list_keys, parent, size + 1, after_key)
        return paging.page_of(
            rows, size, parent, lambda k: [k.create_time.astimezone(UTC).isoformat(), k.name]
        )

    async def delete_key(self, principal: Principal, name: str) -> None:
        project_id, _ = names.parse_api_key_name(name, "name")
        require_project(principal, project_id)
        target = await asyncio.to_thread(self._store.get_key, name)
        if target is None:
            raise NotFound(f"API key {name!r} does not exist", reason="API_KEY_NOT_FOUND")
        _require_superset(principal, target.scopes, "revoke")
        if not await asyncio.to_thread(self._store.delete_key, name):
            raise NotFound(f"API key {name!r} does not exist", reason="API_KEY_NOT_FOUND")
        # Revocation is immediate on this replica; other replicas forget within the cache TTL.
        self._verified = {h: v for h, v in self._verified.items() if v[0].api_key != name}


def _require_superset(principal: Principal, scopes: frozenset[str], verb: str) -> None:
    """A key acts only on keys with no more than it has: minting or revoking."""
    extra = scopes - principal.scopes
    if extra:
        raise PermissionDenied(
            f"this API key cannot {verb} a key with scopes it does not have: {sorted(extra)}",
            reason="SCOPE_ESCALATION",
        )


def _display_name_violations(value: str, field: str) -> list[FieldViolation]:
    if len(value) > MAX_DISPLAY_NAME:
        return [FieldViolation(field, f"at most {MAX_DISPLAY_NAME} characters")]
    if any(ord(ch) < 32 for ch in value):
        return [FieldViolation(field, "must not contain control characters")]
    return []
