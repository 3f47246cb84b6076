"""Inputs a hostile tenant controls (issue 15): PII tagging over every text a provider sees, and
off the event loop when large; observation times bounded by the clock; YAML aliases refused;
caller strings never metric labels; idempotency keys bounded. Real servers where the behaviour
is end to end (tests/conftest.py), the domain function where it is not."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from opentelemetry import metrics, trace

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.control_plane.route.reports import (
    MAX_CLOCK_SKEW_S,
    ObservationBatch,
    receive_reports,
    timely,
)
from maestro.core.auth import OPERATOR, TENANT_SCOPES, Principal
from maestro.core.errors import InvalidArgument
from maestro.core.yaml_input import reject_aliases
from maestro.data_plane.http_ingress import MAX_IDEMPOTENCY_KEY
from maestro.data_plane.sim import SimProvider
from maestro.routing.decider import OFF_LOOP_TAGGING_COST, ChooseInput, Decider
from maestro.routing.signals import DEFAULT_WINDOW_S, Observation
from maestro.routing.snapshots import SnapshotRegistry
from maestro.routing.tagging import ContentTagger
from maestro.routing.texts import chat_message_texts, wire_texts
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server
from tests.inference_support import openai_base_url, profile

PARENT = "projects/alpha"
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
TAGGER = ContentTagger()
MIB = 1024 * 1024

# One hosted and one in-house deployment, each its own simulated provider; PII stays in house
# (the seed's content-tag rule), and a hosted call falls back in house as the seed's does.
CONFIG = """
model_list:
  - model_name: hosted
    litellm_params: {{model: openai/hosted, api_base: "{hosted}"}}
    model_info: {{id: hosted-a, quality: 0.9, in_house: false}}
  - model_name: local
    litellm_params: {{model: openai/local, api_base: "{local}"}}
    model_info: {{id: local-a, quality: 0.5, in_house: true}}
router:
  fallbacks: [{{primary: hosted, on_error: [local]}}]
policies:
  content_tags:
    pii: [local]
"""

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
model_list: [*i]
"""


@dataclass
class Confined:
    server: RunningServer
    client: AsyncMaestroClient

    @property
    def chat_url(self) -> str:
        return f"{openai_base_url(self.server)}/chat/completions"

    async def post(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {
            "authorization": f"Bearer {self.server.alpha_key}",
            "content-type": "application/json",
        }
        data = io.BytesIO(orjson.dumps(body))  # raw bytes over 1 MiB make aiohttp warn
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(self.chat_url, data=data) as response,
        ):
            return response.status, await response.json()


@asynccontextmanager
async def confined(tmp_path: Path) -> AsyncIterator[Confined]:
    """A server whose alpha config (endpoints, in-house facts, the PII rule) is the operator's:
    applied with an `operator` key, as a tenant may not state them."""
    async with SimProvider(profile()) as hosted, SimProvider(profile()) as local:
        server = await start_server(tmp_path)
        try:
            operator = server.plane.projects.create_key_offline(
                "alpha", "ops", TENANT_SCOPES | {OPERATOR}, "ops"
            ).secret
            async with server.client(operator) as ops:
                yaml = CONFIG.format(hosted=hosted.base_url, local=local.base_url)
                await ops.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=yaml)
                    )
                )
            async with server.client(server.alpha_key) as client:
                yield Confined(server, client)
        finally:
            await server.plane.stop(grace_s=0)
            server.telemetry.shutdown()


def _chat(*messages: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "hosted", "messages": list(messages), "max_tokens": 4, **fields}


def _choose_span_tags(server: RunningServer) -> list[tuple[str, ...]]:
    return [
        tuple(span.attributes.get("maestro.route.tags", ()))  # type: ignore[arg-type, union-attr]
        for span in server.spans.get_finished_spans()
        if span.name == "maestro.route.choose"
    ]


# -- PII over every text a provider sees ------------------------------------------------------

PII_PLACES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]] = {
    "a later content part": (
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarise the thread."},
                    {"type": "image_url", "image_url": {"url": "https://example.org/a.png"}},
                    {"type": "text", "text": f"From: {EMAIL}"},
                ],
            }
        ],
        [],
        [],
    ),
    "a message name": ([{"role": "user", "name": EMAIL, "content": "Hi."}], [], []),
    "tool-call arguments": (
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": f'{{"email": "{EMAIL}"}}'},
                    }
                ],
            }
        ],
        [],
        [],
    ),
    "a tool-call name": (
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": EMAIL, "arguments": ""}}
                ],
            }
        ],
        [],
        [],
    ),
    "a tool result": (
        [{"role": "tool", "tool_call_id": "call_1", "content": f"card on file: {CARD}"}],
        [],
        [],
    ),
    "a tool result's content parts": (
        [
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": [{"type": "text", "text": f"card on file: {CARD}"}],
            }
        ],
        [],
        [],
    ),
    "a tool description": (
        [{"role": "user", "content": "Pay the invoice."}],
        [{"type": "function", "function": {"name": "pay", "description": f"Uses card {CARD}."}}],
        [],
    ),
    "a tool's parameter schema": (
        [{"role": "user", "content": "Send it."}],
        [
            {
                "type": "function",
                "function": {
                    "name": "send",
                    "parameters": {
                        "type": "object",
                        "properties": {"to": {"type": "string", "enum": [EMAIL]}},
                    },
                },
            }
        ],
        [],
    ),
    "a stop sequence": ([{"role": "user", "content": "Go on."}], [], [EMAIL]),
}


@pytest.mark.parametrize("place", PII_PLACES)
def test_pii_anywhere_a_provider_sees_is_tagged(place: str) -> None:
    messages, tools, stop = PII_PLACES[place]
    assert "pii" in TAGGER.tags(wire_texts(messages, tools, stop))


def test_protocol_words_ids_and_base64_payloads_are_not_scanned() -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x00" * 64).decode()
    audio = base64.b64encode(b"\x01" * 64).decode()
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": "call_9", "content": "done"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
            ],
        },
    ]
    assert wire_texts(messages) == ("done",)


def test_an_address_with_the_longest_domain_is_found_and_a_longer_one_is_not() -> None:
    longest = ("b" * 63 + ".") * 3 + "c" * 57 + ".com"  # 253 characters (RFC 1035)
    longer = ("b" * 63 + ".") * 4 + "com"
    assert len(longest) == 253
    assert TAGGER.tags([f"write to jane@{longest} now"]) == {"pii", "pii.email"}
    assert TAGGER.tags([f"write to jane@{longer} now"]) == frozenset()


def test_at_signs_in_one_long_token_do_not_hide_a_later_address() -> None:
    # Each '@' once searched the rest of its token: quadratic in a whitespace-free text.
    noise = ("x" * 60 + "@") * 2000
    assert TAGGER.tags([f"{noise} then jane@example.com"]) == {"pii", "pii.email"}
    assert TAGGER.tags([noise]) == frozenset()


def test_route_service_messages_yield_content_names_and_tool_calls() -> None:
    message = common_pb2.ChatMessage(
        role=common_pb2.CHAT_ROLE_ASSISTANT,
        content="c",
        name="n",
        tool_calls=[common_pb2.ToolCall(id="i", name="f", arguments_json='{"a": 1}')],
    )
    assert chat_message_texts([message]) == ("c", "n", "f", '{"a": 1}')


async def test_choose_routes_pii_in_tool_call_arguments_in_house(tmp_path: Path) -> None:
    async with confined(tmp_path) as c:
        call = common_pb2.ToolCall(id="c1", name="lookup", arguments_json=f'{{"to": "{EMAIL}"}}')
        response = await c.client.routes.Choose(
            rpb.ChooseRequest(
                parent=PARENT,
                model="hosted",
                messages=[
                    common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="Look it up."),
                    common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_ASSISTANT, tool_calls=[call]),
                ],
            )
        )
    assert response.decision.deployment.model_group == "local"
    assert "pii.email" in response.decision.detected_tags


async def test_inference_routes_pii_in_a_tool_description_in_house(tmp_path: Path) -> None:
    async with confined(tmp_path) as c:
        request = ipb.StreamChatCompletionRequest(
            parent=PARENT,
            model="hosted",
            max_tokens=4,
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="Pay it.")],
            tools=[common_pb2.ToolDefinition(name="pay", description=f"Charges card {CARD}.")],
        )
        stream = [e async for e in c.client.inference.StreamChatCompletion(request, timeout=20)]
    routed = next(e.routed for e in stream if e.WhichOneof("event") == "routed")
    assert routed.deployment.model_group == "local"
    assert "pii.card" in routed.tags


def _large_prompt(size: int) -> str:
    """`size` characters of prose: what a long document pasted into a chat looks like."""
    sentence = "The committee reviewed the proposal and asked for a clearer rationale. "
    return (sentence * (size // len(sentence) + 1))[:size]


async def test_a_4_mib_prompt_with_pii_in_a_later_content_part_is_tagged_and_routed_in_house(
    tmp_path: Path,
) -> None:
    document = _large_prompt(4 * MIB)
    parts = [
        {"type": "text", "text": "Summarise the attached document."},
        {"type": "text", "text": document},
        {"type": "text", "text": f"Send the summary to {EMAIL}."},
    ]
    async with confined(tmp_path) as c:
        clean_status, clean = await c.post(_chat({"role": "user", "content": parts[:2]}))
        status, answer = await c.post(_chat({"role": "user", "content": parts}))
        tags = _choose_span_tags(c.server)
    assert sum(len(p["text"]) for p in parts) >= 4 * MIB
    assert (clean_status, clean["maestro"]["model_group"]) == (200, "hosted")
    assert (status, answer["maestro"]["model_group"]) == (200, "local")
    assert "pii.email" not in tags[0]
    assert "pii.email" in tags[1]


class _RecordingTagger(ContentTagger):
    """Records the thread each scan ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def tags(self, texts: Iterable[str]) -> frozenset[str]:
        self.threads.append(threading.current_thread().name)
        return super().tags(texts)


def _decider(tagger: ContentTagger) -> Decider:
    return Decider(
        SnapshotRegistry(),
        tagger,
        tracer=trace.NoOpTracerProvider().get_tracer("test"),
        meter=metrics.NoOpMeterProvider().get_meter("test"),
    )


async def test_a_prompt_above_the_threshold_is_tagged_in_the_tagging_thread() -> None:
    tagger = _RecordingTagger()
    large = ChooseInput(PARENT, texts=(_large_prompt(OFF_LOOP_TAGGING_COST), f"to {EMAIL}"))
    detected = await _decider(tagger).detect_off_loop(large)
    assert detected.detected_tags is not None
    assert "pii.email" in detected.detected_tags
    assert tagger.threads == [t for t in tagger.threads if t.startswith("maestro-tagging")]
    assert len(tagger.threads) == 1


async def test_a_prompt_below_the_threshold_is_left_for_choose_to_tag_inline() -> None:
    tagger = _RecordingTagger()
    small = ChooseInput(PARENT, texts=(_large_prompt(OFF_LOOP_TAGGING_COST // 2),))
    assert await _decider(tagger).detect_off_loop(small) is small
    assert tagger.threads == []


async def test_many_tiny_texts_count_toward_the_off_loop_threshold() -> None:
    tagger = _RecordingTagger()
    tiny = ChooseInput(PARENT, texts=("a",) * (OFF_LOOP_TAGGING_COST // 10))
    assert (await _decider(tagger).detect_off_loop(tiny)).detected_tags == frozenset()
    assert len(tagger.threads) == 1


async def test_a_retry_while_the_first_call_is_tagged_off_loop_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()
    original = Decider.detect_off_loop

    async def slow(self: Decider, request: ChooseInput) -> ChooseInput:
        entered.set()
        await release.wait()
        return await original(self, request)

    monkeypatch.setattr(Decider, "detect_off_loop", slow)
    body = _chat({"role": "user", "content": "Hi."}, maestro={"idempotency_key": "k-1"})
    async with confined(tmp_path) as c:
        first = asyncio.create_task(c.post(body))
        await entered.wait()
        retry_status, retry = await c.post(body)
        release.set()
        first_status, _ = await first
    assert first_status == 200
    assert (retry_status, retry["error"]["code"]) == (409, "IDEMPOTENCY_KEY_IN_USE")


# -- observation times ------------------------------------------------------------------------


def _observation_message(end_offset_s: float, count: int) -> rpb.DeploymentObservation:
    message = rpb.DeploymentObservation(
        deployment_id="hosted-a", project=PARENT, request_count=count
    )
    end_ns = time.time_ns() + int(end_offset_s * 1e9)
    message.end_time.FromNanoseconds(end_ns)
    message.start_time.FromNanoseconds(end_ns - 1_000_000_000)
    return message


async def _report(
    client: AsyncMaestroClient, observations: list[rpb.DeploymentObservation]
) -> rpb.ReportObservationsResponse:
    async def batches() -> AsyncIterator[rpb.ReportObservationsRequest]:
        yield rpb.ReportObservationsRequest(
            node_id="edge-1", batch_id="1", observations=observations
        )

    [answer] = [a async for a in client.routes.ReportObservations(batches())]
    return answer


async def test_a_far_future_observation_is_dropped_and_cannot_pin_the_signal_window(
    tmp_path: Path,
) -> None:
    year = 365 * 24 * 3600.0
    async with confined(tmp_path) as c:
        answer = await _report(
            c.client, [_observation_message(year, 7), _observation_message(0, 10)]
        )
        signals = await c.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/hosted-a")
        )
    assert (answer.accepted_count, answer.dropped_count) == (1, 1)
    assert signals.deployment_signals.sample_count == 10


async def test_observations_in_the_skew_allowance_count_and_late_ones_are_dropped(
    tmp_path: Path,
) -> None:
    async with confined(tmp_path) as c:
        answer = await _report(
            c.client,
            [
                _observation_message(MAX_CLOCK_SKEW_S / 2, 3),
                _observation_message(-2 * DEFAULT_WINDOW_S, 5),
            ],
        )
    assert (answer.accepted_count, answer.dropped_count) == (1, 1)


async def test_start_after_end_is_invalid_argument_naming_end_time(tmp_path: Path) -> None:
    backwards = _observation_message(0, 1)
    backwards.start_time.FromNanoseconds(backwards.end_time.ToNanoseconds() + 10**9)
    async with confined(tmp_path) as c:
        with pytest.raises(MaestroRpcError) as raised:
            await _report(c.client, [backwards])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.field_violations] == ["observations[0].end_time"]


def _observation(end_time: float) -> Observation:
    return Observation(deployment_id="d", project=PARENT, end_time=end_time)


def test_timely_keeps_the_live_window_and_counts_future_and_stale_apart() -> None:
    now = 1_000_000.0
    kept, future, stale = timely(
        [
            _observation(now),
            _observation(now + MAX_CLOCK_SKEW_S),
            _observation(now + MAX_CLOCK_SKEW_S + 1),
            _observation(now - DEFAULT_WINDOW_S),
            _observation(0.0),
        ],
        now,
    )
    assert [o.end_time for o in kept] == [now, now + MAX_CLOCK_SKEW_S]
    assert (future, stale) == (1, 2)


async def test_reports_are_checked_against_the_sessions_clock() -> None:
    class Service:
        ingested: list[Observation] = []  # noqa: RUF012 - one instance

        def ingest_observations(self, observations: list[Observation]) -> tuple[int, int]:
            self.ingested.extend(observations)
            return len(observations), 0

    async def batches() -> AsyncIterator[ObservationBatch]:
        yield ObservationBatch("n", "1", [_observation(5_000.0), _observation(100.0)])

    service = Service()
    receipts = receive_reports(
        service,  # type: ignore[arg-type]
        Principal("alpha", None),
        batches(),
        clock=lambda: 100.0,
    )
    [receipt] = [r async for r in receipts]
    assert (receipt.accepted, receipt.dropped) == (1, 1)
    assert [o.end_time for o in service.ingested] == [100.0]


# -- YAML aliases -----------------------------------------------------------------------------


def test_an_alias_is_refused_at_its_line_and_column() -> None:
    with pytest.raises(InvalidArgument) as raised:
        reject_aliases(BILLION_LAUGHS, "config_yaml")
    [violation] = raised.value.violations
    assert violation.field == "config_yaml"
    assert violation.description.startswith("line 1, column 4: YAML anchors and aliases")


def test_ampersands_and_asterisks_in_scalars_are_not_aliases() -> None:
    reject_aliases("a: 'R&D *'\nb: \"x & *y\"\nc: a&b\nd: 2 * 3\n", "config_yaml")


async def test_a_billion_laughs_config_is_refused_by_validate_only_and_the_server_stays_up(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    with pytest.raises(MaestroRpcError) as raised:
        await alpha.routes.ApplyConfig(
            rpb.ApplyConfigRequest(
                route_config=rpb.RouteConfig(
                    name=f"{PARENT}/routeConfig", config_yaml=BILLION_LAUGHS
                ),
                validate_only=True,
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = raised.value.field_violations
    assert "config_yaml" in violation.field
    assert "line 1, column 4" in violation.description
    good = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m}\n"
    applied = await alpha.routes.ApplyConfig(
        rpb.ApplyConfigRequest(
            route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=good)
        )
    )
    assert applied.validation.model_group_count == 1


async def test_a_billion_laughs_recipe_is_refused_at_creation_and_the_server_stays_up(
    server: RunningServer, alpha: AsyncMaestroClient
) -> None:
    with pytest.raises(MaestroRpcError) as raised:
        await alpha.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PARENT, recipe_id="laughs", recipe=gpb.Recipe(source_yaml=BILLION_LAUGHS)
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 1, column 4" in raised.value.field_violations[0].description
    listed = await alpha.graphs.ListRecipes(gpb.ListRecipesRequest(parent=PARENT))
    assert "laughs" not in {r.name.rsplit("/", 1)[-1] for r in listed.recipes}


# -- metric labels ----------------------------------------------------------------------------


def _label_values(server: RunningServer) -> set[str]:
    data = server.metrics.get_metrics_data()
    assert data is not None
    return {
        str(value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        for value in (point.attributes or {}).values()
    }


async def test_a_random_10_kib_model_string_creates_no_metric_series(tmp_path: Path) -> None:
    model = base64.b32encode(bytes(range(256)) * 25).decode()[: 10 * 1024]
    async with confined(tmp_path) as c:
        status, _ = await c.post(_chat({"role": "user", "content": "Hi."}, model=model))
        with pytest.raises(MaestroRpcError) as raised:
            await c.client.inference.CreateChatCompletion(
                ipb.CreateChatCompletionRequest(
                    parent=PARENT,
                    model=model,
                    messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="Hi")],
                )
            )
        known_status, _ = await c.post(_chat({"role": "user", "content": "Hi."}))
        values = _label_values(c.server)
    assert (status, raised.value.code(), known_status) == (404, grpc.StatusCode.NOT_FOUND, 200)
    assert not any(model[:64] in value for value in values)
    assert {"other", "hosted"} <= values


# -- idempotency keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["k" * (MAX_IDEMPOTENCY_KEY + 1), "has space", "tab\tkey", "naïve", "x" * MIB]
)
async def test_an_http_idempotency_key_too_long_or_unprintable_is_400_naming_it(
    tmp_path: Path, key: str
) -> None:
    async with confined(tmp_path) as c:
        status, answer = await c.post(
            _chat({"role": "user", "content": "Hi."}, maestro={"idempotency_key": key})
        )
    assert status == 400
    assert answer["error"]["param"] == "maestro.idempotency_key"


async def test_an_http_idempotency_key_of_the_maximum_length_is_accepted(tmp_path: Path) -> None:
    key = "k-" + "9" * (MAX_IDEMPOTENCY_KEY - 2)
    async with confined(tmp_path) as c:
        status, _ = await c.post(
            _chat({"role": "user", "content": "Hi."}, maestro={"idempotency_key": key})
        )
    assert status == 200


async def test_a_grpc_idempotency_key_that_is_no_uuid_is_invalid_argument_naming_it(
    tmp_path: Path,
) -> None:
    async with confined(tmp_path) as c:
        with pytest.raises(MaestroRpcError) as raised:
            await c.client.inference.CreateChatCompletion(
                ipb.CreateChatCompletionRequest(
                    parent=PARENT,
                    model="hosted",
                    messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="Hi")],
                    idempotency_key="k" * 1024,
                )
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.field_violations] == ["idempotency_key"]
