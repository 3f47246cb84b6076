"""Chaos: 5,000 streamed calls through InferenceService while the primary provider browns out.

The primary simulated provider is healthy, then inside a brownout window answers half its
requests with 429/500/503 and stalls or cuts a share of the rest mid-stream, then recovers. The
window is on the simulator's injectable clock, moved forward as the run passes request counts, so
the test controls when the brownout starts and ends without sleeping. Every call carries a
deadline and asks to continue on the fallback after a mid-stream failure.

Asserted: at least 99.9% of calls complete with content, none ends past its deadline, and the
primary's circuit breaker opens inside the window and closes again after it (from its recorded
state transitions).
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import grpc
import pytest

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.data_plane.breaker import BreakerState
from maestro.data_plane.sim import FaultProfile, Faults, SimProvider
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import start_server
from tests.inference_support import CONFIG, PARENT, stream_request

CALLS = 5_000
CONCURRENCY = 48
BROWNOUT_FROM_CALL = 1_000
BROWNOUT_UNTIL_CALL = 3_500
DEADLINE_S = 20.0
BROWNOUT = {
    "start_s": 100.0,
    "end_s": 200.0,
    "faults": {
        "error_rate": 0.5,
        "error_codes": {"429": 1, "500": 1, "503": 1},
        "stall_rate": 0.1,
        "stall_after": {"lo": 0, "hi": 8},
        "stall_ms": None,
        "cut_rate": 0.1,
        "cut_after": {"lo": 1, "hi": 8},
    },
}
COMPLETE = {ipb.CHAT_COMPLETION_FINISH_REASON_STOP, ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH}


class Clock:
    """The primary simulator's brownout clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_5000_streams_survive_a_brownout_and_the_breaker_follows_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    primary_profile = FaultProfile.model_validate(
        {"strict_models": False, "seed": 11, "brownouts": [BROWNOUT]}
    )
    healthy = FaultProfile(strict_models=False, default=Faults())
    outcomes: collections.Counter[str] = collections.Counter()
    marks: dict[str, float] = {}
    async with (
        SimProvider(primary_profile, clock=clock) as primary,
        SimProvider(healthy) as backup,
    ):
        server = await start_server(
            tmp_path,
            **{
                "data_plane.first_token_timeout_s": 0.5,
                "data_plane.stall_timeout_s": 0.5,
                "data_plane.breaker_open_s": 0.5,
                "data_plane.breaker_min_calls": 10,
                "data_plane.breaker_window": 20,
                "data_plane.post_first_token_failure_policy": "continue_on_fallback",
                "server.max_concurrent_rpcs": 2000,
            },
        )
        try:
            async with server.client(server.alpha_key) as client:
                await _apply(
                    client, CONFIG.format(primary=primary.base_url, backup=backup.base_url)
                )
                assert server.plane.data is not None
                breaker = server.plane.data.observer.breaker("projects/alpha/deployments/primary-a")
                issued = iter(range(CALLS))

                async def worker() -> None:
                    for number in issued:
                        if number == BROWNOUT_FROM_CALL:
                            clock.now = 150.0
                            marks["brownout_start"] = time.monotonic()
                        elif number == BROWNOUT_UNTIL_CALL:
                            clock.now = 250.0
                            marks["brownout_end"] = time.monotonic()
                        outcomes[await _call(client)] += 1

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
                # Recovery probes run on live traffic: keep calling (bounded) until it closes.
                for _ in range(200):
                    if breaker.state is BreakerState.CLOSED:
                        break
                    outcomes[await _call(client)] += 1
                    await asyncio.sleep(0.01)
        finally:
            await server.plane.stop(grace_s=0)
            server.telemetry.shutdown()
        stats = primary.stats

    total = sum(outcomes.values())
    assert total >= CALLS
    assert outcomes["deadline_exceeded"] == 0, outcomes
    assert outcomes["complete"] >= 0.999 * total, outcomes
    assert stats.requests_failed > 0
    assert stats.streams_cut > 0
    assert stats.streams_stalled > 0
    transitions = list(breaker.transitions)
    opened = [t for t in transitions if t.to_state is BreakerState.OPEN]
    assert opened, "the breaker never opened"
    assert all(marks["brownout_start"] <= t.at <= marks["brownout_end"] + 2.0 for t in opened), (
        "the breaker opened outside the brownout"
    )
    assert transitions[-1].to_state is BreakerState.CLOSED
    assert transitions[-1].from_state is BreakerState.HALF_OPEN
    assert transitions[-1].at >= marks["brownout_end"]


async def _apply(client: AsyncMaestroClient, config: str) -> None:
    await client.routes.ApplyConfig(
        rpb.ApplyConfigRequest(
            route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=config)
        )
    )


async def _call(client: AsyncMaestroClient) -> str:
    """One streamed call's outcome: complete (with content), or why not."""
    text = 0
    done: ipb.ChatCompletionDone | None = None
    try:
        async for event in client.inference.StreamChatCompletion(
            stream_request(max_tokens=16), timeout=DEADLINE_S
        ):
            kind = event.WhichOneof("event")
            if kind == "delta":
                text += len(event.delta.text)
            elif kind == "done":
                done = event.done
    except MaestroRpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "deadline_exceeded"
        return f"rpc_{error.code().name.lower()}"
    if done is None:
        return "no_done"
    if done.finish_reason in COMPLETE and text:
        return "complete"
    return f"finish_{done.finish_reason}"
