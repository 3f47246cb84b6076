"""The simulated provider, driven by the official `openai` client and raw HTTP on 127.0.0.1:0.

Each test names the fault it injects. Nothing asserts on durations: waits for the server's view
of an event go through `SimProvider.wait_for_stats`, and brownout windows are crossed by moving an
injected clock.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

import maestro.data_plane.sim as sim_pkg
from maestro.data_plane.sim import (
    Brownout,
    FaultProfile,
    Faults,
    FixedLatency,
    LognormalLatency,
    ProfileError,
    SimProvider,
    SimStats,
    TokenRange,
    UniformLatency,
    completion_text,
    load_profile,
)
from maestro.data_plane.sim.faults import CompiledFaults

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about the sea"},
]
PROMPT_WORDS = 8  # the words in MESSAGES' contents


class FakeClock:
    """A clock tests move by hand; only brownout windows read it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def only_errors(status: int) -> Faults:
    return Faults(error_rate=1.0, error_codes={status: 1.0})


@pytest.fixture
async def sim() -> AsyncIterator[SimProvider]:
    async with SimProvider(FaultProfile(models=("sim-1", "sim-2"))) as provider:
        yield provider


def client(provider: SimProvider, **options: Any) -> openai.AsyncOpenAI:
    # No retries: the client's own backoff would hide what the server answered.
    return openai.AsyncOpenAI(base_url=provider.base_url, api_key="sim", max_retries=0, **options)


async def collect(provider: SimProvider, **options: Any) -> tuple[str, list[str | None], list[Any]]:
    """Stream a completion; (text, finish reasons seen, usage objects seen)."""
    text, finishes, usages = "", [], []
    async with client(provider) as api:
        stream = await api.chat.completions.create(
            model="sim-1", messages=MESSAGES, stream=True, **options
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes.append(choice.finish_reason)
            if chunk.usage is not None:
                usages.append(chunk.usage)
    return text, finishes, usages


async def drain(
    stream: openai.AsyncStream[ChatCompletionChunk],
    received: list[str],
    finishes: list[str | None],
) -> None:
    """Read `stream` to its end (or its error), keeping the content and finish reasons seen."""
    async for chunk in stream:
        received.extend(choice.delta.content or "" for choice in chunk.choices)
        finishes.extend(choice.finish_reason for choice in chunk.choices)


async def test_openai_client_streams_deterministic_text_and_usage(sim: SimProvider) -> None:
    text, finishes, usages = await collect(
        sim, max_tokens=12, stream_options={"include_usage": True}
    )

    assert text == completion_text("sim-1", MESSAGES, max_tokens=12)
    assert len(text.split()) == 12
    assert finishes[-1] == "length"
    assert all(reason is None for reason in finishes[:-1])
    assert [(u.prompt_tokens, u.completion_tokens, u.total_tokens) for u in usages] == [
        (PROMPT_WORDS, 12, PROMPT_WORDS + 12)
    ]
    assert sim.stats.requests_completed == 1


async def test_stream_without_max_tokens_sends_default_length_and_stops(sim: SimProvider) -> None:
    text, finishes, usages = await collect(sim)

    assert text == completion_text("sim-1", MESSAGES, max_tokens=64)
    assert finishes[-1] == "stop"
    assert usages == []  # no include_usage, no usage chunk


async def test_sse_wire_format_matches_openai(sim: SimProvider) -> None:
    request = {
        "model": "sim-1",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 3,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}/chat/completions", json=request) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = (await response.read()).decode()

    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert "".join(words) == completion_text("sim-1", MESSAGES, max_tokens=3)
    assert words[1].startswith(" ")
    assert chunks[4]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    assert all(c["usage"] is None for c in chunks[:5])
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {
        "prompt_tokens": PROMPT_WORDS,
        "completion_tokens": 3,
        "total_tokens": PROMPT_WORDS + 3,
    }


async def test_non_streaming_completion(sim: SimProvider) -> None:
    async with client(sim) as api:
        completion = await api.chat.completions.create(
            model="sim-2", messages=MESSAGES, max_completion_tokens=5
        )

    assert completion.object == "chat.completion"
    assert completion.model == "sim-2"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == completion_text("sim-2", MESSAGES, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        PROMPT_WORDS,
        5,
    )


async def test_models_lists_served_models() -> None:
    profile = FaultProfile(models=("fast", "slow"), per_model={"flaky": Faults(error_rate=0.5)})
    async with SimProvider(profile) as provider, client(provider) as api:
        listed = [model.id async for model in api.models.list()]

    assert listed == ["fast", "slow", "flaky"]


async def test_unknown_model_is_404(sim: SimProvider) -> None:
    async with client(sim) as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.chat.completions.create(model="gpt-nope", messages=MESSAGES)

    assert caught.value.code == "model_not_found"
    assert sim.stats.failed_by_status == {404: 1}


async def test_more_than_one_choice_is_rejected(sim: SimProvider) -> None:
    async with client(sim) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.chat.completions.create(model="sim-1", messages=MESSAGES, n=2)

    assert "n=1" in caught.value.message


async def test_injected_503_raises_matching_openai_error() -> None:
    async with (
        SimProvider(FaultProfile(default=only_errors(503))) as provider,
        client(provider) as api,
    ):
        with pytest.raises(openai.InternalServerError) as caught:
            await api.chat.completions.create(model="sim-1", messages=MESSAGES, stream=True)
        stats = provider.stats

    assert caught.value.status_code == 503
    assert caught.value.type == "server_error"
    assert stats.failed_by_status == {503: 1}
    assert stats.requests_completed == 0


async def test_injected_429_carries_retry_after() -> None:
    faults = Faults(error_rate=1.0, error_codes={429: 1.0}, retry_after_s=2.5)
    async with SimProvider(FaultProfile(default=faults)) as provider, client(provider) as api:
        with pytest.raises(openai.RateLimitError) as caught:
            await api.chat.completions.create(model="sim-1", messages=MESSAGES)

    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["retry-after-ms"] == "2500"


async def test_cut_closes_the_stream_without_finish_reason() -> None:
    faults = Faults(cut_rate=1.0, cut_after=TokenRange(lo=3, hi=3))
    async with SimProvider(FaultProfile(default=faults)) as provider:
        received: list[str] = []
        finishes: list[str | None] = []
        async with client(provider) as api:
            stream = await api.chat.completions.create(
                model="sim-1", messages=MESSAGES, stream=True, max_tokens=10
            )
            with pytest.raises(openai.APIConnectionError):
                await drain(stream, received, finishes)
        stats = provider.stats

    full = completion_text("sim-1", MESSAGES, max_tokens=10).split()
    assert "".join(received) == " ".join(full[:3])
    assert set(finishes) == {None}
    assert (stats.streams_cut, stats.requests_completed, stats.client_disconnects) == (1, 0, 0)


async def test_cut_of_a_non_streamed_response_closes_before_the_body() -> None:
    async with (
        SimProvider(FaultProfile(default=Faults(cut_rate=1.0))) as provider,
        client(provider) as api,
    ):
        with pytest.raises(openai.APIConnectionError):
            await api.chat.completions.create(model="sim-1", messages=MESSAGES)
        stats = provider.stats

    assert (stats.streams_cut, stats.requests_completed) == (1, 0)


async def test_paced_stream_with_latency_jitter_and_a_finite_stall_keeps_its_text() -> None:
    # Latency, pace, jitter and a stall that ends change when tokens arrive, never what arrives.
    faults = Faults(
        ttft=LognormalLatency(median_ms=5, sigma=0.5),
        tokens_per_s=2000,
        jitter_ms=1,
        stall_rate=1.0,
        stall_after=TokenRange(lo=7, hi=7),
        stall_ms=20,
    )
    async with SimProvider(FaultProfile(default=faults)) as provider:
        text, finishes, _ = await collect(provider, max_tokens=40)
        stats = provider.stats

    assert text == completion_text("sim-1", MESSAGES, max_tokens=40)
    assert finishes[-1] == "length"
    assert (stats.streams_stalled, stats.requests_completed) == (1, 1)


async def test_unpaced_long_stream_is_complete_and_in_order(sim: SimProvider) -> None:
    # Unpaced tokens share writes; the events must still be whole and in order.
    text, finishes, _ = await collect(sim, max_tokens=1000)

    assert text == completion_text("sim-1", MESSAGES, max_tokens=1000)
    assert finishes.count("length") == 1


async def test_stall_times_the_client_out_and_counts_its_disconnect() -> None:
    # Stalls after two tokens until the client goes away.
    faults = Faults(stall_rate=1.0, stall_after=TokenRange(lo=2, hi=2), stall_ms=None)
    async with SimProvider(FaultProfile(default=faults)) as provider:
        received: list[str] = []
        async with client(provider, timeout=0.5) as api:
            stream = await api.chat.completions.create(
                model="sim-1", messages=MESSAGES, stream=True, max_tokens=10
            )
            with pytest.raises(openai.APITimeoutError):
                await drain(stream, received, [])
            await stream.close()
        stats = await provider.wait_for_stats(
            lambda s: s.client_disconnects == 1 and s.open_streams == 0
        )

    assert "".join(received) == completion_text("sim-1", MESSAGES, max_tokens=2)
    assert (stats.streams_stalled, stats.requests_completed) == (1, 0)


async def test_slow_first_token_holds_back_the_first_chunk_until_the_client_times_out() -> None:
    # Every response slow: its first chunk would come a minute after the headers.
    faults = Faults(slow_first_token_rate=1.0, slow_first_token_ms=60_000)
    async with SimProvider(FaultProfile(default=faults)) as provider:
        received: list[str] = []
        async with client(provider, timeout=0.5) as api:
            stream = await api.chat.completions.create(
                model="sim-1", messages=MESSAGES, stream=True, max_tokens=10
            )
            with pytest.raises(openai.APITimeoutError):
                await drain(stream, received, [])
            await stream.close()
        stats = await provider.wait_for_stats(
            lambda s: s.client_disconnects == 1 and s.open_streams == 0
        )

    assert received == []
    assert (stats.streams_stalled, stats.requests_completed) == (0, 0)


def test_slow_first_token_rate_is_a_share_of_the_served_requests() -> None:
    faults = Faults(
        ttft=FixedLatency(ms=10),
        error_rate=0.25,
        slow_first_token_rate=0.5,
        slow_first_token_ms=5000,
    )
    plans = [CompiledFaults(faults).plan(random.Random(i), 8) for i in range(400)]
    served = [plan for plan in plans if plan.error_status is None]

    assert {plan.ttft_s for plan in served} == {0.01, 5.0}
    assert 0.4 < sum(plan.ttft_s == 5.0 for plan in served) / len(served) < 0.6
    assert {plan.ttft_s for plan in plans if plan.error_status is not None} == {0.0}
    # Without the fault, the draws are the ones profiles made before it existed.
    plain = Faults(error_rate=0.25, cut_rate=0.5)
    with_zero = plain.model_copy(update={"slow_first_token_rate": 0.0})
    assert [CompiledFaults(plain).plan(random.Random(i), 8).cut_at for i in range(50)] == [
        CompiledFaults(with_zero).plan(random.Random(i), 8).cut_at for i in range(50)
    ]


async def test_client_closing_mid_stream_is_a_disconnect() -> None:
    # A long, paced stream: the client leaves after three chunks, long before the end.
    faults = Faults(tokens_per_s=200)
    async with SimProvider(FaultProfile(default=faults)) as provider:
        async with client(provider) as api:
            stream = await api.chat.completions.create(
                model="sim-1", messages=MESSAGES, stream=True, max_tokens=100_000
            )
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            assert provider.stats.open_streams == 1
            await stream.close()
        stats = await provider.wait_for_stats(
            lambda s: s.client_disconnects == 1 and s.open_streams == 0
        )

    assert stats.requests_completed == 0
    assert stats.failed_by_status == {}


async def test_brownout_applies_only_inside_its_window() -> None:
    clock = FakeClock(now=500.0)
    profile = FaultProfile(
        brownouts=(Brownout(start_s=2, end_s=6, faults=only_errors(503)),),
    )
    statuses: list[int] = []
    async with SimProvider(clock=clock) as provider:
        provider.set_profile(profile)  # windows count from here: t=0 at now=500
        async with aiohttp.ClientSession() as http:
            for t in (0.0, 1.9, 2.0, 4.0, 5.9, 6.0, 30.0):
                clock.now = 500.0 + t
                request = {"model": "sim-1", "messages": MESSAGES, "max_tokens": 1}
                async with http.post(f"{provider.base_url}/chat/completions", json=request) as r:
                    statuses.append(r.status)
                    await r.read()

    assert statuses == [200, 200, 503, 503, 503, 200, 200]


async def test_brownout_patch_keeps_other_fields_and_scopes_to_its_models() -> None:
    clock = FakeClock(now=0.0)
    profile = FaultProfile(
        models=("primary", "backup"),
        default=Faults(tokens_per_s=1000, retry_after_s=7),
        brownouts=(Brownout(start_s=0, end_s=10, models=("primary",), faults=only_errors(429)),),
        brownout_clock="server",
    )
    async with SimProvider(profile, clock=clock) as provider, client(provider) as api:
        with pytest.raises(openai.RateLimitError) as caught:
            await api.chat.completions.create(model="primary", messages=MESSAGES)
        backup = await api.chat.completions.create(model="backup", messages=MESSAGES)

    assert caught.value.response.headers["retry-after"] == "7"  # inherited, not reset
    assert backup.choices[0].finish_reason == "stop"


async def test_per_model_override_applies_to_that_model_only() -> None:
    profile = FaultProfile(models=("good",), per_model={"bad": only_errors(500)})
    async with SimProvider(profile) as provider, client(provider) as api:
        good = await api.chat.completions.create(model="good", messages=MESSAGES)
        with pytest.raises(openai.InternalServerError) as caught:
            await api.chat.completions.create(model="bad", messages=MESSAGES)

    assert good.choices[0].message.content
    assert caught.value.status_code == 500


async def test_invalid_profile_put_is_400_naming_the_field(sim: SimProvider) -> None:
    before = sim.profile
    async with aiohttp.ClientSession() as http:
        bad = {
            "default": {"error_rate": 2},
            "brownouts": [{"start_s": 5, "end_s": 1, "faults": {}}],
        }
        async with http.put(f"{sim.url}/admin/faults", json=bad) as response:
            status, body = response.status, await response.json()
        async with http.put(f"{sim.url}/admin/faults", json={"defualt": {}}) as response:
            typo_status, typo = response.status, await response.json()

    assert status == 400
    fields = {problem["field"] for problem in body["error"]["fields"]}
    assert fields == {"default.error_rate", "brownouts[0]"}
    assert "default.error_rate" in body["error"]["message"]
    assert typo_status == 400
    assert typo["error"]["fields"] == [
        {"field": "defualt", "message": "Extra inputs are not permitted"}
    ]
    assert sim.profile is before  # the last good profile stays


async def test_profile_put_then_get_round_trips(sim: SimProvider) -> None:
    profile = {
        "seed": 7,
        "models": ["a"],
        "default": {"ttft": {"kind": "uniform", "lo_ms": 0, "hi_ms": 1}, "error_rate": 0.25},
        "per_model": {"b": {"tokens_per_s": 50}},
        "brownouts": [{"start_s": 2, "end_s": 6, "faults": {"error_rate": 0.5}}],
    }
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{sim.url}/admin/faults", json=profile) as response:
            assert response.status == 200
        async with http.get(f"{sim.url}/admin/faults") as response:
            shown = await response.json()
        async with http.put(f"{sim.url}/admin/faults", json=shown) as response:
            assert response.status == 200

    assert sim.profile == FaultProfile.model_validate(profile)
    assert shown["per_model"] == {"b": {"tokens_per_s": 50}}  # a patch stays a patch
    assert shown["brownouts"][0]["faults"] == {"error_rate": 0.5}
    assert sim.profile.default.ttft == UniformLatency(lo_ms=0, hi_ms=1)


async def test_admin_stats_and_reset(sim: SimProvider) -> None:
    await collect(sim, max_tokens=2)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}/admin/stats") as response:
            before = await response.json()
        async with http.post(f"{sim.url}/admin/stats/reset") as response:
            after = await response.json()
        async with http.get(f"{sim.url}/healthz") as response:
            health = await response.json()

    assert before["requests_started"] == before["requests_completed"] == 1
    assert after == SimStats().to_json()
    assert health == {"status": "ok"}


async def test_same_seed_same_text(sim: SimProvider) -> None:
    async with client(sim) as api:

        async def text(seed: int) -> str | None:
            completion = await api.chat.completions.create(
                model="sim-1", messages=MESSAGES, seed=seed, max_tokens=20
            )
            return completion.choices[0].message.content

        first, again, other = await text(1), await text(1), await text(2)

    assert first == again == completion_text("sim-1", MESSAGES, seed=1, max_tokens=20)
    assert other != first


async def test_fault_draws_repeat_for_the_same_profile_seed() -> None:
    profile = FaultProfile(seed=42, default=Faults(error_rate=0.5))

    async def statuses() -> list[int]:
        async with SimProvider(profile) as provider, aiohttp.ClientSession() as http:
            out = []
            for _ in range(24):
                request = {"model": "sim-1", "messages": MESSAGES, "max_tokens": 1}
                async with http.post(f"{provider.base_url}/chat/completions", json=request) as r:
                    out.append(r.status)
                    await r.read()
            return out

    first, second = await statuses(), await statuses()

    assert first == second
    assert 200 in first  # both outcomes occur
    assert set(first) - {200}


def test_public_exports() -> None:
    assert sorted(sim_pkg.__all__) == sorted(
        [
            "DEFAULT_PORT",
            "VOCABULARY",
            "AnswerProfile",
            "Brownout",
            "FaultProfile",
            "Faults",
            "FixedLatency",
            "LognormalLatency",
            "ProfileError",
            "PromptQuality",
            "Quality",
            "SimProvider",
            "SimStats",
            "TokenRange",
            "UniformLatency",
            "completion_text",
            "load_profile",
            "parse_profile",
            "prompt_tokens",
            "run",
            "serve",
        ]
    )
    for name in sim_pkg.__all__:
        assert getattr(sim_pkg, name) is not None


def test_profile_file_errors_name_the_field(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("seed: 3\ndefault:\n  error_rate: 0.5\n  error_codes: {429: 1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default:\n  error_codes: {404: 1}\n")

    assert load_profile(good).default.error_codes == {429: 1.0}
    with pytest.raises(ProfileError) as caught:
        load_profile(bad)
    assert [field for field, _ in caught.value.fields] == ["default.error_codes"]
    assert "429, 500 or 503" in str(caught.value)


@pytest.mark.slow
def test_module_entry_point_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "maestro.data_plane.sim", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            found = re.search(r"base_url=(\S+)", line)
            assert found is not None, line
            with openai.OpenAI(base_url=found.group(1), api_key="sim", max_retries=0) as api:
                reply = api.chat.completions.create(model="sim-1", messages=MESSAGES, max_tokens=2)
            assert reply.choices[0].message.content == completion_text(
                "sim-1", MESSAGES, max_tokens=2
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()
