"""Every LiteLLM config key lands in one verdict: honoured, refused (field-named) or ignored
(logged once). Loads LiteLLM's own example configs, shipped in the litellm package, and
configs written from its docs (tests/data/litellm_examples)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import litellm
import pytest
import yaml
from structlog.testing import capture_logs

from maestro.core.errors import InvalidArgument
from maestro.routing import litellm_keys
from maestro.routing.spec import parse_route_config, resolve_route_config

DATA = Path(__file__).parent / "data" / "litellm_examples"
PROXY = Path(litellm.__file__).parent / "proxy"
SHIPPED = sorted(
    [*(PROXY / "example_config_yaml").glob("*.yaml"), *PROXY.glob("*config*.yaml")],
    key=lambda path: path.name,
)
README = Path(__file__).parent.parent / "README.md"
# Keys beside an entry's litellm_params, or LiteLLM keys newer than its reference docs, that the
# shipped examples use and no rule names: ignored (and logged) as unknown keys.
UNLISTED_IN_EXAMPLES = {"require_auth_for_metrics_endpoint"}


def _load(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), path
    return raw


def _fresh_warnings() -> None:
    litellm_keys._warned.clear()


def test_the_package_ships_example_configs() -> None:
    assert len(SHIPPED) >= 10, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_key_of_a_shipped_example_lands_in_one_verdict(path: Path) -> None:
    raw = _load(path)
    placed = litellm_keys.classify(raw)
    assert placed
    for item in placed:
        assert item.verdict in ("honoured", "refused", "ignored"), item
        if item.rule is None:
            assert item.verdict == "ignored", item
    refused = {f"config_yaml: {i.path}" for i in placed if i.verdict == "refused"}
    assert {v.field for v in litellm_keys.refusals(raw, "config_yaml")} == refused
    ignored = sorted(i.path for i in placed if i.verdict == "ignored")
    _fresh_warnings()
    with capture_logs() as logs:
        litellm_keys.note_ignored(raw)
    warned = [e for e in logs if e["event"] == "route.config_keys_ignored"]
    if ignored:
        assert len(warned) == 1
        assert warned[0]["keys"] == ignored
    else:
        assert not warned


def test_documented_keys_are_all_named_by_a_rule() -> None:
    documented = _load(DATA / "documented_keys.yaml")
    assert set(documented) == {
        "litellm_params",
        "model_info",
        "router_settings",
        "litellm_settings",
        "general_settings",
    }
    missing = [
        f"{section}.{key}"
        for section, keys in documented.items()
        for key in keys
        if litellm_keys.rule_for(section, key) is None
    ]
    assert not missing


def test_litellms_own_schemas_are_all_named_by_a_rule() -> None:
    """LiteLLM's deployment and router models, as the installed release defines them."""
    import inspect

    from litellm.router import Router
    from litellm.types.router import LiteLLM_Params, ModelInfo

    router_args = set(inspect.signature(Router.__init__).parameters) - {
        "self",
        "model_list",
    }
    missing = [
        f"{section}.{key}"
        for section, keys in (
            ("litellm_params", LiteLLM_Params.model_fields),
            ("model_info", ModelInfo.model_fields),
            ("router_settings", router_args),
        )
        for key in keys
        if litellm_keys.rule_for(section, key) is None
    ]
    assert not missing


def test_shipped_example_keys_outside_the_table_are_few() -> None:
    unknown = {
        item.key
        for path in SHIPPED
        for item in litellm_keys.classify(_load(path))
        if item.rule is None and item.section != "model_list[]"
    }
    assert unknown <= UNLISTED_IN_EXAMPLES


def test_honoured_keys_reach_each_deployments_call_settings() -> None:
    _fresh_warnings()
    with capture_logs() as logs:
        spec = parse_route_config((DATA / "reliability_from_docs.yaml").read_text())
    primary, sonnet = spec.deployments
    assert primary.calls.first_token_timeout_s == 5
    assert primary.calls.stall_timeout_s == 5
    assert primary.calls.attempt_timeout_s == 30
    assert primary.calls.num_retries == 2
    assert (primary.calls.allowed_fails, primary.calls.cooldown_s) == (3, 45)
    assert (primary.calls.rpm, primary.calls.tpm, primary.calls.max_parallel_requests) == (
        480,
        100000,
        20,
    )
    # router_settings fill in what the deployment does not say
    assert sonnet.calls.first_token_timeout_s == 10
    assert sonnet.calls.attempt_timeout_s == 60
    assert sonnet.calls.num_retries == 3
    assert sonnet.calls.max_parallel_requests == 50
    assert (sonnet.calls.allowed_fails, sonnet.calls.cooldown_s) == (5, 30)
    assert sonnet.calls.retries_by_class == {"TimeoutError": 1, "RateLimitError": 4}
    assert sonnet.calls.allowed_fails_by_class == {"RateLimitError": 100}
    assert (sonnet.input_cost_per_token, sonnet.output_cost_per_token) == (3e-6, 1.5e-5)
    assert spec.fallbacks == {"gpt-4o": ("claude-sonnet",)}
    assert spec.aliases == {"gpt-4": "gpt-4o"}
    (warned,) = [e for e in logs if e["event"] == "route.config_keys_ignored"]
    assert "router_settings.routing_strategy" in warned["keys"]
    assert "model_list[0].litellm_params.max_retries" in warned["keys"]
    assert "general_settings.master_key" in warned["keys"]
    assert not any(key.endswith(".timeout") for key in warned["keys"])


def test_litellm_settings_defaults_apply_last() -> None:
    spec = parse_route_config(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: openai/gpt-4o}\n"
        "litellm_settings: {request_timeout: 7, num_retries: 4}\n"
    )
    calls = spec.deployments[0].calls
    assert (calls.attempt_timeout_s, calls.first_token_timeout_s, calls.num_retries) == (7, 7, 4)


def test_deployment_prices_in_litellm_params_reach_the_cost_objective() -> None:
    spec = parse_route_config(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: openai/gpt-4o, input_cost_per_token: 1.0e-6,\n"
        "                     output_cost_per_token: 2.0e-6}\n"
        "  - model_name: b\n"
        "    litellm_params: {model: openai/gpt-4o, input_cost_per_token: 1.0e-6}\n"
        "    model_info: {input_cost_per_token: 5.0e-6}\n"
    )
    listed, declared = spec.deployments
    assert (listed.input_cost_per_token, listed.output_cost_per_token) == (1e-6, 2e-6)
    assert declared.input_cost_per_token == 5e-6  # model_info wins


def test_router_settings_max_fallbacks_applies_unless_the_router_block_says() -> None:
    head = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/gpt-4o}\n"
    assert parse_route_config(head).max_fallbacks == 3
    assert parse_route_config(head + "router_settings: {max_fallbacks: 1}\n").max_fallbacks == 1
    both = head + "router_settings: {max_fallbacks: 1}\nrouter: {max_fallbacks: 2}\n"
    assert parse_route_config(both).max_fallbacks == 2


def test_litellm_settings_fallbacks_are_fallback_chains() -> None:
    spec = parse_route_config(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: openai/gpt-4o}\n"
        "  - model_name: b\n"
        "    litellm_params: {model: openai/gpt-4o-mini}\n"
        "litellm_settings: {fallbacks: [{a: [b]}]}\n"
    )
    assert spec.fallbacks == {"a": ("b",)}
    with pytest.raises(InvalidArgument) as refused:
        parse_route_config(
            "model_list:\n"
            "  - model_name: a\n"
            "    litellm_params: {model: openai/gpt-4o}\n"
            "litellm_settings: {fallbacks: [{a: [nowhere]}]}\n"
        )
    [violation] = refused.value.violations
    assert violation.field == "config_yaml: litellm_settings.fallbacks[0]"
    assert "nowhere" in violation.description


@pytest.mark.parametrize(
    ("yaml_tail", "path"),
    [
        ("guardrails: [{guardrail_name: g}]\n", "guardrails"),
        ("general_settings: {allowed_ips: [10.0.0.1]}\n", "general_settings.allowed_ips"),
        ("general_settings: {master_key: sk-1234}\n", "general_settings.master_key"),
        (
            "general_settings: {database_url: 'postgresql://u:pw@db:5432/x'}\n",
            "general_settings.database_url",
        ),
        ("router_settings: {redis_password: hunter2}\n", "router_settings.redis_password"),
        (
            "router_settings: {provider_budget_config: {openai: {}}}\n",
            "router_settings.provider_budget_config",
        ),
        ("litellm_settings: {cache_params: {password: pw}}\n", "cache_params.password"),
        ("environment_variables: {OPENAI_API_KEY: sk-x}\n", "OPENAI_API_KEY"),
    ],
)
def test_refused_keys_fail_the_load_naming_the_key(yaml_tail: str, path: str) -> None:
    text = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/gpt-4o}\n"
    with pytest.raises(InvalidArgument) as caught:
        parse_route_config(text + yaml_tail)
    fields = [v.field for v in caught.value.violations]
    assert any(f.startswith("config_yaml: ") and path in f for f in fields), fields
    key = path.rsplit(".", 1)[-1]
    assert any(key in v.description for v in caught.value.violations)


def test_refused_per_deployment_keys_name_the_entry() -> None:
    raw = {
        "model_list": [
            {
                "model_name": "a",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "max_budget": 10,
                    "aws_secret_access_key": "literal",
                    "aws_region_name": "us-east-1",
                    "vertex_credentials": "/etc/creds.json",
                },
                "model_info": {"blocked": True},
            }
        ]
    }
    with pytest.raises(InvalidArgument) as caught:
        resolve_route_config(raw)
    assert sorted(v.field for v in caught.value.violations) == [
        "config_yaml: model_list[0].litellm_params.aws_secret_access_key",
        "config_yaml: model_list[0].litellm_params.max_budget",
        "config_yaml: model_list[0].model_info.blocked",
    ]


def test_references_are_not_literal_secrets() -> None:
    raw = {
        "model_list": [{"model_name": "a", "litellm_params": {"model": "openai/gpt-4o"}}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        "router_settings": {"redis_password": "os.environ/REDIS_PASSWORD"},
        "environment_variables": {"REDIS_HOST": "localhost"},
    }
    assert litellm_keys.refusals(raw, "config_yaml") == []


def test_ignored_keys_are_logged_once_per_distinct_set() -> None:
    _fresh_warnings()
    text = (
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/gpt-4o}\n"
        "router_settings: {routing_strategy: least-busy, some_future_key: 1}\n"
    )
    with capture_logs() as logs:
        parse_route_config(text)
        parse_route_config(text)
        parse_route_config(text + "litellm_settings: {drop_params: true}\n")
    warned = [e for e in logs if e["event"] == "route.config_keys_ignored"]
    assert [w["keys"] for w in warned] == [
        ["router_settings.routing_strategy", "router_settings.some_future_key"],
        [
            "litellm_settings.drop_params",
            "router_settings.routing_strategy",
            "router_settings.some_future_key",
        ],
    ]
    assert warned[0]["unknown"] == ["router_settings.some_future_key"]


def test_a_config_of_honoured_keys_only_logs_nothing() -> None:
    _fresh_warnings()
    with capture_logs() as logs:
        parse_route_config(
            "model_list:\n  - model_name: a\n"
            "    litellm_params: {model: openai/gpt-4o, timeout: 3}\n"
            "    model_info: {quality: 0.9}\n"
            "router_settings: {num_retries: 1}\n"
        )
    assert not [e for e in logs if e["event"] == "route.config_keys_ignored"]


def test_the_readme_lists_exactly_the_table() -> None:
    text = README.read_text()
    match = re.search(r"<!-- litellm-keys:begin -->\n(.*?)\n<!-- litellm-keys:end -->", text, re.S)
    assert match, "README.md lacks the key table markers"
    assert match.group(1).strip() == litellm_keys.readme_table(), (
        "README key table is stale: paste litellm_keys.readme_table() between the markers"
    )
