"""A LiteLLM config's call settings, honoured per deployment by the data plane (issue 16):
`stream_timeout` and `timeout`, `num_retries` and `retry_policy`, `rpm`/`tpm`/
`max_parallel_requests` admission, and the post-first-token failure policy (continue on the
fallback by default; `fail` at the deployment, project or request level).

Each test runs a real server against two real simulated providers, `primary` (deployment
`primary-a`) falling back to `backup` (`backup-b`), and asserts on outcomes: fallback reasons
and details, and the attempts each provider saw. Timeouts in the configs are sub-second.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import yaml

from maestro.clients import MaestroRpcError
from maestro.data_plane.providers.types import FailureKind, failure_class
from maestro.data_plane.sim import FaultProfile, FixedLatency, TokenRange
from maestro.routing.spec import FAILURE_CLASSES
from maestro.v1 import inference_service_pb2 as ipb
from tests.inference_support import (
    Stack,
    abandon_after_two_deltas,
    events,
    openai_base_url,
    profile,
    stack,
    stream_request,
    text_of,
)

FAIL = ipb.POST_FIRST_TOKEN_FAILURE_POLICY_FAIL
CONTINUE = ipb.POST_FIRST_TOKEN_FAILURE_POLICY_CONTINUE_ON_FALLBACK
CONTENT_POLICY = "ContentPolicyViolationError"


def _config(
    primary_url: str,
    backup_url: str,
    *,
    primary_params: dict[str, Any] | None = None,
    primary_info: dict[str, Any] | None = None,
    backup_params: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    router_settings: dict[str, Any] | None = None,
) -> str:
    document: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "primary",
                "litellm_params": {
                    "model": "openai/primary",
                    "api_base": primary_url,
                    **(primary_params or {}),
                },
                "model_info": {"id": "primary-a", "quality": 0.9, **(primary_info or {})},
            },
            {
                "model_name": "backup",
                "litellm_params": {
                    "model": "openai/backup",
                    "api_base": backup_url,
                    **(backup_params or {}),
                },
                "model_info": {"id": "backup-b", "quality": 0.5},
            },
        ],
        "router": {"fallbacks": [{"primary": "primary", "on_error": ["backup"]}], **(router or {})},
    }
    if router_settings:
        document["router_settings"] = router_settings
    return yaml.safe_dump(document)


def _stack(
    tmp_path: Path,
    primary: FaultProfile | None = None,
    backup: FaultProfile | None = None,
    overrides: dict[str, object] | None = None,
    **config: Any,
) -> AbstractAsyncContextManager[Stack]:
    """tests.inference_support.stack, with the call settings of `config` (see `_config`)."""
    return stack(
        tmp_path,
        primary,
        backup,
        overrides,
        config_for=lambda primary_url, backup_url: _config(primary_url, backup_url, **config),
    )


def _fallbacks(
    stream: list[ipb.StreamChatCompletionResponse],
) -> list[ipb.ChatCompletionFallback]:
    return [e.fallback for e in stream if e.WhichOneof("event") == "fallback"]


def _moves(stream: list[ipb.StreamChatCompletionResponse]) -> list[tuple[str, str, int]]:
    """(from, to, reason) of each fallback event: a retry goes from a deployment to itself."""
    return [
        (f.from_deployment.deployment_id, f.to_deployment.deployment_id, f.reason)
        for f in _fallbacks(stream)
    ]


# -- failure classes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "message", "expected"),
    [
        (FailureKind.REQUEST_REJECTED, 400, "bad", "BadRequestError"),
        (FailureKind.REQUEST_REJECTED, 422, "bad", "BadRequestError"),
        (FailureKind.REQUEST_REJECTED, 400, "code: content_policy_violation", CONTENT_POLICY),
        (FailureKind.REQUEST_REJECTED, 401, "", "AuthenticationError"),
        (FailureKind.REQUEST_REJECTED, 403, "", "AuthenticationError"),
        (FailureKind.REQUEST_REJECTED, 404, "", None),
        (FailureKind.PROVIDER_ERROR, 408, "", "TimeoutError"),
        (FailureKind.FIRST_TOKEN_TIMEOUT, 0, "", "TimeoutError"),
        (FailureKind.STREAM_STALLED, 0, "", "TimeoutError"),
        (FailureKind.ATTEMPT_TIMEOUT, 0, "", "TimeoutError"),
        (FailureKind.RATE_LIMITED, 429, "", "RateLimitError"),
        (FailureKind.PROVIDER_ERROR, 500, "", "InternalServerError"),
        (FailureKind.PROVIDER_ERROR, 0, "connection reset", "InternalServerError"),
        (FailureKind.SATURATED, 503, "", None),
    ],
)
def test_failures_map_to_litellm_exception_classes(
    kind: FailureKind, status: int, message: str, expected: str | None
) -> None:
    assert failure_class(kind, status, message) == expected
    assert expected is None or expected in FAILURE_CLASSES


# -- timeouts ---------------------------------------------------------------------------------


async def test_config_stream_timeout_shorter_than_the_default_governs_a_mid_stream_stall(
    tmp_path: Path,
) -> None:
    # The data plane's own stall timeout (30 s) would outlast the call's 20 s gRPC deadline.
    stalls = profile(stall_rate=1.0, stall_after=TokenRange(lo=3, hi=3), stall_ms=None)
    async with _stack(tmp_path, stalls, primary_params={"stream_timeout": 0.3}) as s:
        stream = await events(s.client, stream_request())
    [fallback] = _fallbacks(stream)
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_STREAM_STALLED
    assert fallback.detail == "no token for 0.3 s mid-stream"
    assert fallback.after_tokens == 3
    done = stream[-1].done
    assert done.deployment.deployment_id == "backup-b"
    assert done.continued_after_failure


async def test_config_stream_timeout_governs_the_first_token_wait(tmp_path: Path) -> None:
    slow = profile(ttft=FixedLatency(ms=5000))
    async with _stack(tmp_path, slow, primary_params={"stream_timeout": 0.3}) as s:
        stream = await events(s.client, stream_request())
    [fallback] = _fallbacks(stream)
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_FIRST_TOKEN_TIMEOUT
    assert fallback.detail == "no first token within 0.3 s"
    assert stream[-1].done.deployment.deployment_id == "backup-b"


async def test_the_requests_first_token_timeout_wins_over_the_configs(tmp_path: Path) -> None:
    slow = profile(ttft=FixedLatency(ms=5000))
    async with _stack(tmp_path, slow, primary_params={"stream_timeout": 4}) as s:
        stream = await events(s.client, stream_request(first_token_timeout={"nanos": 200_000_000}))
    [fallback] = _fallbacks(stream)
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_FIRST_TOKEN_TIMEOUT
    assert fallback.detail == "no first token within 0.2 s"


async def test_config_timeout_caps_a_whole_attempt_that_keeps_streaming(tmp_path: Path) -> None:
    # 20 tokens/s never stalls for 0.5 s, but 200 tokens take 10 s.
    paced = profile(tokens_per_s=20)
    async with _stack(tmp_path, paced, primary_params={"timeout": 0.5, "stream_timeout": 5}) as s:
        stream = await events(s.client, stream_request(max_tokens=200))
    [fallback] = _fallbacks(stream)
    assert fallback.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_ATTEMPT_TIMEOUT
    assert fallback.detail == "the attempt ran past its 0.5 s timeout"
    assert 0 < fallback.after_tokens < 200
    done = stream[-1].done
    assert done.deployment.deployment_id == "backup-b"
    assert done.continued_after_failure


# -- retries ----------------------------------------------------------------------------------


async def test_num_retries_retries_the_same_deployment_after_a_500_before_falling_back(
    tmp_path: Path,
) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    async with _stack(tmp_path, broken, primary_params={"num_retries": 1}) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    provider_error = ipb.CHAT_COMPLETION_FALLBACK_REASON_PROVIDER_ERROR
    assert _moves(stream) == [
        ("primary-a", "primary-a", provider_error),
        ("primary-a", "backup-b", provider_error),
    ]
    assert seen.failed_by_status == {500: 2}
    assert stream[-1].done.deployment.deployment_id == "backup-b"
    assert text_of(stream)


async def test_no_retries_by_default(tmp_path: Path) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    async with _stack(tmp_path, broken) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    assert [m[:2] for m in _moves(stream)] == [("primary-a", "backup-b")]
    assert seen.failed_by_status == {500: 1}


async def test_data_plane_num_retries_applies_where_the_config_is_silent(tmp_path: Path) -> None:
    broken = profile(error_rate=1.0, error_codes={500: 1.0})
    async with _stack(tmp_path, broken, overrides={"data_plane.num_retries": 2}) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    assert [m[:2] for m in _moves(stream)] == [("primary-a", "primary-a")] * 2 + [
        ("primary-a", "backup-b")
    ]
    assert seen.failed_by_status == {500: 3}


async def test_retry_policy_without_rate_limit_retries_moves_on_at_once_after_a_429(
    tmp_path: Path,
) -> None:
    limited = profile(error_rate=1.0, error_codes={429: 1.0}, retry_after_s=0)
    settings = {"num_retries": 1, "retry_policy": {"RateLimitErrorRetries": 0}}
    async with _stack(tmp_path, limited, router_settings=settings) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    assert _moves(stream) == [
        ("primary-a", "backup-b", ipb.CHAT_COMPLETION_FALLBACK_REASON_RATE_LIMITED)
    ]
    assert seen.failed_by_status == {429: 1}


async def test_a_retry_after_beyond_the_first_token_timeout_moves_on_at_once(
    tmp_path: Path,
) -> None:
    limited = profile(error_rate=1.0, error_codes={429: 1.0}, retry_after_s=5)
    params = {"num_retries": 3, "stream_timeout": 0.5}
    async with _stack(tmp_path, limited, primary_params=params) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    assert [m[:2] for m in _moves(stream)] == [("primary-a", "backup-b")]
    assert seen.failed_by_status == {429: 1}


async def test_no_retry_once_output_reached_the_caller(tmp_path: Path) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    async with _stack(tmp_path, cut, primary_params={"num_retries": 2}) as s:
        stream = await events(s.client, stream_request())
        seen = s.primary.stats
    assert [m[:2] for m in _moves(stream)] == [("primary-a", "backup-b")]
    assert seen.requests_started == 1


# -- post-first-token policy ------------------------------------------------------------------


async def test_continue_on_fallback_is_the_default_and_is_flagged(tmp_path: Path) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    async with _stack(tmp_path, cut) as s:
        stream = await events(s.client, stream_request())
    [fallback] = _fallbacks(stream)
    assert fallback.after_tokens == 5
    done = stream[-1].done
    assert done.continued_after_failure
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_LENGTH
    assert done.deployment.deployment_id == "backup-b"


@pytest.mark.parametrize(
    ("where", "config", "request_policy"),
    [
        ("deployment", {"primary_info": {"post_first_token_failure_policy": "fail"}}, None),
        ("project", {"router": {"post_first_token_failure_policy": "fail"}}, None),
        ("request", {}, FAIL),
        ("server", {"overrides": {"data_plane.post_first_token_failure_policy": "fail"}}, None),
        (
            "request over project",
            {"router": {"post_first_token_failure_policy": "continue_on_fallback"}},
            FAIL,
        ),
    ],
)
async def test_fail_opt_out_stops_with_the_partial_output(
    tmp_path: Path, where: str, config: dict[str, Any], request_policy: int | None
) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    fields = {} if request_policy is None else {"post_first_token_failure_policy": request_policy}
    async with _stack(tmp_path, cut, **config) as s:
        stream = await events(s.client, stream_request(**fields))
        backup_calls = s.backup.stats.requests_started
    done = stream[-1].done
    assert done.finish_reason == ipb.CHAT_COMPLETION_FINISH_REASON_ERROR, where
    assert "FAILED_AFTER_FIRST_TOKEN" in str(done.error.details)
    assert not done.continued_after_failure
    assert sum(e.delta.token_count for e in stream if e.WhichOneof("event") == "delta") == 5
    assert backup_calls == 0


async def test_a_requests_continue_overrides_the_deployments_fail(tmp_path: Path) -> None:
    cut = profile(cut_rate=1.0, cut_after=TokenRange(lo=5, hi=5))
    info = {"post_first_token_failure_policy": "fail"}
    async with _stack(tmp_path, cut, primary_info=info) as s:
        stream = await events(s.client, stream_request(post_first_token_failure_policy=CONTINUE))
    assert stream[-1].done.continued_after_failure
    assert stream[-1].done.deployment.deployment_id == "backup-b"


# -- admission --------------------------------------------------------------------------------


async def test_a_deployment_at_its_rpm_is_skipped_without_being_called(tmp_path: Path) -> None:
    async with _stack(tmp_path, primary_params={"rpm": 1}) as s:
        first = await events(s.client, stream_request())
        second = await events(s.client, stream_request())
        seen = s.primary.stats
    assert not _fallbacks(first)
    [skip] = _fallbacks(second)
    assert skip.reason == ipb.CHAT_COMPLETION_FALLBACK_REASON_DEPLOYMENT_LIMIT
    assert "rpm 1" in skip.detail
    assert second[-1].done.deployment.deployment_id == "backup-b"
    assert seen.requests_started == 1


async def test_every_deployment_at_its_limit_is_resource_exhausted_with_a_retry_hint(
    tmp_path: Path,
) -> None:
    async with _stack(tmp_path, primary_params={"rpm": 1}, backup_params={"rpm": 1}) as s:
        await events(s.client, stream_request())  # the primary's one request this minute
        await events(s.client, stream_request())  # the backup's
        with pytest.raises(MaestroRpcError) as over_grpc:
            await events(s.client, stream_request())
        client = openai.AsyncOpenAI(
            base_url=openai_base_url(s.server), api_key=s.server.alpha_key, max_retries=0
        )
        async with client:
            with pytest.raises(openai.RateLimitError) as over_http:
                await client.chat.completions.create(
                    model="primary", messages=[{"role": "user", "content": "hi"}], stream=True
                )
    assert over_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over_grpc.value.reason == "DEPLOYMENT_LIMITS_REACHED"
    assert float(over_grpc.value.metadata["retry_after_s"]) > 1
    assert over_http.value.status_code == 429
    assert int(over_http.value.response.headers["Retry-After"]) > 1


async def test_an_abandoned_call_gives_its_parallel_slot_back(tmp_path: Path) -> None:
    paced = profile(tokens_per_s=50)
    async with _stack(tmp_path, paced, primary_params={"max_parallel_requests": 1}) as s:
        await abandon_after_two_deltas(s.client)
        await s.primary.wait_for_stats(lambda st: st.client_disconnects >= 1)
        stream = await events(s.client, stream_request(max_tokens=4))
    assert not _fallbacks(stream)
    assert stream[-1].done.deployment.deployment_id == "primary-a"
