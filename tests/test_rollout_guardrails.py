"""Rollout guardrails against a real server: freeze windows, dual control, the kill switch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from maestro.clients import AsyncMaestroClient
from maestro.clients.errors import MaestroRpcError
from maestro.control_plane.graph.recipe import parse_recipe
from maestro.core.auth import ADMIN, APPROVER, INFERENCE
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import rollout_service_pb2 as rpb
from tests.conftest import RunningServer, start_server
from tests.graph_support import FINAL, struct, wait_for
from tests.inference_support import stack
from tests.rollout_support import (
    ARTIFACT,
    error_budget,
    pause,
    push_prompt,
    rollout,
    wait_for_state,
    weight,
)

R = rpb.Rollout
RECIPE_ARTIFACT = "projects/alpha/artifacts/exec-agent"
RECIPES = Path(parse_recipe.__code__.co_filename).parent / "recipes"


def _window(start: float, end: float) -> list[dict[str, object]]:
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return [
        {
            "start": time.strftime(iso, time.gmtime(start)),
            "end": time.strftime(iso, time.gmtime(end)),
            "reason": "year-end freeze",
        }
    ]


async def _serve(tmp_path: Path, **overrides: object) -> AsyncIterator[RunningServer]:
    running = await start_server(tmp_path, **overrides)
    try:
        yield running
    finally:
        await running.plane.stop(grace_s=0)
        running.telemetry.shutdown()


async def test_a_rollout_cannot_start_inside_a_freeze_window(tmp_path: Path) -> None:
    now = time.time()
    async for server in _serve(
        tmp_path, **{"rollouts.freeze_windows": _window(now - 60, now + 3600)}
    ):
        async with server.client(server.alpha_key) as alpha:
            v1 = await push_prompt(alpha, "v1")
            v2 = await push_prompt(alpha, "v2")
            with pytest.raises(MaestroRpcError) as refused:
                await alpha.rollouts.CreateRollout(
                    rpb.CreateRolloutRequest(
                        parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(10)])
                    )
                )
            assert refused.value.reason == "FREEZE_WINDOW"
            assert "year-end freeze" in refused.value.message
            listed = await alpha.rollouts.ListRollouts(
                rpb.ListRolloutsRequest(parent="projects/alpha")
            )
            assert list(listed.rollouts) == []


async def test_a_candidate_serving_when_a_freeze_begins_is_rolled_back(tmp_path: Path) -> None:
    start = time.time() + 4  # whole seconds in the config: at least 3 s from now
    async for server in _serve(
        tmp_path, **{"rollouts.freeze_windows": _window(start, start + 3600)}
    ):
        async with server.client(server.alpha_key) as alpha:
            v1 = await push_prompt(alpha, "v1")
            v2 = await push_prompt(alpha, "v2")
            created = await alpha.rollouts.CreateRollout(
                rpb.CreateRolloutRequest(
                    parent="projects/alpha",
                    rollout=rollout(v1.name, v2.name, [weight(20), pause()]),
                )
            )
            held = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
            assert held.canary_weight_percent == 20
            rolled = await wait_for_state(alpha, created.rollout.name, R.STATE_ROLLED_BACK)
            assert rolled.canary_weight_percent == 0
            assert rolled.state_reason.startswith("freeze breach")


async def _push_recipe(client: AsyncMaestroClient, autonomy: str, marker: str) -> str:
    text = (
        (RECIPES / "critique_improve.yaml")
        .read_text()
        .replace("autonomy: L2", f"autonomy: {autonomy}")
    )
    created = await client.rollouts.CreateArtifactVersion(
        rpb.CreateArtifactVersionRequest(
            parent=RECIPE_ARTIFACT,
            artifact_version=rpb.ArtifactVersion(
                kind=rpb.ArtifactVersion.KIND_RECIPE, description=marker
            ),
            content_text=text + f"# {marker}\n",
        )
    )
    return created.artifact_version.name


async def test_an_l3_recipe_takes_all_traffic_only_after_two_other_approvers(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await _push_recipe(alpha, "L3", "one")
    v2 = await _push_recipe(alpha, "L3", "two")
    async with server.client(
        server.new_key("lead@example.com", frozenset({ADMIN, APPROVER}))
    ) as lead:
        created = await lead.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha",
                rollout=rollout(v1, v2, [weight(50), pause(0.1)], artifact=RECIPE_ARTIFACT),
            )
        )
        assert created.rollout.required_approvals == 2
        held = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
        async with asyncio.timeout(30):
            while "dual control" not in held.state_reason:
                held = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
        assert held.canary_weight_percent == 50
        with pytest.raises(MaestroRpcError) as own:
            await lead.rollouts.ApproveRollout(
                rpb.ApproveRolloutRequest(name=created.rollout.name, reason="mine")
            )
        assert own.value.reason == "CREATOR_CANNOT_APPROVE"
    first = server.new_key("ana@example.com", frozenset({APPROVER}))
    second = server.new_key("bo@example.com", frozenset({APPROVER}))
    async with server.client(first) as ana, server.client(second) as bo:
        await ana.rollouts.ApproveRollout(
            rpb.ApproveRolloutRequest(name=created.rollout.name, reason="evals look fine")
        )
        with pytest.raises(MaestroRpcError) as twice:
            await ana.rollouts.ApproveRollout(
                rpb.ApproveRolloutRequest(name=created.rollout.name, reason="again")
            )
        assert twice.value.reason == "ALREADY_APPROVED"
        still = await alpha.rollouts.GetRollout(rpb.GetRolloutRequest(name=created.rollout.name))
        assert still.rollout.state == R.STATE_PAUSED
        with pytest.raises(MaestroRpcError) as early:
            await alpha.rollouts.PromoteRollout(
                rpb.PromoteRolloutRequest(name=created.rollout.name, full=True)
            )
        assert early.value.reason == "APPROVALS_REQUIRED"
        await bo.rollouts.ApproveRollout(
            rpb.ApproveRolloutRequest(name=created.rollout.name, reason="second pair of eyes")
        )
    done = await wait_for_state(alpha, created.rollout.name, R.STATE_PROMOTED)
    assert [a.approver for a in done.approvals] == ["ana@example.com", "bo@example.com"]


async def test_an_inference_key_cannot_approve_a_rollout(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await _push_recipe(alpha, "L3", "one")
    v2 = await _push_recipe(alpha, "L3", "two")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1, v2, [weight(50)], artifact=RECIPE_ARTIFACT)
        )
    )
    weak = server.new_key("ci-bot", frozenset({INFERENCE}))
    async with server.client(weak) as bot:
        with pytest.raises(MaestroRpcError) as refused:
            await bot.rollouts.ApproveRollout(
                rpb.ApproveRolloutRequest(name=created.rollout.name, reason="lgtm")
            )
    assert refused.value.reason == "SCOPE_MISSING"


async def test_the_kill_switch_aborts_every_rollout_of_the_project(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    other = "projects/alpha/artifacts/other"
    o1 = await push_prompt(alpha, "o1", artifact=other)
    o2 = await push_prompt(alpha, "o2", artifact=other)
    first = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(30), pause()])
        )
    )
    second = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha",
            rollout=rollout(o1.name, o2.name, [weight(40), pause()], artifact=other),
        )
    )
    async with server.client(server.beta_key) as beta:
        b1 = await push_prompt(beta, "b1", artifact="projects/beta/artifacts/theirs")
        b2 = await push_prompt(beta, "b2", artifact="projects/beta/artifacts/theirs")
        theirs = await beta.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/beta",
                rollout=rollout(
                    b1.name,
                    b2.name,
                    [weight(30), pause()],
                    artifact="projects/beta/artifacts/theirs",
                ),
            )
        )
        for name in (first.rollout.name, second.rollout.name):
            await wait_for_state(alpha, name, R.STATE_PAUSED)
        await alpha.graphs.SetKillSwitch(
            gpb.SetKillSwitchRequest(
                name="projects/alpha/killSwitch", engaged=True, reason="incident 7"
            )
        )
        for name in (first.rollout.name, second.rollout.name):
            got = (await alpha.rollouts.GetRollout(rpb.GetRolloutRequest(name=name))).rollout
            assert got.state == R.STATE_ABORTED
            assert got.canary_weight_percent == 0
            assert "incident 7" in got.state_reason
        untouched = await wait_for_state(beta, theirs.rollout.name, R.STATE_PAUSED)
        assert untouched.canary_weight_percent == 30
    traffic = server.plane.rollouts.service.current_traffic("projects/alpha")  # type: ignore[union-attr]
    assert traffic is not None
    assert all(len(split.shares) == 1 for split in traffic.splits.values())
    _ = ARTIFACT


async def test_a_run_of_a_recipe_artifact_keeps_the_version_its_split_picked(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        v1 = await _push_recipe(s.client, "L2", "one")
        v2 = await _push_recipe(s.client, "L2", "two")
        created = await s.client.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha",
                rollout=rollout(v1, v2, [weight(50), pause()], artifact=RECIPE_ARTIFACT),
            )
        )
        await wait_for_state(s.client, created.rollout.name, R.STATE_PAUSED)
        picked: dict[str, str] = {}
        for key in ("k1", "k2", "k3", "k4", "k5", "k6"):
            run = (
                await s.client.graphs.CreateRun(
                    gpb.CreateRunRequest(
                        parent="projects/alpha",
                        request_id=key,
                        run=gpb.Run(
                            artifact=RECIPE_ARTIFACT,
                            input_state=struct({"task": "Explain leases."}),
                        ),
                    )
                )
            ).run
            assert run.artifact == RECIPE_ARTIFACT
            assert run.artifact_version in (v1, v2)
            picked[run.name] = run.artifact_version
        assert set(picked.values()) == {v1, v2}  # 6 keys at 50%: both versions serve
        await s.client.rollouts.AbortRollout(
            rpb.AbortRolloutRequest(name=created.rollout.name, reason="enough")
        )
        for name, version in picked.items():
            done = await wait_for(s.client, name, FINAL)
            assert done.state == gpb.Run.STATE_SUCCEEDED, done.state_reason
            assert done.artifact_version == version  # the run kept the version it started with
        with pytest.raises(MaestroRpcError) as other:
            await s.client.graphs.CreateRun(
                gpb.CreateRunRequest(
                    parent="projects/alpha",
                    run=gpb.Run(artifact="projects/beta/artifacts/theirs"),
                )
            )
        assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retried_rollout_starts_again_from_step_zero(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(30), pause()])
        )
    )
    await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
    await alpha.rollouts.AbortRollout(
        rpb.AbortRolloutRequest(name=created.rollout.name, reason="try again")
    )
    retried = await alpha.rollouts.RetryRollout(rpb.RetryRolloutRequest(name=created.rollout.name))
    assert retried.rollout.state == R.STATE_PROGRESSING
    assert retried.rollout.current_step_index == 0
    again = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
    assert again.canary_weight_percent == 30


async def test_an_engaged_kill_switch_refuses_new_rollouts(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    await alpha.graphs.SetKillSwitch(
        gpb.SetKillSwitchRequest(name="projects/alpha/killSwitch", engaged=True, reason="inc 9")
    )
    with pytest.raises(MaestroRpcError) as refused:
        await alpha.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(10)])
            )
        )
    assert refused.value.reason == "KILL_SWITCH_ENGAGED"


async def test_an_automated_rollout_rolls_back_when_its_analysis_is_inconclusive(
    tmp_path: Path,
) -> None:
    async for server in _serve(tmp_path, **{"rollouts.max_analysis_wait_s": 0.5}):
        async with server.client(server.alpha_key) as alpha:
            v1 = await push_prompt(alpha, "v1")
            v2 = await push_prompt(alpha, "v2")
            created = await alpha.rollouts.CreateRollout(
                rpb.CreateRolloutRequest(
                    parent="projects/alpha",
                    rollout=rollout(
                        v1.name,
                        v2.name,
                        [weight(10), error_budget(min_requests=1000)],
                        automated=True,
                    ),
                )
            )
            done = await wait_for_state(alpha, created.rollout.name, R.STATE_ROLLED_BACK)
    assert "automated" in done.state_reason
    assert done.analysis_results[-1].outcome == rpb.RolloutAnalysisResult.OUTCOME_INCONCLUSIVE
