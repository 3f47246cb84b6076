"""The routing config: the LiteLLM proxy YAML format plus Maestro's `router:` and `policies:`.

`parse_route_config` turns YAML text into a validated `RouteConfigSpec` or raises
`InvalidArgument` whose field violations point into the YAML (`model_list[2].litellm_params.model`).
Every LiteLLM key is honoured, refused by name, or ignored with one warning (`litellm_keys`
holds that table; the README shows it), so a LiteLLM proxy config loads as it is. The keys that
shape calls (timeouts, retries, allowed fails, cooldown, rpm/tpm/parallel) resolve into each
deployment's `CallSettings`.

Deployment facts the objectives need live in LiteLLM's per-deployment `model_info`:
`quality` (0-1, default 0.5), `jurisdiction`, `in_house`, `input_cost_per_token` /
`output_cost_per_token` (default: LiteLLM's price map), `max_input_tokens`,
`expected_p95_latency_ms` (the prior before live traffic), `id`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.core.yaml_input import reject_aliases
from maestro.routing import catalog, litellm_keys

OBJECTIVES = ("quality", "latency", "cost", "reliability", "sovereignty")
# The seed's objective names, and the short ones the x-maestro-objectives header uses.
OBJECTIVE_ALIASES = {
    "quality": "quality",
    "p95_latency_ms": "latency",
    "latency": "latency",
    "cost_per_1k_tokens": "cost",
    "cost": "cost",
    "reliability": "reliability",
    "sovereignty": "sovereignty",
}
MAX_CONFIG_BYTES = 1024 * 1024
# libyaml's safe loader parses large configs (10,000 deployments) about 10x faster.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Open(BaseModel):
    """LiteLLM-owned sections: unknown keys are LiteLLM's business, kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)


class _Closed(BaseModel):
    """Maestro-owned sections: unknown keys are typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PostFirstTokenPolicy = Literal["fail", "continue_on_fallback"]
FAILURE_CLASSES = (
    "BadRequestError",
    "AuthenticationError",
    "TimeoutError",
    "RateLimitError",
    "ContentPolicyViolationError",
    "InternalServerError",
)
"""LiteLLM's exception classes, as its `retry_policy` and `allowed_fails_policy` name them."""
_Seconds = Field(None, gt=0, le=3600)
_Count = Field(None, ge=0, le=1000)


class RetryPolicy(_Closed):
    """LiteLLM's `router_settings.retry_policy`: retries per exception class."""

    BadRequestErrorRetries: int | None = Field(None, ge=0, le=10)
    AuthenticationErrorRetries: int | None = Field(None, ge=0, le=10)
    TimeoutErrorRetries: int | None = Field(None, ge=0, le=10)
    RateLimitErrorRetries: int | None = Field(None, ge=0, le=10)
    ContentPolicyViolationErrorRetries: int | None = Field(None, ge=0, le=10)
    InternalServerErrorRetries: int | None = Field(None, ge=0, le=10)

    def by_class(self) -> dict[str, int]:
        return _by_class(self, "Retries")


class AllowedFailsPolicy(_Closed):
    """LiteLLM's `router_settings.allowed_fails_policy`: failures per minute per exception
    class before the deployment cools down."""

    BadRequestErrorAllowedFails: int | None = _Count
    AuthenticationErrorAllowedFails: int | None = _Count
    TimeoutErrorAllowedFails: int | None = _Count
    RateLimitErrorAllowedFails: int | None = _Count
    ContentPolicyViolationErrorAllowedFails: int | None = _Count
    InternalServerErrorAllowedFails: int | None = _Count

    def by_class(self) -> dict[str, int]:
        return _by_class(self, "AllowedFails")


def _by_class(policy: BaseModel, suffix: str) -> dict[str, int]:
    values = {name: getattr(policy, f"{name}{suffix}", None) for name in FAILURE_CLASSES}
    return {name: value for name, value in values.items() if value is not None}


class _CallKnobs(_Open):
    """The LiteLLM keys, shared by `litellm_params` (one deployment) and `router_settings`
    (every deployment), that say how calls behave."""

    timeout: float | None = _Seconds
    stream_timeout: float | None = _Seconds
    num_retries: int | None = Field(None, ge=0, le=10)
    allowed_fails: int | None = _Count
    allowed_fails_policy: AllowedFailsPolicy | None = None
    cooldown_time: float | None = Field(None, ge=0, le=3600)


class LitellmParams(_CallKnobs):
    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_parallel_requests: int | None = Field(None, ge=1)
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)

    @field_validator("api_key")
    @classmethod
    def _secret_is_a_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("os.environ/"):
            raise ValueError("must be a reference such as os.environ/OPENAI_API_KEY, not a literal")
        return value


class ModelInfo(_Open):
    id: str | None = Field(None, min_length=1, max_length=128)
    quality: float = Field(0.5, ge=0, le=1)
    jurisdiction: str | None = Field(None, min_length=1, max_length=64)
    in_house: bool | None = None
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    max_input_tokens: int | None = Field(None, gt=0)
    expected_p95_latency_ms: float = Field(1000.0, gt=0)
    client: Literal["auto", "native", "litellm"] = Field(
        "auto",
        description="How the data plane calls the deployment: its native OpenAI-compatible "
        "client, LiteLLM, or `auto` (native for OpenAI-compatible providers).",
    )
    post_first_token_failure_policy: PostFirstTokenPolicy | None = Field(
        None,
        description="What a failure of this deployment after output reached the caller does: "
        "`continue_on_fallback` (the next deployment goes on from the output so far) or "
        "`fail`; unset: the project's `router.post_first_token_failure_policy`, else the "
        "server's default.",
    )


class ModelEntry(_Open):
    model_name: str = Field(min_length=1, max_length=128)
    litellm_params: LitellmParams
    model_info: ModelInfo = ModelInfo()


class FallbackChain(_Closed):
    primary: str
    on_error: list[str] = Field(min_length=1)


class RouterSection(_Closed):
    strategy: Literal["multi_objective"] = "multi_objective"
    objectives: list[str] | dict[str, float] = Field(default_factory=lambda: list(OBJECTIVES))
    fallbacks: list[FallbackChain] = Field(default_factory=list)
    max_fallbacks: int = Field(3, ge=0, le=16)
    latency_reference_ms: float = Field(
        1000.0, gt=0, description="p95 at which the latency score is 0.5."
    )
    cost_reference_per_1k: float = Field(
        0.01, gt=0, description="USD per 1k tokens at which the cost score is 0.5."
    )
    post_first_token_failure_policy: PostFirstTokenPolicy | None = Field(
        None,
        description="The project's default for a failure after output reached the caller; "
        "a deployment's `model_info` and a request may override it.",
    )

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        names = value if isinstance(value, list) else list(value)
        unknown = [name for name in names if name not in OBJECTIVE_ALIASES]
        if unknown:
            raise ValueError(f"unknown objectives {unknown}; known: {sorted(OBJECTIVE_ALIASES)}")
        if isinstance(value, dict) and any(weight < 0 for weight in value.values()):
            raise ValueError("objective weights must not be negative")
        return value


class PoliciesSection(_Closed):
    content_tags: dict[str, list[str]] = Field(default_factory=dict)


class RouterSettings(_CallKnobs):
    """LiteLLM's `router_settings`: defaults for every deployment, and the router's own keys."""

    retry_policy: RetryPolicy | None = None
    default_max_parallel_requests: int | None = Field(None, ge=1)
    fallbacks: list[Any] | None = None
    max_fallbacks: int | None = Field(None, ge=0, le=16)
    model_group_alias: dict[str, Any] | None = None


class LitellmSettings(_Open):
    """LiteLLM's `litellm_settings`: process-wide defaults; these shape calls."""

    request_timeout: float | None = _Seconds
    num_retries: int | None = Field(None, ge=0, le=10)
    fallbacks: list[Any] | None = None


class RouteConfigDocument(_Open):
    model_list: list[ModelEntry] = Field(min_length=1)
    router_settings: RouterSettings = RouterSettings()
    litellm_settings: LitellmSettings = LitellmSettings()
    router: RouterSection = RouterSection()
    policies: PoliciesSection = PoliciesSection()
    telemetry: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallSettings:
    """How calls to one deployment behave, as its LiteLLM config says (the deployment's
    `litellm_params`, else `router_settings`, else `litellm_settings`). None or empty: the
    config does not say, and the data plane's own `data_plane.*` setting applies."""

    first_token_timeout_s: float | None = None
    """`stream_timeout`, else `timeout`: the wait for the first token."""
    stall_timeout_s: float | None = None
    """`stream_timeout`, else `timeout`: the longest gap between tokens."""
    attempt_timeout_s: float | None = None
    """`timeout` (`litellm_settings.request_timeout`): the most one attempt may take, whole."""
    num_retries: int | None = None
    """Retries on this deployment, before the first token, before the call moves on."""
    retries_by_class: Mapping[str, int] = field(default_factory=dict)
    """`retry_policy`: retries per LiteLLM exception class (FAILURE_CLASSES), over
    `num_retries`."""
    allowed_fails: int | None = None
    """Failures within a minute beyond which the breaker opens (besides its failure ratio)."""
    allowed_fails_by_class: Mapping[str, int] = field(default_factory=dict)
    cooldown_s: float | None = None
    """`cooldown_time`: how long the breaker stays open."""
    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None
    post_first_token_failure_policy: PostFirstTokenPolicy | None = None


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One deployment with every fact the decision needs, defaults resolved."""

    deployment_id: str
    model_name: str
    litellm_model: str
    provider: str
    api_base: str | None
    api_key: str | None
    quality: float
    jurisdiction: str
    in_house: bool
    input_cost_per_token: float | None
    output_cost_per_token: float | None
    max_input_tokens: int | None
    expected_p95_latency_ms: float
    client: str = "auto"
    calls: CallSettings = CallSettings()
    owner: str = ""
    """'' for the operator's deployments (the global layer), else the project that defined it."""

    @property
    def state_key(self) -> str:
        """What breakers, lane load and shared live signals are keyed by: the operator's
        deployments are one everywhere; a tenant's are its own, whatever id it picks."""
        if not self.owner:
            return self.deployment_id
        return f"projects/{self.owner}/deployments/{self.deployment_id}"


@dataclass(frozen=True, slots=True)
class RouteConfigSpec:
    document: RouteConfigDocument
    deployments: tuple[DeploymentSpec, ...]
    model_names: tuple[str, ...]
    weights: dict[str, float]
    fallbacks: dict[str, tuple[str, ...]]
    content_tags: dict[str, frozenset[str]]
    aliases: dict[str, str]
    max_fallbacks: int = 3
    """`router.max_fallbacks`, else `router_settings.max_fallbacks`, else 3."""


def parse_route_config(text: str, field: str = "config_yaml") -> RouteConfigSpec:
    """Parse and validate config YAML; violations name `field` plus the path inside it.

    No size limit here: ApplyConfig bounds what an API caller may send (MAX_CONFIG_BYTES);
    config files and stored revisions compile whatever their size.
    """
    return resolve_route_config(load_yaml(text, field), field)


def load_yaml(text: str, field: str = "config_yaml") -> dict[str, Any]:
    """The YAML as plain data; INVALID_ARGUMENT on `field` when it is not a mapping, or when it
    has an anchor or alias (a billion-laughs document is refused before it is built)."""
    reject_aliases(text, field)
    try:
        raw = yaml.load(text, Loader=_SafeLoader)  # a safe loader: plain data only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidArgument([FieldViolation(field, f"{where}not valid YAML")]) from error
    if not isinstance(raw, dict):
        raise InvalidArgument([FieldViolation(field, "the top level must be a mapping")])
    return raw


def resolve_route_config(raw: dict[str, Any], field: str = "config_yaml") -> RouteConfigSpec:
    """Validate parsed config data and resolve every deployment's facts."""
    placed = litellm_keys.classify(raw)
    refused = litellm_keys.refusals(raw, field, placed)
    try:
        document = RouteConfigDocument.model_validate(raw)
    except ValidationError as error:
        raise InvalidArgument(
            refused
            + [FieldViolation(f"{field}: {_path(e['loc'])}", e["msg"]) for e in error.errors()]
        ) from error
    if refused:
        raise InvalidArgument(refused)
    litellm_keys.note_ignored(raw, placed)
    return _resolve(document, field)


def _path(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _resolve(document: RouteConfigDocument, field: str) -> RouteConfigSpec:
    violations: list[FieldViolation] = []
    deployments: list[DeploymentSpec] = []
    seen_ids: set[str] = set()
    for index, entry in enumerate(document.model_list):
        where = f"{field}: model_list[{index}]"
        try:
            facts = catalog.lookup(entry.litellm_params.model)
        except ValueError as error:
            violations.append(FieldViolation(f"{where}.litellm_params.model", str(error)))
            continue
        info, params = entry.model_info, entry.litellm_params
        deployment_id = info.id or _derived_id(entry)
        if deployment_id in seen_ids:
            violations.append(FieldViolation(f"{where}.model_info.id", "duplicate deployment id"))
        seen_ids.add(deployment_id)
        in_house = (
            info.in_house
            if info.in_house is not None
            else facts.provider in catalog.IN_HOUSE_PROVIDERS
        )
        deployments.append(
            DeploymentSpec(
                deployment_id=deployment_id,
                model_name=entry.model_name,
                litellm_model=entry.litellm_params.model,
                provider=facts.provider,
                api_base=entry.litellm_params.api_base,
                api_key=entry.litellm_params.api_key,
                quality=info.quality,
                jurisdiction=info.jurisdiction or ("internal" if in_house else "unspecified"),
                in_house=in_house,
                input_cost_per_token=_price(
                    _first(info.input_cost_per_token, params.input_cost_per_token),
                    facts.input_cost_per_token,
                    in_house,
                ),
                output_cost_per_token=_price(
                    _first(info.output_cost_per_token, params.output_cost_per_token),
                    facts.output_cost_per_token,
                    in_house,
                ),
                max_input_tokens=info.max_input_tokens or facts.max_input_tokens,
                expected_p95_latency_ms=info.expected_p95_latency_ms,
                client=info.client,
                calls=_call_settings(entry, document),
                owner=_owner(info),
            )
        )
    model_names = tuple(dict.fromkeys(d.model_name for d in deployments))
    # References are checked against every declared name, so one bad entry is reported once
    # rather than again by each fallback or tag rule that names it.
    known = {entry.model_name for entry in document.model_list}
    fallbacks = _fallbacks(document, known, field, violations)
    content_tags: dict[str, frozenset[str]] = {}
    for tag, models in document.policies.content_tags.items():
        for name in models:
            if name not in known:
                violations.append(
                    FieldViolation(
                        f"{field}: policies.content_tags.{tag}", f"unknown model {name!r}"
                    )
                )
        # Spellings of one tag ("PII", "pii ") confine together: a later one never widens.
        key = tag.strip().lower()
        content_tags[key] = content_tags.get(key, frozenset(models)) & frozenset(models)
    aliases = {
        str(alias): str(target)
        for alias, target in (document.router_settings.model_group_alias or {}).items()
    }
    for alias, target in aliases.items():
        if target not in known:
            violations.append(
                FieldViolation(
                    f"{field}: router_settings.model_group_alias.{alias}",
                    f"unknown model {target!r}",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    return RouteConfigSpec(
        document=document,
        deployments=tuple(deployments),
        model_names=model_names,
        weights=_weights(document.router.objectives),
        fallbacks=fallbacks,
        content_tags=content_tags,
        aliases=aliases,
        max_fallbacks=(
            document.router.max_fallbacks
            if "max_fallbacks" in document.router.model_fields_set
            else _first(document.router_settings.max_fallbacks, document.router.max_fallbacks) or 0
        ),
    )


OWNER_KEY = "maestro_owner"
"""`model_info` key the layer merge writes: `global` on the operator's entries, else the
project id. Callers may not write it (`routing.tenancy`)."""
GLOBAL_OWNER = "global"


SHARED_STATE_KEYS = (
    "allowed_fails",
    "allowed_fails_policy",
    "cooldown_time",
    "default_max_parallel_requests",
)
"""`router_settings` keys that shape state every project shares: an operator deployment's
breaker and admission. On the operator's entries they come from the global layer alone: the
layer merge copies its values into the entry's `model_info` under SHARED_KEY
(`layers.merge_layers`), and a project's `router_settings` never reach them."""
SHARED_KEY = "maestro_shared_router_settings"
"""`model_info` key the layer merge writes on the operator's entries. Callers may not write it."""


def _call_settings(entry: ModelEntry, document: RouteConfigDocument) -> CallSettings:
    params, router, process = (
        entry.litellm_params,
        document.router_settings,
        document.litellm_settings,
    )
    extra = entry.model_info.model_extra or {}
    shared = (
        RouterSettings.model_validate(extra.get(SHARED_KEY) or {})
        if extra.get(OWNER_KEY) == GLOBAL_OWNER
        else router
    )
    first = _first(
        params.stream_timeout,
        router.stream_timeout,
        params.timeout,
        router.timeout,
        process.request_timeout,
    )
    fails_policy = _first(params.allowed_fails_policy, shared.allowed_fails_policy)
    return CallSettings(
        first_token_timeout_s=first,
        stall_timeout_s=first,
        attempt_timeout_s=_first(params.timeout, router.timeout, process.request_timeout),
        num_retries=_first(params.num_retries, router.num_retries, process.num_retries),
        retries_by_class=router.retry_policy.by_class() if router.retry_policy else {},
        allowed_fails=_first(params.allowed_fails, shared.allowed_fails),
        allowed_fails_by_class=fails_policy.by_class() if fails_policy else {},
        cooldown_s=_first(params.cooldown_time, shared.cooldown_time),
        rpm=params.rpm,
        tpm=params.tpm,
        max_parallel_requests=_first(
            params.max_parallel_requests, shared.default_max_parallel_requests
        ),
        post_first_token_failure_policy=_first(
            entry.model_info.post_first_token_failure_policy,
            document.router.post_first_token_failure_policy,
        ),
    )


_T = TypeVar("_T")


def _first(*values: _T | None) -> _T | None:
    return next((value for value in values if value is not None), None)


def _owner(info: ModelInfo) -> str:
    stamp = (info.model_extra or {}).get(OWNER_KEY)
    return "" if not stamp or stamp == GLOBAL_OWNER else str(stamp)


def _price(declared: float | None, listed: float | None, in_house: bool) -> float | None:
    if declared is not None:
        return declared
    if listed is not None:
        return listed
    return 0.0 if in_house else None


_KNOBS_SINCE_IDS = frozenset(
    {
        *_CallKnobs.model_fields,
        "rpm",
        "tpm",
        "max_parallel_requests",
        "input_cost_per_token",
        "output_cost_per_token",
    }
)
"""Typed `litellm_params` fields added after derived ids were first issued: left out of the hash
while unset, so an entry keeps the id it had."""


def _derived_id(entry: ModelEntry) -> str:
    params = entry.litellm_params.model_dump(mode="json")
    for name in _KNOBS_SINCE_IDS:
        if params.get(name) is None:
            params.pop(name, None)
    return derived_deployment_id(entry.model_name, params)


def derived_deployment_id(model_name: str, litellm_params: dict[str, Any]) -> str:
    """LiteLLM-style stable id: a hash of the group and its parameters."""
    material = json.dumps([model_name, litellm_params], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _weights(objectives: list[str] | dict[str, float]) -> dict[str, float]:
    if isinstance(objectives, list):
        weights = dict.fromkeys(OBJECTIVES, 0.0)
        for name in objectives:
            weights[OBJECTIVE_ALIASES[name]] = 1.0
        return weights
    weights = dict.fromkeys(OBJECTIVES, 0.0)
    for name, weight in objectives.items():
        weights[OBJECTIVE_ALIASES[name]] += weight
    return weights


def _fallbacks(
    document: RouteConfigDocument, known: set[str], field: str, violations: list[FieldViolation]
) -> dict[str, tuple[str, ...]]:
    chains: dict[str, list[str]] = {}
    for index, chain in enumerate(document.router.fallbacks):
        for name in [chain.primary, *chain.on_error]:
            if name not in known:
                violations.append(
                    FieldViolation(f"{field}: router.fallbacks[{index}]", f"unknown model {name!r}")
                )
        chains.setdefault(chain.primary, []).extend(chain.on_error)
    # LiteLLM's own format: router_settings.fallbacks: [{"gpt-4o": ["sonnet-3.7"]}], also
    # accepted under litellm_settings (its older place).
    litellm_lists = (
        ("router_settings.fallbacks", document.router_settings.fallbacks),
        ("litellm_settings.fallbacks", document.litellm_settings.fallbacks),
    )
    for where, index, item in (
        (where, index, item)
        for where, items in litellm_lists
        for index, item in enumerate(items or [])
    ):
        if not isinstance(item, dict):
            violations.append(FieldViolation(f"{field}: {where}[{index}]", "must be a mapping"))
            continue
        for primary, targets in item.items():
            for name in [primary, *(targets or [])]:
                if name not in known:
                    violations.append(
                        FieldViolation(f"{field}: {where}[{index}]", f"unknown model {name!r}")
                    )
            chains.setdefault(str(primary), []).extend(str(t) for t in targets or [])
    return {primary: tuple(dict.fromkeys(chain)) for primary, chain in chains.items()}
