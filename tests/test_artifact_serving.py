"""Serving prompt and agent artifacts on the data plane: a call names an artifact, gets a version
from the project's traffic split (sticky per key), that version's messages and settings, and
reports the version in its response, stream, span and observations. Against a real server and
a recording OpenAI-compatible provider; splits are published into the server's registry as
RolloutService publishes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from statsmodels.stats.proportion import proportion_confint

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.route.convert import watch_response
from maestro.control_plane.route.watch import ConfigWatches, WatchAck
from maestro.data_plane.remote import SnapshotFollower
from maestro.routing.artifacts import AGENT_YAML, PROMPT_YAML
from maestro.routing.snapshots import SnapshotRegistry
from maestro.routing.traffic import (
    ProjectTraffic,
    TrafficSplit,
    VersionShare,
    content_digest,
    parse_snapshot_version,
    snapshot_version,
)
from maestro.v1 import common_pb2
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server

ALPHA = "projects/alpha"
BETA = "projects/beta"
ARTIFACT = f"{ALPHA}/artifacts/support-answer"
V1, V2 = f"{ARTIFACT}/versions/1", f"{ARTIFACT}/versions/2"
PROMPT_V1 = b"""\
messages:
  - role: system
    content: "v1: you support {{ product }} customers."
variables:
  product: {}
model: primary
temperature: 0.3
"""
PROMPT_V2 = b"""\
messages:
  - role: system
    content: "v2: you support {{ product }} customers, briefly."
variables:
  product: {}
model: primary
temperature: 0.3
"""
CONFIG = """
model_list:
  - model_name: primary
    litellm_params: {{model: openai/primary, api_base: "{base}"}}
    model_info: {{id: primary-a}}
"""


def share(version: str, weight: int, content: bytes, media_type: str = PROMPT_YAML) -> VersionShare:
    return VersionShare(version, weight, content_digest(content), media_type, content)


def prompt_traffic(candidate_weight: int = 10, revision: int = 1) -> ProjectTraffic:
    """v2 the candidate (listed first, as RolloutService lists it), v1 the stable version."""
    split = TrafficSplit(
        ARTIFACT,
        (share(V2, candidate_weight, PROMPT_V2), share(V1, 100 - candidate_weight, PROMPT_V1)),
    )
    return ProjectTraffic(ALPHA, revision, {ARTIFACT: split})


@dataclass
class Recorder:
    """An OpenAI-compatible provider that records each request body and answers "ok"."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    base_url: str = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "primary"}
        for chunk in (
            {**head, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
        ):
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def system_texts(self) -> list[str]:
        return [m["content"] for b in self.bodies for m in b["messages"] if m["role"] == "system"]


@dataclass
class Stack:
    server: RunningServer
    recorder: Recorder
    alpha: AsyncMaestroClient
    beta: AsyncMaestroClient

    @property
    def registry(self) -> SnapshotRegistry:
        return self.server.plane.routes._registry

    @property
    def http_base(self) -> str:
        data = self.server.plane.data
        assert data is not None
        return f"http://127.0.0.1:{data.http_port}/v1"


@asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", recorder.chat)
    recorder.runner = web.AppRunner(app)
    await recorder.runner.setup()
    site = web.TCPSite(recorder.runner, "127.0.0.1", 0)
    await site.start()
    port = recorder.runner.addresses[0][1]
    recorder.base_url = f"http://127.0.0.1:{port}/v1"
    server = await start_server(tmp_path)
    try:
        async with (
            server.client(server.alpha_key) as alpha,
            server.client(server.beta_key) as beta,
        ):
            for client, project in ((alpha, ALPHA), (beta, BETA)):
                await client.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(
                            name=f"{project}/routeConfig",
                            config_yaml=CONFIG.format(base=recorder.base_url),
                        )
                    )
                )
            running = Stack(server, recorder, alpha, beta)
            await running.registry.publish_traffic(prompt_traffic())
            yield running
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
        await recorder.runner.cleanup()


def user(text: str = "My invoice is wrong.") -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=text)


def unary(**fields: Any) -> ipb.CreateChatCompletionRequest:
    values: dict[str, Any] = {
        "parent": ALPHA,
        "messages": [user()],
        "artifact": ARTIFACT,
        "artifact_variables": {"product": "Maestro"},
    }
    values.update(fields)
    return ipb.CreateChatCompletionRequest(**values)


async def test_the_same_traffic_key_always_gets_the_same_version(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        versions = {
            (
                await s.alpha.inference.CreateChatCompletion(unary(traffic_key="user-7"))
            ).artifact_version
            for _ in range(20)
        }
        across_keys = {
            (
                await s.alpha.inference.CreateChatCompletion(unary(traffic_key=f"k{i}"))
            ).artifact_version
            for i in range(60)
        }
    assert len(versions) == 1
    assert versions <= {V1, V2}
    assert across_keys == {V1, V2}  # 60 keys at 90/10: both versions serve


async def test_response_stream_done_and_span_carry_the_artifact_version(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        response = await s.alpha.inference.CreateChatCompletion(unary(traffic_key="u1"))
        stream = [
            event
            async for event in s.alpha.inference.StreamChatCompletion(
                ipb.StreamChatCompletionRequest(
                    parent=ALPHA,
                    messages=[user()],
                    artifact=ARTIFACT,
                    artifact_variables={"product": "Maestro"},
                    traffic_key="u1",
                )
            )
        ]
        plain = await s.alpha.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(parent=ALPHA, model="primary", messages=[user()])
        )
    assert response.artifact_version in (V1, V2)
    assert stream[-1].done.artifact_version == response.artifact_version
    assert plain.artifact_version == ""
    versions = [
        (span.attributes or {}).get("maestro.artifact.version")
        for span in s.server.spans.get_finished_spans()
        if span.name.startswith("chat ")
    ]
    assert versions.count(response.artifact_version) == 2
    assert None in versions  # the plain call's span has none


async def test_the_rendered_prompt_and_its_settings_reach_the_provider(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        response = await s.alpha.inference.CreateChatCompletion(
            unary(traffic_key="u2", temperature=1.5)
        )
        await s.alpha.inference.CreateChatCompletion(unary(traffic_key="u2"))
    first, second = s.recorder.bodies
    expected = "v1" if response.artifact_version == V1 else "v2"
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][0]["content"].startswith(f"{expected}: you support Maestro")
    assert first["messages"][1] == {"role": "user", "content": "My invoice is wrong."}
    assert first["model"] == "primary"  # the prompt's model: the call named none
    assert first["temperature"] == 1.5  # the call's own setting wins
    assert second["temperature"] == 0.3  # the prompt's, where the call set none


async def test_an_agent_offers_its_tools_when_the_call_brings_none(tmp_path: Path) -> None:
    agent = b"""\
instructions: You handle {{ topic }}.
variables: {topic: {default: refunds}}
tools:
  - name: refund
    description: Refund an order.
    parameters: {type: object, properties: {order: {type: string}}}
"""
    name = f"{ALPHA}/artifacts/refunder"
    async with stack(tmp_path) as s:
        split = TrafficSplit(name, (share(f"{name}/versions/1", 100, agent, AGENT_YAML),))
        traffic = prompt_traffic(revision=2)
        await s.registry.publish_traffic(ProjectTraffic(ALPHA, 2, {**traffic.splits, name: split}))
        await s.alpha.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(
                parent=ALPHA, model="primary", messages=[user()], artifact=name
            )
        )
    body = s.recorder.bodies[0]
    assert body["messages"][0] == {"role": "system", "content": "You handle refunds."}
    assert [t["function"]["name"] for t in body["tools"]] == ["refund"]


async def test_a_missing_variable_is_invalid_argument_naming_it(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await s.alpha.inference.CreateChatCompletion(unary(artifact_variables={}))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.field_violations] == ["artifact_variables[product]"]
    assert not s.recorder.bodies


async def test_a_key_of_another_project_never_gets_its_prompt(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as named:  # beta's call naming alpha's artifact
            await s.beta.inference.CreateChatCompletion(unary(parent=BETA))
        with pytest.raises(MaestroRpcError) as posed:  # beta's key posing as alpha
            await s.beta.inference.CreateChatCompletion(unary())
        # beta serves its own artifact of the same id, never alpha's content.
        beta_artifact = f"{BETA}/artifacts/support-answer"
        own = b"messages: [{role: system, content: beta's own prompt}]\n"
        await s.registry.publish_traffic(
            ProjectTraffic(
                BETA,
                1,
                {
                    beta_artifact: TrafficSplit(
                        beta_artifact, (share(f"{beta_artifact}/versions/1", 100, own),)
                    )
                },
            )
        )
        served = await s.beta.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(
                parent=BETA, model="primary", messages=[user()], artifact=beta_artifact
            )
        )
    assert named.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in named.value.field_violations] == ["artifact"]
    assert posed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert served.artifact_version == f"{beta_artifact}/versions/1"
    assert s.recorder.system_texts() == ["beta's own prompt"]


async def test_a_split_naming_another_projects_artifact_is_refused() -> None:
    registry = SnapshotRegistry()
    split = TrafficSplit(ARTIFACT, (share(V1, 100, PROMPT_V1),))
    with pytest.raises(Exception, match="not an artifact of projects/beta"):
        await registry.publish_traffic(ProjectTraffic(BETA, 1, {ARTIFACT: split}))
    forged = VersionShare(V1, 100, content_digest(PROMPT_V2), PROMPT_YAML, PROMPT_V1)
    with pytest.raises(Exception, match="digest"):
        await registry.publish_traffic(
            ProjectTraffic(ALPHA, 1, {ARTIFACT: TrafficSplit(ARTIFACT, (forged,))})
        )
    assert registry.traffic(BETA) is None
    assert registry.traffic(ALPHA) is None


async def test_an_artifact_with_no_serving_version_is_not_found(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await s.alpha.inference.CreateChatCompletion(
                unary(artifact=f"{ALPHA}/artifacts/nothing-here")
            )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no serving version" in raised.value.message


async def test_the_openai_ingress_serves_the_maestro_prompt_object(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        headers = {"authorization": f"Bearer {s.server.alpha_key}"}
        async with httpx.AsyncClient(base_url=s.http_base, headers=headers) as http:
            options: dict[str, Any] = {
                "prompt": ARTIFACT,
                "variables": {"product": "Maestro"},
                "key": "user-123",
            }
            body: dict[str, Any] = {
                "messages": [{"role": "user", "content": "Hello"}],
                "maestro": options,
            }
            whole = await http.post("/chat/completions", json=body)
            by_user = await http.post(
                "/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "Hello"}],
                    "user": "user-123",
                    "maestro": {"agent": ARTIFACT, "variables": {"product": "Maestro"}},
                },
            )
            streamed = await http.post("/chat/completions", json={**body, "stream": True})
            twice = await http.post(
                "/chat/completions",
                json={**body, "maestro": {**options, "artifact": ARTIFACT}},
            )
            missing = await http.post(
                "/chat/completions",
                json={**body, "maestro": {"prompt": ARTIFACT, "key": "user-123"}},
            )
    version = whole.json()["maestro"]["artifact_version"]
    assert whole.status_code == 200
    assert version in (V1, V2)
    assert whole.headers["x-maestro-artifact-version"] == version
    assert by_user.json()["maestro"]["artifact_version"] == version  # `user` is the key
    assert streamed.headers["x-maestro-artifact-version"] == version
    last = [line for line in streamed.text.splitlines() if '"finish_reason":"stop"' in line]
    assert json.loads(last[0].removeprefix("data: "))["maestro"]["artifact_version"] == version
    assert twice.status_code == 400
    assert twice.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "maestro.variables[product]"


async def test_the_openai_ingress_takes_an_artifact_call_without_messages(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        headers = {"authorization": f"Bearer {s.server.alpha_key}"}
        async with httpx.AsyncClient(base_url=s.http_base, headers=headers) as http:
            served = await http.post(
                "/chat/completions",
                json={"maestro": {"prompt": ARTIFACT, "variables": {"product": "Maestro"}}},
            )
            empty = await http.post("/chat/completions", json={"messages": []})
    assert served.status_code == 200, served.text
    assert served.json()["maestro"]["artifact_version"] in (V1, V2)
    assert empty.status_code == 400
    assert empty.json()["error"]["param"] == "messages"


async def test_observations_carry_the_artifact_version(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        data = s.server.plane.data
        assert data is not None
        data.observer.flush()
        response = await s.alpha.inference.CreateChatCompletion(unary(traffic_key="u3"))
        await s.alpha.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(parent=ALPHA, model="primary", messages=[user()])
        )
        batch = data.observer.flush()
    assert sorted((o.artifact_version, o.request_count) for o in batch) == [
        ("", 1),
        (response.artifact_version, 1),
    ]


# -- traffic splits, pure -------------------------------------------------------------------------


def test_the_candidate_share_over_many_keys_matches_its_weight() -> None:
    split = prompt_traffic(candidate_weight=10).splits[ARTIFACT]
    picked = sum(split.pick(f"user-{i}").version == V2 for i in range(10_000))
    low, high = proportion_confint(picked, 10_000, alpha=0.01, method="wilson")
    assert low <= 0.10 <= high


def test_a_key_on_the_candidate_keeps_it_as_its_weight_grows() -> None:
    at_10 = prompt_traffic(candidate_weight=10).splits[ARTIFACT]
    at_20 = prompt_traffic(candidate_weight=20).splits[ARTIFACT]
    on_candidate = [k for k in (f"key-{i}" for i in range(2_000)) if at_10.pick(k).version == V2]
    assert on_candidate
    assert all(at_20.pick(k).version == V2 for k in on_candidate)


def test_snapshot_versions_carry_the_traffic_revision() -> None:
    traffic = prompt_traffic(revision=7)
    assert snapshot_version("3.1", traffic) == "3.1~t7"
    assert snapshot_version("", traffic) == "t7"
    assert snapshot_version("3", None) == "3"
    assert parse_snapshot_version("3.1~t7") == ("3.1", 7)
    assert parse_snapshot_version("t7") == ("", 7)
    assert parse_snapshot_version("3.1") == ("3.1", None)


async def _acks() -> AsyncIterator[WatchAck]:
    await asyncio.Event().wait()
    yield WatchAck("", "", None, ())  # pragma: no cover - never reached


async def test_watch_config_sends_splits_and_a_follower_serves_them() -> None:
    control = SnapshotRegistry()
    await control.publish_traffic(prompt_traffic(revision=3))
    session = ConfigWatches(control, asyncio.Event()).session("dp", frozenset({ALPHA}), "", _acks())
    update = await anext(session)
    await control.publish_traffic(prompt_traffic(candidate_weight=50, revision=4))
    changed = await asyncio.wait_for(anext(session), timeout=10)
    await session.aclose()
    (message,) = watch_response(update).snapshots
    assert message.config_yaml == ""  # alpha has no config here: splits only
    assert message.snapshot_version == "t3"
    assert [
        (w.artifact_version, w.weight_percent) for w in message.traffic_splits[0].version_weights
    ] == [
        (V2, 10),
        (V1, 90),
    ]
    follower_registry = SnapshotRegistry()
    follower = SnapshotFollower(None, follower_registry, "dp")  # type: ignore[arg-type]
    ack = await follower._apply(watch_response(update))
    assert not ack.rejected_route_configs
    applied = follower_registry.traffic(ALPHA)
    assert applied is not None
    assert applied.revision == 3
    split = applied.splits[ARTIFACT]
    assert follower_registry.artifact(split.shares[0]) is not None  # compiled once, on apply
    await follower._apply(watch_response(changed))
    current = follower_registry.traffic(ALPHA)
    assert current is not None
    assert current.splits[ARTIFACT].share_of(V2) == 50


async def test_a_rollback_reaches_a_follower_that_cannot_compile_the_config() -> None:
    """The config part of a snapshot is refused (NACKed per snapshot) yet its traffic splits
    apply, and every later traffic-only update (a rollback) too."""
    control = SnapshotRegistry()
    await control.publish_traffic(prompt_traffic(candidate_weight=50, revision=3))
    update = await anext(
        ConfigWatches(control, asyncio.Event()).session("dp", frozenset({ALPHA}), "", _acks())
    )
    follower_registry = SnapshotRegistry()
    follower = SnapshotFollower(None, follower_registry, "dp")  # type: ignore[arg-type]
    for revision, weight in ((3, 50), (4, 0)):  # the canary at 50%, then rolled back
        response = watch_response(update)
        (message,) = response.snapshots
        message.config_yaml = "model_list: [unclosed"  # this data plane cannot compile it
        message.snapshot_version = f"7~t{revision}"
        message.traffic_splits[0].version_weights[0].weight_percent = weight
        message.traffic_splits[0].version_weights[1].weight_percent = 100 - weight
        ack = await follower._apply(response)
        (rejected,) = ack.rejected_route_configs
        assert rejected.snapshot_version == f"7~t{revision}"
        assert follower_registry.current(ALPHA) is None  # the config was not published
        traffic = follower_registry.traffic(ALPHA)
        assert traffic is not None
        assert traffic.revision == revision
        assert traffic.splits[ARTIFACT].share_of(V2) == weight
