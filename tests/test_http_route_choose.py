"""`POST /route/choose` and the `X-Maestro-Objectives` header on the HTTP ingress: the same
decision as RouteService.Choose, the same access rules, the header on chat completions too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.core.auth import ADMIN
from maestro.data_plane.sim import SimProvider
from maestro.v1 import common_pb2
from maestro.v1 import route_service_pb2 as pb
from tests.conftest import RunningServer, start_server
from tests.inference_support import profile

# One group, two deployments: with the configured (equal) weights quality wins (0.9 apart)
# over cost (the cheap one scores ~0.99, the premium one 0.5 at the 0.01 USD/1k reference).
ALPHA_CONFIG = """
model_list:
  - model_name: chat
    litellm_params: {{model: openai/cheap, api_base: "{sim}"}}
    model_info: {{id: cheap, quality: 0.1, input_cost_per_token: 1.0e-7,
                  output_cost_per_token: 1.0e-7}}
  - model_name: chat
    litellm_params: {{model: openai/premium, api_base: "{sim}"}}
    model_info: {{id: premium, quality: 1.0, input_cost_per_token: 1.0e-5,
                  output_cost_per_token: 1.0e-5}}
"""
BETA_CONFIG = """
model_list:
  - model_name: own
    litellm_params: {{model: openai/own, api_base: "{sim}"}}
    model_info: {{id: beta-own}}
"""
SEA = [{"role": "user", "content": "Write about the sea."}]


@dataclass
class Routed:
    server: RunningServer
    alpha: AsyncMaestroClient

    @property
    def base(self) -> str:
        data = self.server.plane.data
        assert data is not None
        assert data.http_port is not None
        return f"http://127.0.0.1:{data.http_port}"

    async def post(
        self,
        path: str,
        body: object,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        sent = {"Authorization": f"Bearer {key or self.server.alpha_key}", **(headers or {})}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.base}{path}", json=body, headers=sent) as response,
        ):
            return response.status, await response.json(), response.headers

    async def choose(
        self, body: object, key: str | None = None, objectives: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"X-Maestro-Objectives": objectives} if objectives is not None else None
        status, answer, _ = await self.post("/route/choose", body, key, headers)
        return status, answer


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[Routed]:
    async with _routed(tmp_path) as running:
        yield running


@asynccontextmanager
async def _routed(tmp_path: Path) -> AsyncIterator[Routed]:
    async with SimProvider(profile()) as sim:
        server = await start_server(tmp_path)
        try:
            async with (
                server.client(server.alpha_key) as alpha,
                server.client(server.beta_key) as beta,
            ):
                configs = ((alpha, "alpha", ALPHA_CONFIG), (beta, "beta", BETA_CONFIG))
                for client, project, config in configs:
                    await client.routes.ApplyConfig(
                        pb.ApplyConfigRequest(
                            route_config=pb.RouteConfig(
                                name=f"projects/{project}/routeConfig",
                                config_yaml=config.format(sim=sim.base_url),
                            )
                        )
                    )
                yield Routed(server, alpha)
        finally:
            await server.plane.stop(grace_s=0)
            server.telemetry.shutdown()


async def test_route_choose_answers_the_seed_fields_and_the_same_winner_as_grpc_choose(
    routed: Routed,
) -> None:
    status, answer = await routed.choose({"model": "chat", "messages": SEA})
    message = common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=SEA[0]["content"])
    grpc_answer = await routed.alpha.routes.Choose(
        pb.ChooseRequest(parent="projects/alpha", model="chat", messages=[message])
    )
    assert status == 200
    assert {"model", "provider", "rationale", "costs", "SLO_forecast", "decision"} <= set(answer)
    decision = json_format.ParseDict(answer["decision"], pb.RouteDecision())  # the full message
    assert decision.deployment == grpc_answer.decision.deployment
    assert answer["deployment_id"] == grpc_answer.decision.deployment.deployment_id == "premium"
    assert (answer["model"], answer["provider"]) == ("chat", decision.deployment.provider)
    assert [c.deployment.deployment_id for c in decision.candidates] == ["premium", "cheap"]
    assert answer["costs"]["total_cost_usd"] == pytest.approx(
        decision.projected_cost.total_cost_usd
    )
    assert answer["costs"]["prompt_tokens"] > 0  # counted from the messages
    assert answer["SLO_forecast"]["expected_p95_latency_ms"] > 0
    assert "premium" in answer["rationale"]


async def test_an_empty_body_chooses_among_every_model_group_of_the_callers_project(
    routed: Routed,
) -> None:
    status, answer, headers = await routed.post("/route/choose", None)
    assert status == 200
    assert answer["deployment_id"] == "premium"
    assert headers["x-maestro-deployment-id"] == "premium"
    assert headers["x-maestro-decision-id"] == answer["decision"]["decision_id"]


async def test_the_cost_objectives_header_chooses_the_cheap_model_on_route_choose(
    routed: Routed,
) -> None:
    _, default = await routed.choose({"model": "chat"})
    status, cost = await routed.choose({"model": "chat"}, objectives="cost")
    _, weighted = await routed.choose({"model": "auto"}, objectives="cost=0.9, quality=0.1")
    assert default["deployment_id"] == "premium"
    assert status == 200
    assert cost["deployment_id"] == "cheap"
    assert cost["decision"]["effective_weights"]["cost"] == pytest.approx(1.0)
    assert weighted["deployment_id"] == "cheap"


async def test_body_weights_win_over_the_objectives_header_as_request_fields_do_on_grpc(
    routed: Routed,
) -> None:
    body = {"model": "chat", "objective_weights": {"quality": 1}}
    status, answer = await routed.choose(body, objectives="cost")
    assert status == 200
    assert answer["deployment_id"] == "premium"


async def test_the_cost_objectives_header_routes_a_chat_completion_to_the_cheap_model(
    routed: Routed,
) -> None:
    body = {"model": "chat", "messages": SEA, "max_tokens": 4}
    default_status, default, default_headers = await routed.post("/v1/chat/completions", body)
    status, cost, headers = await routed.post(
        "/v1/chat/completions", body, headers={"X-Maestro-Objectives": "cost"}
    )
    assert (default_status, status) == (200, 200)
    assert default_headers["x-maestro-deployment-id"] == "premium"
    assert default["maestro"]["deployment_id"] == "premium"
    assert headers["x-maestro-deployment-id"] == "cheap"
    assert cost["maestro"]["deployment_id"] == "cheap"


@pytest.mark.parametrize("path", ["/route/choose", "/v1/chat/completions"])
async def test_a_malformed_objectives_header_is_400_naming_the_header(
    routed: Routed, path: str
) -> None:
    body = {"model": "chat", "messages": SEA}
    status, answer, _ = await routed.post(path, body, headers={"X-Maestro-Objectives": "speed"})
    assert status == 400
    assert answer["error"]["param"] == "x-maestro-objectives"
    assert "speed" in answer["error"]["message"]


async def test_another_projects_parent_is_403_and_a_key_only_gets_its_own_projects_decision(
    routed: Routed,
) -> None:
    beta = routed.server.beta_key
    status, denied = await routed.choose({"parent": "projects/alpha", "model": "chat"}, beta)
    hidden_status, hidden = await routed.choose({"model": "chat"}, beta)
    own_status, own = await routed.choose({}, beta)
    assert status == 403
    assert denied["error"]["code"] == "PROJECT_MISMATCH"
    assert hidden_status == 404  # alpha's group is no group of beta's config
    assert hidden["error"]["code"] == "MODEL_NOT_FOUND"
    assert own_status == 200
    assert own["deployment_id"] == "beta-own"
    assert {c["deployment"]["deployment_id"] for c in own["decision"]["candidates"]} == {"beta-own"}


async def test_a_key_without_the_choose_scope_is_refused_with_403(routed: Routed) -> None:
    admin_only = routed.server.new_key("admin-only", frozenset({ADMIN}))
    status, answer = await routed.choose({"model": "chat"}, admin_only)
    assert status == 403
    assert answer["error"]["code"] == "SCOPE_MISSING"


async def test_route_choose_without_a_key_is_401(routed: Routed) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{routed.base}/route/choose", json={}) as response,
    ):
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "API_KEY_MISSING"


async def test_a_bad_choose_body_is_400_naming_each_bad_field(routed: Routed) -> None:
    body = {
        "modle": "chat",
        "step_hint": "sketch",
        "objective_weights": {"cost": -1},
        "estimated_prompt_tokens": -5,
        "messages": [{"role": "robot", "content": "hi"}],
        "slo_target": {"max_p95_latency_ms": -1},
    }
    status, answer = await routed.choose(body)
    fields = {v["field"] for v in answer["error"]["field_violations"]}
    assert status == 400
    assert answer["error"]["code"] == "INVALID_ARGUMENT"
    assert fields == {
        "modle",
        "step_hint",
        "objective_weights.cost",
        "estimated_prompt_tokens",
        "messages[0].role",
        "slo_target.max_p95_latency_ms",
    }


async def test_messages_and_prompt_together_are_400_naming_prompt(routed: Routed) -> None:
    status, answer = await routed.choose({"messages": SEA, "prompt": "hi"})
    assert status == 400
    assert answer["error"]["param"] == "prompt"


async def test_a_body_that_is_not_json_is_400(routed: Routed) -> None:
    sent = {"Authorization": f"Bearer {routed.server.alpha_key}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{routed.base}/route/choose", data=b"{nope", headers=sent) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "INVALID_ARGUMENT"


async def test_an_unknown_model_is_404_as_grpc_choose_is_not_found(routed: Routed) -> None:
    status, answer = await routed.choose({"model": "gpt-9"})
    with pytest.raises(MaestroRpcError) as caught:
        await routed.alpha.routes.Choose(pb.ChooseRequest(parent="projects/alpha", model="gpt-9"))
    assert caught.value.code().name == "NOT_FOUND"
    assert status == 404
    assert answer["error"]["code"] == caught.value.reason == "MODEL_NOT_FOUND"


async def test_a_pii_prompt_is_content_tagged_like_grpc_messages_are(routed: Routed) -> None:
    status, answer = await routed.choose({"prompt": "Email jane.doe@example.com the memo."})
    assert status == 200
    assert "pii" in answer["decision"]["detected_tags"]
    assert answer["decision"]["content_tagged"] is True
