"""The SLO load harness (`bench/_load.py`) against the simulated provider and a fake gRPC peer.

Runs are bounded by request count (a generous duration cap only guards against a hang), so the
counts are exact; nothing asserts on how long anything took.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest

from bench._load import (
    LoadConfig,
    LoadReport,
    Percentiles,
    SloTarget,
    SseParser,
    TargetKind,
    chunk_tokens,
    render,
    run_load,
    slo_verdict,
)
from maestro.data_plane.sim import FaultProfile, Faults, SimProvider
from maestro.v1 import (
    common_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
    route_service_pb2,
)

REQUESTS = 40
MAX_TOKENS = 16


def sim_config(sim: SimProvider, **overrides: Any) -> LoadConfig:
    settings: dict[str, Any] = {
        "target": sim.base_url,
        "concurrency": 4,
        "max_requests": REQUESTS,
        "duration_s": 20.0,
        "max_tokens": MAX_TOKENS,
        "request_timeout_s": 10.0,
        "api_key": "sim",
    }
    return LoadConfig(**(settings | overrides))


def assert_monotone(stats: Percentiles) -> None:
    assert stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.p999_ms <= stats.max_ms


async def test_openai_run_counts_every_request_and_the_tokens_the_sim_sent() -> None:
    profile = FaultProfile(default=Faults(tokens_per_s=2000.0))
    async with SimProvider(profile, host="127.0.0.1") as sim:
        report = await run_load(sim_config(sim))
        stats = await sim.wait_for_stats(lambda s: s.requests_completed >= REQUESTS)

    assert (report.requests, report.succeeded, dict(report.errors)) == (REQUESTS, REQUESTS, {})
    assert stats.requests_started == stats.requests_completed == REQUESTS
    assert (stats.requests_failed, stats.client_disconnects) == (0, 0)
    # The sim sends exactly max_tokens one-token chunks per completed stream.
    assert report.tokens == stats.requests_completed * MAX_TOKENS == report.usage_tokens
    assert report.ttft.count == report.latency.count == REQUESTS
    assert report.itl.count == REQUESTS * (MAX_TOKENS - 1)
    for stats_ms in (report.ttft, report.itl, report.latency):
        assert_monotone(stats_ms)
    assert report.rps > 0
    assert slo_verdict(report, SloTarget(error_rate=0.0)).passed


async def test_injected_errors_are_counted_by_status_and_fail_an_error_rate_slo() -> None:
    async with SimProvider(FaultProfile(default=Faults(error_rate=1.0)), host="127.0.0.1") as sim:
        report = await run_load(sim_config(sim))
        stats = await sim.wait_for_stats(lambda s: s.requests_failed >= REQUESTS)

    assert (report.requests, report.failed, report.tokens) == (REQUESTS, REQUESTS, 0)
    assert dict(report.errors) == {f"http_{code}": n for code, n in stats.failed_by_status.items()}
    assert set(report.errors) <= {"http_429", "http_500", "http_503"}
    assert report.ttft.count == report.latency.count == 0
    verdict = slo_verdict(report, SloTarget(error_rate=0.01))
    assert not verdict.passed
    failed = {check.name: check.measured for check in verdict.checks if not check.passed}
    assert failed == {"error rate": 1.0, "succeeded": 0.0}
    assert "SLO verdict: FAIL" in render(report, verdict)


async def test_request_over_its_deadline_counts_as_deadline_error() -> None:
    # A stall without end holds every stream open until the client gives up.
    faults = Faults(stall_rate=1.0, stall_ms=None)
    async with SimProvider(FaultProfile(default=faults), host="127.0.0.1") as sim:
        report = await run_load(
            sim_config(sim, concurrency=2, max_requests=2, request_timeout_s=0.2)
        )
    assert dict(report.errors) == {"deadline": 2}


class _FakeInference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Streams `routed`, four two-token deltas and `done`, as the data plane's contract says."""

    def __init__(self) -> None:
        self.requests: list[inference_service_pb2.StreamChatCompletionRequest] = []
        self.keys: list[str] = []

    async def StreamChatCompletion(
        self,
        request: inference_service_pb2.StreamChatCompletionRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[inference_service_pb2.StreamChatCompletionResponse]:
        self.requests.append(request)
        self.keys += [str(v) for k, v in context.invocation_metadata() or () if k == "x-api-key"]
        response = inference_service_pb2.StreamChatCompletionResponse
        yield response(routed=route_service_pb2.RouteDecisionSummary())
        for index in range(4):
            delta = inference_service_pb2.ChatCompletionDelta(
                text="two words ", index=index, token_count=2
            )
            yield response(delta=delta)
        done = inference_service_pb2.ChatCompletionDone(
            finish_reason=inference_service_pb2.CHAT_COMPLETION_FINISH_REASON_LENGTH,
            usage=common_pb2.Usage(completion_tokens=8),
        )
        yield response(done=done)


@pytest.fixture
async def fake_inference() -> AsyncIterator[tuple[str, _FakeInference]]:
    servicer = _FakeInference()  # type: ignore[abstract]  # only the streaming method
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def test_grpc_run_sums_delta_token_counts_and_sends_project_and_key(
    fake_inference: tuple[str, _FakeInference],
) -> None:
    target, servicer = fake_inference
    config = LoadConfig(
        target=target,
        target_kind=TargetKind.GRPC,
        model="m",
        project="alpha",
        api_key="k-alpha",
        concurrency=2,
        max_requests=6,
        duration_s=20.0,
        max_tokens=8,
    )
    report = await run_load(config)

    assert (report.requests, report.succeeded, report.tokens, report.usage_tokens) == (6, 6, 48, 48)
    assert report.itl.count == 6 * 3
    assert servicer.keys == ["k-alpha"] * 6
    request = servicer.requests[0]
    assert (request.parent, request.model, request.max_tokens) == ("projects/alpha", "m", 8)
    assert [(m.role, m.content) for m in request.messages] == [
        (common_pb2.CHAT_ROLE_USER, config.prompt)
    ]


def sse(*chunks: dict[str, Any]) -> bytes:
    events = [b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks]
    return b": keep-alive\r\n\r\n" + b"".join(events) + b"data: [DONE]\r\n\r\n"


def content(text: str, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}], **extra}


@pytest.mark.parametrize("piece", [1, 7, 10_000], ids=["bytewise", "odd-reads", "one-read"])
def test_sse_tokens_use_maestro_token_count_of_coalesced_chunks(piece: int) -> None:
    body = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        content("one"),
        content(" two three four", maestro={"token_count": 3}),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    )
    parser = SseParser()
    chunks = [
        chunk for at in range(0, len(body), piece) for chunk in parser.feed(body[at:][:piece])
    ]
    assert [chunk_tokens(chunk) for chunk in chunks] == [None, 1, 3, None]
    assert parser.done


def report_with(**figures: Any) -> LoadReport:
    """A report as a run would build it; every latency figure is `ms` unless given."""
    ms = figures.pop("ms", 10.0)
    latency = Percentiles(100, ms, ms, ms, ms, ms, ms)
    values: dict[str, Any] = {
        "config": LoadConfig(target="http://127.0.0.1:1/v1"),
        "requests": 100,
        "succeeded": 100,
        "errors": {},
        "elapsed_s": 2.0,
        "tokens": 6400,
        "ttft": latency,
        "itl": latency,
        "latency": latency,
    }
    return LoadReport(**(values | figures))


def test_slo_verdict_passes_goals_met_exactly_and_fails_each_missed_one() -> None:
    target = SloTarget(ttft_p99_ms=10.0, itl_p99_ms=10.0, error_rate=0.05, min_rps=50.0)
    assert slo_verdict(report_with(succeeded=95, errors={"http_503": 5}), target).passed

    verdict = slo_verdict(
        report_with(ms=10.5, succeeded=90, errors={"http_503": 10}, elapsed_s=4.0), target
    )
    failed = {check.name: check.measured for check in verdict.checks if not check.passed}
    assert failed == {"ttft p99": 10.5, "itl p99": 10.5, "error rate": 0.1, "rps": 25.0}
    assert not verdict.passed


def test_slo_verdict_fails_a_run_in_which_no_request_succeeded() -> None:
    empty = Percentiles.empty()
    report = report_with(requests=0, succeeded=0, tokens=0, ttft=empty, itl=empty, latency=empty)
    verdict = slo_verdict(report, SloTarget(ttft_p99_ms=100.0))
    assert not verdict.passed
    assert all(not check.passed for check in verdict.checks)
    assert math.isnan(report.error_rate)
    assert "no data" in render(report, verdict)


def test_slo_verdict_without_goals_passes_a_run_with_successes_only() -> None:
    assert slo_verdict(report_with(), SloTarget()).passed
    all_failed = report_with(succeeded=0, errors={"connect": 100})
    assert not slo_verdict(all_failed, SloTarget()).passed


def test_config_refuses_targets_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        LoadConfig(target="http://10.0.0.1:8080/v1")
    with pytest.raises(ValueError, match="loopback only"):
        LoadConfig(target="example.com:443", target_kind=TargetKind.GRPC)
    assert LoadConfig(target="[::1]:50051", target_kind=TargetKind.GRPC).target == "[::1]:50051"
