"""The data plane's parts on their own: the circuit breaker's state machine, the retry budget,
the SSE batch parser, and LiteLLM as a provider client against the simulated provider."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from opentelemetry import metrics

from maestro.data_plane.breaker import BreakerSettings, BreakerState, CircuitBreaker, Transition
from maestro.data_plane.observations import Observer
from maestro.data_plane.providers.litellm_adapter import LitellmProvider
from maestro.data_plane.providers.openai_compat import OpenAICompatProvider, SseBatchParser
from maestro.data_plane.providers.types import FailureKind, ProviderError, ProviderRequest
from maestro.data_plane.retry_budget import RetryBudget
from maestro.data_plane.sim import FaultProfile, Faults, SimProvider, completion_text
from maestro.routing.signals import Breaker
from tests.clock_support import FakeClock

SETTINGS = BreakerSettings(
    window=4, min_calls=4, failure_ratio=0.5, open_s=5.0, probes=1, close_after=2
)


def _breaker() -> tuple[CircuitBreaker, list[Transition], FakeClock]:
    seen: list[Transition] = []
    clock = FakeClock()
    return CircuitBreaker("d", SETTINGS, seen.append, clock), seen, clock


async def test_breaker_stays_closed_below_the_failure_ratio() -> None:
    breaker, seen, _ = _breaker()
    for ok in (True, True, True, False, True, True, True, False):
        assert breaker.allow()
        breaker.record(ok)
    assert breaker.state is BreakerState.CLOSED
    assert not seen


async def test_breaker_opens_at_the_ratio_and_refuses_calls() -> None:
    breaker, seen, clock = _breaker()
    for ok in (True, False, True, False):
        breaker.record(ok)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert [(t.from_state, t.to_state, t.at) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN, clock.now)
    ]
    breaker.close_timers()


async def test_a_lane_shedding_requests_does_not_open_its_breaker() -> None:
    clock = FakeClock()
    observer = Observer(
        SETTINGS,
        metrics.NoOpMeterProvider().get_meter("test"),
        node_id="n",
        sink=lambda batch: None,
        on_breaker=lambda deployment_id, is_open: None,
        clock=clock,
    )
    for _ in range(10):
        observer.observe(
            "projects/p", "lane", "lane", FailureKind.SATURATED, duration_s=0.001, ttft_s=None
        )
    for _ in range(10):
        observer.observe(
            "projects/p", "host", "host", FailureKind.PROVIDER_ERROR, duration_s=0.1, ttft_s=None
        )
    assert observer.breaker("lane").state is BreakerState.CLOSED
    assert observer.breaker("host").state is BreakerState.OPEN
    assert observer.breaker("host").opened_at == clock.now  # the observer's clock reaches it
    observer.close()


async def test_an_observation_carries_the_breaker_of_its_deployments_state_key() -> None:
    observer = Observer(
        SETTINGS,
        metrics.NoOpMeterProvider().get_meter("test"),
        node_id="n",
        sink=lambda batch: None,
        on_breaker=lambda deployment_id, is_open: None,
        clock=FakeClock(),
    )
    for _ in range(4):  # a tenant's deployment "x": its breaker is its project's own
        observer.observe(
            "projects/t",
            "x",
            "projects/t/deployments/x",
            FailureKind.PROVIDER_ERROR,
            duration_s=0.1,
            ttft_s=None,
        )
    [observation] = observer.flush()
    assert observation.breaker_state == Breaker.OPEN
    observer.close()


async def test_open_breaker_goes_half_open_after_its_open_period_and_limits_probes() -> None:
    breaker, seen, clock = _breaker()
    for _ in range(4):
        breaker.record(False)
    clock.advance(SETTINGS.open_s / 2)
    assert not breaker.allow()  # still inside the open period
    assert [t.to_state for t in seen] == [BreakerState.OPEN]
    clock.advance(SETTINGS.open_s / 2)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    assert [(t.to_state, t.at - seen[0].at) for t in seen] == [
        (BreakerState.OPEN, 0.0),
        (BreakerState.HALF_OPEN, SETTINGS.open_s),
    ]
    assert not breaker.allow()  # one probe at a time
    breaker.release()  # the probe was cancelled: its slot comes back
    assert breaker.allow()
    breaker.close_timers()


async def test_the_timer_makes_an_open_breaker_half_open_with_no_call_to_look() -> None:
    """Routing sends no calls to an open deployment, so `allow` would never look: the event
    loop's timer does. An open period of 0 puts the timer on the loop's next turns."""
    seen: list[Transition] = []
    breaker = CircuitBreaker("d", replace(SETTINGS, open_s=0.0), seen.append, FakeClock())
    for _ in range(4):
        breaker.record(False)
    for _ in range(100):  # bounded: loop turns, not time
        if breaker.state is not BreakerState.OPEN:
            break
        await asyncio.sleep(0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert [t.to_state for t in seen] == [BreakerState.OPEN, BreakerState.HALF_OPEN]


async def test_half_open_closes_after_enough_successes_and_reopens_on_a_failure() -> None:
    breaker, seen, clock = _breaker()
    for _ in range(4):
        breaker.record(False)
    clock.advance(SETTINGS.open_s)
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()  # a new open period began with the failed probe
    clock.advance(SETTINGS.open_s)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(True)
    assert breaker.state.value == "closed"
    assert [t.to_state for t in seen] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]
    assert [t.at - seen[0].at for t in seen] == [0.0, 5.0, 5.0, 10.0, 10.0]


def test_retry_budget_allows_the_minimum_plus_a_share_of_calls_in_flight() -> None:
    budget = RetryBudget(ratio=0.5, minimum=1)
    budget.calls = 4
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    budget.release()
    assert budget.try_acquire()


def _events(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


def _chunk(content: str) -> str:
    return '{{"choices":[{{"index":0,"delta":{{"content":{}}},"finish_reason":null}}]}}'.format(
        f'"{content}"'
    )


def test_sse_parser_joins_events_split_across_reads() -> None:
    data = _events(_chunk("a"), _chunk("b"), _chunk("c")) + b"data: [DONE]\n\n"
    parser = SseBatchParser()
    pieces: list[str] = []
    for index in range(0, len(data), 7):
        pieces.extend(parser.feed(data[index : index + 7]).pieces)
    assert pieces == ["a", "b", "c"]
    assert parser.done


def test_sse_parser_reads_crlf_usage_finish_and_tool_calls() -> None:
    tool = (
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
        '"function":{"name":"f","arguments":"{\\"x\\""}}]},"finish_reason":"tool_calls"}]}'
    )
    usage = '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    batch = SseBatchParser().feed(_events(tool, usage).replace(b"\n", b"\r\n"))
    assert batch.tool_calls[0].name == "f"
    assert batch.tool_calls[0].arguments == '{"x"'
    assert batch.finish_reason == "tool_calls"
    assert (batch.prompt_tokens, batch.completion_tokens) == (3, 1)


def test_sse_parser_raises_on_an_error_event_and_on_bad_json() -> None:
    with pytest.raises(ProviderError, match="overloaded"):
        SseBatchParser().feed(_events('{"error":{"message":"overloaded"}}'))
    with pytest.raises(ProviderError, match="not JSON"):
        SseBatchParser().feed(_events("{nope"))


async def _read_all(stream: object) -> str:
    text = []
    while (batch := await stream.read()) is not None:  # type: ignore[attr-defined]
        text.extend(batch.pieces)
    await stream.aclose()  # type: ignore[attr-defined]
    return "".join(text)


@pytest.mark.parametrize("provider_name", ["native", "litellm"])
async def test_both_provider_clients_stream_the_same_completion(provider_name: str) -> None:
    messages = [{"role": "user", "content": "Write about the sea."}]
    async with SimProvider(FaultProfile()) as sim:
        if provider_name == "native":
            provider: OpenAICompatProvider | LitellmProvider = OpenAICompatProvider()
            model = "sim-1"
        else:
            provider, model = LitellmProvider(), "openai/sim-1"
        request = ProviderRequest(
            model=model, messages=messages, api_base=sim.base_url, api_key="sim", max_tokens=20
        )
        try:
            text = await _read_all(await provider.open(request))
        finally:
            await provider.aclose()
    assert text == completion_text("sim-1", messages, max_tokens=20)


@pytest.mark.parametrize("provider_name", ["native", "litellm"])
async def test_both_provider_clients_report_a_rate_limit_as_such(provider_name: str) -> None:
    profile = FaultProfile(default=Faults(error_rate=1.0, error_codes={429: 1.0}))
    async with SimProvider(profile) as sim:
        provider: OpenAICompatProvider | LitellmProvider
        if provider_name == "native":
            provider, model = OpenAICompatProvider(), "sim-1"
        else:
            provider, model = LitellmProvider(), "openai/sim-1"
        request = ProviderRequest(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            api_base=sim.base_url,
            api_key="sim",
        )
        try:
            with pytest.raises(ProviderError) as raised:
                await _read_all(await provider.open(request))
        finally:
            await provider.aclose()
    assert raised.value.kind is FailureKind.RATE_LIMITED
    assert raised.value.status == 429


async def test_a_litellm_stream_yields_the_loop_between_chunks() -> None:
    """LiteLLM hands out buffered chunks without awaiting; the adapter must still let other
    calls run between them (else 32 streams starved each other into first-token timeouts)."""
    async with SimProvider(FaultProfile()) as sim:
        provider = LitellmProvider()
        request = ProviderRequest(
            model="openai/sim-1",
            messages=[{"role": "user", "content": "one long stream"}],
            api_base=sim.base_url,
            api_key="sim",
            max_tokens=2000,
        )
        stream = await provider.open(request)
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        chunks = 0
        try:
            await asyncio.sleep(0.5)  # let the stream's reader buffer as much as it can
            while (batch := await stream.read()) is not None:
                chunks += len(batch.pieces)
        finally:
            done.set()
            await ticking
            await stream.aclose()
    assert chunks == 2000
    assert ticks >= chunks
