"""What a tenant's routing layer may say: providers and credentials are the operator's.

A project key's ApplyConfig could otherwise point a deployment at any URL with
`api_key: os.environ/<ANY NAME>` and have the data plane deliver the server's own secrets there,
or claim `in_house: true` for a hosted endpoint to pass the operator's policy. So a tenant entry
(`tenant_violations`) may only:
- name no endpoint at all (the provider's own, with no credential of the operator's: see
  `data_plane.targets`), or an endpoint the operator declared: the exact `api_base`/`api_key`
  pair of a global-layer entry, or an `api_base` under a prefix the operator allows for the
  project (server config `routing.tenant_endpoints`), with that entry's `api_key` if it has one;
- reference no other secret (`os.environ/...`) anywhere;
- add its own model groups, not deployments to the operator's groups (those are immutable);
- state facts policy relies on (`in_house`, `jurisdiction`, or an in-house provider at an
  endpoint it chose) only at an endpoint the operator trusts for that (`trust_tenant_facts`).
Operators (the `operator` scope, routing files) are not checked: the config is theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from maestro.core.errors import FieldViolation
from maestro.routing import catalog
from maestro.routing.spec import OWNER_KEY, SHARED_KEY, load_yaml

SECRET_PREFIX = "os.environ/"
ANY_PROJECT = "*"


@dataclass(frozen=True, slots=True)
class AllowedEndpoint:
    """An endpoint prefix the operator lets tenants use, with the one secret they may send."""

    api_base: str
    api_key: str | None = None
    trust_tenant_facts: bool = False


def tenant_violations(
    project_raw: dict[str, Any],
    global_raw: dict[str, Any] | None,
    allowed: Sequence[AllowedEndpoint],
    field: str = "route_config.config_yaml",
) -> list[FieldViolation]:
    """Why a tenant layer may not be applied (empty: it may). Shape errors are left to the
    config's own validation; this reads only what it can."""
    global_entries = [e for e in (global_raw or {}).get("model_list") or [] if isinstance(e, dict)]
    operator_groups = {str(e.get("model_name")) for e in global_entries}
    declared = {
        (_params(e).get("api_base"), _params(e).get("api_key"))
        for e in global_entries
        if _params(e).get("api_base") or _params(e).get("api_key")
    }
    violations: list[FieldViolation] = []
    entries = project_raw.get("model_list")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict):
            where = f"{field}: model_list[{index}]"
            violations += _entry_violations(entry, where, operator_groups, declared, allowed)
    return violations


def _entry_violations(
    entry: dict[str, Any],
    where: str,
    operator_groups: set[str],
    declared: set[tuple[Any, Any]],
    allowed: Sequence[AllowedEndpoint],
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    params, info = _params(entry), _info(entry)
    for reserved in (OWNER_KEY, SHARED_KEY):
        if reserved in info:
            found.append(FieldViolation(f"{where}.model_info.{reserved}", "reserved for Maestro"))
    if entry.get("model_name") in operator_groups:
        found.append(
            FieldViolation(
                f"{where}.model_name",
                f"{entry.get('model_name')!r} is an operator's model group and cannot take other "
                "deployments; name your own group (an alias may point at the operator's)",
            )
        )
    api_base, api_key = params.get("api_base"), params.get("api_key")
    grant = _grant(api_base, api_key, declared, allowed)
    if grant is None:
        found.append(
            FieldViolation(
                f"{where}.litellm_params.api_base",
                "not an endpoint the operator declared for this project (the global layer's "
                "entries, or routing.tenant_endpoints); tenants may not add endpoints or "
                "credentials",
            )
        )
    for path in _secret_references(entry, skip=("litellm_params", "api_key")):
        found.append(FieldViolation(f"{where}.{path}", "secret references are the operator's"))
    trusted = grant is not None and grant.trust_tenant_facts
    claims = [key for key in ("in_house", "jurisdiction") if info.get(key) is not None]
    if api_base and _in_house_provider(params.get("model")):
        claims.append("litellm_params.model")
    if claims and not trusted:
        found += [
            FieldViolation(
                f"{where}.{c if '.' in c else 'model_info.' + c}",
                "facts policy relies on (in-house, jurisdiction) are stated by the operator for "
                "this endpoint, not by a tenant",
            )
            for c in claims
        ]
    return found


_NO_ENDPOINT = AllowedEndpoint("")


def _grant(
    api_base: Any, api_key: Any, declared: set[tuple[Any, Any]], allowed: Sequence[AllowedEndpoint]
) -> AllowedEndpoint | None:
    """The declaration that lets a tenant use (api_base, api_key); None if nothing does."""
    if api_base is None and api_key is None:
        return _NO_ENDPOINT
    if (api_base, api_key) in declared:
        return _NO_ENDPOINT  # the operator's own endpoint and credential, facts not the tenant's
    if not isinstance(api_base, str):
        return None
    for item in allowed:
        if _under(item.api_base, api_base) and api_key in (None, item.api_key):
            return item
    return None


HIDDEN_ENDPOINT = "(the operator's endpoint)"
HIDDEN_SECRET = "(the operator's secret)"


def without_endpoints(config_yaml: str) -> str:
    """The operator's layer as a tenant may read it: its groups, deployments, facts and rules,
    with every `api_base` and secret reference replaced by a placeholder."""
    raw = load_yaml(config_yaml)
    for entry in raw.get("model_list") or []:
        params = _params(entry) if isinstance(entry, dict) else {}
        if params.get("api_base") is not None:
            params["api_base"] = HIDDEN_ENDPOINT
    return yaml.safe_dump(_hide_secrets(raw), sort_keys=False, allow_unicode=True)


def _hide_secrets(value: Any) -> Any:
    if isinstance(value, str):
        return HIDDEN_SECRET if value.startswith(SECRET_PREFIX) else value
    if isinstance(value, dict):
        return {key: _hide_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hide_secrets(item) for item in value]
    return value


def _under(prefix: str, url: str) -> bool:
    """`url` is at or below `prefix`: same scheme and host, the port if the prefix names one,
    and the path at a segment boundary (`http://10.0.0.1` does not cover `http://10.0.0.10`)."""
    try:
        want, got = urlsplit(prefix), urlsplit(url)
        want_port, got_port = want.port, got.port
    except ValueError:
        return False
    if got.username or got.password or want.scheme != got.scheme:
        return False
    if (want.hostname or "") != (got.hostname or "") or not want.hostname:
        return False
    if want_port is not None and want_port != got_port:
        return False
    base = want.path.rstrip("/")
    return not base or got.path == base or got.path.startswith(base + "/")


def _secret_references(value: Any, skip: tuple[str, str], path: str = "") -> Iterable[str]:
    if isinstance(value, str):
        if value.startswith(SECRET_PREFIX):
            yield path or "(value)"
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if (path, str(key)) != skip:
                yield from _secret_references(item, skip, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_references(item, skip, f"{path}[{index}]")


def _in_house_provider(model: Any) -> bool:
    if not isinstance(model, str):
        return False
    try:
        return catalog.lookup(model).provider in catalog.IN_HOUSE_PROVIDERS
    except ValueError:
        return False


def _params(entry: dict[str, Any]) -> dict[str, Any]:
    params = entry.get("litellm_params")
    return params if isinstance(params, dict) else {}


def _info(entry: dict[str, Any]) -> dict[str, Any]:
    info = entry.get("model_info")
    return info if isinstance(info, dict) else {}
