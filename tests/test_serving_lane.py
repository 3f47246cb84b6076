"""The serving lane end to end: Ray Serve + vLLM (CPU build) running the tiny model, behind a
real Maestro server whose data plane streams from it, spills over from it and routes on its load.

One lane process serves the whole module (engines take tens of seconds to start); each test
starts its own Maestro server and simulated provider. The rolling update runs last.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import openai
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricReader
from prometheus_client import CollectorRegistry, generate_latest

from deploy.observability.queries import LANE_ONLY, histogram_base, missing_uses, pack_uses
from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.data_plane.sim import SimProvider
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server_reading
from tests.inference_support import PARENT, events, openai_base_url, profile, user
from tests.lane_support import ALPHA_CAPACITY, SERVED_MODEL, Lane, start_lane

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROUTES = """
model_list:
  - model_name: tiny
    litellm_params: {{model: maestro_lane/{served}, api_base: "{alpha}"}}
    model_info: {{id: lane-alpha, quality: 0.8}}
  - model_name: free
    litellm_params: {{model: maestro_lane/{served}, api_base: "{beta}"}}
    model_info: {{id: lane-beta, quality: 0.8}}
  - model_name: pair
    litellm_params: {{model: maestro_lane/{served}, api_base: "{alpha}"}}
    model_info: {{id: pair-alpha, quality: 0.8}}
  - model_name: pair
    litellm_params: {{model: maestro_lane/{served}, api_base: "{beta}"}}
    model_info: {{id: pair-beta, quality: 0.8}}
  - model_name: hosted
    litellm_params: {{model: openai/hosted, api_base: "{sim}"}}
    model_info: {{id: sim-hosted, quality: 0.5}}
router:
  fallbacks: [{{primary: tiny, on_error: [hosted]}}]
policies:
  content_tags: {{pii: [tiny, free, pair]}}
"""


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    yield from start_lane(tmp_path_factory.mktemp("lane"))


@dataclass
class Stack:
    server: RunningServer
    client: AsyncMaestroClient
    sim: SimProvider

    @property
    def openai_base_url(self) -> str:
        return openai_base_url(self.server)


def stack(tmp_path: Path, lane: Lane, **overrides: object) -> AbstractAsyncContextManager[Stack]:
    return stack_reading(tmp_path, lane, (), overrides)


@asynccontextmanager
async def stack_reading(
    tmp_path: Path, lane: Lane, readers: tuple[MetricReader, ...], overrides: dict[str, object]
) -> AsyncIterator[Stack]:
    """`readers`: read the server's metrics besides its in-memory reader."""
    await asyncio.to_thread(lane.wait_idle)
    async with SimProvider(profile()) as sim:
        server = await start_server_reading(
            tmp_path, readers, {"data_plane.first_token_timeout_s": 120, **overrides}
        )
        try:
            async with server.client(server.alpha_key) as client:
                config = ROUTES.format(
                    served=SERVED_MODEL,
                    alpha=lane.base_url("alpha"),
                    beta=lane.base_url("beta"),
                    sim=sim.base_url,
                )
                await client.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(
                            name=f"{PARENT}/routeConfig", config_yaml=config
                        )
                    )
                )
                yield Stack(server, client, sim)
        finally:
            await server.plane.stop(grace_s=0)
            server.telemetry.shutdown()


def greedy(model: str, max_tokens: int, **fields: object) -> ipb.StreamChatCompletionRequest:
    """Greedy decoding: the tiny model never ends a greedy stream before `max_tokens`."""
    return ipb.StreamChatCompletionRequest(
        parent=PARENT,
        model=model,
        messages=[user()],
        max_tokens=max_tokens,
        temperature=0.0,
        **fields,  # type: ignore[arg-type]
    )


def done_of(stream: list[ipb.StreamChatCompletionResponse]) -> ipb.ChatCompletionDone:
    assert stream[-1].WhichOneof("event") == "done"
    return stream[-1].done


async def test_generated_and_openai_clients_stream_from_the_lane_through_the_data_plane(
    tmp_path: Path, lane: Lane
) -> None:
    async with stack(tmp_path, lane) as s:
        stream = await events(s.client, greedy("free", 40), timeout_s=120)
        deltas = [e.delta for e in stream if e.WhichOneof("event") == "delta"]
        done = done_of(stream)
        assert done.deployment.deployment_id == "lane-beta"
        assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH
        assert done.usage.completion_tokens == 40
        assert sum(d.token_count for d in deltas) > 0

        trace_id = secrets.token_bytes(16)
        caller_span = secrets.token_bytes(8)
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        chunks = await client.chat.completions.create(
            model="free",
            messages=[{"role": "user", "content": "Write about the sea."}],
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": f"00-{trace_id.hex()}-{caller_span.hex()}-01"},
        )
        pieces, usage = [], None
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        await client.close()
    assert pieces
    assert usage is not None
    assert usage.completion_tokens == 30
    span = await asyncio.to_thread(lane.sink.wait_for, "serve.vllm.request", trace_id)
    # The lane's span is a child of the data plane's attempt span, under the call's `chat`
    # span, under the ingress span the caller's `traceparent` parented.
    ours = {
        s.context.span_id: s
        for s in s.server.spans.get_finished_spans()
        if s.context.trace_id == int.from_bytes(trace_id, "big")
    }
    attempt = ours[int.from_bytes(span.parent_span_id, "big")]
    assert attempt.name == "provider.attempt"
    chain = [attempt]
    while chain[-1].parent is not None and chain[-1].parent.span_id in ours:
        chain.append(ours[chain[-1].parent.span_id])
    assert [c.name for c in chain[1:]][:1] == ["chat free"]
    assert chain[-1].parent is not None
    assert chain[-1].parent.span_id == int.from_bytes(caller_span, "big")
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["maestro.lane"].string_value == "beta"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 30


async def test_the_lane_gauges_the_dashboards_and_rules_query_are_exported_live(
    tmp_path: Path, lane: Lane
) -> None:
    """What `maestro up` cannot show (it starts no lane; tests/test_observability_live.py):
    with a real lane routed to, the data plane's exposition has every `maestro_lane_*` metric
    with every label the dashboards and alert rules use."""
    registry = CollectorRegistry()
    uses = [use for use in pack_uses() if histogram_base(use.metric) in LANE_ONLY]
    assert uses
    async with stack_reading(tmp_path, lane, (PrometheusMetricReader(registry=registry),), {}) as s:
        done = done_of(await events(s.client, greedy("free", 4), timeout_s=120))
        assert done.deployment.deployment_id == "lane-beta"
        for _ in range(300):  # the lanes' status is polled once a second; bounded
            missing = missing_uses(uses, generate_latest(registry).decode())
            if not missing:
                break
            await asyncio.sleep(0.1)
    assert not missing


@dataclass
class HttpOutcome:
    """One streamed call through the OpenAI-compatible ingress."""

    status: int
    deployment_id: str = ""
    fallback_reasons: tuple[str, ...] = ()
    completion_tokens: int = 0
    error_code: str = ""


async def http_stream(
    session: aiohttp.ClientSession, s: Stack, max_tokens: int, tags: tuple[str, ...] = ()
) -> HttpOutcome:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Write about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "maestro": {"step_tags": list(tags)},
    }
    headers = {"Authorization": f"Bearer {s.server.alpha_key}"}
    async with session.post(
        f"{s.openai_base_url}/chat/completions", json=body, headers=headers
    ) as response:
        if response.status != 200:
            error = (await response.json())["error"]
            return HttpOutcome(response.status, error_code=error["code"])
        outcome = HttpOutcome(200)
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[len(b"data: ") :])
            maestro = chunk.get("maestro") or {}
            if "deployment_id" in maestro:
                outcome.deployment_id = maestro["deployment_id"]
                outcome.fallback_reasons = tuple(f["reason"] for f in maestro["fallbacks"])
            if chunk.get("usage"):
                outcome.completion_tokens = chunk["usage"]["completion_tokens"]
        return outcome


async def burst(
    s: Stack, calls: int, max_tokens: int = 1800, tags: tuple[str, ...] = ()
) -> list[HttpOutcome]:
    """`calls` streams at once through the HTTP ingress (one connection each). Long streams
    (seconds each), so the lane's first requests are still running when the last of the burst
    arrives, even on a 2-core machine where the lane's engines and this process compete."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(
            await asyncio.gather(*(http_stream(session, s, max_tokens, tags) for _ in range(calls)))
        )


async def keep_busy(s: Stack, calls: int) -> None:
    """`burst` after `burst` until cancelled."""
    while True:
        await burst(s, calls)


async def test_twice_the_lanes_capacity_spills_non_pii_work_to_the_hosted_provider(
    tmp_path: Path, lane: Lane
) -> None:
    calls = 2 * ALPHA_CAPACITY
    async with stack(tmp_path, lane, **{"data_plane.lane_shed_hold_s": 60}) as s:
        # The rationale can show the lane's capacity once the monitor has read it; under the
        # burst its polls may time out on this machine, and it keeps what it read last.
        await capacity_known(s, "tiny", "lane-alpha")
        outcomes = await burst(s, calls)
        rationale = await s.client.routes.Choose(rpb.ChooseRequest(parent=PARENT, model="tiny"))
    served = [o.deployment_id for o in outcomes]
    shed = [reason for o in outcomes for reason in o.fallback_reasons]
    on_lane = served.count("lane-alpha")
    assert all(o.status == 200 and o.completion_tokens == 1800 for o in outcomes), outcomes
    # The lane filled up and the rest spilled. Exactly ALPHA_CAPACITY when the whole burst
    # reaches the lane before its first streams end (test_serving_admission proves the count);
    # on this shared 2-core machine a straggler may arrive after a slot freed.
    assert ALPHA_CAPACITY <= on_lane < calls, served
    assert served.count("sim-hosted") == calls - on_lane
    assert shed
    assert set(shed) == {"saturated"}
    # Routing saw the sheds: the lane is excluded, with its load in the rationale.
    assert rationale.decision.deployment.deployment_id == "sim-hosted"
    [alpha] = [
        c for c in rationale.decision.candidates if c.deployment.deployment_id == "lane-alpha"
    ]
    assert alpha.exclusion_reason == rpb.ROUTE_EXCLUSION_REASON_SATURATED
    assert alpha.saturation.shed_count == len(shed)
    assert alpha.saturation.max_ongoing_requests == 4
    assert alpha.saturation.max_queued_requests == 4


async def test_pii_work_beyond_the_lanes_capacity_gets_resource_exhausted_not_a_hosted_provider(
    tmp_path: Path, lane: Lane
) -> None:
    calls = 2 * ALPHA_CAPACITY
    async with stack(tmp_path, lane, **{"data_plane.lane_shed_hold_s": 60}) as s:
        outcomes = await burst(s, calls, tags=("pii",))
        with pytest.raises(MaestroRpcError) as refused_over_grpc:
            await events(s.client, greedy("tiny", 10, step_tags=["pii"]))
        hosted = s.sim.stats
    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    assert ALPHA_CAPACITY <= len(served) < calls
    assert all(o.deployment_id == "lane-alpha" for o in served)
    assert all(o.completion_tokens == 1800 for o in served)
    assert len(refused) == calls - len(served)
    # RESOURCE_EXHAUSTED is HTTP 429 on the OpenAI-compatible ingress.
    assert {(o.status, o.error_code) for o in refused} == {(429, "LANE_SATURATED")}
    # While the lane counts as saturated, routing refuses PII work before trying it.
    assert refused_over_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_over_grpc.value.reason == "LANE_SATURATED"
    assert hosted.requests_started == 0


async def choose_until(
    s: Stack, model: str, ready: Callable[[dict[str, rpb.RouteCandidate]], bool]
) -> rpb.ChooseResponse:
    """Choose for `model` until its candidates (by deployment id) satisfy `ready`: the lane
    monitor polls every 0.25 s."""
    by_id: dict[str, rpb.RouteCandidate] = {}
    for _ in range(300):
        choice = await s.client.routes.Choose(rpb.ChooseRequest(parent=PARENT, model=model))
        by_id = {c.deployment.deployment_id: c for c in choice.decision.candidates}
        if ready(by_id):
            return choice
        await asyncio.sleep(0.1)
    raise AssertionError(f"the lanes' load never reached the rationale: {by_id}")


async def capacity_known(s: Stack, model: str, deployment_id: str) -> None:
    """Until the lane monitor has read the lane's capacity."""
    await choose_until(
        s, model, lambda by_id: by_id[deployment_id].saturation.max_ongoing_requests > 0
    )


async def choose_when(
    s: Stack, ready: Callable[[list[rpb.DeploymentSaturation]], bool]
) -> rpb.ChooseResponse:
    """Choose among the `pair` group until the lanes' loads (alpha's, beta's) satisfy `ready`."""
    return await choose_until(
        s,
        "pair",
        lambda by_id: ready([by_id["pair-alpha"].saturation, by_id["pair-beta"].saturation]),
    )


async def test_choose_rationale_shows_lane_load_and_a_busy_lane_loses_to_a_free_one(
    tmp_path: Path, lane: Lane
) -> None:
    async with stack(tmp_path, lane) as s:
        first = await choose_when(s, lambda loads: all(x.max_ongoing_requests for x in loads))
        # Long streams to alpha (group `tiny`) until at least two of its four slots are busy.
        # Renewed as they end: on a loaded machine a status poll can time out while a whole
        # burst runs, and a poll must land while the slots are held.
        holders = asyncio.create_task(keep_busy(s, 4))
        busy = await choose_when(
            s, lambda loads: loads[0].running_requests + loads[0].queue_depth >= 2
        )
        holders.cancel()
        await asyncio.gather(holders, return_exceptions=True)
    by_id_first = {c.deployment.deployment_id: c for c in first.decision.candidates}
    assert by_id_first["pair-alpha"].saturation.max_ongoing_requests == 4
    assert by_id_first["pair-beta"].saturation.max_ongoing_requests == 32
    assert busy.decision.deployment.deployment_id == "pair-beta"
    candidates = {c.deployment.deployment_id: c for c in busy.decision.candidates}
    alpha, beta = candidates["pair-alpha"], candidates["pair-beta"]
    assert alpha.objective_scores.latency < beta.objective_scores.latency
    assert alpha.expected_p95_latency.ToNanoseconds() > beta.expected_p95_latency.ToNanoseconds()
    assert alpha.score < beta.score


async def test_rolling_update_with_open_streams_drops_none_and_the_new_version_serves(
    tmp_path: Path, lane: Lane
) -> None:
    async with stack(tmp_path, lane) as s:
        streams = [
            asyncio.create_task(events(s.client, greedy("free", 700), timeout_s=600))
            for _ in range(6)
        ]
        await asyncio.sleep(1.0)
        assert not any(stream.done() for stream in streams), "streams ended before the update"
        await asyncio.to_thread(lane.roll, "beta", "2")
        finished = await asyncio.gather(*streams)
        await asyncio.to_thread(lane.wait_event, "lane.updated")
        after = await events(s.client, greedy("free", 10), timeout_s=120)
        status = await asyncio.to_thread(lane.status)
    for stream in finished:
        done = done_of(stream)
        assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH
        assert done.usage.completion_tokens == 700
        assert done.deployment.deployment_id == "lane-beta"
        assert not [e for e in stream if e.WhichOneof("event") == "fallback"]
    assert done_of(after).usage.completion_tokens == 10
    assert status["beta"]["versions"] == ["2"]
