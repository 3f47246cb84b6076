"""RolloutService against a real server: versions, the step walk, verbs, audit, bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from maestro.clients import AsyncMaestroClient
from maestro.clients.errors import MaestroRpcError
from maestro.data_plane.sim import FaultProfile
from maestro.v1 import eval_service_pb2 as epb
from maestro.v1 import rollout_service_pb2 as rpb
from maestro.v1 import route_service_pb2 as route_pb
from tests.conftest import RunningServer
from tests.eval_support import create_dataset, create_suite, eval_stack, task_rows
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


def violations(error: MaestroRpcError) -> dict[str, str]:
    return {v.field: v.description for v in error.field_violations}


async def test_identical_content_is_the_same_version(alpha: AsyncMaestroClient) -> None:
    first = await push_prompt(alpha, "v1")
    assert first.name == f"{ARTIFACT}/versions/v1"
    assert first.digest.startswith("sha256:")
    assert first.manifest_digest.startswith("sha256:")
    with pytest.raises(MaestroRpcError) as caught:
        await push_prompt(alpha, "v1")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.name in caught.value.message


async def test_a_version_of_another_kind_is_invalid_argument(alpha: AsyncMaestroClient) -> None:
    await push_prompt(alpha, "v1")
    with pytest.raises(MaestroRpcError) as caught:
        await alpha.rollouts.CreateArtifactVersion(
            rpb.CreateArtifactVersionRequest(
                parent=ARTIFACT,
                artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_AGENT),
                content_text="instructions: be brief\n",
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "artifact_version.kind" in violations(caught.value)
    listed = await alpha.rollouts.ListArtifactVersions(
        rpb.ListArtifactVersionsRequest(parent=ARTIFACT)
    )
    assert [v.name for v in listed.artifact_versions] == [f"{ARTIFACT}/versions/v1"]


async def test_content_that_does_not_parse_is_refused_and_nothing_is_stored(
    alpha: AsyncMaestroClient,
) -> None:
    with pytest.raises(MaestroRpcError) as caught:
        await alpha.rollouts.CreateArtifactVersion(
            rpb.CreateArtifactVersionRequest(
                parent=ARTIFACT,
                artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_PROMPT),
                content_text="messages: [{role: system, content: '{{ undeclared }}'}]\n",
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "content" in violations(caught.value)
    listed = await alpha.rollouts.ListArtifactVersions(
        rpb.ListArtifactVersionsRequest(parent="projects/alpha/artifacts/-")
    )
    assert list(listed.artifact_versions) == []


async def test_a_good_version_walks_its_steps_to_promotion(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha",
            rollout=rollout(v1.name, v2.name, [weight(10), pause(0.2), weight(50), pause(0.2)]),
        )
    )
    done = await wait_for_state(alpha, created.rollout.name, R.STATE_PROMOTED)
    assert done.canary_weight_percent == 100
    got = await alpha.rollouts.GetArtifactVersion(rpb.GetArtifactVersionRequest(name=v2.name))
    assert got.artifact_version.stable
    assert got.artifact_version.traffic_weight_percent == 100
    traffic = server.plane.rollouts.service.current_traffic("projects/alpha")  # type: ignore[union-attr]
    assert traffic is not None
    split = traffic.split(ARTIFACT)
    assert split is not None
    assert [(s.version, s.weight_percent) for s in split.shares] == [(v2.name, 100)]
    events = await alpha.rollouts.ListRolloutAuditEvents(
        rpb.ListRolloutAuditEventsRequest(parent=created.rollout.name, page_size=100)
    )
    weights = [
        e.weight_after_percent
        for e in events.rollout_audit_events
        if e.action == rpb.RolloutAuditEvent.ACTION_WEIGHT_CHANGED
    ]
    assert weights == [10, 50, 100]


async def test_abort_takes_traffic_off_the_candidate_before_it_returns(
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
    aborted = await alpha.rollouts.AbortRollout(
        rpb.AbortRolloutRequest(name=created.rollout.name, reason="bad answers in canary")
    )
    assert aborted.rollout.state == R.STATE_ABORTED
    assert aborted.rollout.canary_weight_percent == 0
    traffic = server.plane.rollouts.service.current_traffic("projects/alpha")  # type: ignore[union-attr]
    assert traffic is not None
    split = traffic.split(ARTIFACT)
    assert split is not None
    assert [s.version for s in split.shares] == [v1.name]
    data = server.metrics.get_metrics_data()
    assert data is not None
    counted = {
        point.attributes["action"]: getattr(point, "value", None)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "maestro.rollout.changes"
        for point in metric.data.data_points
        if point.attributes
    }
    assert counted["ABORTED"] == 1


def _burn_over(long_s: float) -> rpb.RolloutStep:
    step = error_budget()
    window = step.analysis.templates[0].slo_burn.windows[0]
    window.long_window.FromSeconds(int(long_s))
    window.short_window.FromSeconds(300)
    return step


async def test_bad_strategies_are_invalid_argument_and_create_nothing(
    alpha: AsyncMaestroClient,
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    bad = {
        "rollout.strategy.steps[0].set_weight.weight_percent": [weight(120)],
        "rollout.strategy.steps[1].set_weight.weight_percent": [weight(50), weight(20)],
        "rollout.strategy.steps[0].analysis.templates[0]": [
            rpb.RolloutStep(
                analysis=rpb.RolloutStep.Analysis(
                    templates=[rpb.RolloutAnalysisTemplate(name="nothing-in-it")]
                )
            )
        ],
        "rollout.strategy.steps[1].pause.duration": [weight(10), pause(31 * 24 * 3600)],
        "rollout.strategy.steps[1].analysis.templates[0].slo_burn.windows[0].long_window": [
            weight(10),
            _burn_over(6 * 3600),
        ],
        "rollout.strategy.steps[1].analysis.templates[0].slo_burn.objective_ratio": [
            weight(10),
            error_budget(objective=float("nan")),
        ],
    }
    for field, steps in bad.items():
        with pytest.raises(MaestroRpcError) as caught:
            await alpha.rollouts.CreateRollout(
                rpb.CreateRolloutRequest(
                    parent="projects/alpha", rollout=rollout(v1.name, v2.name, steps)
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violations(caught.value), violations(caught.value)
    with pytest.raises(MaestroRpcError) as caught:
        await alpha.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha",
                rollout=rollout(v1.name, v2.name, [weight(10), pause()], automated=True),
            )
        )
    assert "rollout.strategy.steps[1].pause.duration" in violations(caught.value)
    listed = await alpha.rollouts.ListRollouts(rpb.ListRolloutsRequest(parent="projects/alpha"))
    assert list(listed.rollouts) == []


async def test_a_tenant_cannot_reach_another_tenants_rollouts_by_any_method(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(10), pause()])
        )
    )
    name = created.rollout.name
    await wait_for_state(alpha, name, R.STATE_PAUSED)
    events = await alpha.rollouts.ListRolloutAuditEvents(
        rpb.ListRolloutAuditEventsRequest(parent=name)
    )
    event = events.rollout_audit_events[0].name
    async with server.client(server.beta_key) as beta:
        r = beta.rollouts
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "CreateArtifactVersion": lambda: r.CreateArtifactVersion(
                rpb.CreateArtifactVersionRequest(
                    parent=ARTIFACT,
                    artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_PROMPT),
                    content_text="messages: [{role: system, content: hijack}]\n",
                )
            ),
            "GetArtifactVersion": lambda: r.GetArtifactVersion(
                rpb.GetArtifactVersionRequest(name=v2.name, include_content=True)
            ),
            "ListArtifactVersions": lambda: r.ListArtifactVersions(
                rpb.ListArtifactVersionsRequest(parent="projects/alpha/artifacts/-")
            ),
            "CreateRollout": lambda: r.CreateRollout(
                rpb.CreateRolloutRequest(
                    parent="projects/alpha", rollout=rollout(v2.name, v1.name, [weight(100)])
                )
            ),
            "GetRollout": lambda: r.GetRollout(rpb.GetRolloutRequest(name=name)),
            "ListRollouts": lambda: r.ListRollouts(
                rpb.ListRolloutsRequest(parent="projects/alpha")
            ),
            "GetRolloutAuditEvent": lambda: r.GetRolloutAuditEvent(
                rpb.GetRolloutAuditEventRequest(name=event)
            ),
            "ListRolloutAuditEvents": lambda: r.ListRolloutAuditEvents(
                rpb.ListRolloutAuditEventsRequest(parent="projects/alpha/rollouts/-")
            ),
            "PauseRollout": lambda: r.PauseRollout(rpb.PauseRolloutRequest(name=name)),
            "ResumeRollout": lambda: r.ResumeRollout(rpb.ResumeRolloutRequest(name=name)),
            "PromoteRollout": lambda: r.PromoteRollout(
                rpb.PromoteRolloutRequest(name=name, full=True)
            ),
            "AbortRollout": lambda: r.AbortRollout(
                rpb.AbortRolloutRequest(name=name, reason="attack")
            ),
            "RetryRollout": lambda: r.RetryRollout(rpb.RetryRolloutRequest(name=name)),
            "ApproveRollout": lambda: r.ApproveRollout(
                rpb.ApproveRolloutRequest(name=name, reason="lgtm")
            ),
            "WatchRollout": lambda: _first(r.WatchRollout(rpb.WatchRolloutRequest(name=name))),
        }
        assert set(calls) == {
            m.name for m in rpb.DESCRIPTOR.services_by_name["RolloutService"].methods
        }
        for method, call in calls.items():
            with pytest.raises(MaestroRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
    still = await alpha.rollouts.GetRollout(rpb.GetRolloutRequest(name=name))
    assert still.rollout.state == R.STATE_PAUSED
    assert still.rollout.revision == (await wait_for_state(alpha, name, R.STATE_PAUSED)).revision
    listed = await alpha.rollouts.ListArtifactVersions(
        rpb.ListArtifactVersionsRequest(parent="projects/alpha/artifacts/-")
    )
    assert len(listed.artifact_versions) == 2


async def _first(stream: Any) -> object:
    async for message in stream:
        return message
    return None


async def test_editing_one_audit_row_makes_verification_name_the_event(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(10), pause(0.1)])
        )
    )
    await wait_for_state(alpha, created.rollout.name, R.STATE_PROMOTED)
    plane = server.plane.rollouts
    assert plane is not None
    assert await plane.service.verify("alpha") == []
    rollout_id = created.rollout.name.rpartition("/")[2]
    with server.plane.store.write() as tx:
        second = tx.one(
            "SELECT seq FROM rollout_audit WHERE project = ? AND rollout_id = ? "
            "ORDER BY seq LIMIT 1 OFFSET 1",
            ("alpha", rollout_id),
        )
        assert second is not None
        tx.run(
            "UPDATE rollout_audit SET actor = ? WHERE project = ? AND seq = ?",
            ("projects/alpha/apiKeys/someone-else", "alpha", second["seq"]),
        )
    problems = await plane.service.verify("alpha")
    assert problems
    assert problems[0].seq == second["seq"]
    assert problems[0].event == f"{created.rollout.name}/auditEvents/{second['seq']:010d}"
    assert "edited" in problems[0].problem


def _worse(profile: FaultProfile, marker: str, delta: float) -> FaultProfile:
    data = profile.to_json()
    data["answers"]["prompts"] = [{"system_contains": marker, "accuracy_delta": delta}]
    return FaultProfile.model_validate(data)


EVAL_PROMPT = """messages:
  - role: system
    content: "Answer in a few words about {{{{ product }}}}. {marker}"
variables:
  product: {{default: offices}}
"""


def _eval_gate(suite: str) -> rpb.RolloutStep:
    return rpb.RolloutStep(
        analysis=rpb.RolloutStep.Analysis(
            templates=[
                rpb.RolloutAnalysisTemplate(
                    name="eval-score-ok",
                    eval_gate=rpb.RolloutAnalysisTemplate.EvalGate(
                        suite=suite, model_group="primary"
                    ),
                )
            ]
        )
    )


async def test_eval_score_ok_promotes_a_good_version_and_rolls_back_a_worse_one(
    tmp_path: Path,
) -> None:
    rows = task_rows(120)
    async with eval_stack(tmp_path, rows, accuracy=0.85) as s:
        s.primary.set_profile(_worse(s.primary.profile, "[worse]", -0.30))
        dataset = await create_dataset(s.client, rows)
        suite = await create_suite(
            s.client,
            [dataset.name],
            metrics=(epb.EVAL_METRIC_EXACT_MATCH,),
            max_regression_rate=0.05,
        )
        versions = []
        for marker in ("v1", "v2", "[worse]"):
            created = await s.client.rollouts.CreateArtifactVersion(
                rpb.CreateArtifactVersionRequest(
                    parent=ARTIFACT,
                    artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_PROMPT),
                    content_text=EVAL_PROMPT.format(marker=marker),
                )
            )
            versions.append(created.artifact_version.name)
        good = await s.client.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha",
                rollout=rollout(versions[0], versions[1], [weight(10), _eval_gate(suite.name)]),
            )
        )
        promoted = await wait_for_state(
            s.client, good.rollout.name, R.STATE_PROMOTED, timeout_s=120
        )
        config = await s.client.routes.GetConfig(
            route_pb.GetConfigRequest(name="projects/alpha/routeConfig")
        )
        assert promoted.snapshot_version == config.route_config.snapshot_version
        assert "~t" in promoted.snapshot_version  # the config's version, then the splits'
        passed = promoted.analysis_results[0]
        assert passed.outcome == rpb.RolloutAnalysisResult.OUTCOME_PASSED
        assert passed.eval_run
        assert passed.scorecard
        assert passed.baseline_scorecard
        assert passed.gate_decision_id
        bad = await s.client.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha",
                rollout=rollout(versions[1], versions[2], [weight(10), _eval_gate(suite.name)]),
            )
        )
        rolled = await wait_for_state(
            s.client, bad.rollout.name, R.STATE_ROLLED_BACK, R.STATE_PAUSED, timeout_s=120
        )
        assert rolled.state == R.STATE_ROLLED_BACK, rolled.state_reason
        assert rolled.canary_weight_percent == 0
        assert "eval-score-ok" in rolled.state_reason
        failed = rolled.analysis_results[-1]
        assert failed.outcome == rpb.RolloutAnalysisResult.OUTCOME_FAILED
        events = await s.client.rollouts.ListRolloutAuditEvents(
            rpb.ListRolloutAuditEventsRequest(parent=bad.rollout.name, page_size=100)
        )
        got = await s.client.rollouts.GetArtifactVersion(
            rpb.GetArtifactVersionRequest(name=versions[2])
        )
        assert failed.eval_run in got.artifact_version.provenance.eval_runs
        assert got.artifact_version.provenance.record.input_digests == [got.artifact_version.digest]
        analysed = [
            e
            for e in events.rollout_audit_events
            if e.action == rpb.RolloutAuditEvent.ACTION_ANALYSIS_FAILED
        ]
        assert analysed
        assert analysed[0].eval_run == failed.eval_run
        assert analysed[0].scorecard == failed.scorecard


async def test_validate_only_checks_a_rollout_and_creates_nothing(
    alpha: AsyncMaestroClient,
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    checked = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha",
            rollout=rollout(v1.name, v2.name, [weight(10)]),
            validate_only=True,
        )
    )
    assert checked.rollout.state == R.STATE_PROGRESSING
    listed = await alpha.rollouts.ListRollouts(rpb.ListRolloutsRequest(parent="projects/alpha"))
    assert list(listed.rollouts) == []


async def test_a_retried_promotion_skips_one_step_not_two(alpha: AsyncMaestroClient) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha",
            rollout=rollout(v1.name, v2.name, [weight(10), pause(), weight(20), pause(), pause()]),
        )
    )
    held = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
    assert held.current_step_index == 1
    request = rpb.PromoteRolloutRequest(name=created.rollout.name, request_id="promote-once")
    first = await alpha.rollouts.PromoteRollout(request)
    again = await alpha.rollouts.PromoteRollout(request)
    assert first.rollout.current_step_index == 2
    assert again.rollout.current_step_index >= 2
    settled = await wait_for_state(alpha, created.rollout.name, R.STATE_PAUSED)
    assert settled.current_step_index == 3
    assert settled.canary_weight_percent == 20


async def test_deleting_the_newest_audit_events_makes_verification_fail(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    created = await alpha.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent="projects/alpha", rollout=rollout(v1.name, v2.name, [weight(10), pause(0.1)])
        )
    )
    await wait_for_state(alpha, created.rollout.name, R.STATE_PROMOTED)
    plane = server.plane.rollouts
    assert plane is not None
    with server.plane.store.write() as tx:
        last = tx.one("SELECT MAX(seq) AS m FROM rollout_audit WHERE project = ?", ("alpha",))
        assert last is not None
        tx.run("DELETE FROM rollout_audit WHERE project = ? AND seq = ?", ("alpha", last["m"]))
    problems = await plane.service.verify("alpha")
    assert [p.problem for p in problems if "head" in p.event]


async def test_rollouts_filter_by_candidate_version_across_pages(
    alpha: AsyncMaestroClient,
) -> None:
    v1 = await push_prompt(alpha, "v1")
    v2 = await push_prompt(alpha, "v2")
    v3 = await push_prompt(alpha, "v3")
    names = []
    for candidate in (v2, v3, v2):
        created = await alpha.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent="projects/alpha", rollout=rollout(v1.name, candidate.name, [pause()])
            )
        )
        await alpha.rollouts.AbortRollout(
            rpb.AbortRolloutRequest(name=created.rollout.name, reason="next")
        )
        names.append(created.rollout.name)
    found: list[str] = []
    token = ""
    while True:
        page = await alpha.rollouts.ListRollouts(
            rpb.ListRolloutsRequest(
                parent="projects/alpha",
                page_size=1,
                page_token=token,
                filter=f'candidate_version = "{v2.name}"',
            )
        )
        found += [r.name for r in page.rollouts]
        token = page.next_page_token
        if not token:
            break
    assert found == [names[2], names[0]]


async def test_a_new_version_is_an_event_of_the_audit_chain(alpha: AsyncMaestroClient) -> None:
    v1 = await push_prompt(alpha, "v1", description="first cut")
    events = await alpha.rollouts.ListRolloutAuditEvents(
        rpb.ListRolloutAuditEventsRequest(parent="projects/alpha/rollouts/-")
    )
    [created] = events.rollout_audit_events
    assert created.action == rpb.RolloutAuditEvent.ACTION_VERSION_CREATED
    assert created.candidate_version == v1.name
    assert created.candidate_digest == v1.digest
    assert created.name.startswith("projects/alpha/rollouts/-/auditEvents/")
    got = await alpha.rollouts.GetRolloutAuditEvent(
        rpb.GetRolloutAuditEventRequest(name=created.name)
    )
    assert got.rollout_audit_event.event_hash == created.event_hash
