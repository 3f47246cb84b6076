"""RouteService over gRPC: the seed config and policies, decisions, config versions, WatchConfig."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from structlog.testing import capture_logs

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.projects.store import ProjectStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.opening import open_store
from maestro.v1 import common_pb2
from maestro.v1 import route_service_pb2 as pb
from tests.conftest import RunningServer, start_server, test_config

ROOT = Path(__file__).resolve().parent.parent
SEED_YAML = (ROOT / "deploy/router/litellm.yaml").read_text()
SEED_ROUTING = (ROOT / "deploy/router/policies/routing.rego").read_text()
ALPHA_CONFIG = "projects/alpha/routeConfig"


def _seed_config(yaml: str = SEED_YAML, rego: str = SEED_ROUTING) -> pb.RouteConfig:
    return pb.RouteConfig(
        name=ALPHA_CONFIG,
        config_yaml=yaml,
        policy_modules=[pb.RoutePolicyModule(name="routing.rego", source=rego)],
    )


@pytest.fixture
async def routed(server: RunningServer) -> AsyncIterator[AsyncMaestroClient]:
    async with server.client(server.alpha_key) as client:
        await client.routes.ApplyConfig(pb.ApplyConfigRequest(route_config=_seed_config()))
        yield client


def _user(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=text)


async def _choose(client: AsyncMaestroClient, **fields: object) -> pb.RouteDecision:
    response = await client.routes.Choose(pb.ChooseRequest(parent="projects/alpha", **fields))  # type: ignore[arg-type]
    return response.decision


async def test_seed_config_and_policy_load_unchanged(server: RunningServer) -> None:
    async with server.client(server.alpha_key) as client:
        response = await client.routes.ApplyConfig(
            pb.ApplyConfigRequest(route_config=_seed_config())
        )
    assert response.route_config.revision_id == "1"
    assert response.validation.model_group_count == 3
    assert response.validation.deployment_count == 3
    assert response.revision.name == "projects/alpha/routeConfig/revisions/1"


async def test_pii_tagged_step_goes_in_house_and_the_rationale_says_why(
    routed: AsyncMaestroClient,
) -> None:
    decision = await _choose(routed, model="gpt-4o", step_tags=["pii"])
    assert decision.deployment.model_group == "ig-local-70b"
    by_group = {c.deployment.model_group: c for c in decision.candidates}
    excluded = by_group["gpt-4o"]
    assert excluded.verdict == pb.ROUTE_CANDIDATE_VERDICT_EXCLUDED
    assert excluded.exclusion_reason == pb.ROUTE_EXCLUSION_REASON_POLICY_DENIED
    assert excluded.policy_rule
    assert by_group["ig-local-70b"].verdict == pb.ROUTE_CANDIDATE_VERDICT_CHOSEN


@pytest.mark.parametrize(
    "text",
    [
        "Please email the summary to jane.doe@example.com by Friday.",
        "Charge it to my card 4111 1111 1111 1111, expiry 12/29.",
    ],
)
async def test_message_with_pii_is_tagged_and_goes_in_house(
    routed: AsyncMaestroClient, text: str
) -> None:
    decision = await _choose(routed, model="gpt-4o", messages=[_user(text)])
    assert decision.deployment.model_group == "ig-local-70b"
    assert "pii" in decision.detected_tags
    assert decision.content_tagged


async def test_clean_request_keeps_the_requested_model(routed: AsyncMaestroClient) -> None:
    decision = await _choose(routed, model="gpt-4o", messages=[_user("Summarise this memo.")])
    assert decision.deployment.model_group == "gpt-4o"
    assert [f.model_group for f in decision.fallbacks] == ["sonnet-3.7", "ig-local-70b"]
    assert decision.snapshot_version == "1"


async def test_objectives_header_biases_the_choice(routed: AsyncMaestroClient) -> None:
    response = await routed.routes.Choose(
        pb.ChooseRequest(parent="projects/alpha"), metadata=(("x-maestro-objectives", "cost"),)
    )
    assert response.decision.deployment.model_group == "ig-local-70b"  # the free, in-house one
    assert response.decision.effective_weights.cost == pytest.approx(1.0)


async def test_malformed_objectives_header_is_invalid_argument(routed: AsyncMaestroClient) -> None:
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.Choose(
            pb.ChooseRequest(parent="projects/alpha"), metadata=(("x-maestro-objectives", "speed"),)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["x-maestro-objectives"]


async def test_unknown_model_is_not_found(routed: AsyncMaestroClient) -> None:
    with pytest.raises(MaestroRpcError) as caught:
        await _choose(routed, model="gpt-9")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_choose_without_config_is_failed_precondition(server: RunningServer) -> None:
    async with server.client(server.beta_key) as beta:
        with pytest.raises(MaestroRpcError) as caught:
            await beta.routes.Choose(pb.ChooseRequest(parent="projects/beta"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "NO_ROUTE_CONFIG"


async def test_no_eligible_deployment_fails_choose_but_explain_says_why(
    routed: AsyncMaestroClient,
) -> None:
    request = pb.ChooseRequest(
        parent="projects/alpha",
        step_tags=["pii"],
        jurisdiction=common_pb2.JurisdictionConstraints(allowed_jurisdictions=["eu"]),
    )
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.Choose(request)
    assert caught.value.reason == "NO_ELIGIBLE_DEPLOYMENT"
    explained = await routed.routes.ExplainRoute(pb.ExplainRouteRequest(request=request))
    assert not explained.decision.HasField("deployment")
    assert explained.decision.dry_run
    assert len(explained.decision.candidates) == 3
    assert all(
        c.verdict == pb.ROUTE_CANDIDATE_VERDICT_EXCLUDED for c in explained.decision.candidates
    )


async def test_invalid_config_names_the_field_and_keeps_the_previous_version(
    routed: AsyncMaestroClient,
) -> None:
    bad_yaml = SEED_YAML.replace("openai/gpt-4o", "nosuchprovider/gpt-4o")
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.ApplyConfig(pb.ApplyConfigRequest(route_config=_seed_config(bad_yaml)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in caught.value.field_violations]
    assert fields == ["route_config.config_yaml: model_list[0].litellm_params.model"]
    current = await routed.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
    assert current.route_config.revision_id == "1"
    assert (await _choose(routed, step_tags=["pii"])).deployment.model_group == "ig-local-70b"


async def test_invalid_policy_names_the_module_and_keeps_the_previous_version(
    routed: AsyncMaestroClient,
) -> None:
    broken = "package maestro.routing\n\nallow {\n  input.step_tags[_] ==\n}\n"
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.ApplyConfig(
            pb.ApplyConfigRequest(route_config=_seed_config(rego=broken))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [
        "route_config.policy_modules[0].source"
    ]
    current = await routed.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
    assert current.route_config.revision_id == "1"


async def test_update_mask_changes_only_the_named_part(routed: AsyncMaestroClient) -> None:
    relaxed = "package maestro.routing\n\ndefault allow = true\n"
    response = await routed.routes.ApplyConfig(
        pb.ApplyConfigRequest(
            route_config=pb.RouteConfig(
                name=ALPHA_CONFIG,
                policy_modules=[pb.RoutePolicyModule(name="relaxed.rego", source=relaxed)],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["policy_modules"]),
        )
    )
    assert response.route_config.revision_id == "2"
    assert response.route_config.config_yaml == SEED_YAML


async def test_stale_etag_is_aborted(routed: AsyncMaestroClient) -> None:
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.ApplyConfig(
            pb.ApplyConfigRequest(route_config=_seed_config(), etag="not-the-current-etag")
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED


async def test_validate_only_stores_nothing(routed: AsyncMaestroClient) -> None:
    await routed.routes.ApplyConfig(
        pb.ApplyConfigRequest(route_config=_seed_config(), validate_only=True)
    )
    revisions = await routed.routes.ListConfigRevisions(
        pb.ListConfigRevisionsRequest(parent=ALPHA_CONFIG)
    )
    assert [r.revision_id for r in revisions.revisions] == ["1"]


async def test_another_projects_config_is_permission_denied(
    server: RunningServer, routed: AsyncMaestroClient
) -> None:
    async with server.client(server.beta_key) as beta:
        with pytest.raises(MaestroRpcError) as caught:
            await beta.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_stream_choose_answers_in_order_with_errors_inline(
    routed: AsyncMaestroClient,
) -> None:
    requests = [
        pb.StreamChooseRequest(request=pb.ChooseRequest(parent="projects/alpha", model="gpt-4o")),
        pb.StreamChooseRequest(request=pb.ChooseRequest(parent="projects/alpha", model="gpt-9")),
        pb.StreamChooseRequest(
            request=pb.ChooseRequest(parent="projects/alpha", model="gpt-4o", step_tags=["pii"])
        ),
    ]
    answers = [a async for a in routed.routes.StreamChoose(iter(requests))]
    assert answers[0].response.decision.deployment.model_group == "gpt-4o"
    assert answers[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answers[2].response.decision.deployment.model_group == "ig-local-70b"


async def test_watch_config_delivers_a_new_version_without_restart(
    routed: AsyncMaestroClient,
) -> None:
    outgoing: asyncio.Queue[pb.WatchConfigRequest | None] = asyncio.Queue()
    await outgoing.put(pb.WatchConfigRequest(node_id="dp-1", route_configs=[ALPHA_CONFIG]))

    async def requests() -> AsyncIterator[pb.WatchConfigRequest]:
        while (item := await outgoing.get()) is not None:
            yield item

    stream = routed.routes.WatchConfig(requests())
    first = await anext(aiter(stream))
    assert first.full_state
    assert [s.snapshot_version for s in first.snapshots] == ["1"]
    await outgoing.put(
        pb.WatchConfigRequest(
            node_id="dp-1", version_info=first.version_info, response_nonce=first.nonce
        )
    )
    relaxed = SEED_YAML.replace("pii: [ig-local-70b]", "pii: [ig-local-70b, gpt-4o]")
    await routed.routes.ApplyConfig(pb.ApplyConfigRequest(route_config=_seed_config(relaxed)))
    second = await asyncio.wait_for(anext(aiter(stream)), timeout=10)
    assert not second.full_state
    assert [s.snapshot_version for s in second.snapshots] == ["2"]
    assert "gpt-4o]" in second.snapshots[0].config_yaml
    await outgoing.put(None)
    stream.cancel()


async def test_watch_config_resume_sends_only_what_changed(routed: AsyncMaestroClient) -> None:
    async def one(version: str) -> AsyncIterator[pb.WatchConfigRequest]:
        yield pb.WatchConfigRequest(
            node_id="dp-1", route_configs=[ALPHA_CONFIG], version_info=version
        )
        await asyncio.Event().wait()  # keep the stream open

    stream = routed.routes.WatchConfig(one(""))
    first = await anext(aiter(stream))
    stream.cancel()
    resumed = routed.routes.WatchConfig(one(first.version_info))
    waiting = asyncio.ensure_future(anext(aiter(resumed)))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing changed since that version: nothing is resent
    await routed.routes.ApplyConfig(
        pb.ApplyConfigRequest(route_config=_seed_config(SEED_YAML + "\n# edited\n"))
    )
    update = await asyncio.wait_for(waiting, timeout=10)
    assert [s.snapshot_version for s in update.snapshots] == ["2"]
    resumed.cancel()


async def test_config_file_edits_are_applied_live(tmp_path: Path) -> None:
    config_file = tmp_path / "litellm.yaml"
    config_file.write_text(SEED_YAML)
    policy_file = tmp_path / "routing.rego"
    policy_file.write_text(SEED_ROUTING)
    settings = {
        "routing.project": "alpha",
        "routing.config_file": str(config_file),
        "routing.policy_files": [str(policy_file)],
    }
    sql = open_store(test_config(tmp_path, **settings).store, MIGRATIONS)
    ProjectStore(sql).create_project("projects/alpha", "", datetime.now(UTC))  # exists first
    sql.close()
    running = await start_server(tmp_path, **settings)
    try:
        async with running.client(running.alpha_key) as client:
            first = await client.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
            assert first.route_config.revision_id == "1"
            config_file.write_text(
                SEED_YAML.replace("pii: [ig-local-70b]", "pii: [ig-local-70b, gpt-4o]")
            )
            for _ in range(200):  # bounded: 200 x 50 ms
                current = await client.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
                if current.route_config.revision_id == "2":
                    break
                await asyncio.sleep(0.05)
            assert current.route_config.revision_id == "2"
            with capture_logs() as logs:
                config_file.write_text("model_list: []\n")  # invalid: rejected, rev. 2 stays
                for _ in range(200):  # bounded: 200 x 50 ms, until the watcher has read it
                    if any(e["event"] == "route.config_file_rejected" for e in logs):
                        break
                    await asyncio.sleep(0.05)
            after = await client.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
            assert any(e["event"] == "route.config_file_rejected" for e in logs)
            assert after.route_config.revision_id == "2"
    finally:
        await running.plane.stop(grace_s=0)


async def test_choose_emits_a_route_span_and_decision_counters(
    server: RunningServer, routed: AsyncMaestroClient
) -> None:
    await _choose(routed, model="gpt-4o", step_tags=["pii"])
    spans = [s for s in server.spans.get_finished_spans() if s.name == "maestro.route.choose"]
    assert spans
    attributes = spans[-1].attributes or {}
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["gen_ai.response.model"] == "ig-local-70b"
    data = server.metrics.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {
        "maestro.route.decisions",
        "maestro.route.policy_exclusions",
        "maestro.route.fallback_routes",
    } <= names


async def test_oversized_config_through_the_api_is_invalid_argument(
    routed: AsyncMaestroClient,
) -> None:
    huge = SEED_YAML + "#" * (1024 * 1024) + "\n"
    with pytest.raises(MaestroRpcError) as caught:
        await routed.routes.ApplyConfig(pb.ApplyConfigRequest(route_config=_seed_config(huge)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["route_config.config_yaml"]


# The operators' policy: export-controlled steps may not use openai models.
GLOBAL_POLICY = """package maestro.routing

default allow = false

allow {
  not deny
}

deny {
  input.step_tags[_] == "export_ctrl"
  input.model.provider == "openai"
}
"""
PERMISSIVE_POLICY = "package maestro.routing\n\ndefault allow = true\n"
ALPHA_ONLY_YAML = """model_list:
  - model_name: alpha-model
    litellm_params: {model: openai/gpt-4o-mini}
"""


@pytest.fixture
async def layered(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path]]:
    """A server whose operators configure the global layer through files."""
    global_yaml = tmp_path / "global.yaml"
    global_yaml.write_text(SEED_YAML)
    global_rego = tmp_path / "global.rego"
    global_rego.write_text(GLOBAL_POLICY)
    running = await start_server(
        tmp_path,
        **{
            "routing.project": "global",
            "routing.config_file": str(global_yaml),
            "routing.policy_files": [str(global_rego)],
        },
    )
    yield running, global_yaml
    await running.plane.stop(grace_s=0)


async def test_project_without_config_routes_with_the_global_config(
    layered: tuple[RunningServer, Path],
) -> None:
    running, _ = layered
    async with running.client(running.beta_key) as beta:
        response = await beta.routes.Choose(
            pb.ChooseRequest(parent="projects/beta", model="gpt-4o")
        )
    assert response.decision.deployment.model_group == "gpt-4o"


async def test_global_config_is_readable_by_projects_but_not_writable(
    layered: tuple[RunningServer, Path],
) -> None:
    running, _ = layered
    async with running.client(running.alpha_key) as alpha:
        read = await alpha.routes.GetConfig(pb.GetConfigRequest(name="projects/global/routeConfig"))
        assert read.route_config.revision_id == "1"
        with pytest.raises(MaestroRpcError) as caught:
            await alpha.routes.ApplyConfig(
                pb.ApplyConfigRequest(
                    route_config=pb.RouteConfig(
                        name="projects/global/routeConfig", config_yaml=SEED_YAML
                    )
                )
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_project_config_adds_to_the_global_layer_and_cannot_widen_its_policy(
    layered: tuple[RunningServer, Path],
) -> None:
    running, _ = layered
    async with running.client(running.alpha_key) as alpha:
        applied = await alpha.routes.ApplyConfig(
            pb.ApplyConfigRequest(
                route_config=_seed_config(ALPHA_ONLY_YAML, rego=PERMISSIVE_POLICY)
            )
        )
        assert applied.route_config.snapshot_version == "1.1"
        assert applied.route_config.global_revision_id == "1"
        own = await _choose(alpha, model="alpha-model")
        assert own.deployment.model_group == "alpha-model"
        inherited = await _choose(alpha, model="gpt-4o")
        assert inherited.deployment.model_group == "gpt-4o"
        # The project's own policy allows everything; the global one still denies openai
        # models for export-controlled steps, so the chain moves on to sonnet-3.7.
        export = await _choose(alpha, model="gpt-4o", step_tags=["export_ctrl"])
    assert export.deployment.model_group == "sonnet-3.7"
    denied = next(c for c in export.candidates if c.deployment.model_group == "gpt-4o")
    assert denied.policy_rule.startswith("global policy:")


async def test_global_change_republishes_project_snapshots(
    layered: tuple[RunningServer, Path],
) -> None:
    running, global_yaml = layered
    async with running.client(running.alpha_key) as alpha:
        await alpha.routes.ApplyConfig(
            pb.ApplyConfigRequest(
                route_config=_seed_config(ALPHA_ONLY_YAML, rego=PERMISSIVE_POLICY)
            )
        )
        global_yaml.write_text(SEED_YAML + "\n# operators' edit\n")
        for _ in range(200):  # bounded: 200 x 50 ms
            current = await alpha.routes.GetConfig(pb.GetConfigRequest(name=ALPHA_CONFIG))
            if current.route_config.snapshot_version == "1.2":
                break
            await asyncio.sleep(0.05)
    assert current.route_config.snapshot_version == "1.2"
    assert current.route_config.global_revision_id == "2"
