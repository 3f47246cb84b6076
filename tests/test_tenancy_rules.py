"""The rules that keep a tenant's routing layer under the operator's: what it may name, how the
layers merge, what Rego sees, and whose state a breaker or lane reading touches. Property tests
for the merge's invariants; the end-to-end attacks are in test_tenant_attacks.py."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from maestro.core.auth import ALL_SCOPES
from maestro.routing.layers import GLOBAL_PROJECT, merge_layers
from maestro.routing.policy import PolicyModule
from maestro.routing.snapshots import compile_layers
from maestro.routing.spec import resolve_route_config
from maestro.routing.tenancy import AllowedEndpoint, tenant_violations
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer

IN_HOUSE_ONLY_FOR_PII = PolicyModule(
    "global.rego",
    """package maestro.routing

default allow = false

allow {
  not deny
}

deny {
  input.step_tags[_] == "pii"
  not input.model.in_house
}
""",
)


def _entry(name: str, model: str = "openai/gpt-4o", **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, **params}}


def _fields(violations: list[Any]) -> list[str]:
    return [v.field.split(": ", 1)[1] for v in violations]


# -- what a tenant entry may name -----------------------------------------------------------------


def test_an_allowed_prefix_covers_its_host_and_paths_below_only() -> None:
    allowed = [AllowedEndpoint("http://10.0.0.1:8000/v1")]
    ok = _entry("a", api_base="http://10.0.0.1:8000/v1/chat")
    refused = [
        _entry("b", api_base="http://10.0.0.10:8000/v1"),  # another host sharing a prefix
        _entry("c", api_base="http://10.0.0.1:8001/v1"),  # another port
        _entry("d", api_base="http://10.0.0.1:8000/v10"),  # not at a segment boundary
        _entry("e", api_base="http://x@10.0.0.1:8000/v1"),  # user info
        _entry("f", api_base="https://10.0.0.1:8000/v1"),  # another scheme
    ]
    raw = {"model_list": [ok, *refused]}
    assert _fields(tenant_violations(raw, None, allowed)) == [
        f"model_list[{i}].litellm_params.api_base" for i in range(1, 6)
    ]


def test_a_secret_goes_only_where_the_operator_declared_it() -> None:
    operator = {
        "model_list": [_entry("ops", api_base="https://llm.corp/v1", api_key="os.environ/K")]
    }
    allowed = [AllowedEndpoint("http://127.0.0.1", api_key="os.environ/LOCAL")]
    raw = {
        "model_list": [
            _entry("same-pair", api_base="https://llm.corp/v1", api_key="os.environ/K"),
            _entry("own-key", api_base="http://127.0.0.1:9/v1", api_key="os.environ/LOCAL"),
            _entry("other-key", api_base="http://127.0.0.1:9/v1", api_key="os.environ/K"),
            _entry("no-base", api_key="os.environ/K"),
            {**_entry("nested"), "model_info": {"extra": ["os.environ/PGPASSWORD"]}},
        ]
    }
    assert _fields(tenant_violations(raw, operator, allowed)) == [
        "model_list[2].litellm_params.api_base",
        "model_list[3].litellm_params.api_base",
        "model_list[4].model_info.extra[0]",
    ]


def test_facts_and_in_house_providers_need_an_endpoint_trusted_for_them() -> None:
    plain = [AllowedEndpoint("http://127.0.0.1")]
    trusted = [AllowedEndpoint("http://127.0.0.1", trust_tenant_facts=True)]
    raw = {
        "model_list": [
            {**_entry("a", api_base="http://127.0.0.1:1"), "model_info": {"in_house": True}},
            _entry("b", "hosted_vllm/llama", api_base="http://127.0.0.1:1"),
            {**_entry("c"), "model_info": {"jurisdiction": "eu"}},
        ]
    }
    assert _fields(tenant_violations(raw, None, plain)) == [
        "model_list[0].model_info.in_house",
        "model_list[1].litellm_params.model",
        "model_list[2].model_info.jurisdiction",
    ]
    assert _fields(tenant_violations(raw, None, trusted)) == [
        "model_list[2].model_info.jurisdiction"
    ]


def test_operator_groups_and_the_owner_mark_are_off_limits() -> None:
    operator = {"model_list": [_entry("ops")]}
    raw = {
        "model_list": [_entry("ops"), {**_entry("x"), "model_info": {"maestro_owner": "global"}}]
    }
    assert _fields(tenant_violations(raw, operator, [])) == [
        "model_list[0].model_name",
        "model_list[1].model_info.maestro_owner",
    ]


# -- how layers merge ----------------------------------------------------------------------------

_models = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4, unique=True)
_tags = st.dictionaries(st.sampled_from(["pii", "PII", "export", "secret"]), _models, max_size=3)


@given(outer=_tags, inner=_tags)
def test_a_tenant_layer_only_narrows_content_confinement(
    outer: dict[str, list[str]], inner: dict[str, list[str]]
) -> None:
    entries = [_entry(name) for name in "abcd"]
    merged = merge_layers(
        {"model_list": entries, "policies": {"content_tags": outer}},
        {"model_list": [_entry("e")], "policies": {"content_tags": inner}},
    )
    spec = resolve_route_config(merged)
    confined = {tag.strip().lower() for tag in outer}
    for tag, models in outer.items():
        key = tag.strip().lower()
        assert key in spec.content_tags  # still confined...
        assert spec.content_tags[key] <= frozenset(models)  # ...to no more than the operator's
    assert confined <= set(spec.content_tags)


def test_operator_entries_stay_the_operators_and_tenant_entries_are_the_tenants() -> None:
    merged = merge_layers(
        {"model_list": [{**_entry("ops"), "model_info": {"id": "ops-a"}}]},
        {"model_list": [{**_entry("mine"), "model_info": {"id": "x", "maestro_owner": "global"}}]},
    )
    snapshot = compile_layers("projects/t", merged, (), None, "1")
    owners = {d.deployment_id: (d.owner, d.state_key) for d in snapshot.deployments}
    assert owners == {"ops-a": ("", "ops-a"), "x": ("t", "projects/t/deployments/x")}


def test_a_tenants_router_settings_leave_an_operator_deployments_shared_state_settings() -> None:
    """Breaker and admission state of an operator deployment is every project's: only the
    operator's global router_settings shape it, a project's reach its own deployments only."""
    hostile = {"allowed_fails": 0, "cooldown_time": 3600, "default_max_parallel_requests": 1}
    operator_entry = {**_entry("ops"), "model_info": {"id": "ops-a"}}
    project = {"model_list": [{**_entry("mine"), "model_info": {"id": "x"}}]}
    quiet = resolve_route_config(
        merge_layers({"model_list": [operator_entry]}, {**project, "router_settings": hostile})
    )
    [ops] = [d for d in quiet.deployments if d.deployment_id == "ops-a"]
    assert (ops.calls.allowed_fails, ops.calls.cooldown_s, ops.calls.max_parallel_requests) == (
        None,
        None,
        None,
    )
    operator = {
        "model_list": [operator_entry],
        "router_settings": {
            "allowed_fails": 4,
            "cooldown_time": 30,
            "default_max_parallel_requests": 8,
            "allowed_fails_policy": {"RateLimitErrorAllowedFails": 9},
        },
    }
    merged = resolve_route_config(merge_layers(operator, {**project, "router_settings": hostile}))
    calls = {d.deployment_id: d.calls for d in merged.deployments}
    assert (
        calls["ops-a"].allowed_fails,
        calls["ops-a"].allowed_fails_by_class,
        calls["ops-a"].cooldown_s,
        calls["ops-a"].max_parallel_requests,
    ) == (4, {"RateLimitError": 9}, 30.0, 8)
    # the project's own deployment does take them
    assert (calls["x"].allowed_fails, calls["x"].cooldown_s) == (0, 3600.0)
    assert calls["x"].max_parallel_requests == 1


# -- what Rego sees ---------------------------------------------------------------------------


def test_a_group_is_allowed_only_if_every_deployments_facts_are() -> None:
    raw = {
        "model_list": [
            {**_entry("mixed"), "model_info": {"id": "hosted"}},
            {**_entry("mixed", "vllm/llama"), "model_info": {"id": "inhouse"}},
            {**_entry("local", "vllm/llama"), "model_info": {"id": "local"}},
        ]
    }
    snapshot = compile_layers(GLOBAL_PROJECT, raw, (IN_HOUSE_ONLY_FOR_PII,), None, "1")
    policy = snapshot.policy
    row = policy.allowed_row(policy.tag_key(frozenset({"pii"})))
    allowed = {name for name, ok in zip(policy.models, np.asarray(row), strict=True) if ok}
    assert allowed == {"local"}  # the hosted deployment keeps its group out, whatever its order


# -- whose state a reading touches -----------------------------------------------------------------


def test_a_tenant_deployments_breaker_reaches_only_its_own_projects_snapshot() -> None:
    same_id = {"model_list": [{**_entry("g"), "model_info": {"id": "shared"}}]}
    mine = compile_layers("projects/t", merge_layers({}, same_id), (), None, "1")
    theirs = compile_layers("projects/u", merge_layers({}, same_id), (), None, "1")
    [deployment] = mine.deployments
    assert deployment.state_key in mine.id_of_state
    assert deployment.state_key not in theirs.id_of_state


# -- what a tenant reads of the operator's layer --------------------------------------------------

OPERATOR_LAYER = """
model_list:
  - model_name: ops-private  # the internal cluster
    litellm_params: {model: openai/gpt-4o, api_base: "http://10.20.30.40/v1",
                     api_key: os.environ/OPS_CLUSTER_KEY}
    model_info: {id: ops-private-a}
policies:
  content_tags: {pii: [ops-private]}
"""


async def test_a_tenant_reads_the_global_layer_without_its_endpoints_or_secret_names(
    server: RunningServer,
) -> None:
    operator_key = server.new_key("ops@corp", ALL_SCOPES)
    request = rpb.GetConfigRequest(name="projects/global/routeConfig")
    async with server.client(operator_key) as operator, server.client(server.alpha_key) as alpha:
        await operator.routes.ApplyConfig(
            rpb.ApplyConfigRequest(
                route_config=rpb.RouteConfig(
                    name="projects/global/routeConfig", config_yaml=OPERATOR_LAYER
                )
            )
        )
        as_operator = (await operator.routes.GetConfig(request)).route_config.config_yaml
        as_tenant = (await alpha.routes.GetConfig(request)).route_config.config_yaml
    assert as_operator == OPERATOR_LAYER
    assert "10.20.30.40" not in as_tenant
    assert "OPS_CLUSTER_KEY" not in as_tenant
    assert "ops-private-a" in as_tenant  # the groups and deployments it may alias and weight
