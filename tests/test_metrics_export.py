"""What Prometheus scrapes: every router, cost, agent-ops and serving metric with its labels.

The server exports through the same OpenTelemetry Prometheus exporter `maestro up` serves on its
metrics port, into a registry of the test's own; assertions read the exposition text as
Prometheus parses it, so names, suffixes and label names are the ones dashboards and alert rules
query. No assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from maestro.app.config import load_config
from maestro.clients import MaestroRpcError
from maestro.control_plane.graph.metrics import MAX_RECIPES_PER_PROJECT, GraphMetrics
from maestro.core.settings import is_loopback
from maestro.core.tallies import OTHER, LabelCap, deployment_group
from maestro.data_plane.sim import FaultProfile
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests import inference_support
from tests.conftest import RunningServer, start_server_reading
from tests.graph_support import FINAL, PARENT, create_run, wait_for
from tests.inference_support import Stack, events, profile, stack, stream_request

PRICED = """
model_list:
  - model_name: primary
    litellm_params: {{model: openai/primary, api_base: "{primary}", max_parallel_requests: 4,
                      input_cost_per_token: 1.0e-6, output_cost_per_token: 2.0e-6}}
    model_info: {{id: primary-a, quality: 0.9}}
  - model_name: backup
    litellm_params: {{model: openai/backup, api_base: "{backup}",
                      input_cost_per_token: 3.0e-6, output_cost_per_token: 4.0e-6}}
    model_info: {{id: backup-b, quality: 0.5}}
router:
  fallbacks: [{{primary: primary, on_error: [backup]}}]
"""
PRIMARY_KEY = "projects/alpha/deployments/primary-a"
"""The state key of alpha's own `primary-a`: what breakers, in-flight counts and lanes go by."""


def broken() -> FaultProfile:
    """Every request answered with HTTP 500."""
    return profile(error_rate=1.0, error_codes={500: 1.0})


def priced(primary: str, backup: str) -> str:
    return PRICED.format(primary=primary, backup=backup)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    """A Prometheus registry the test servers export to (`stack` starts one of those)."""
    registry = CollectorRegistry()

    async def start_server(tmp_path: Path, **overrides: object) -> RunningServer:
        reader = PrometheusMetricReader(registry=registry)
        return await start_server_reading(tmp_path, (reader,), overrides)

    monkeypatch.setattr(inference_support, "start_server", start_server)
    return registry


# -- reading the exposition -----------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> list[Sample]:
    text = generate_latest(registry).decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def labels_of(sample: Sample) -> dict[str, str]:
    """A sample's labels without the exporter's `otel_scope_*` ones (and a bucket's `le`)."""
    return {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_") and k != "le"}


def series(registry: CollectorRegistry, name: str, **labels: str) -> list[Sample]:
    """Samples of `name` whose labels include `labels`."""
    return [
        sample
        for sample in scrape(registry)
        if sample.name == name and labels.items() <= labels_of(sample).items()
    ]


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(sample.value for sample in series(registry, name, **labels))


def label_names(registry: CollectorRegistry, name: str, **labels: str) -> set[frozenset[str]]:
    return {frozenset(labels_of(sample)) for sample in series(registry, name, **labels)}


def buckets(registry: CollectorRegistry, name: str) -> list[float]:
    """The finite bucket boundaries of histogram `name` (its `le` labels)."""
    found = {float(sample.labels["le"]) for sample in series(registry, f"{name}_bucket")}
    found.discard(float("inf"))
    return sorted(found)


async def until(condition: Callable[[], bool], tries: int = 400) -> None:
    """Wait for `condition` a bounded number of loop turns (a cancelled call winds down)."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def call(s: Stack, **fields: object) -> list[ipb.StreamChatCompletionResponse]:
    return await events(s.client, stream_request(**fields))


# -- calls: outcome and status class --------------------------------------------------------------


async def test_successful_calls_are_counted_per_project_with_status_class_ok(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        await call(s)
        calls = series(registry, "maestro_inference_calls_total", maestro_project="alpha")
    assert [labels_of(sample) for sample in calls] == [
        {
            "maestro_project": "alpha",
            "gen_ai_request_model": "primary",
            "gen_ai_response_model": "primary",
            "outcome": "length",
            "status_class": "ok",
        }
    ]
    assert calls[0].value == 1


async def test_server_error_calls_are_counted_with_status_class_server_error(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path, primary=broken(), backup=broken()) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await call(s)
        failed = total(
            registry,
            "maestro_inference_calls_total",
            maestro_project="alpha",
            gen_ai_request_model="primary",
            outcome="ALL_DEPLOYMENTS_FAILED",
            status_class="server_error",
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed == 1


async def test_caller_errors_are_counted_with_status_class_client_error(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await call(s, model="no-such-model")
        client_errors = series(
            registry, "maestro_inference_calls_total", status_class="client_error"
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # The caller's free text is never a label: an unknown model is "other".
    assert [labels_of(sample) for sample in client_errors] == [
        {
            "maestro_project": "alpha",
            "gen_ai_request_model": "other",
            "outcome": "MODEL_NOT_FOUND",
            "status_class": "client_error",
        }
    ]


async def test_calls_shed_while_the_process_is_full_are_counted_as_refused(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    paced = profile(tokens_per_s=20)
    overrides: dict[str, object] = {"data_plane.max_inflight_calls": 1}
    async with stack(tmp_path, primary=paced, overrides=overrides) as s:
        running = s.client.inference.StreamChatCompletion(stream_request(max_tokens=200))
        await running.read()  # routed: it holds the one slot
        with pytest.raises(MaestroRpcError) as raised:
            await call(s)
        running.cancel()
        refused = total(
            registry,
            "maestro_inference_calls_total",
            maestro_project="alpha",
            outcome="DATA_PLANE_OVERLOADED",
            status_class="refused",
        )
        shed = total(registry, "maestro_inference_refused_total")
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused == 1
    assert shed == 1


async def test_budget_stopped_calls_are_the_callers_and_counted_as_client_error(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        await call(s, max_tokens=40, budget={"max_tokens": 5})
        stopped = total(
            registry,
            "maestro_inference_calls_total",
            outcome="budget_exceeded",
            status_class="client_error",
        )
    assert stopped == 1


# -- fallbacks, attempts, breakers ----------------------------------------------------------------


async def test_fallbacks_are_counted_per_project_and_reason(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path, primary=broken()) as s:
        await call(s)
        fallbacks = series(registry, "maestro_inference_fallbacks_total")
    assert [labels_of(sample) for sample in fallbacks] == [
        {"maestro_project": "alpha", "reason": "provider_error"}
    ]


async def test_a_provider_429_counts_as_a_rate_limited_attempt(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    limited = profile(error_rate=1.0, error_codes={429: 1.0})
    async with stack(tmp_path, primary=limited) as s:
        await call(s)
        limited_attempts = total(
            registry,
            "maestro_inference_attempts_total",
            maestro_deployment_id=PRIMARY_KEY,
            outcome="rate_limited",
        )
        ok = total(
            registry,
            "maestro_inference_attempts_total",
            maestro_deployment_id="projects/alpha/deployments/backup-b",
            outcome="ok",
        )
        names = label_names(registry, "maestro_inference_attempts_total")
    assert limited_attempts >= 1
    assert ok == 1
    assert names == {frozenset({"maestro_deployment_id", "outcome"})}


async def test_breaker_state_gauge_reports_open_after_trips(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    settings: dict[str, object] = {
        "data_plane.breaker_min_calls": 4,
        "data_plane.breaker_window": 4,
        "data_plane.breaker_open_s": 600,  # stays open for the whole test
    }
    async with stack(tmp_path, primary=broken(), overrides=settings) as s:
        before = {
            sample.labels["state"]: sample.value
            for sample in series(registry, "maestro_inference_breaker_state")
        }
        for _ in range(4):
            await call(s)
        states = {
            sample.labels["state"]: sample.value
            for sample in series(
                registry, "maestro_inference_breaker_state", maestro_deployment_id=PRIMARY_KEY
            )
        }
        opened = total(
            registry,
            "maestro_inference_breaker_transitions_total",
            maestro_deployment_id=PRIMARY_KEY,
            state="open",
        )
        backup = {
            sample.labels["state"]: sample.value
            for sample in series(
                registry,
                "maestro_inference_breaker_state",
                maestro_deployment_id="projects/alpha/deployments/backup-b",
            )
        }
        names = label_names(registry, "maestro_inference_breaker_state")
    assert not before  # no breaker until a deployment is called
    assert states == {"closed": 0, "open": 1, "half_open": 0}
    assert backup == {"closed": 1, "open": 0, "half_open": 0}
    assert opened == 1
    assert names == {frozenset({"maestro_deployment_id", "state"})}


async def test_in_flight_and_saturation_gauges_follow_calls_on_a_deployment(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    paced = profile(tokens_per_s=20)
    async with stack(tmp_path, primary=paced, config_for=priced) as s:
        running = [
            s.client.inference.StreamChatCompletion(stream_request(max_tokens=200))
            for _ in range(2)
        ]
        for stream in running:
            await stream.read()  # routed: both are on primary-a
        in_flight = total(
            registry, "maestro_inference_in_flight", maestro_deployment_id=PRIMARY_KEY
        )
        saturation = total(
            registry, "maestro_inference_saturation_ratio", maestro_deployment_id=PRIMARY_KEY
        )
        for stream in running:
            stream.cancel()
        await until(
            lambda: (
                total(registry, "maestro_inference_in_flight", maestro_deployment_id=PRIMARY_KEY)
                == 0
            )
        )
        after = total(
            registry, "maestro_inference_saturation_ratio", maestro_deployment_id=PRIMARY_KEY
        )
    assert in_flight == 2
    assert saturation == 2 / 4  # max_parallel_requests: 4
    assert after == 0


async def test_saturation_is_zero_for_a_deployment_without_a_parallel_limit(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    paced = profile(tokens_per_s=20)
    async with stack(tmp_path, primary=paced) as s:
        running = s.client.inference.StreamChatCompletion(stream_request(max_tokens=200))
        await running.read()
        in_flight = total(
            registry, "maestro_inference_in_flight", maestro_deployment_id=PRIMARY_KEY
        )
        saturation = series(
            registry, "maestro_inference_saturation_ratio", maestro_deployment_id=PRIMARY_KEY
        )
        running.cancel()
    assert in_flight == 1
    assert [sample.value for sample in saturation] == [0]


# -- tokens, cost, histograms ---------------------------------------------------------------------


async def test_tokens_are_counted_per_project_model_and_type(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        stream = await call(s, max_tokens=24)
        tokens = {
            sample.labels["gen_ai_token_type"]: sample.value
            for sample in series(
                registry,
                "maestro_inference_tokens_total",
                maestro_project="alpha",
                gen_ai_request_model="primary",
            )
        }
        names = label_names(registry, "maestro_inference_tokens_total")
    usage = stream[-1].done.usage
    assert tokens == {"input": usage.prompt_tokens, "output": usage.completion_tokens}
    assert names == {frozenset({"maestro_project", "gen_ai_request_model", "gen_ai_token_type"})}


async def test_cost_is_counted_per_project_and_model(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path, config_for=priced) as s:
        first = (await call(s, max_tokens=24))[-1].done
        second = (await call(s, max_tokens=10))[-1].done
        costs = series(registry, "maestro_inference_cost_usd_total")
    assert [labels_of(sample) for sample in costs] == [
        {
            "maestro_project": "alpha",
            "gen_ai_request_model": "primary",
            "gen_ai_response_model": "primary",
        }
    ]
    # The relay's price of each call (what the Done event reports), added up.
    assert costs[0].value == pytest.approx(first.cost_usd + second.cost_usd)
    expected = (first.usage.prompt_tokens + second.usage.prompt_tokens) * 1e-6 + (
        first.usage.completion_tokens + second.usage.completion_tokens
    ) * 2e-6
    assert costs[0].value == pytest.approx(expected)


async def test_time_per_output_token_recorded_once_per_streamed_call(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        stream = await call(s, max_tokens=24)
        await call(s, max_tokens=1)  # one token: no time between tokens to speak of
        counts = series(registry, "maestro_inference_time_per_output_token_seconds_count")
        sums = total(registry, "maestro_inference_time_per_output_token_seconds_sum")
    done = stream[-1].done
    total_s = done.timings.total.ToNanoseconds() / 1e9
    ttft_s = done.timings.time_to_first_token.ToNanoseconds() / 1e9
    assert [labels_of(sample) for sample in counts] == [
        {
            "gen_ai_request_model": "primary",
            "gen_ai_response_model": "primary",
            "gen_ai_provider_name": "openai",
        }
    ]
    assert counts[0].value == 1
    # The one call's (end - first token) / (tokens - 1), as its own timings report them.
    assert done.usage.completion_tokens == 24
    assert sums == pytest.approx((total_s - ttft_s) / 23, rel=1e-6, abs=1e-6)


async def test_seconds_histograms_have_second_scale_buckets(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        await call(s)
        duration = buckets(registry, "gen_ai_client_operation_duration_seconds")
        ttft = buckets(registry, "maestro_inference_time_to_first_token_seconds")
        tpot = buckets(registry, "maestro_inference_time_per_output_token_seconds")
        observed = series(registry, "gen_ai_client_operation_duration_seconds_count")
    assert duration == [
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    ]  # fmt: skip
    assert ttft == [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0,
    ]  # fmt: skip
    assert tpot == [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
        2.5,
    ]  # fmt: skip
    assert [sample.value for sample in observed] == [1]


# -- routing --------------------------------------------------------------------------------------


async def test_route_decisions_are_counted_per_project(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        await call(s)
        decisions = series(registry, "maestro_route_decisions_total")
    assert [labels_of(sample) for sample in decisions] == [
        {
            "maestro_project": "alpha",
            "gen_ai_request_model": "primary",
            "gen_ai_response_model": "primary",
            "gen_ai_provider_name": "openai",
            "outcome": "chosen",
        }
    ]


async def test_route_exclusions_are_counted_by_the_explanations_reason(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        await s.client.routes.Choose(
            rpb.ChooseRequest(parent=PARENT, model="primary", excluded_deployment_ids=["primary-a"])
        )
        excluded = series(registry, "maestro_route_exclusions_total")
        fallback_routes = label_names(registry, "maestro_route_fallback_routes_total")
    assert [(labels_of(sample), sample.value) for sample in excluded] == [
        (
            {
                "maestro_project": "alpha",
                "gen_ai_request_model": "primary",
                "reason": "excluded_by_caller",
            },
            1,
        )
    ]
    # primary-a out, the decision routed to the fallback group
    assert fallback_routes == {
        frozenset({"maestro_project", "gen_ai_request_model", "gen_ai_response_model"})
    }


async def test_an_open_breaker_shows_as_a_breaker_open_exclusion(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    settings: dict[str, object] = {
        "data_plane.breaker_min_calls": 2,
        "data_plane.breaker_window": 2,
        "data_plane.breaker_open_s": 600,
    }
    async with stack(tmp_path, primary=broken(), overrides=settings) as s:
        for _ in range(2):
            await call(s)
        before = total(registry, "maestro_route_exclusions_total", reason="breaker_open")
        await call(s)
        after = total(
            registry,
            "maestro_route_exclusions_total",
            maestro_project="alpha",
            gen_ai_request_model="primary",
            reason="breaker_open",
        )
    assert before == 0
    assert after == 1


# -- serving lanes --------------------------------------------------------------------------------


@pytest.fixture
async def lane_status() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A cluster's `/lane-status` answering whatever the test puts in the returned dict."""
    entry: dict[str, Any] = {
        "route_prefix": "/tiny",
        "running": 3,
        "queued": 2,
        "engine_running": 2,
        "engine_waiting": 1,
        "kv_cache_usage": 0.42,
        "prefix_cache_hit_ratio": 0.0,
        "max_ongoing_requests": 8,
        "max_queued_requests": -1,
    }

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"lanes": {"tiny": entry}})

    app = web.Application()
    app.router.add_get("/lane-status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/tiny/v1", entry
    finally:
        await runner.cleanup()


async def test_lane_gauges_report_the_latest_poll(
    tmp_path: Path, registry: CollectorRegistry, lane_status: tuple[str, dict[str, Any]]
) -> None:
    api_base, entry = lane_status

    def config_for(primary: str, backup: str) -> str:
        return (
            "model_list:\n"
            "  - model_name: lane\n"
            f'    litellm_params: {{model: maestro_lane/tiny, api_base: "{api_base}"}}\n'
            "    model_info: {id: lane-a}\n"
        )

    key = "projects/alpha/deployments/lane-a"
    gauges = (
        "maestro_lane_queue_depth",
        "maestro_lane_kv_cache_usage_ratio",
        "maestro_lane_batch_size",
        "maestro_lane_saturated",
    )
    async with stack(tmp_path, config_for=config_for) as s:
        data = s.server.plane.data
        assert data is not None
        assert data.lanes is not None
        await data.lanes.poll()
        first = {name: total(registry, name, maestro_deployment_id=key) for name in gauges}
        entry["kv_cache_usage"] = 0.99  # past lane_kv_cache_saturation (0.98)
        await data.lanes.poll()
        second = {name: total(registry, name, maestro_deployment_id=key) for name in gauges}
        names = {name: label_names(registry, name) for name in gauges}
    assert first == {
        "maestro_lane_queue_depth": 3,  # queued, and admitted but not scheduled by the engine
        "maestro_lane_kv_cache_usage_ratio": 0.42,
        "maestro_lane_batch_size": 2,  # running, less what the engine has not scheduled
        "maestro_lane_saturated": 0,
    }
    assert second["maestro_lane_kv_cache_usage_ratio"] == 0.99
    assert second["maestro_lane_saturated"] == 1
    assert all(found == {frozenset({"maestro_deployment_id"})} for found in names.values())


# -- graphs ---------------------------------------------------------------------------------------

GATED = """
autonomy: L2
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: __end__}
"""
RETRIED = """
autonomy: L2
nodes:
  - {id: draft, kind: model, max_tokens: 8, retries: {max_attempts: 3}}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: __end__}
"""


async def _recipe(s: Stack, recipe_id: str, source: str) -> str:
    created = await s.client.graphs.CreateRecipe(
        gpb.CreateRecipeRequest(
            parent=PARENT, recipe_id=recipe_id, recipe=gpb.Recipe(source_yaml=source)
        )
    )
    return str(created.recipe.name)


async def test_gate_decision_latency_recorded_on_approval(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path) as s:
        recipe = await _recipe(s, "gated", GATED)
        run = await create_run(s.client, recipe)
        waiting = await wait_for(s.client, run.name, {gpb.Run.STATE_WAITING_FOR_APPROVAL})
        before = series(registry, "maestro_graph_gate_decision_latency_seconds_count")
        async with s.server.client(s.server.new_key("ann")) as ann:  # not the run's creator
            await ann.graphs.SubmitGateDecision(
                gpb.SubmitGateDecisionRequest(
                    name=waiting.open_gates[0], verdict=gpb.GATE_VERDICT_APPROVE
                )
            )
        counts = series(registry, "maestro_graph_gate_decision_latency_seconds_count")
        latency = buckets(registry, "maestro_graph_gate_decision_latency_seconds")
    assert not before
    assert [(labels_of(sample), sample.value) for sample in counts] == [({"verdict": "approve"}, 1)]
    assert latency[0] == 1.0
    assert latency[-1] >= 86400  # gates wait for people: hours and days


async def test_finished_runs_and_their_cost_are_counted_per_project_and_recipe(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path, config_for=priced) as s:
        recipe = await _recipe(s, "drafts", RETRIED)
        run = await create_run(s.client, recipe)
        done = await wait_for(s.client, run.name, FINAL)
        finished = series(registry, "maestro_graph_runs_finished_total")
        cost = series(registry, "maestro_graph_runs_cost_usd_total")
    assert done.state == gpb.Run.STATE_SUCCEEDED
    assert [(labels_of(sample), sample.value) for sample in finished] == [
        ({"maestro_project": "alpha", "recipe": recipe, "state": "succeeded"}, 1)
    ]
    assert [labels_of(sample) for sample in cost] == [
        {"maestro_project": "alpha", "recipe": recipe}
    ]
    assert cost[0].value == pytest.approx(done.cost_usd)
    assert cost[0].value > 0


async def test_node_retries_and_durations_are_counted_by_node_kind_and_outcome(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    async with stack(tmp_path, primary=broken(), backup=broken()) as s:
        recipe = await _recipe(s, "retried", RETRIED)
        run = await create_run(s.client, recipe)
        done = await wait_for(s.client, run.name, FINAL)
        attempts = total(
            registry, "maestro_graph_node_attempts_total", kind="model", outcome="failed"
        )
        retries = series(registry, "maestro_graph_node_retries_total")
        durations = series(registry, "maestro_graph_node_duration_seconds_count")
        bounds = buckets(registry, "maestro_graph_node_duration_seconds")
        finished = total(
            registry,
            "maestro_graph_runs_finished_total",
            maestro_project="alpha",
            recipe=recipe,
            state="failed",
        )
    assert done.state == gpb.Run.STATE_FAILED
    assert attempts == 3
    assert [(labels_of(sample), sample.value) for sample in retries] == [({"kind": "model"}, 2)]
    assert [(labels_of(sample), sample.value) for sample in durations] == [
        ({"kind": "model", "outcome": "failed"}, 3)
    ]
    assert bounds[0] <= 0.01
    assert bounds[-1] >= 3600
    assert finished == 1


# -- the embedded default -------------------------------------------------------------------------


def test_the_embedded_default_serves_metrics_on_loopback_9464() -> None:
    demo = Path(__file__).parent.parent / "control_plane/maestro/control_plane/demo.yaml"
    config = load_config(demo, env={})
    assert config.telemetry.metrics_port == 9464
    assert is_loopback(config.telemetry.metrics_host)


# -- bounded label values -------------------------------------------------------------------------


def test_a_projects_deployments_beyond_its_cap_share_the_other_series() -> None:
    cap = LabelCap(2)
    alpha = [cap("projects/alpha", f"projects/alpha/deployments/d{i}") for i in range(4)]
    beta = cap("projects/beta", "projects/beta/deployments/d0")
    assert alpha == [
        "projects/alpha/deployments/d0",
        "projects/alpha/deployments/d1",
        OTHER,
        OTHER,
    ]
    assert cap("projects/alpha", "projects/alpha/deployments/d1") == alpha[1]  # kept
    assert beta == "projects/beta/deployments/d0"  # another project has its own room
    assert not cap.admits("projects/alpha", "projects/alpha/deployments/d9")
    assert deployment_group("projects/alpha/deployments/d0") == "projects/alpha"
    assert deployment_group("operator-gpt4o") == ""


def test_a_projects_run_series_stop_at_its_recipe_cap() -> None:
    reader = InMemoryMetricReader()
    graph = GraphMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    for i in range(MAX_RECIPES_PER_PROJECT + 5):
        graph.run_finished("alpha", f"projects/alpha/recipes/r{i}", "SUCCEEDED")
        graph.run_cost("alpha", f"projects/alpha/recipes/r{i}", 0.5)
    graph.run_finished("beta", "projects/beta/recipes/r0", "SUCCEEDED")
    collected = reader.get_metrics_data()
    assert collected is not None
    points = {
        metric.name: [dict(p.attributes or {}) for p in metric.data.data_points]
        for resource in collected.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    for name in ("maestro.graph.runs.finished", "maestro.graph.runs.cost.usd"):
        alpha = {p["recipe"] for p in points[name] if p["maestro.project"] == "alpha"}
        assert len(alpha) == MAX_RECIPES_PER_PROJECT + 1
        assert OTHER in alpha
    finished_beta = [
        p for p in points["maestro.graph.runs.finished"] if p["maestro.project"] == "beta"
    ]
    assert [p["recipe"] for p in finished_beta] == ["projects/beta/recipes/r0"]
