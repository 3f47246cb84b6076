"""One request is one trace: the HTTP ingress, gRPC (embedded and through a remote data plane),
the provider's HTTP request and graph runs each form one tree of spans, with every parent
present; and every process names itself in its resource (`maestro.project`, `jurisdiction`)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bench._otlp_receiver import OtlpReceiver
from maestro.app.data_plane_server import key_project, start_data_plane_server
from maestro.app.serve import process_telemetry
from maestro.clients import AsyncMaestroClient
from maestro.core.settings import TelemetryConfig
from maestro.core.telemetry import build_telemetry, resource_attributes
from maestro.v1 import route_service_pb2 as rpb
from serving.telemetry import caller_context, lane_resource
from tests.conftest import start_server, test_config
from tests.graph_support import FINAL, create_run, wait_for
from tests.inference_support import PARENT, events, openai_base_url, stack, stream_request
from tests.lane_support import SERVED_MODEL, Lane, start_lane

CHAT = "chat primary"
ROUTE = "maestro.route.choose"
ATTEMPT = "provider.attempt"


def _tree(spans: Sequence[ReadableSpan], trace_id: int) -> dict[int, ReadableSpan]:
    """The spans of one trace by span id, asserting it is one tree: one root (no parent, or
    a caller's outside the process), every other span's parent among them."""
    members = {s.context.span_id: s for s in spans if s.context.trace_id == trace_id}
    roots = [s for s in members.values() if s.parent is None or s.parent.span_id not in members]
    assert len(roots) == 1, [s.name for s in roots]
    return members


def _parent(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None
    return spans[span.parent.span_id]


def _only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


async def _spans(exporter: InMemorySpanExporter, *names: str) -> list[ReadableSpan]:
    """The finished spans once each of `names` is among them (the route span is made on the
    loop's turn after the call started; bounded)."""
    for _ in range(100):
        spans = list(exporter.get_finished_spans())
        if all(any(s.name == n for s in spans) for n in names):
            return spans
        await asyncio.sleep(0.02)
    raise AssertionError(f"missing spans among {[s.name for s in spans]}")


# -- the HTTP ingress -------------------------------------------------------------------------


async def _post(url: str, key: str, body: object, headers: dict[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession(headers={"authorization": f"Bearer {key}", **(headers or {})}) as s,
        s.post(url, json=body) as response,
    ):
        await response.read()
        return response.status


@pytest.mark.parametrize("stream", [False, True])
async def test_an_http_call_without_traceparent_is_one_tree(tmp_path: Path, stream: bool) -> None:
    async with stack(tmp_path) as s:
        status = await _post(
            f"{s.openai_base_url}/chat/completions",
            s.server.alpha_key,
            {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        )
        spans = await _spans(s.server.spans, CHAT, ROUTE, "POST /v1/chat/completions")
    assert status == 200
    ingress = _only(spans, "POST /v1/chat/completions")
    tree = _tree(spans, ingress.context.trace_id)
    chat, route = _only(spans, CHAT), _only(spans, ROUTE)
    assert ingress.parent is None  # a new trace
    assert ingress.kind is SpanKind.SERVER
    assert (ingress.attributes or {})["http.response.status_code"] == 200
    assert _parent(chat, tree) is ingress
    assert _parent(route, tree) is chat


async def test_an_http_call_with_traceparent_joins_the_callers_trace(tmp_path: Path) -> None:
    trace_id, choose_trace, caller = (secrets.token_hex(n) for n in (16, 16, 8))
    async with stack(tmp_path) as s:
        await _post(
            f"{s.openai_base_url}/chat/completions",
            s.server.alpha_key,
            {"model": "primary", "messages": [{"role": "user", "content": "hi"}]},
            {"traceparent": f"00-{trace_id}-{caller}-01"},
        )
        await _post(
            s.openai_base_url.removesuffix("/v1") + "/route/choose",
            s.server.alpha_key,
            {"model": "primary", "prompt": "hi"},
            {"traceparent": f"00-{choose_trace}-{caller}-01"},
        )
        spans = await _spans(s.server.spans, CHAT, "POST /route/choose")
    tree = _tree(spans, int(trace_id, 16))  # the caller's span is the root's (remote) parent
    ingress = _only(spans, "POST /v1/chat/completions")
    assert ingress.parent is not None
    assert f"{ingress.parent.span_id:016x}" == caller
    assert _parent(_only(spans, CHAT), tree) is ingress
    choices = _tree(spans, int(choose_trace, 16))
    choose = _only(spans, "POST /route/choose")
    [decision] = [s for s in choices.values() if s.name == ROUTE]
    assert _parent(decision, choices) is choose
    assert (decision.attributes or {})["maestro.project"] == "alpha"


# -- the provider's HTTP request ----------------------------------------------------------------


@dataclass
class Recorder:
    """A loopback OpenAI-compatible server that answers one short stream and keeps each
    request's headers."""

    headers: list[dict[str, str]] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            b'data: {"choices":[{"index":0,"delta":{"content":"hello"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
            b"data: [DONE]\n\n"
        )
        await response.write_eof()
        return response


@asynccontextmanager
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    record = Recorder()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", record.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield record, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def _recorded_config(base_url: str) -> str:
    return (
        "model_list:\n"
        "  - model_name: primary\n"
        f'    litellm_params: {{model: openai/primary, api_base: "{base_url}"}}\n'
        "    model_info: {id: primary-a}\n"
    )


async def test_the_provider_request_carries_the_calls_trace(tmp_path: Path) -> None:
    async with (
        recorder() as (record, base_url),
        stack(tmp_path, config_for=lambda _p, _b: _recorded_config(base_url)) as s,
    ):
        await events(s.client, stream_request())
        spans = await _spans(s.server.spans, CHAT, ROUTE)
    [headers] = record.headers
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    chat = _only(spans, CHAT)
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == chat.context.trace_id
    tree = _tree(spans, chat.context.trace_id)
    assert int(parent_id, 16) in tree  # a span of the call: the provider's spans join the tree


async def test_the_provider_request_names_its_attempt_span_under_the_chat_span(
    tmp_path: Path,
) -> None:
    async with (
        recorder() as (record, base_url),
        stack(tmp_path, config_for=lambda _p, _b: _recorded_config(base_url)) as s,
    ):
        await events(s.client, stream_request())
        spans = await _spans(s.server.spans, CHAT, ATTEMPT)
    [headers] = record.headers
    attempt = _only(spans, ATTEMPT)
    assert int(headers["traceparent"].split("-")[2], 16) == attempt.context.span_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == _only(spans, CHAT).context.span_id
    assert attempt.kind == trace.SpanKind.CLIENT
    assert attempt.attributes is not None
    assert attempt.attributes["maestro.deployment_id"] == "primary-a"
    assert attempt.attributes["server.address"] == "127.0.0.1"


async def test_a_calls_latency_histograms_carry_an_exemplar_naming_its_trace(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        await events(s.client, stream_request())
        spans = await _spans(s.server.spans, CHAT)
        collected = s.server.metrics.get_metrics_data()
    chat = _only(spans, CHAT)
    assert collected is not None
    exemplars = {
        metric.name: [e for point in metric.data.data_points for e in point.exemplars]
        for resource in collected.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name
        in {"gen_ai.client.operation.duration", "maestro.inference.time_to_first_token"}
    }
    assert set(exemplars) == {
        "gen_ai.client.operation.duration",
        "maestro.inference.time_to_first_token",
    }
    for found in exemplars.values():
        assert [(e.trace_id, e.span_id) for e in found] == [
            (chat.context.trace_id, chat.context.span_id)
        ]


def test_metrics_go_out_over_otlp_when_configured() -> None:
    with OtlpReceiver() as receiver:
        telemetry = build_telemetry(
            TelemetryConfig(otlp_endpoint=receiver.endpoint, otlp_metrics=True)
        )
        try:
            telemetry.meter_provider.get_meter("test").create_counter("calls").add(1)
            assert telemetry.meter_provider.force_flush(timeout_millis=10_000)
        finally:
            telemetry.shutdown()
        assert receiver.counts.metric_points >= 1


def test_no_otlp_metrics_unless_asked() -> None:
    with OtlpReceiver() as receiver:
        telemetry = build_telemetry(TelemetryConfig(otlp_endpoint=receiver.endpoint))
        try:
            telemetry.meter_provider.get_meter("test").create_counter("calls").add(1)
            telemetry.meter_provider.force_flush(timeout_millis=2_000)
        finally:
            telemetry.shutdown()
        assert receiver.counts.metric_requests == 0


def _failing_primary_config(base_url: str) -> str:
    """`primary` on a port nothing listens on (refused at once), falling back to `backup` on
    the recorder."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    return (
        "model_list:\n"
        "  - model_name: primary\n"
        f'    litellm_params: {{model: openai/primary, api_base: "http://127.0.0.1:{closed}/v1"}}\n'
        "    model_info: {id: primary-a}\n"
        "  - model_name: backup\n"
        f'    litellm_params: {{model: openai/backup, api_base: "{base_url}"}}\n'
        "    model_info: {id: backup-b}\n"
        "router:\n"
        "  fallbacks: [{primary: primary, on_error: [backup]}]\n"
    )


async def test_a_call_that_falls_back_has_one_attempt_span_per_deployment_tried(
    tmp_path: Path,
) -> None:
    async with (
        recorder() as (record, base_url),
        stack(tmp_path, config_for=lambda _p, _b: _failing_primary_config(base_url)) as s,
    ):
        await events(s.client, stream_request())
        spans = await _spans(s.server.spans, CHAT, ATTEMPT)
    chat = _only(spans, CHAT)
    attempts = [a for a in _tree(spans, chat.context.trace_id).values() if a.name == ATTEMPT]
    by_deployment = {a.attributes["maestro.deployment_id"]: a for a in attempts if a.attributes}
    assert set(by_deployment) == {"primary-a", "backup-b"}
    assert all(a.parent is not None and a.parent.span_id == chat.context.span_id for a in attempts)
    failed, served = by_deployment["primary-a"], by_deployment["backup-b"]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "provider_error"
    assert served.status.status_code == trace.StatusCode.UNSET
    [headers] = record.headers  # only the backup was reached; it names its own attempt
    assert int(headers["traceparent"].split("-")[2], 16) == served.context.span_id


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    yield from start_lane(tmp_path_factory.mktemp("lane"))


LANE_ROUTES = """
model_list:
  - model_name: free
    litellm_params: {{model: maestro_lane/{served}, api_base: "{beta}"}}
    model_info: {{id: lane-beta}}
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_lane_call_is_one_tree_with_the_lanes_span_in_it(
    tmp_path: Path, lane: Lane
) -> None:
    """Through the HTTP ingress with no `traceparent`: the lane's `serve.vllm.request` span
    (exported by the lane process) is a child of a span of the data plane's tree."""
    await asyncio.to_thread(lane.wait_idle)
    server = await start_server(tmp_path, **{"data_plane.first_token_timeout_s": 120})
    try:
        async with server.client(server.alpha_key) as client:
            config = LANE_ROUTES.format(served=SERVED_MODEL, beta=lane.base_url("beta"))
            await client.routes.ApplyConfig(
                rpb.ApplyConfigRequest(
                    route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=config)
                )
            )
        status = await _post(
            f"{openai_base_url(server)}/chat/completions",
            server.alpha_key,
            {
                "model": "free",
                "messages": [{"role": "user", "content": "Write about the sea."}],
                "max_tokens": 8,
                "temperature": 0,
                "stream": True,
            },
        )
        spans = await _spans(server.spans, "chat free", ROUTE)
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()
    assert status == 200
    chat = _only(spans, "chat free")
    tree = _tree(spans, chat.context.trace_id)
    served = await asyncio.to_thread(
        lane.sink.wait_for, "serve.vllm.request", chat.context.trace_id.to_bytes(16, "big")
    )
    assert int.from_bytes(served.parent_span_id, "big") in tree
    attributes = {a.key: a.value for a in served.attributes}
    assert attributes["gen_ai.provider.name"].string_value == "vllm"
    assert attributes["gen_ai.response.model"].string_value == SERVED_MODEL


def test_the_lane_continues_the_trace_its_request_names() -> None:
    """The lane's `serve.vllm.request` span is made in the replica from the request's own
    headers (no deployment handle in between): their `traceparent` is its parent."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    context = caller_context({"traceparent": f"00-{trace_id}-{parent}-01"})
    span_context = trace.get_current_span(context).get_span_context()
    assert (f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}") == (trace_id, parent)
    assert not trace.get_current_span(caller_context({})).get_span_context().is_valid


# -- gRPC through a remote data plane -----------------------------------------------------------


async def test_a_grpc_chat_through_a_remote_data_plane_is_one_tree(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with stack(tmp_path / "control") as control:
        config = test_config(
            tmp_path,
            **{
                "data_plane.control_plane_target": control.server.target,
                "data_plane.control_plane_api_key": control.server.alpha_key,
                "data_plane.node_id": "edge-1",
                "telemetry.jurisdiction": "eu",
            },
        )
        exporter = InMemorySpanExporter()
        project = await key_project(config)
        telemetry = build_telemetry(
            config.telemetry, project=project, span_processors=(SimpleSpanProcessor(exporter),)
        )
        data = await start_data_plane_server(config, telemetry)
        try:
            await asyncio.wait_for(data.follower.synced.wait(), 30)
            async with AsyncMaestroClient(
                data.address,
                api_key=control.server.alpha_key,
                timeout_s=20,
                tracer_provider=telemetry.tracer_provider,
            ) as client:
                await events(client, stream_request())
            spans = await _spans(exporter, CHAT, ROUTE)
        finally:
            await data.stop(grace_s=0)
            telemetry.shutdown()
    assert project == "alpha"
    chat = _only(spans, CHAT)
    tree = _tree(spans, chat.context.trace_id)
    server = _parent(chat, tree)
    assert server.kind is SpanKind.SERVER
    assert server.name.endswith("InferenceService/StreamChatCompletion")
    assert _parent(server, tree).kind is SpanKind.CLIENT
    assert _parent(_only(spans, ROUTE), tree) is chat
    resource = chat.resource.attributes
    assert resource["maestro.project"] == "alpha"
    assert resource["jurisdiction"] == "eu"
    assert resource["service.name"] == "maestro-control-plane"  # the setting's default
    assert resource["service.version"]


# -- graph runs ----------------------------------------------------------------------------------


async def test_a_run_is_one_tree_under_the_call_that_created_it(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        run = await create_run(
            s.client, "projects/builtin/recipes/toolformer", {"question": "q", "max_turns": 2}
        )
        await wait_for(s.client, run.name, FINAL)
        spans = list(s.server.spans.get_finished_spans())
    tree = _tree(spans, int(run.trace_id, 16))
    create = next(
        sp
        for sp in tree.values()
        if sp.kind is SpanKind.SERVER and sp.name.endswith("GraphService/CreateRun")
    )
    nodes = [sp for sp in tree.values() if sp.name == "agent.node.run"]
    assert nodes
    assert all(_parent(node, tree) is create for node in nodes)
    tool = next(sp for sp in tree.values() if sp.name == "tool.call")
    assert _parent(tool, tree).name == "agent.node.run"
    chats = [sp for sp in tree.values() if sp.name.startswith("chat ")]
    assert chats
    assert all(_parent(chat, tree).name == "agent.node.run" for chat in chats)
    assert all(_parent(sp, tree) in chats for sp in tree.values() if sp.name == ROUTE)


# -- resource attributes -------------------------------------------------------------------------


async def test_a_data_plane_names_its_keys_project_and_a_control_plane_none(
    tmp_path: Path,
) -> None:
    (tmp_path / "control").mkdir()
    async with stack(tmp_path / "control") as control:
        follower = test_config(
            tmp_path,
            **{
                "data_plane.control_plane_target": control.server.target,
                "data_plane.control_plane_api_key": control.server.beta_key,
                "telemetry.jurisdiction": "eu",
            },
        )
        data_plane = await process_telemetry(follower, "data_plane")
        control_plane = await process_telemetry(follower, "control_plane")
    try:
        assert data_plane.tracer_provider.resource.attributes["maestro.project"] == "beta"
        assert data_plane.tracer_provider.resource.attributes["jurisdiction"] == "eu"
        assert "maestro.project" not in control_plane.tracer_provider.resource.attributes
        assert control_plane.tracer_provider.resource.attributes["jurisdiction"] == "eu"
    finally:
        data_plane.shutdown()
        control_plane.shutdown()


async def test_an_unreachable_control_plane_leaves_the_project_unnamed(tmp_path: Path) -> None:
    config = test_config(
        tmp_path,
        **{
            "data_plane.control_plane_target": "127.0.0.1:1",
            "data_plane.control_plane_api_key": "mk_abc_def",
        },
    )
    assert await key_project(config, timeout_s=5) is None


def test_metrics_carry_the_same_resource() -> None:
    reader = InMemoryMetricReader()
    config = TelemetryConfig(jurisdiction="eu")
    telemetry = build_telemetry(config, project="alpha", metric_readers=(reader,))
    try:
        telemetry.meter_provider.get_meter("t").create_counter("c").add(1)
        data = reader.get_metrics_data()
        assert data is not None
        resource = data.resource_metrics[0].resource.attributes
    finally:
        telemetry.shutdown()
    assert resource["maestro.project"] == "alpha"
    assert resource["jurisdiction"] == "eu"
    assert resource_attributes(TelemetryConfig()).keys() == {"service.name", "service.version"}


def test_the_lane_names_itself_and_its_jurisdiction() -> None:
    attributes = lane_resource("beta", {"MAESTRO_JURISDICTION": "eu"}).attributes
    assert attributes["service.name"] == "maestro-serving"
    assert attributes["service.version"]
    assert attributes["maestro.lane"] == "beta"
    assert attributes["jurisdiction"] == "eu"
    assert "jurisdiction" not in lane_resource("beta", {}).attributes
