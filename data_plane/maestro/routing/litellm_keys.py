"""What Maestro does with each key of a LiteLLM proxy config: honoured, refused, or ignored.

`RULES` is the one table: every key LiteLLM's proxy documents for `litellm_params`,
`model_info`, `router_settings`, `litellm_settings` and `general_settings` (and the top-level
blocks besides them), with its verdict and what Maestro does instead. The README's key table
is rendered from it (`readme_table`); a test checks the two are the same.

- honoured: `spec.py` reads it (the text says into what).
- refused: loading fails with a field violation naming the key and what to do instead. Only
  where not applying the key would be unsafe: a limit or an access rule that would silently
  stop holding, or a literal credential, which would be stored with every config revision and
  shown to each project that reads the operator's layer (`tenancy.without_endpoints` hides
  `os.environ/` references only).
- ignored: accepted and kept, and logged once per process at load (`route.config_keys_ignored`).

Keys no rule names (LiteLLM grows keys every release, and typos) are ignored the same way: no
key is dropped without a warning. Keys inside Maestro's own blocks (`router`, `policies`,
`telemetry`) and its closed sub-objects (`retry_policy`, `allowed_fails_policy`) are checked by
the schema in `spec.py`, not here.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog

from maestro.core.errors import FieldViolation

Verdict = Literal["honoured", "refused", "ignored"]
Section = Literal[
    "(top level)",
    "model_list[]",
    "litellm_params",
    "model_info",
    "router_settings",
    "litellm_settings",
    "general_settings",
]
SECTIONS: tuple[Section, ...] = (
    "(top level)",
    "model_list[]",
    "litellm_params",
    "model_info",
    "router_settings",
    "litellm_settings",
    "general_settings",
)
SECRET_PREFIX = "os.environ/"
_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One row of the key table: `keys` (exact names, or `fnmatch` patterns for a family such
    as `supports_*`) of one section, the verdict, and what Maestro does instead."""

    section: Section
    keys: tuple[str, ...]
    verdict: Verdict
    what: str

    def matches(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys)


def _rule(section: Section, keys: str, verdict: Verdict, what: str) -> KeyRule:
    return KeyRule(section, tuple(keys.split()), verdict, what)


_NOT_SENT = (
    "not sent to the provider: Maestro calls a deployment with `model`, `api_base` and "
    "`api_key` only, plus the request's own parameters"
)
_MAESTRO_AUTH = "Maestro's own API keys and their scopes decide who may call what"
_MAESTRO_STORE = "Maestro keeps configs, revisions and keys in its own store (`store.*` settings)"
_NO_SPEND_LOG = "Maestro keeps no LiteLLM spend logs or budgets"
_TELEMETRY = (
    "Maestro exports its own telemetry (the `telemetry:` block); LiteLLM callbacks do not run"
)
_REFUSE_BUDGET = (
    "Maestro does not count spend against it, so the cap would silently stop "
    "holding. Cap cost with the routing policy (`maestro.cost`), then remove the key"
)
_CHOOSER = "Maestro chooses deployments on `router.objectives` (multi-objective), not by strategy"

RULES: tuple[KeyRule, ...] = (
    # --- top level ---
    _rule("(top level)", "model_list", "honoured", "the deployments"),
    _rule(
        "(top level)",
        "router_settings litellm_settings general_settings",
        "honoured",
        "read key by key, as below",
    ),
    _rule(
        "(top level)",
        "router policies telemetry",
        "honoured",
        "Maestro's own blocks (objectives and fallback chains, content tags, telemetry)",
    ),
    _rule(
        "(top level)",
        "guardrails policy_attachments",
        "refused",
        "Maestro does not run LiteLLM guardrails, so content they block or mask "
        "would pass. Confine tagged content with `policies.content_tags` and Rego, or run "
        "the guardrail in front of Maestro, then remove the key",
    ),
    _rule(
        "(top level)",
        "environment_variables",
        "ignored",
        "Maestro does not set environment variables from the config; set them in the "
        "server's environment. A literal value under a credential-like name is refused",
    ),
    _rule(
        "(top level)",
        "include",
        "ignored",
        "Maestro does not merge other files: inline the included blocks",
    ),
    _rule(
        "(top level)",
        "mcp_servers search_tools sandbox_tools finetune_settings "
        "files_settings assistant_settings credential_list vector_store_registry prompts "
        "callback_settings pass_through_endpoints",
        "ignored",
        "LiteLLM proxy features (MCP, tools, files, fine-tuning, assistants, logging) that "
        "Maestro does not serve",
    ),
    # --- model_list entries ---
    _rule("model_list[]", "model_name", "honoured", "the model group the deployment serves"),
    _rule("model_list[]", "litellm_params model_info", "honoured", "read key by key, as below"),
    _rule(
        "model_list[]",
        "rpm tpm",
        "ignored",
        "beside `litellm_params` LiteLLM reads them for its own load balancing only; Maestro's "
        "admission reads `litellm_params.rpm` and `tpm`",
    ),
    # --- litellm_params ---
    _rule(
        "litellm_params",
        "model",
        "honoured",
        "the provider and model called; its prices and context window come from LiteLLM's "
        "bundled price map",
    ),
    _rule("litellm_params", "api_base", "honoured", "the endpoint called"),
    _rule(
        "litellm_params",
        "api_key",
        "honoured",
        "the credential sent, as an `os.environ/NAME` reference (a literal is refused)",
    ),
    _rule(
        "litellm_params",
        "timeout",
        "honoured",
        "the deadline of one attempt on the deployment; also its first-token and stall "
        "timeouts when `stream_timeout` is unset",
    ),
    _rule(
        "litellm_params",
        "stream_timeout",
        "honoured",
        "the deployment's first-token timeout and stall timeout (longest gap between tokens)",
    ),
    _rule(
        "litellm_params",
        "num_retries",
        "honoured",
        "retries on the deployment, before the first token, before the call falls back",
    ),
    _rule(
        "litellm_params",
        "allowed_fails allowed_fails_policy cooldown_time",
        "honoured",
        "the deployment's breaker: failures per minute (per exception class) before it "
        "opens, and how long it stays open",
    ),
    _rule(
        "litellm_params",
        "rpm tpm max_parallel_requests",
        "honoured",
        "admission: requests and tokens per minute, and calls in flight, on the deployment",
    ),
    _rule(
        "litellm_params",
        "max_retries",
        "ignored",
        "LiteLLM's client-side retries; Maestro retries per `num_retries`",
    ),
    _rule("litellm_params", "max_budget", "refused", _REFUSE_BUDGET),
    _rule("litellm_params", "budget_duration daily_reset_time", "ignored", _NO_SPEND_LOG),
    _rule(
        "litellm_params",
        "rpd tpd itpm otpm default_api_key_rpm_limit default_api_key_tpm_limit",
        "ignored",
        "admission uses `rpm`, `tpm` and `max_parallel_requests` only",
    ),
    _rule(
        "litellm_params",
        "input_cost_per_token output_cost_per_token",
        "honoured",
        "the deployment's prices for the cost objective, where `model_info` does not give "
        "them (else the bundled price map)",
    ),
    _rule(
        "litellm_params",
        "*cost* *_multiplier* tiered_pricing",
        "ignored",
        "LiteLLM's spend accounting; Maestro's cost objective reads `model_info."
        "input_cost_per_token` and `output_cost_per_token` (else the bundled price map)",
    ),
    _rule(
        "litellm_params",
        "tags tag_regex",
        "ignored",
        "LiteLLM's tag routing; Maestro confines tags with `policies.content_tags`",
    ),
    _rule("litellm_params", "model_info", "ignored", "use the entry's own `model_info`"),
    _rule(
        "litellm_params",
        "auto_router_* complexity_router_* quality_router_* "
        "adaptive_router_* switchyard_router_config",
        "ignored",
        _CHOOSER,
    ),
    _rule(
        "litellm_params",
        "s3_* gcs_bucket_name bucket_name valkey_* milvus_* "
        "vector_store_id aws_batch_role_arn output_vector_size max_file_size_mb "
        "allow_legacy_cloud_file_ids use_in_pass_through use_litellm_proxy mock_response",
        "ignored",
        "batch, file, vector-store, pass-through and mock features Maestro does not serve",
    ),
    _rule(
        "litellm_params",
        "api_version responses_api_version organization "
        "custom_llm_provider region_name watsonx_region_name aws_* vertex_* azure_* "
        "anthropic_* openai_* token_exchange_* tenant_id client_id client_secret "
        "litellm_credential_name configurable_clientside_auth_params extra_headers "
        "extra_body temperature max_tokens top_p drop_params merge_reasoning_content_in_choices "
        "use_chat_completions_api keepalive_seconds allow_client_keepalive_override "
        "provider_affinity_header fireworks_forward_user_id thought_signature_in_tool_call_id "
        "chatgpt_auth_file use_xai_oauth litellm_trace_id bedrock_tags "
        "timeout_by_service_tier stream_timeout_by_service_tier",
        "ignored",
        _NOT_SENT,
    ),
    # --- model_info ---
    _rule("model_info", "id", "honoured", "the deployment id (default: a hash of the entry)"),
    _rule("model_info", "quality", "honoured", "the quality objective's score (0-1)"),
    _rule(
        "model_info",
        "jurisdiction in_house",
        "honoured",
        "the sovereignty objective and routing policy",
    ),
    _rule(
        "model_info",
        "input_cost_per_token output_cost_per_token",
        "honoured",
        "the cost objective and the cost policy",
    ),
    _rule(
        "model_info",
        "max_input_tokens",
        "honoured",
        "requests longer than the context window skip the deployment",
    ),
    _rule(
        "model_info",
        "expected_p95_latency_ms",
        "honoured",
        "the latency prior before live signals arrive",
    ),
    _rule(
        "model_info",
        "client",
        "honoured",
        "the data plane's native client or LiteLLM for the calls",
    ),
    _rule(
        "model_info",
        "post_first_token_failure_policy",
        "honoured",
        "what a failure after output reached the caller does",
    ),
    _rule(
        "model_info",
        "maestro_owner maestro_shared_router_settings",
        "honoured",
        "written by the layer merge (the entry's project, and the operator's shared "
        "`router_settings` on its entries); callers may not set them",
    ),
    _rule(
        "model_info",
        "blocked access_windows",
        "refused",
        "Maestro would route to a deployment LiteLLM keeps paused or outside its "
        "hours. Remove the entry to pause it, then remove the key",
    ),
    _rule(
        "model_info",
        "mode base_model max_tokens max_output_tokens supports_* *cost* "
        "litellm_provider metadata tier tiered_pricing pricing_provider "
        "max_embedding_batch_size enforce_supported_endpoints",
        "ignored",
        "LiteLLM's model facts Maestro does not use: it routes chat completions, prices by "
        "the two per-token costs and checks only `max_input_tokens`",
    ),
    _rule(
        "model_info",
        "team_id team_public_model_name db_model created_* updated_* "
        "discoverable internal_router_model member_auto_router enable_tag_filtering "
        "allow_fail_open ptu_* adaptive_router_preferences",
        "ignored",
        "LiteLLM proxy bookkeeping (teams, database, UI, its routers)",
    ),
    # --- router_settings ---
    _rule(
        "router_settings",
        "timeout",
        "honoured",
        "every deployment's attempt deadline (and first-token and stall timeouts without "
        "`stream_timeout`), unless its `litellm_params` set one",
    ),
    _rule(
        "router_settings",
        "stream_timeout",
        "honoured",
        "every deployment's first-token and stall timeouts, unless its `litellm_params` set one",
    ),
    _rule(
        "router_settings",
        "num_retries",
        "honoured",
        "retries per deployment before fallback, unless its `litellm_params` set them",
    ),
    _rule(
        "router_settings",
        "retry_policy",
        "honoured",
        "retries per exception class, over `num_retries`",
    ),
    _rule(
        "router_settings",
        "allowed_fails allowed_fails_policy cooldown_time",
        "honoured",
        "every deployment's breaker, unless its `litellm_params` set one (a project's values "
        "do not reach the operator's deployments)",
    ),
    _rule(
        "router_settings",
        "default_max_parallel_requests",
        "honoured",
        "admission: calls in flight per deployment, unless its `litellm_params` set it",
    ),
    _rule(
        "router_settings",
        "fallbacks",
        "honoured",
        "fallback chains, merged with `router.fallbacks`",
    ),
    _rule("router_settings", "model_group_alias", "honoured", "model names that route to a group"),
    _rule(
        "router_settings",
        "max_fallbacks",
        "honoured",
        "fallback deployments kept per decision, unless `router.max_fallbacks` says",
    ),
    _rule("router_settings", "provider_budget_config", "refused", _REFUSE_BUDGET),
    _rule(
        "router_settings",
        "routing_strategy routing_strategy_args routing_groups "
        "enable_weighted_failover auto_router_capability_limit",
        "ignored",
        _CHOOSER,
    ),
    _rule(
        "router_settings",
        "redis_* cache_responses cache_kwargs caching_groups client_ttl",
        "ignored",
        "Maestro shares breaker, admission and signal state through its own store and "
        "does not cache responses",
    ),
    _rule(
        "router_settings",
        "default_fallbacks context_window_fallbacks "
        "content_policy_fallbacks fallback_on_unsupported_params fallback_access_check "
        "fallback_budget_check model_group_retry_policy retry_after",
        "ignored",
        "Maestro falls back on any failure before the first token, per `fallbacks`, and "
        "skips deployments whose context window is too small",
    ),
    _rule(
        "router_settings",
        "enable_pre_call_checks enable_pre_call_check optional_pre_call_checks",
        "ignored",
        "Maestro always checks `max_input_tokens`, and no other pre-call checks",
    ),
    _rule(
        "router_settings",
        "enable_tag_filtering tag_filtering_match_any tag_routing_prefix",
        "ignored",
        "Maestro confines tags with `policies.content_tags`",
    ),
    _rule(
        "router_settings",
        "disable_cooldowns enable_health_check_routing "
        "health_check_staleness_threshold health_check_ignore_transient_errors "
        "background_health_check_model_groups",
        "ignored",
        "each deployment's breaker and live signals decide whether it is used",
    ),
    _rule(
        "router_settings",
        "enable_mid_stream_fallback_continuation",
        "ignored",
        "use `post_first_token_failure_policy` (`router:` or `model_info`)",
    ),
    _rule(
        "router_settings",
        "deployment_affinity_ttl_seconds model_group_affinity_config "
        "session_affinity_repin_on_failover default_priority polling_interval "
        "default_litellm_params set_verbose debug_level alerting_config assistants_config "
        "router_general_settings ignore_invalid_deployments search_tools guardrail_list "
        "plugins",
        "ignored",
        "LiteLLM router features (affinity, scheduler, SDK-only arguments) Maestro does not have",
    ),
    # --- litellm_settings ---
    _rule(
        "litellm_settings",
        "request_timeout",
        "honoured",
        "every deployment's attempt deadline (and first-token and stall timeouts), unless "
        "`router_settings` or its `litellm_params` set one",
    ),
    _rule(
        "litellm_settings",
        "num_retries",
        "honoured",
        "retries per deployment before fallback, unless `router_settings` or its "
        "`litellm_params` set them",
    ),
    _rule("litellm_settings", "max_budget", "refused", _REFUSE_BUDGET),
    _rule(
        "litellm_settings",
        "success_callback failure_callback callbacks service_callbacks "
        "turn_off_message_logging redact_user_api_key_info langfuse_default_tags json_logs "
        "set_verbose",
        "ignored",
        _TELEMETRY,
    ),
    _rule(
        "litellm_settings",
        "fallbacks",
        "honoured",
        "fallback chains, as under `router_settings.fallbacks`",
    ),
    _rule(
        "litellm_settings",
        "default_fallbacks content_policy_fallbacks context_window_fallbacks",
        "ignored",
        "use `router_settings.fallbacks`",
    ),
    _rule("litellm_settings", "cache cache_params", "ignored", "Maestro does not cache responses"),
    _rule(
        "litellm_settings",
        "drop_params modify_params enable_preview_features force_ipv4 "
        "disable_add_transform_inline_image_block "
        "use_chat_completions_url_for_anthropic_messages disable_hf_tokenizer_download "
        "enable_json_schema_validation disable_copilot_system_to_assistant "
        "LITELLM_DISABLE_STOP_SEQUENCE_LIMIT include_cost_in_streaming_usage",
        "ignored",
        "LiteLLM's request translation switches; Maestro's LiteLLM adapter uses the "
        "library's defaults",
    ),
    _rule(
        "litellm_settings",
        "budget_duration max_end_user_budget "
        "disable_end_user_cost_tracking disable_end_user_cost_tracking_prometheus_only "
        "key_generation_settings enable_key_alias_format_validation default_team_settings "
        "default_key_generate_params upperbound_key_generate_params "
        "default_internal_user_params max_internal_user_budget require_auth_for_metrics_endpoint",
        "ignored",
        "LiteLLM's keys, teams and spend tracking; " + _MAESTRO_AUTH,
    ),
    _rule(
        "litellm_settings",
        "max_parallel_requests",
        "ignored",
        "use `router_settings.default_max_parallel_requests`",
    ),
    _rule(
        "litellm_settings",
        "mcp_aliases mcp_semantic_tool_filter "
        "websearch_interception_params code_interpreter_interception_params",
        "ignored",
        "LiteLLM tool features Maestro does not serve",
    ),
    # --- general_settings ---
    _rule(
        "general_settings",
        "allowed_ips",
        "refused",
        "Maestro does not filter callers by IP, so callers the list shuts out "
        "could call. Restrict them at the network (ingress, firewall), then remove the key",
    ),
    _rule(
        "general_settings",
        "master_key enable_jwt_auth litellm_jwtauth custom_auth "
        "enable_oauth2_auth enable_oauth2_proxy_auth oauth2_config_mappings allowed_routes "
        "public_routes admin_only_routes litellm_key_header_name custom_key_generate "
        "allow_user_auth user_api_key_cache_ttl default_team_disabled key_management_system "
        "key_management_settings use_azure_key_vault use_google_kms custom_sso ui_access_mode "
        "disable_master_key_return disable_adding_master_key_hash_to_db "
        "service_account_settings enforce_user_param enforced_params "
        "reject_clientside_metadata_tags allow_client_side_credentials "
        "use_client_credentials_pass_through_routes user_mcp_management_mode "
        "dangerously_permit_weak_or_unset_master_key infer_model_from_keys use_x_forwarded_for "
        "require_auth_for_metrics_endpoint "
        "custom_team_metadata_validate team_metadata_validation_timeout "
        "team_metadata_validation_error_message litellm_license",
        "ignored",
        _MAESTRO_AUTH,
    ),
    _rule(
        "general_settings",
        "database_* allow_requests_on_db_unavailable store_model_in_db "
        "supported_db_objects disable_prisma_schema_update coordination_redis "
        "use_redis_transaction_buffer",
        "ignored",
        _MAESTRO_STORE,
    ),
    _rule(
        "general_settings",
        "disable_spend_logs disable_spend_updates disable_reset_budget "
        "store_prompts_in_spend_logs maximum_spend_logs_* proxy_budget_rescheduler_* "
        "proxy_batch_write_at proxy_batch_polling_interval spend_report_frequency",
        "ignored",
        _NO_SPEND_LOG,
    ),
    _rule(
        "general_settings",
        "background_health_checks health_check_interval "
        "health_check_details alerting alerting_threshold alert_types alerting_args "
        "alert_to_webhook_url otel",
        "ignored",
        "Maestro watches deployments through its breakers and live signals, and exports "
        "its own telemetry (the `telemetry:` block)",
    ),
    _rule(
        "general_settings",
        "max_parallel_requests",
        "ignored",
        "use `router_settings.default_max_parallel_requests`",
    ),
    _rule(
        "general_settings",
        "global_max_parallel_requests max_request_size_mb max_response_size_mb",
        "ignored",
        "the data plane's own server settings bound concurrency and sizes",
    ),
    _rule(
        "general_settings",
        "completion_model image_generation_model embedding_model "
        "moderation_model forward_openai_org_id forward_client_headers_to_llm_api "
        "disable_retry_on_max_parallel_request_limit_error disable_responses_id_security "
        "pass_through_endpoints",
        "ignored",
        "LiteLLM proxy request handling; Maestro's ingress routes by the request's model "
        "and forwards no client headers",
    ),
)


_BY_SECTION: dict[str, tuple[KeyRule, ...]] = {
    section: tuple(rule for rule in RULES if rule.section == section) for section in SECTIONS
}
_CREDENTIAL_NAME = re.compile(
    r"(^|_)(secret|password|passwd|api_key|access_key|access_key_id|master_key|license|"
    r"credentials?|private_key|session_token|ad_token|identity_token|auth_token|access_token|"
    r"bearer_token)($|_)",
    re.IGNORECASE,
)
_URL_KEY = re.compile(r"(^|_)url$", re.IGNORECASE)
_MAESTRO_BLOCKS = frozenset({"router", "policies", "telemetry"})
_SECTION_BLOCKS: tuple[Section, ...] = ("router_settings", "litellm_settings", "general_settings")
_ENTRY_BLOCKS: tuple[Section, ...] = ("litellm_params", "model_info")
_DEPLOYMENT_PARAMS = re.compile(r"^model_list\[\d+\]\.litellm_params$")
_NOT_A_SECRET = re.compile(r"_(name|file|path|ref|header|id_header)$", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def rule_for(section: str, key: str) -> KeyRule | None:
    """The table's rule for `key` in `section`; None when no rule names it (then: ignored)."""
    return next((rule for rule in _BY_SECTION.get(section, ()) if rule.matches(key)), None)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one key of a config landed."""

    path: str
    section: Section
    key: str
    verdict: Verdict
    rule: KeyRule | None
    """None: no rule names the key, so it is ignored."""
    message: str


def classify(raw: Mapping[str, Any]) -> list[Placed]:
    """Every key of the config's LiteLLM sections, with its verdict, in document order.

    A literal credential anywhere outside Maestro's own blocks is refused whatever its key's
    rule says (`litellm_params.api_key` excepted: the schema refuses that one itself)."""
    placed = [_place(path, section, key) for path, section, key in _keys(raw)]
    secrets = set(_literal_secrets(raw))
    out: list[Placed] = []
    for item in placed:
        if item.path in secrets:
            secrets.discard(item.path)
            item = _secret(item.path, item.section, item.key)
        out.append(item)
    out += [_secret(path, _section_of(path), path.rsplit(".", 1)[-1]) for path in sorted(secrets)]
    return out


def refusals(
    raw: Mapping[str, Any], field: str, placed: Sequence[Placed] | None = None
) -> list[FieldViolation]:
    """Field violations for every key of `raw` that Maestro refuses; `placed`: `classify(raw)`
    when the caller has it already."""
    return [
        FieldViolation(f"{field}: {item.path}", item.message)
        for item in (classify(raw) if placed is None else placed)
        if item.verdict == "refused"
    ]


_warned: set[frozenset[str]] = set()
_warned_lock = threading.Lock()


def note_ignored(raw: Mapping[str, Any], placed: Sequence[Placed] | None = None) -> None:
    """Log, once per distinct set, the keys of `raw` that Maestro ignores; `placed` as above.

    Configs are compiled often (each project's view, each apply, each replica), so one process
    warns about a given set of keys once rather than on every compile."""
    items = classify(raw) if placed is None else placed
    ignored = [item for item in items if item.verdict == "ignored"]
    if not ignored:
        return
    paths = frozenset(item.path for item in ignored)
    with _warned_lock:
        if paths in _warned:
            return
        _warned.add(paths)
    _log.warning(
        "route.config_keys_ignored",
        keys=sorted(paths),
        unknown=sorted(item.path for item in ignored if item.rule is None),
        detail="Maestro does not apply these LiteLLM keys; see the README's key table",
    )


def _place(path: str, section: Section, key: str) -> Placed:
    rule = rule_for(section, key)
    if rule is None:
        return Placed(path, section, key, "ignored", None, "not a key Maestro knows; ignored")
    message = rule.what
    if rule.verdict == "refused":
        message = f"{key!r} is refused: {rule.what}"
    return Placed(path, section, key, rule.verdict, rule, message)


def _secret(path: str, section: Section, key: str) -> Placed:
    return Placed(
        path,
        section,
        key,
        "refused",
        rule_for(section, key),
        f"{key!r} holds a literal credential, which would be stored with every config "
        "revision and shown to each project that reads it; write it as os.environ/NAME (or "
        "remove it where Maestro ignores it)",
    )


def _section_of(path: str) -> Section:
    """The section a nested path lies in (a credential deeper than the table's keys)."""
    head = path.split(".")[0]
    if head.startswith("model_list["):
        parts = path.split(".")
        block = parts[1] if len(parts) > 2 else ""
        return next((b for b in _ENTRY_BLOCKS if b == block), "model_list[]")
    return next((b for b in _SECTION_BLOCKS if b == head), "(top level)")


def _keys(raw: Mapping[str, Any]) -> Iterator[tuple[str, Section, str]]:
    for key in raw:
        name = str(key)
        yield name, "(top level)", name
    for index, entry in enumerate(_list(raw.get("model_list"))):
        if not isinstance(entry, Mapping):
            continue
        for key in entry:
            yield f"model_list[{index}].{key}", "model_list[]", str(key)
        for block in _ENTRY_BLOCKS:
            inner = entry.get(block)
            if isinstance(inner, Mapping):
                for key in inner:
                    yield f"model_list[{index}].{block}.{key}", block, str(key)
    for block in _SECTION_BLOCKS:
        inner = raw.get(block)
        if isinstance(inner, Mapping):
            for key in inner:
                yield f"{block}.{key}", block, str(key)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _literal_secrets(value: Any, path: str = "") -> Iterator[str]:
    """Paths of literal credentials: a string that is not an `os.environ/` reference under a
    credential-like key, or a URL with a password in it."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            if not path and name in _MAESTRO_BLOCKS:
                continue
            where = f"{path}.{name}" if path else name
            if name == "api_key" and _DEPLOYMENT_PARAMS.match(path):
                continue
            if isinstance(item, str) and _is_literal_secret(name, item):
                yield where
            else:
                yield from _literal_secrets(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _literal_secrets(item, f"{path}[{index}]")


def _is_literal_secret(key: str, value: str) -> bool:
    if not value or value.startswith(SECRET_PREFIX):
        return False
    if _CREDENTIAL_NAME.search(key) and not _NOT_A_SECRET.search(key):
        # A credentials *file* (vertex_credentials: /path/creds.json) is not itself secret.
        return not key.lower().endswith("credentials") or value.lstrip().startswith("{")
    if _URL_KEY.search(key) and "://" in value:
        try:
            return urlsplit(value).password is not None
        except ValueError:
            return False
    return False


def readme_table() -> str:
    """The README's key table, rendered from `RULES`."""
    lines = ["| section | keys | verdict | what Maestro does |", "| --- | --- | --- | --- |"]
    for rule in RULES:
        section = "top level" if rule.section == "(top level)" else f"`{rule.section}`"
        keys = ", ".join(f"`{key}`" for key in rule.keys)
        lines.append(f"| {section} | {keys} | {rule.verdict} | {rule.what} |")
    return "\n".join(lines)
