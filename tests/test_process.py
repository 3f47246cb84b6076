"""The README's run command as a user runs it: `maestro up` in a process, driven by grpcurl.

Covers the foundation's acceptance: reflection lists every service, `describe` prints the
documented contract, health answers SERVING, malformed JSON requests get INVALID_ARGUMENT with
field violations, and SIGTERM during an open server stream ends it cleanly and exits 0.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.process_support import BIN, ROOT, demo_config, maestro_process, wait_ready

pytestmark = pytest.mark.slow
SERVICES = {
    "maestro.v1.RouteService",
    "maestro.v1.GraphService",
    "maestro.v1.EvalService",
    "maestro.v1.RolloutService",
    "maestro.v1.InferenceService",
    "maestro.v1.ProjectService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    address: str
    api_key: str
    openai_base_url: str


def _grpcurl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def maestro_up(tmp_path: Path) -> Iterator[UpProcess]:
    env = {**os.environ, "MAESTRO_SERVER__GRACE_PERIOD_S": "5"}
    config = demo_config(tmp_path)
    args = ["up", "--config", str(config), "--port", "0", "--http-port", "0"]
    with maestro_process(args, tmp_path, env) as (ready, process):
        api_key = (tmp_path / ".maestro" / "demo-api-key").read_text().strip()
        yield UpProcess(process, ready["address"], api_key, ready["openai_base_url"])


def test_maestro_up_refuses_to_start_on_a_routing_file_that_does_not_load(
    tmp_path: Path,
) -> None:
    """Not a server answering NO_ROUTE_CONFIG to every call while its health says SERVING."""
    routing = tmp_path / "litellm.yaml"
    routing.write_text(
        "model_list:\n  - model_name: m\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: sk-literal}\n"
    )
    config = demo_config(tmp_path)
    config.write_text(
        config.read_text().replace(str(ROOT / "deploy/router/litellm.yaml"), str(routing))
    )
    args = ["up", "--config", str(config), "--port", "0", "--http-port", "0"]
    ended = subprocess.run(
        [str(BIN / "maestro"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert ended.returncode == 2
    assert f"the routing config {routing} does not load" in ended.stderr
    assert "model_list[0].litellm_params.api_key" in ended.stderr


def test_maestro_up_says_which_setting_to_change_when_its_metrics_port_is_taken(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = demo_config(tmp_path)
        args = ["up", "--config", str(config), "--port", "0", "--http-port", "0"]
        env = {**os.environ, "MAESTRO_TELEMETRY__METRICS_PORT": str(port)}
        ended = subprocess.run(
            [str(BIN / "maestro"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert ended.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in ended.stderr
    assert "MAESTRO_TELEMETRY__METRICS_PORT" in ended.stderr
    assert "Traceback" not in ended.stderr


def test_reflection_lists_every_service(maestro_up: UpProcess) -> None:
    listed = _grpcurl(maestro_up.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= SERVICES


def test_describe_prints_the_documented_contract(maestro_up: UpProcess) -> None:
    described = _grpcurl(maestro_up.address, "describe", "maestro.v1.RouteService")
    assert described.returncode == 0, described.stderr
    assert "service RouteService {" in described.stdout
    assert "rpc Choose" in described.stdout
    assert "// " in described.stdout  # comments travel with the descriptors


def test_health_check_answers_serving(maestro_up: UpProcess) -> None:
    checked = _grpcurl("-d", '{"service": ""}', maestro_up.address, "grpc.health.v1.Health/Check")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"status": "SERVING"}


def test_grpcurl_request_with_a_key_reads_the_demo_project(maestro_up: UpProcess) -> None:
    got = _grpcurl(
        "-H",
        f"x-api-key: {maestro_up.api_key}",
        "-d",
        '{"name": "projects/demo"}',
        maestro_up.address,
        "maestro.v1.ProjectService/GetProject",
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["project"]["name"] == "projects/demo"


def test_grpcurl_without_a_key_is_unauthenticated(maestro_up: UpProcess) -> None:
    got = _grpcurl(
        "-d",
        '{"name": "projects/demo"}',
        maestro_up.address,
        "maestro.v1.ProjectService/GetProject",
    )
    assert got.returncode != 0
    assert "Code: Unauthenticated" in got.stderr


def test_grpcurl_malformed_request_gets_field_violations_and_server_keeps_serving(
    maestro_up: UpProcess,
) -> None:
    bad = _grpcurl(
        "-H",
        f"x-api-key: {maestro_up.api_key}",
        "-d",
        '{"name": "demo", "pageSize": 3}',
        maestro_up.address,
        "maestro.v1.ProjectService/GetProject",
    )
    assert bad.returncode != 0
    assert "pageSize" in bad.stderr  # grpcurl rejects the unknown field before sending
    bad = _grpcurl(
        "-H",
        f"x-api-key: {maestro_up.api_key}",
        "-d",
        '{"name": "demo"}',
        maestro_up.address,
        "maestro.v1.ProjectService/GetProject",
    )
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr
    assert "google.rpc.BadRequest" in bad.stderr
    assert '"field":"name"' in bad.stderr
    checked = _grpcurl("-d", '{"service": ""}', maestro_up.address, "grpc.health.v1.Health/Check")
    assert json.loads(checked.stdout) == {"status": "SERVING"}
    assert maestro_up.process.poll() is None


def test_openai_client_streams_a_chat_completion_through_maestro_up(
    maestro_up: UpProcess,
) -> None:
    client = openai.OpenAI(
        base_url=maestro_up.openai_base_url, api_key=maestro_up.api_key, max_retries=0
    )
    with client:
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Summarise the quarterly numbers."}],
            stream=True,
            max_tokens=12,
            stream_options={"include_usage": True},
        )
        texts, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
    assert "".join(texts).strip()
    assert usage is not None
    assert usage.completion_tokens == 12


def _readme_route_choose_command() -> str:
    """The README's `curl ... /route/choose` example, as one shell command."""
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(
        r"```bash\n(curl -s -X POST http://127\.0\.0\.1:8080/route/choose.*?)```", readme, re.S
    )
    return str(block).replace("\\\n", " ").strip()


def test_readmes_route_choose_curl_answers_the_seed_fields_and_cost_changes_the_winner(
    maestro_up: UpProcess, tmp_path: Path
) -> None:
    command = _readme_route_choose_command().replace(
        "http://127.0.0.1:8080", maestro_up.openai_base_url.removesuffix("/v1")
    )
    answers = {}
    for objectives in ("quality", "cost"):
        run = subprocess.run(
            command.replace("X-Maestro-Objectives: quality", f"X-Maestro-Objectives: {objectives}"),
            shell=True,
            cwd=tmp_path,  # where `maestro up` wrote .maestro/demo-api-key
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        answers[objectives] = json.loads(run.stdout)
    for answer in answers.values():
        assert {"model", "provider", "rationale", "costs", "SLO_forecast"} <= set(answer)
        assert answer["decision"]["candidates"]
    assert answers["quality"]["model"] == "gpt-4o"
    assert answers["cost"]["model"] == "ig-local-70b"


def test_maestro_data_plane_follows_maestro_up_and_streams(maestro_up: UpProcess) -> None:
    env = {**os.environ, "MAESTRO_API_KEY": maestro_up.api_key}
    command = [
        str(BIN / "maestro"),
        "data-plane",
        "--control-plane",
        maestro_up.address,
        "--port",
        "0",
        "--http-port",
        "0",
        "--simulated-provider",
    ]
    with subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as data_plane:
        try:
            ready = wait_ready(data_plane)
            assert data_plane.stderr is not None
            threading.Thread(target=data_plane.stderr.read, daemon=True).start()
            for _ in range(100):  # bounded: ready once the first snapshot arrived
                checked = _grpcurl(
                    "-d", '{"service": "maestro.v1.InferenceService"}', ready["address"],
                    "grpc.health.v1.Health/Check",
                )  # fmt: skip
                if "SERVING" in checked.stdout and "NOT_SERVING" not in checked.stdout:
                    break
                time.sleep(0.1)
            client = openai.OpenAI(
                base_url=ready["openai_base_url"], api_key=maestro_up.api_key, max_retries=0
            )
            with client:
                answer = client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=6
                )
        finally:
            data_plane.send_signal(signal.SIGTERM)
            exit_code = data_plane.wait(timeout=60)
    assert json.loads(checked.stdout) == {"status": "SERVING"}
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    assert exit_code == 0


def test_grpcurl_streams_a_chat_completion_through_maestro_up(maestro_up: UpProcess) -> None:
    request = {
        "parent": "projects/demo",
        "model": "gpt-4o",
        "messages": [{"role": "CHAT_ROLE_USER", "content": "my card is 4111 1111 1111 1111"}],
        "maxTokens": 8,
    }
    streamed = _grpcurl(
        "-H",
        f"x-api-key: {maestro_up.api_key}",
        "-d",
        json.dumps(request),
        maestro_up.address,
        "maestro.v1.InferenceService/StreamChatCompletion",
    )
    assert streamed.returncode == 0, streamed.stderr
    events = [json.loads(part) for part in _json_objects(streamed.stdout)]
    assert "routed" in events[0]
    # The card number is PII: the seed policy keeps the step in house.
    assert events[0]["routed"]["deployment"]["modelGroup"] == "ig-local-70b"
    assert events[-1]["done"]["usage"]["completionTokens"] == "8"
    assert any(e.get("delta", {}).get("text") for e in events)


def _json_objects(text: str) -> list[str]:
    """grpcurl prints one pretty JSON object per message; split them."""
    decoder, index, out = json.JSONDecoder(), 0, []
    text = text.strip()
    while index < len(text):
        _, end = decoder.raw_decode(text, index)
        out.append(text[index:end])
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return out


def test_sigterm_during_open_stream_ends_it_cleanly_and_exits_zero(maestro_up: UpProcess) -> None:
    watcher = subprocess.Popen(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-d",
            '{"service": ""}',
            maestro_up.address,
            "grpc.health.v1.Health/Watch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = ""
    while "}" not in first:
        first += watcher.stdout.readline()
    assert json.loads(first) == {"status": "SERVING"}
    maestro_up.process.send_signal(signal.SIGTERM)
    server_exit = maestro_up.process.wait(timeout=60)
    rest, errors = watcher.communicate(timeout=60)
    assert server_exit == 0
    # A stream still open when the grace period ran out would have been cancelled, and grpcurl
    # would exit non-zero: a clean OK end means it ended within the grace period by itself.
    assert watcher.returncode == 0, errors
    assert json.loads(rest) == {"status": "NOT_SERVING"}


RECIPE_INPUTS: dict[str, dict[str, Any]] = {
    "planner-executor": {"question": "How do leases work?", "max_steps": 2},
    "debate": {"motion": "Tabs over spaces", "max_rounds": 1},
    "critique-improve": {"task": "Explain crash-safe resume."},
    "toolformer": {"question": "What do gates do?", "max_turns": 2},
}


def test_builtin_recipes_run_end_to_end_on_maestro_up_and_match_their_diagrams(
    maestro_up: UpProcess,
) -> None:
    from maestro.clients import MaestroClient
    from maestro.v1 import graph_service_pb2 as gpb
    from maestro.v1 import project_service_pb2 as ppb
    from tests.graph_support import struct

    final = {gpb.Run.STATE_SUCCEEDED, gpb.Run.STATE_FAILED, gpb.Run.STATE_BLOCKED}
    with MaestroClient(maestro_up.address, api_key=maestro_up.api_key, timeout_s=20) as client:
        reviewer_key = client.projects.CreateApiKey(  # gates need someone else than the starter
            ppb.CreateApiKeyRequest(
                parent="projects/demo",
                api_key=ppb.ApiKey(scopes=["approver"], principal="reviewer@example.com"),
            )
        ).secret
        reviewer = MaestroClient(maestro_up.address, api_key=reviewer_key, timeout_s=20)
        runs = {
            recipe: client.graphs.CreateRun(
                gpb.CreateRunRequest(
                    parent="projects/demo",
                    run=gpb.Run(
                        recipe=f"projects/builtin/recipes/{recipe}", input_state=struct(state)
                    ),
                )
            ).run.name
            for recipe, state in RECIPE_INPUTS.items()
        }
        done: dict[str, gpb.Run] = {}
        deadline = time.monotonic() + 60
        while len(done) < len(runs) and time.monotonic() < deadline:
            for recipe, name in runs.items():
                run = client.graphs.GetRun(gpb.GetRunRequest(name=name)).run
                for gate in run.open_gates:  # the debate's human confirms the verdict
                    reviewer.graphs.SubmitGateDecision(
                        gpb.SubmitGateDecisionRequest(name=gate, verdict=gpb.GATE_VERDICT_APPROVE)
                    )
                if run.state in final:
                    done[recipe] = run
            time.sleep(0.1)
        for recipe, run in done.items():
            assert run.state == gpb.Run.STATE_SUCCEEDED, (recipe, run.state_reason)
            events = client.graphs.ListRunEvents(
                gpb.ListRunEventsRequest(parent=run.name, page_size=1000)
            ).events
            path = (
                ["__start__"]
                + [e.node_id for e in events if e.WhichOneof("payload") == "node_finished"]
                + ["__end__"]
            )
            diagram = client.graphs.ExportRecipeDiagram(
                gpb.ExportRecipeDiagramRequest(name=f"projects/builtin/recipes/{recipe}")
            ).mermaid
            for source, target in itertools.pairwise(path):  # every step taken is drawn
                assert re.search(
                    rf"^\s+{source} --(?:>|>\|[^|]*\|) {target}$", diagram, re.MULTILINE
                ), (recipe, source, target)
    assert set(done) == set(runs)
