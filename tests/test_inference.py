"""InferenceService and the OpenAI-compatible ingress against real simulated providers:
streaming, fallbacks, timeouts, failure after the first token, cancellation, overload,
idempotency, budgets and validation."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest
from google.protobuf import duration_pb2, struct_pb2
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)
from structlog.testing import capture_logs

from maestro.clients import MaestroRpcError
from maestro.data_plane import http_ingress
from maestro.data_plane.http_ingress import OpenAIIngress
from maestro.data_plane.sim import FixedLatency, TokenRange, completion_text
from maestro.v1 import common_pb2
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import LOOPBACK_TENANT_ENDPOINTS
from tests.inference_support import (
    PARENT,
    Stack,
    abandon_after_two_deltas,
    events,
    kinds,
    profile,
    stack,
    stream_request,
    text_of,
    user,
)


def _ms(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


async def test_stream_is_routed_then_indexed_deltas_then_done_with_usage(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        stream = await events(s.client, stream_request(max_tokens=40))
    assert kinds(stream)[0] == "routed"
    assert kinds(stream)[-1] == "done"
    assert stream[0].routed.deployment.deployment_id == "primary-a"
    assert [d.deployment_id for d in stream[0].routed.fallbacks] == ["backup-b"]
    deltas = [e.delta for e in stream if e.WhichOneof("event") == "delta"]
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert sum(d.token_count for d in deltas) == 40
    done = stream[-1].done
    assert done.usage.completion_tokens == 40
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH
    assert done.deployment.deployment_id == "primary-a"
    assert done.timings.total.ToNanoseconds() >= done.timings.time_to_first_token.ToNanoseconds()


async def test_unary_completion_returns_the_same_text_as_the_stream(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        streamed = text_of(await events(s.client, stream_request(seed=7)))
        whole = await s.client.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(
                parent=PARENT, model="primary", messages=[user()], max_tokens=24, seed=7
            )
        )
    assert whole.message.content == streamed
    assert whole.usage.completion_tokens == 24
    assert whole.route.deployment.deployment_id == "primary-a"
    assert not whole.fallbacks


async def test_openai_client_streams_and_completes_through_the_ingress(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            chunks = await client.chat.completions.create(
                model="primary",
                messages=[{"role": "user", "content": "Write about the sea."}],
                stream=True,
                max_tokens=30,
                seed=3,
                stream_options={"include_usage": True},
            )
            texts, usage = [], None
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)
                usage = chunk.usage or usage
            whole = await client.chat.completions.create(
                model="primary",
                messages=[{"role": "user", "content": "Write about the sea."}],
                max_tokens=30,
                seed=3,
            )
            models = await client.models.list()
    assert "".join(texts) == whole.choices[0].message.content
    assert usage is not None
    assert usage.completion_tokens == 30
    assert whole.choices[0].finish_reason == "length"
    assert sorted(m.id for m in models.data) == ["backup", "primary"]


async def test_ingress_refuses_a_missing_or_bad_key(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(base_url=s.openai_base_url, api_key="mk_bad", max_retries=0)
        async with client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="primary", messages=[{"role": "user", "content": "hi"}]
                )


async def test_provider_error_before_first_token_falls_back(tmp_path: Path) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    async with stack(tmp_path, primary=broken) as s:
        stream = await events(s.client, stream_request())
    assert kinds(stream)[:2] == ["routed", "fallback"]
    fallback = stream[1].fallback
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_PROVIDER_ERROR
    assert fallback.from_deployment.deployment_id == "primary-a"
    assert fallback.to_deployment.deployment_id == "backup-b"
    assert fallback.after_tokens == 0
    assert "500" in fallback.detail
    assert stream[-1].done.deployment.deployment_id == "backup-b"
    assert not stream[-1].done.continued_after_failure
    assert text_of(stream)


async def test_rate_limit_falls_back_as_rate_limited(tmp_path: Path) -> None:
    limited = profile(error_rate=1.0, error_codes={429: 1.0})
    async with stack(tmp_path, primary=limited) as s:
        stream = await events(s.client, stream_request())
    assert stream[1].fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_RATE_LIMITED


async def test_first_token_timeout_fails_over_and_drops_the_slow_connection(
    tmp_path: Path,
) -> None:
    slow = profile(ttft=FixedLatency(ms=5000))
    async with stack(tmp_path, primary=slow) as s:
        stream = await events(s.client, stream_request(first_token_timeout=_ms(200)))
        seen = await s.primary.wait_for_stats(lambda st: st.client_disconnects >= 1)
    assert stream[1].fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_FIRST_TOKEN_TIMEOUT
    assert stream[-1].done.deployment.deployment_id == "backup-b"
    assert seen.client_disconnects == 1


async def test_failure_after_first_token_fails_with_the_partial_output_when_asked(
    tmp_path: Path,
) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    policy = ipb.POST_FIRST_TOKEN_FAILURE_POLICY_FAIL
    async with stack(tmp_path, primary=cut) as s:
        stream = await events(
            s.client, stream_request(max_tokens=20, post_first_token_failure_policy=policy)
        )
        backup_calls = s.backup.stats.requests_started
    done = stream[-1].done
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_ERROR
    assert done.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "FAILED_AFTER_FIRST_TOKEN" in str(done.error.details)
    assert sum(e.delta.token_count for e in stream if e.WhichOneof("event") == "delta") == 5
    assert backup_calls == 0


async def test_failure_after_first_token_continues_on_the_fallback_when_asked(
    tmp_path: Path,
) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    policy = ipb.POST_FIRST_TOKEN_FAILURE_POLICY_CONTINUE_ON_FALLBACK
    async with stack(tmp_path, primary=cut) as s:
        stream = await events(s.client, stream_request(post_first_token_failure_policy=policy))
    fallback = next(e.fallback for e in stream if e.WhichOneof("event") == "fallback")
    assert fallback.after_tokens == 5
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_PROVIDER_ERROR
    done = stream[-1].done
    assert done.continued_after_failure
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH
    assert done.deployment.deployment_id == "backup-b"
    # Both attempts are billed: 5 tokens from the primary, a full answer from the backup.
    assert done.usage.completion_tokens == 5 + 24


async def test_stall_mid_stream_moves_on_after_the_stall_timeout(tmp_path: Path) -> None:
    stalls = profile(stall_rate=1.0, stall_after=TokenRange(lo=3, hi=3), stall_ms=None)
    policy = ipb.POST_FIRST_TOKEN_FAILURE_POLICY_CONTINUE_ON_FALLBACK
    async with stack(tmp_path, primary=stalls, overrides={"data_plane.stall_timeout_s": 0.3}) as s:
        stream = await events(s.client, stream_request(post_first_token_failure_policy=policy))
        await s.primary.wait_for_stats(lambda st: st.client_disconnects >= 1)
    fallback = next(e.fallback for e in stream if e.WhichOneof("event") == "fallback")
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_STREAM_STALLED
    assert fallback.after_tokens == 3
    assert stream[-1].done.continued_after_failure


async def test_cancelling_a_stream_closes_the_provider_connection(tmp_path: Path) -> None:
    paced = profile(tokens_per_s=50)
    async with stack(tmp_path, primary=paced) as s:
        await abandon_after_two_deltas(s.client)
        seen = await s.primary.wait_for_stats(lambda st: st.client_disconnects >= 1)
        assert seen.requests_completed == 0
        assert seen.open_streams == 0


async def test_grpc_deadline_cancels_the_provider_request(tmp_path: Path) -> None:
    slow = profile(ttft=FixedLatency(ms=10_000))
    async with stack(tmp_path, primary=slow, backup=slow) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await events(s.client, stream_request(), timeout_s=0.5)
        await s.primary.wait_for_stats(lambda st: st.client_disconnects >= 1)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_every_deployment_failing_is_unavailable_over_grpc_and_503_over_http(
    tmp_path: Path,
) -> None:
    broken = profile(error_rate=1.0, error_codes={503: 1.0})
    async with stack(tmp_path, primary=broken, backup=broken) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await events(s.client, stream_request())
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            with pytest.raises(openai.InternalServerError) as http:
                await client.chat.completions.create(
                    model="primary", messages=[{"role": "user", "content": "hi"}], stream=True
                )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == "ALL_DEPLOYMENTS_FAILED"
    assert http.value.status_code == 503


async def test_calls_past_the_inflight_limit_are_resource_exhausted(tmp_path: Path) -> None:
    paced = profile(tokens_per_s=20)
    async with stack(tmp_path, primary=paced, overrides={"data_plane.max_inflight_calls": 2}) as s:
        open_calls = [
            s.client.inference.StreamChatCompletion(stream_request(max_tokens=200))
            for _ in range(2)
        ]
        for call in open_calls:
            await call.read()  # routed: both calls are admitted and running
        with pytest.raises(MaestroRpcError) as raised:
            await events(s.client, stream_request())
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="primary", messages=[{"role": "user", "content": "hi"}]
                )
        for call in open_calls:
            call.cancel()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.reason == "DATA_PLANE_OVERLOADED"


async def test_idempotent_retry_replays_the_first_result_without_generating(
    tmp_path: Path,
) -> None:
    key = str(uuid.uuid4())
    async with stack(tmp_path) as s:
        first = await events(s.client, stream_request(idempotency_key=key))
        second = await events(s.client, stream_request(idempotency_key=key))
        assert s.primary.stats.requests_started == 1
    assert text_of(second) == text_of(first)
    assert second[-1].done.completion_id == first[-1].done.completion_id


async def test_idempotency_key_still_running_is_aborted(tmp_path: Path) -> None:
    key = str(uuid.uuid4())
    paced = profile(tokens_per_s=20)
    async with stack(tmp_path, primary=paced) as s:
        running = s.client.inference.StreamChatCompletion(
            stream_request(idempotency_key=key, max_tokens=200)
        )
        await running.read()
        with pytest.raises(MaestroRpcError) as raised:
            await events(s.client, stream_request(idempotency_key=key))
        running.cancel()
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert raised.value.reason == "IDEMPOTENCY_KEY_IN_USE"


async def test_token_budget_stops_generation_with_budget_exceeded(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        stream = await events(s.client, stream_request(max_tokens=100, budget={"max_tokens": 7}))
    done = stream[-1].done
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_BUDGET_EXCEEDED
    assert sum(e.delta.token_count for e in stream if e.WhichOneof("event") == "delta") == 7


async def test_coalescing_never_exceeds_max_chunk_tokens(tmp_path: Path) -> None:
    coalescing = ipb.ChatCompletionCoalescing(max_chunk_tokens=4)
    async with stack(tmp_path) as s:
        stream = await events(s.client, stream_request(max_tokens=50, coalescing=coalescing))
    counts = [e.delta.token_count for e in stream if e.WhichOneof("event") == "delta"]
    assert sum(counts) == 50
    assert max(counts) == 4


async def test_coalescing_window_sends_slow_tokens_without_waiting_for_a_full_chunk(
    tmp_path: Path,
) -> None:
    # 20 tokens/s is one token per 50 ms; with a 5 ms window each token goes out on its own
    # rather than waiting for 16 of them.
    paced = profile(tokens_per_s=20)
    coalescing = ipb.ChatCompletionCoalescing(max_chunk_tokens=16, max_chunk_delay=_ms(5))
    async with stack(tmp_path, primary=paced) as s:
        stream = await events(s.client, stream_request(max_tokens=8, coalescing=coalescing))
    counts = [e.delta.token_count for e in stream if e.WhichOneof("event") == "delta"]
    assert sum(counts) == 8
    assert len(counts) >= 6  # a loaded machine may deliver two tokens in one read


async def test_invalid_request_names_every_bad_field(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await events(
                s.client,
                ipb.StreamChatCompletionRequest(
                    parent=PARENT,
                    temperature=3,
                    idempotency_key="not-a-uuid",
                    stop=["a", "b", "c", "d", "e"],
                    tools=[
                        common_pb2.ToolDefinition(name="f"),
                        common_pb2.ToolDefinition(name="f"),
                    ],
                    coalescing=ipb.ChatCompletionCoalescing(max_chunk_tokens=5000),
                ),
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in raised.value.field_violations}
    assert fields >= {
        "messages",
        "temperature",
        "idempotency_key",
        "stop",
        "tools[1].name",
        "coalescing.max_chunk_tokens",
    }


async def test_ingress_invalid_body_is_400_naming_the_field(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            with pytest.raises(openai.BadRequestError) as raised:
                await client.chat.completions.create(
                    model="primary",
                    messages=[{"role": "user", "content": "hi"}],
                    temperature=5,
                )
    assert raised.value.param == "temperature"


async def test_unknown_model_is_not_found_and_another_projects_parent_is_denied(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as missing:
            await events(s.client, stream_request(model="nope"))
        with pytest.raises(MaestroRpcError) as denied:
            await events(s.client, stream_request(parent="projects/beta"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_models_filters_and_pages(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        first = await s.client.inference.ListModels(
            ipb.ListModelsRequest(parent=PARENT, page_size=1)
        )
        second = await s.client.inference.ListModels(
            ipb.ListModelsRequest(parent=PARENT, page_size=1, page_token=first.next_page_token)
        )
        none = await s.client.inference.ListModels(
            ipb.ListModelsRequest(parent=PARENT, filter="in_house = true")
        )
        with pytest.raises(MaestroRpcError) as bad:
            await s.client.inference.ListModels(
                ipb.ListModelsRequest(parent=PARENT, filter="cost < 3")
            )
    assert [g.model for g in first.model_groups] == ["backup"]
    assert [g.model for g in second.model_groups] == ["primary"]
    assert not second.next_page_token
    assert second.model_groups[0].deployments[0].deployment.deployment_id == "primary-a"
    assert not none.model_groups
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_breaker_opens_on_failures_routes_around_and_closes_after_recovery(
    tmp_path: Path,
) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    settings: dict[str, object] = {
        "data_plane.breaker_min_calls": 4,
        "data_plane.breaker_window": 4,
        "data_plane.breaker_open_s": 0.2,
        "data_plane.breaker_close_after": 2,
        "data_plane.breaker_probes": 1,
    }
    async with stack(tmp_path, primary=broken, overrides=settings) as s:
        assert s.server.plane.data is not None
        breaker = s.server.plane.data.observer.breaker("projects/alpha/deployments/primary-a")
        for _ in range(4):
            await events(s.client, stream_request())
        assert breaker.state.value == "open"
        attempts = s.primary.stats.requests_started
        routed_away = await events(s.client, stream_request())
        assert routed_away[0].routed.deployment.deployment_id == "backup-b"
        assert s.primary.stats.requests_started == attempts
        s.primary.set_profile(profile())
        for _ in range(200):  # bounded: probes need the open time to pass, then successes
            if breaker.state.value == "closed":
                break
            await asyncio.sleep(0.05)
            await events(s.client, stream_request())
    states = [(t.from_state.value, t.to_state.value) for t in breaker.transitions]
    # A probe may land while the primary still fails (reopening it) before the fix is seen.
    assert states[:2] == [("closed", "open"), ("open", "half_open")]
    assert states[-1] == ("half_open", "closed")


async def test_calls_are_traced_and_counted(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        await events(s.client, stream_request())
        spans = [
            span for span in s.server.spans.get_finished_spans() if span.name == "chat primary"
        ]
        assert spans
        attributes = spans[-1].attributes or {}
        assert attributes["gen_ai.response.model"] == "primary"
        assert attributes["gen_ai.usage.output_tokens"] == 24
        names = {
            metric.name
            for resource in (s.server.metrics.get_metrics_data() or object()).resource_metrics  # type: ignore[attr-defined]
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
    assert {
        "maestro.inference.calls",
        "gen_ai.client.operation.duration",
        "maestro.inference.tokens",
        "maestro.inference.attempts",
    } <= names


async def test_chat_span_joins_the_callers_trace_over_http_and_grpc(tmp_path: Path) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            await client.chat.completions.create(
                model="primary",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
        await events(s.client, stream_request())
        spans = s.server.spans.get_finished_spans()
    chats = [span for span in spans if span.name == "chat primary"]
    assert f"{chats[0].context.trace_id:032x}" == trace_id
    routes = [span for span in spans if span.name == "maestro.route.choose"]
    assert routes[0].parent is not None
    assert routes[0].parent.span_id == chats[0].context.span_id
    server_spans = {span.context.span_id: span for span in spans if span.kind.name == "SERVER"}
    assert chats[1].parent is not None
    assert chats[1].parent.span_id in server_spans  # the gRPC server span of the call


async def test_a_deployment_can_be_called_through_litellm_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SIM_KEY", "sim")
    endpoints = {  # the operator lets projects send that secret to loopback endpoints
        **LOOPBACK_TENANT_ENDPOINTS,
        "alpha": [{"api_base": "http://127.0.0.1", "api_key": "os.environ/MAESTRO_TEST_SIM_KEY"}],
    }
    async with stack(tmp_path, overrides={"routing.tenant_endpoints": endpoints}) as s:
        config = (
            "model_list:\n"
            "  - model_name: lite\n"
            f'    litellm_params: {{model: openai/lite, api_base: "{s.primary.base_url}", '
            "api_key: os.environ/MAESTRO_TEST_SIM_KEY}\n"
            "    model_info: {id: lite-a, client: litellm}\n"
        )
        await s.client.routes.ApplyConfig(
            rpb.ApplyConfigRequest(
                route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=config)
            )
        )
        through = await events(s.client, stream_request(model="lite", seed=5))
        assert s.primary.stats.requests_completed == 1
    assert through[-1].done.deployment.deployment_id == "lite-a"
    assert through[-1].done.usage.completion_tokens == 24
    assert text_of(through) == completion_text(
        "lite", [{"role": "user", "content": "Write about the sea."}], seed=5, max_tokens=24
    )


async def test_a_spent_retry_budget_refuses_the_fallback(tmp_path: Path) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    no_retries: dict[str, object] = {
        "data_plane.retry_budget_min": 0,
        "data_plane.retry_budget_ratio": 0,
    }
    async with stack(tmp_path, primary=broken, overrides=no_retries) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await events(s.client, stream_request())
        backup_calls = s.backup.stats.requests_started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == "RETRY_BUDGET_EXHAUSTED"
    assert backup_calls == 0


def _lookup_tool() -> common_pb2.ToolDefinition:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"input": {"type": "string"}}})
    return common_pb2.ToolDefinition(
        name="lookup", description="Look a thing up.", parameters_json_schema=schema
    )


async def test_tool_calls_stream_as_fragments_and_complete_as_calls(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        stream = await events(
            s.client, stream_request(tools=[_lookup_tool()], tool_choice="lookup")
        )
        whole = await s.client.inference.CreateChatCompletion(
            ipb.CreateChatCompletionRequest(
                parent=PARENT,
                model="primary",
                messages=[user()],
                tools=[_lookup_tool()],
                tool_choice="lookup",
            )
        )
    pieces = [p for e in stream if e.WhichOneof("event") == "delta" for p in e.delta.tool_calls]
    assert pieces[0].id
    assert pieces[0].name == "lookup"
    assert json.loads("".join(p.arguments_json for p in pieces))["input"]
    assert stream[-1].done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_TOOL_CALLS
    [called] = whole.message.tool_calls
    assert called.name == "lookup"
    assert json.loads(called.arguments_json) == json.loads(
        "".join(p.arguments_json for p in pieces)
    )
    assert whole.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_TOOL_CALLS


async def test_openai_client_gets_tool_calls_through_the_ingress(tmp_path: Path) -> None:
    tools: list[ChatCompletionFunctionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
            },
        }
    ]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Find it."}]
    async with stack(tmp_path) as s:
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            whole = await client.chat.completions.create(
                model="primary", messages=messages, tools=tools, tool_choice="required"
            )
            chunks = await client.chat.completions.create(
                model="primary", messages=messages, tools=tools, tool_choice="required", stream=True
            )
            names, arguments, finish = [], [], None
            async for chunk in chunks:
                for choice in chunk.choices:
                    for call in choice.delta.tool_calls or ():
                        if call.function and call.function.name:
                            names.append(call.function.name)
                        if call.function and call.function.arguments:
                            arguments.append(call.function.arguments)
                    finish = choice.finish_reason or finish
    [called] = whole.choices[0].message.tool_calls or []
    assert isinstance(called, ChatCompletionMessageFunctionToolCall)
    assert called.function.name == "lookup"
    assert whole.choices[0].finish_reason == "tool_calls"
    assert names == ["lookup"]
    assert json.loads("".join(arguments)) == json.loads(called.function.arguments)
    assert finish == "tool_calls"


async def test_an_idempotent_replay_is_never_shown_to_another_project(tmp_path: Path) -> None:
    key = str(uuid.uuid4())
    async with stack(tmp_path) as s:
        await events(s.client, stream_request(idempotency_key=key))
        async with s.server.client(s.server.beta_key) as beta:
            with pytest.raises(MaestroRpcError) as raised:
                await events(beta, stream_request(idempotency_key=key))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unexpected_ingress_failure_is_a_500_with_a_correlation_id_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(OpenAIIngress, "_completion_response", broken)
    body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
    async with stack(tmp_path) as s:
        status, text, logs = await _post_chat(s, body)
        client = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.chat.completions.create(
                    model="primary", messages=[{"role": "user", "content": "hi"}]
                )
            after = await client.chat.completions.create(
                model="primary", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            streamed = [chunk async for chunk in after]
    assert status == 500
    error = json.loads(text)["error"]
    correlation_id = _internal_correlation_id(error["message"])
    assert error["code"] == "INTERNAL"
    assert "secret internals" not in text
    assert "Traceback" not in text
    _assert_logged_with_traceback(logs, "ingress.unhandled_error", correlation_id)
    assert "correlation id" in raised.value.message  # what the openai client shows
    assert "secret internals" not in str(raised.value.body)
    assert streamed  # the ingress keeps serving


async def test_an_unexpected_failure_mid_stream_ends_it_with_the_same_sanitized_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("secret internals")

    # The last chunks are built after the first output went out: the HTTP status is sent.
    monkeypatch.setattr(http_ingress, "_done_chunks", broken)
    body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with stack(tmp_path) as s:
        status, text, logs = await _post_chat(s, body)
    payloads = [line.removeprefix("data: ") for line in text.splitlines() if line]
    assert status == 200
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    correlation_id = _internal_correlation_id(error["message"])
    assert error["code"] == "INTERNAL"
    assert json.loads(payloads[0])["choices"]  # output reached the caller before the failure
    assert "secret internals" not in text
    assert "Traceback" not in text
    _assert_logged_with_traceback(logs, "ingress.unhandled_error", correlation_id)


async def _post_chat(
    s: Stack, body: Mapping[str, object]
) -> tuple[int, str, list[MutableMapping[str, Any]]]:
    """POST to the ingress as plain HTTP: the status, the body's text, and what was logged."""
    headers = {"authorization": f"Bearer {s.server.alpha_key}"}
    with capture_logs() as logs:
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(f"{s.openai_base_url}/chat/completions", json=body) as response,
        ):
            return response.status, await response.text(), logs


def _internal_correlation_id(message: str) -> str:
    """The correlation id of the one fixed internal-error message (the same over gRPC)."""
    matched = re.fullmatch(
        r"internal error \(correlation id ([0-9a-f]{16})\); the server log has details", message
    )
    assert matched, message
    return matched.group(1)


def _assert_logged_with_traceback(
    logs: list[MutableMapping[str, Any]], event: str, correlation_id: str
) -> None:
    logged = [entry for entry in logs if entry["event"] == event]
    assert [entry["correlation_id"] for entry in logged] == [correlation_id]
    assert logged[0]["exc_info"] is True  # the renderer writes the handled exception's traceback
    assert logged[0]["log_level"] == "error"
