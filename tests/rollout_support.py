"""Rollout tests' helpers: prompt versions and strategies built through the real API."""

from __future__ import annotations

import asyncio

from google.protobuf import duration_pb2

from maestro.clients import AsyncMaestroClient
from maestro.v1 import rollout_service_pb2 as rpb

ARTIFACT = "projects/alpha/artifacts/support-answer"
PROMPT = """messages:
  - role: system
    content: "You answer questions about {{{{ product }}}}. {marker}"
variables:
  product: {{description: The product asked about}}
"""


def prompt(marker: str) -> str:
    return PROMPT.format(marker=marker)


async def push_prompt(
    client: AsyncMaestroClient, marker: str, artifact: str = ARTIFACT, description: str = ""
) -> rpb.ArtifactVersion:
    response = await client.rollouts.CreateArtifactVersion(
        rpb.CreateArtifactVersionRequest(
            parent=artifact,
            artifact_version=rpb.ArtifactVersion(
                kind=rpb.ArtifactVersion.KIND_PROMPT, description=description
            ),
            content_text=prompt(marker),
        )
    )
    return response.artifact_version


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def weight(percent: int) -> rpb.RolloutStep:
    return rpb.RolloutStep(set_weight=rpb.RolloutStep.SetWeight(weight_percent=percent))


def pause(duration_s: float = 0.0) -> rpb.RolloutStep:
    step = rpb.RolloutStep(pause=rpb.RolloutStep.Pause())
    if duration_s:
        step.pause.duration.CopyFrom(seconds(duration_s))
    return step


def error_budget(
    min_requests: int = 50, objective: float = 0.99, max_burn: float = 5.0
) -> rpb.RolloutStep:
    """The seed's `error-budget-ok`, with windows short enough for a test."""
    return rpb.RolloutStep(
        analysis=rpb.RolloutStep.Analysis(
            templates=[
                rpb.RolloutAnalysisTemplate(
                    name="error-budget-ok",
                    slo_burn=rpb.RolloutAnalysisTemplate.SloBurn(
                        indicator=rpb.RolloutAnalysisTemplate.SloBurn.INDICATOR_ERRORS,
                        objective_ratio=objective,
                        windows=[
                            rpb.RolloutAnalysisTemplate.SloBurn.Window(
                                long_window=seconds(60),
                                short_window=seconds(10),
                                max_burn_rate=max_burn,
                            )
                        ],
                        min_request_count=min_requests,
                    ),
                )
            ]
        )
    )


def rollout(
    stable: str,
    candidate: str,
    steps: list[rpb.RolloutStep],
    artifact: str = ARTIFACT,
    *,
    automated: bool = False,
) -> rpb.Rollout:
    return rpb.Rollout(
        artifact=artifact,
        stable_version=stable,
        candidate_version=candidate,
        strategy=rpb.RolloutStrategy(steps=steps),
        automated=automated,
    )


async def wait_for_state(
    client: AsyncMaestroClient, name: str, *states: int, timeout_s: float = 30.0
) -> rpb.Rollout:
    """The rollout once it reaches one of `states` (bounded: fails after `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        while True:
            got = (await client.rollouts.GetRollout(rpb.GetRolloutRequest(name=name))).rollout
            if got.state in states:
                return got
            await asyncio.sleep(0.05)
