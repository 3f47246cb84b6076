"""A hostile tenant against a real `maestro up`: each attack is refused with the right status,
and the victim project's state (config, breakers, signals, runs, gates, keys, kill switch) and
the operator's global layer are as they were.

One `maestro up` process serves the module: the operator (the demo key, with `operator`) owns
a global layer; `victim` is a tenant with its own config and a run waiting at an L4 gate;
`mallory` is the attacker, with a project admin key of its own. The operator lets `mallory`
name loopback endpoints (as an operator might for a tenant's own services) but no secret and no
trusted facts. The server's environment holds secrets a successful attack would leak.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import yaml
from google.protobuf import json_format

from maestro.clients import MaestroClient, MaestroRpcError
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import project_service_pb2 as ppb
from maestro.v1 import route_service_pb2 as rpb
from tests.process_support import BIN, demo_config, maestro_process

SECRETS = {
    "MAESTRO_TEST_SECRET": "tenant-attack-" + secrets.token_hex(8),
    "ANTHROPIC_API_KEY": "sk-ant-" + secrets.token_hex(8),
    "OPENAI_API_KEY": "sk-openai-" + secrets.token_hex(8),
}
LEAK_MARKER = "internal-db-password-" + secrets.token_hex(4)
GLOBAL_YAML = """
model_list:
  - model_name: ops-gpt
    litellm_params: {model: openai/gpt-4o-mini}
    model_info: {id: ops-gpt-a}
  - model_name: ops-local
    litellm_params: {model: vllm/Meta-Llama-3.1-8B-Instruct}
    model_info: {id: ops-local-a}
policies:
  content_tags:
    pii: [ops-local]
"""
VICTIM_YAML = """
model_list:
  - model_name: victim-llm
    litellm_params: {model: openai/gpt-4o}
    model_info: {id: shared-id}
"""
GATED_L4 = """
autonomy: L4
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: __end__}
"""
PII = "Reach me at jane.doe@example.com about the contract."


@dataclass
class Recorder:
    """A local HTTP server that records every request and answers with an error page that
    holds something secret (what an internal service's error page might)."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def seen_secrets(self) -> list[str]:
        dump = json.dumps(self.requests)
        return [name for name, value in SECRETS.items() if value in dump]


@dataclass
class Up:
    address: str
    http_base: str
    operator_key: str
    victim_key: str
    mallory_key: str
    idle_key: str
    """Another project of the attacker's, with no config: it routes with the global snapshot."""
    recorder: Recorder
    victim_run: str = ""
    victim_gate: str = ""

    def client(self, key: str) -> MaestroClient:
        return MaestroClient(self.address, api_key=key, timeout_s=20)


def _start_recorder() -> tuple[Recorder, ThreadingHTTPServer]:
    recorder = Recorder("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            recorder.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body.decode("latin-1")}
            )
            payload = json.dumps({"error": {"message": f"db down: {LEAK_MARKER}"}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return recorder, server


def _admin(args: list[str], cwd: Path, config: Path) -> str:
    out = subprocess.run(
        [str(BIN / "maestro"), "admin", *args, "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("api key"))


def _apply(client: MaestroClient, project: str, config_yaml: str) -> rpb.ApplyConfigResponse:
    return client.routes.ApplyConfig(
        rpb.ApplyConfigRequest(
            route_config=rpb.RouteConfig(name=f"{project}/routeConfig", config_yaml=config_yaml)
        )
    )


def _refused(call: Any, *args: Any) -> MaestroRpcError:
    with pytest.raises(MaestroRpcError) as caught:
        call(*args)
    return caught.value


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    folder = tmp_path_factory.mktemp("attacks")
    config = yaml.safe_load(demo_config(folder).read_text())
    config["routing"]["tenant_endpoints"] = {"mallory": [{"api_base": "http://127.0.0.1"}]}
    config["data_plane"] |= {"breaker_min_calls": 4, "breaker_window": 4, "breaker_open_s": 600}
    # The victim's L4 run needs no autonomy promotion here: the attacks are on its gate.
    config["graph"] = {**config.get("graph", {}), "autonomy_gate": False}
    path = folder / "maestro.yaml"
    path.write_text(yaml.safe_dump(config))
    victim_key = _admin(["create-project", "victim", "--principal", "vic@corp"], folder, path)
    mallory_key = _admin(["create-project", "mallory", "--principal", "mal@evil"], folder, path)
    idle_key = _admin(["create-project", "mallory-idle"], folder, path)
    recorder, http = _start_recorder()
    env = {**os.environ, **SECRETS, "MAESTRO_SERVER__GRACE_PERIOD_S": "1"}
    args = ["up", "--config", str(path), "--port", "0", "--http-port", "0"]
    try:
        with maestro_process(args, folder, env) as (ready, _process):
            operator_key = (folder / ".maestro" / "demo-api-key").read_text().strip()
            state = Up(
                ready["address"],
                ready["openai_base_url"],
                operator_key,
                victim_key,
                mallory_key,
                idle_key,
                recorder,
            )
            _set_up_victim(state)
            yield state
    finally:
        http.shutdown()
        http.server_close()


def _set_up_victim(up: Up) -> None:
    with up.client(up.operator_key) as operator:
        _apply(operator, "projects/global", GLOBAL_YAML)
    with up.client(up.victim_key) as victim:
        _apply(victim, "projects/victim", VICTIM_YAML)
        recipe = victim.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent="projects/victim", recipe_id="ship", recipe=gpb.Recipe(source_yaml=GATED_L4)
            )
        ).recipe.name
        run = victim.graphs.CreateRun(
            gpb.CreateRunRequest(parent="projects/victim", run=gpb.Run(recipe=recipe))
        ).run
        deadline = time.monotonic() + 30
        while not run.open_gates and time.monotonic() < deadline:
            time.sleep(0.05)
            run = victim.graphs.GetRun(gpb.GetRunRequest(name=run.name)).run
        up.victim_run, up.victim_gate = run.name, run.open_gates[0]


def _victim_state(up: Up) -> dict[str, Any]:
    """Everything of the victim's (and the operator's) an attack must not change."""
    with up.client(up.victim_key) as victim, up.client(up.operator_key) as operator:
        config = victim.routes.GetConfig(rpb.GetConfigRequest(name="projects/victim/routeConfig"))
        signals = victim.routes.ListDeploymentSignals(
            rpb.ListDeploymentSignalsRequest(parent="projects/victim")
        )
        runs = victim.graphs.ListRuns(gpb.ListRunsRequest(parent="projects/victim"))
        gates = victim.graphs.ListGates(gpb.ListGatesRequest(parent="projects/victim/runs/-"))
        keys = victim.projects.ListApiKeys(ppb.ListApiKeysRequest(parent="projects/victim"))
        switch = victim.graphs.GetKillSwitch(
            gpb.GetKillSwitchRequest(name="projects/victim/killSwitch")
        )
        global_config = operator.routes.GetConfig(
            rpb.GetConfigRequest(name="projects/global/routeConfig")
        )
        explained = victim.routes.ExplainRoute(
            rpb.ExplainRouteRequest(
                request=rpb.ChooseRequest(parent="projects/victim", model="victim-llm")
            )
        )
    return {
        "config": (config.route_config.revision_id, config.route_config.config_yaml),
        "global": global_config.route_config.revision_id,
        # Rates and counts slide with the window; what an attack could move is health.
        "signals": [
            (
                s.deployment.deployment_id,
                s.breaker_state == common_pb2.CIRCUIT_BREAKER_STATE_OPEN,
                s.error_rate,
            )
            for s in signals.deployment_signals
        ],
        "runs": [(r.name, r.state, r.update_time.ToNanoseconds()) for r in runs.runs],
        "gates": [json_format.MessageToDict(g) for g in gates.gates],
        "keys": sorted(k.name for k in keys.api_keys),
        "switch": switch.kill_switch.engaged,
        "decision": [
            (c.deployment.deployment_id, c.exclusion_reason, c.objective_scores.reliability)
            for c in explained.decision.candidates
        ],
    }


@pytest.fixture
def victim_unchanged(up: Up) -> Iterator[None]:
    before = _victim_state(up)
    yield
    assert _victim_state(up) == before


pytestmark = pytest.mark.usefixtures("victim_unchanged")


# -- operator-owned providers and secrets ---------------------------------------------------------


def test_secret_reference_to_an_own_endpoint_is_refused_and_nothing_is_sent(up: Up) -> None:
    attack = f"""
model_list:
  - model_name: exfil
    litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}",
                      api_key: os.environ/MAESTRO_TEST_SECRET}}
"""
    with up.client(up.mallory_key) as mallory:
        refused = _refused(_apply, mallory, "projects/mallory", attack)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("api_base" in v.field for v in refused.field_violations)
    assert up.recorder.seen_secrets() == []


def test_a_tenant_endpoint_without_a_key_never_gets_the_servers_provider_keys(up: Up) -> None:
    """LiteLLM fills in a provider's key from the environment when given none; the native client
    sends none. Both are called here, against the recorder."""
    attack = f"""
model_list:
  - model_name: via-litellm
    litellm_params: {{model: anthropic/claude-3-5-sonnet-20240620, api_base: "{up.recorder.url}"}}
    model_info: {{id: lite, client: litellm}}
  - model_name: via-native
    litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}"}}
    model_info: {{id: native}}
"""
    with up.client(up.mallory_key) as mallory:
        _apply(mallory, "projects/mallory", attack)
        for model in ("via-litellm", "via-native"):
            _refused(_chat, mallory, "projects/mallory", model, "hello")
    assert len(up.recorder.requests) >= 2  # the calls reached the tenant's endpoint
    assert up.recorder.seen_secrets() == []


def test_provider_error_text_reaches_the_caller_only_as_a_correlation_id(up: Up) -> None:
    attack = f"""
model_list:
  - model_name: probe
    litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}"}}
"""
    with up.client(up.mallory_key) as mallory:
        _apply(mallory, "projects/mallory", attack)
        failed = _refused(_chat, mallory, "projects/mallory", "probe", "hello")
        streamed = []  # fallbacks carry a detail too
        with contextlib.suppress(MaestroRpcError):
            for event in mallory.inference.StreamChatCompletion(
                ipb.StreamChatCompletionRequest(
                    parent="projects/mallory",
                    model="probe",
                    messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")],
                )
            ):
                streamed.append(str(event))
    with (
        openai.OpenAI(base_url=up.http_base, api_key=up.mallory_key, max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as over_http,
    ):
        client.chat.completions.create(
            model="probe", messages=[{"role": "user", "content": "hello"}]
        )
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert LEAK_MARKER not in str(failed)
    assert LEAK_MARKER not in over_http.value.message
    assert "correlation id" in failed.details()
    assert up.recorder.requests  # the provider was called and answered its error page
    assert not [e for e in streamed if LEAK_MARKER in e]


def test_a_tenant_cannot_name_an_endpoint_outside_its_allowlist(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        refused = [
            _refused_entry(
                mallory, "x", f'litellm_params: {{model: openai/gpt-4o, api_base: "{base}"}}'
            )
            for base in (
                "http://10.1.2.3/v1",
                "http://127.0.0.1.evil.example/v1",
                "http://user@127.0.0.1/v1",
                "https://127.0.0.1/v1",
            )
        ]
    assert {r.code() for r in refused} == {grpc.StatusCode.INVALID_ARGUMENT}


# -- per-tenant state -----------------------------------------------------------------------------


def test_a_tenant_cannot_take_an_operator_deployments_id(up: Up) -> None:
    attack = """
model_list:
  - model_name: mine
    litellm_params: {model: openai/gpt-4o}
    model_info: {id: ops-gpt-a}
"""
    with up.client(up.mallory_key) as mallory:
        refused = _refused(_apply, mallory, "projects/mallory", attack)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any("model_info.id" in v.field for v in refused.field_violations)


def test_a_tenant_cannot_add_a_deployment_to_an_operator_group(up: Up) -> None:
    attack = f"""
model_list:
  - model_name: ops-local
    litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}"}}
"""
    with up.client(up.mallory_key) as mallory:
        refused = _refused(_apply, mallory, "projects/mallory", attack)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(v.field.endswith("model_name") for v in refused.field_violations)


def test_failing_calls_under_another_tenants_deployment_id_leave_its_breaker_closed(
    up: Up,
) -> None:
    """Mallory names its dead endpoint with the victim's deployment id and fails on it until its
    own breaker opens; the victim's deployment of that id stays routable."""
    attack = """
model_list:
  - model_name: dead
    litellm_params: {model: openai/gpt-4o, api_base: "http://127.0.0.1:9/v1"}
    model_info: {id: shared-id}
"""
    with up.client(up.mallory_key) as mallory:
        _apply(mallory, "projects/mallory", attack)
        for _ in range(6):
            _refused(_chat, mallory, "projects/mallory", "dead", "hello")
        explained = mallory.routes.ExplainRoute(
            rpb.ExplainRouteRequest(request=rpb.ChooseRequest(parent="projects/mallory"))
        )
    [own] = [c for c in explained.decision.candidates if c.deployment.deployment_id == "shared-id"]
    assert own.exclusion_reason == rpb.ROUTE_EXCLUSION_REASON_BREAKER_OPEN  # mallory's opened
    # ...and the victim's decision (checked by `victim_unchanged`) still has `shared-id` eligible.


def test_observations_from_a_project_without_config_leave_the_global_signals(up: Up) -> None:
    bystander_before = _global_reliability(up)
    observation = rpb.DeploymentObservation(
        deployment_id="ops-gpt-a",
        project="projects/mallory-idle",
        request_count=1000,
        error_counts={"PROVIDER_ERROR": 1000},
    )
    now = time.time()
    observation.start_time.FromSeconds(int(now) - 10)
    observation.end_time.FromSeconds(int(now))
    with up.client(up.idle_key) as idle:
        list(
            idle.routes.ReportObservations(
                iter(
                    [
                        rpb.ReportObservationsRequest(
                            node_id="n", batch_id="b1", observations=[observation]
                        )
                    ]
                )
            )
        )
    assert _global_reliability(up) == bystander_before


def test_observations_naming_another_project_are_refused(up: Up) -> None:
    observation = rpb.DeploymentObservation(
        deployment_id="shared-id", project="projects/victim", request_count=1000
    )
    now = time.time()
    observation.start_time.FromSeconds(int(now) - 10)
    observation.end_time.FromSeconds(int(now))
    request = rpb.ReportObservationsRequest(node_id="n", batch_id="b", observations=[observation])
    with up.client(up.mallory_key) as mallory:
        refused = _refused(lambda: list(mallory.routes.ReportObservations(iter([request]))))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


# -- roles ----------------------------------------------------------------------------------------


def test_an_inference_key_cannot_apply_config_release_a_kill_switch_or_mint_keys(
    up: Up,
) -> None:
    with up.client(up.mallory_key) as mallory:
        inference_key = _mint(mallory, ["inference"], "")
    with up.client(inference_key) as weak:
        refused = [
            _refused(_apply, weak, "projects/mallory", VICTIM_YAML),
            _refused(
                weak.graphs.SetKillSwitch,
                gpb.SetKillSwitchRequest(
                    name="projects/mallory/killSwitch", engaged=False, reason="release"
                ),
            ),
            _refused(
                weak.projects.CreateApiKey,
                ppb.CreateApiKeyRequest(parent="projects/mallory", api_key=ppb.ApiKey()),
            ),
        ]
    assert [r.code() for r in refused] == [grpc.StatusCode.PERMISSION_DENIED] * 3
    assert {r.reason for r in refused} == {"SCOPE_MISSING"}


def test_a_key_cannot_grant_a_scope_it_does_not_have(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        refused = _refused(_mint, mallory, ["operator"], "")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "SCOPE_ESCALATION"


def test_a_tenant_cannot_change_the_global_layer(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        refused = _refused(_apply, mallory, "projects/global", GLOBAL_YAML)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_tenant_cannot_engage_the_global_kill_switch(up: Up) -> None:
    request = gpb.SetKillSwitchRequest(
        name="projects/global/killSwitch", engaged=True, reason="chaos"
    )
    with up.client(up.mallory_key) as mallory:
        refused = _refused(mallory.graphs.SetKillSwitch, request)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_tenant_cannot_read_or_decide_another_projects_runs_gates_or_keys(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        refused = [
            _refused(mallory.graphs.GetRun, gpb.GetRunRequest(name=up.victim_run)),
            _refused(
                mallory.graphs.SubmitGateDecision,
                gpb.SubmitGateDecisionRequest(
                    name=up.victim_gate, verdict=gpb.GATE_VERDICT_APPROVE
                ),
            ),
            _refused(
                mallory.projects.ListApiKeys, ppb.ListApiKeysRequest(parent="projects/victim")
            ),
            _refused(
                mallory.routes.GetConfig, rpb.GetConfigRequest(name="projects/victim/routeConfig")
            ),
        ]
    assert [r.code() for r in refused] == [grpc.StatusCode.PERMISSION_DENIED] * 4


# -- dual control ---------------------------------------------------------------------------------


def test_two_keys_of_one_principal_cannot_complete_an_l4_approval(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        gate = _waiting_gate(mallory)
        keys = [_mint(mallory, ["approver"], "sock-puppet@evil") for _ in range(2)]
        decisions = []
        for key in keys:
            with up.client(key) as approver:
                decisions.append(
                    approver.graphs.SubmitGateDecision(
                        gpb.SubmitGateDecisionRequest(name=gate, verdict=gpb.GATE_VERDICT_APPROVE)
                    )
                )
    assert [d.decision.counted for d in decisions] == [True, False]
    assert decisions[-1].gate.state == gpb.Gate.STATE_OPEN


def test_the_runs_creator_cannot_approve_its_own_gate(up: Up) -> None:
    with up.client(up.mallory_key) as mallory:
        gate = _waiting_gate(mallory)
        refused = _refused(
            mallory.graphs.SubmitGateDecision,
            gpb.SubmitGateDecisionRequest(name=gate, verdict=gpb.GATE_VERDICT_APPROVE),
        )
        after = mallory.graphs.GetGate(gpb.GetGateRequest(name=gate)).gate
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "SELF_APPROVAL"
    assert after.state == gpb.Gate.STATE_OPEN
    assert not after.decisions


# -- guardrails -----------------------------------------------------------------------------------


def test_a_tenant_layer_cannot_lift_the_global_content_confinement(up: Up) -> None:
    layer = """
model_list:
  - model_name: hosted
    litellm_params: {model: openai/gpt-4o}
policies:
  content_tags: {}
"""
    widening = layer.replace("content_tags: {}", "content_tags: {pii: [hosted, ops-gpt]}")
    with up.client(up.mallory_key) as mallory:
        chosen = []
        for config in (layer, widening):
            _apply(mallory, "projects/mallory", config)
            try:
                decision = mallory.routes.Choose(
                    rpb.ChooseRequest(
                        parent="projects/mallory",
                        messages=[
                            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=PII)
                        ],
                    )
                ).decision
                chosen.append(decision.deployment.model_group)
            except MaestroRpcError as error:  # confined to nothing: refused, not widened
                chosen.append(error.code().name)
    assert chosen[0] == "ops-local"
    assert chosen[1] == "FAILED_PRECONDITION"


def test_a_tenant_claim_of_in_house_facts_is_refused(up: Up) -> None:
    claims = [
        f'litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}"}}\n'
        "    model_info: {in_house: true}",
        f'litellm_params: {{model: openai/gpt-4o, api_base: "{up.recorder.url}"}}\n'
        "    model_info: {jurisdiction: eu}",
        f'litellm_params: {{model: hosted_vllm/llama, api_base: "{up.recorder.url}"}}',
    ]
    with up.client(up.mallory_key) as mallory:
        refused = [_refused_entry(mallory, "fake-local", claim) for claim in claims]
    assert {r.code() for r in refused} == {grpc.StatusCode.INVALID_ARGUMENT}


def test_a_recipe_cannot_declare_a_side_effecting_tool_harmless(up: Up) -> None:
    recipe = """
autonomy: L2
tools:
  - {name: create_ticket, side_effects: false, parameters: {type: object}}
nodes:
  - {id: file, kind: tool, tool: create_ticket}
edges:
  - {from: __start__, to: file}
  - {from: file, to: __end__}
"""
    with up.client(up.mallory_key) as mallory:
        name = _recipe(mallory, "sneaky", recipe)
        run = mallory.graphs.CreateRun(
            gpb.CreateRunRequest(parent="projects/mallory", run=gpb.Run(recipe=name))
        ).run
        run = _wait(
            mallory, run.name, {gpb.Run.STATE_WAITING_FOR_APPROVAL, gpb.Run.STATE_SUCCEEDED}
        )
    assert run.state == gpb.Run.STATE_WAITING_FOR_APPROVAL  # the tool waits for a human


def test_a_run_budget_cannot_exceed_or_unlimit_the_recipes(up: Up) -> None:
    capped = GATED_L4 + "budget: {max_tokens: 100}\n"
    with up.client(up.mallory_key) as mallory:
        name = _recipe(mallory, "capped", capped)
        refused = [
            _refused(
                mallory.graphs.CreateRun,
                gpb.CreateRunRequest(
                    parent="projects/mallory",
                    run=gpb.Run(recipe=name, budget=common_pb2.Budget(max_tokens=tokens)),
                ),
            )
            for tokens in (1_000_000, 0)
        ]
    assert [r.code() for r in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert all(v.field == "run.budget.max_tokens" for r in refused for v in r.field_violations)


# -- helpers --------------------------------------------------------------------------------------


def _chat(client: MaestroClient, parent: str, model: str, text: str) -> Any:
    return client.inference.CreateChatCompletion(
        ipb.CreateChatCompletionRequest(
            parent=parent,
            model=model,
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=text)],
            max_tokens=8,
        )
    )


def _refused_entry(client: MaestroClient, model_name: str, body: str) -> MaestroRpcError:
    """Mallory applies a config of one entry: `model_name` and `body` (its other keys)."""
    config = f"model_list:\n  - model_name: {model_name}\n    {body}\n"
    return _refused(_apply, client, "projects/mallory", config)


def _mint(client: MaestroClient, scopes: list[str], principal: str) -> str:
    created = client.projects.CreateApiKey(
        ppb.CreateApiKeyRequest(
            parent="projects/mallory", api_key=ppb.ApiKey(scopes=scopes, principal=principal)
        )
    )
    return str(created.secret)


def _recipe(client: MaestroClient, recipe_id: str, source: str) -> str:
    name = f"projects/mallory/recipes/{recipe_id}"
    try:
        return str(client.graphs.GetRecipe(gpb.GetRecipeRequest(name=name)).recipe.name)
    except MaestroRpcError:
        return str(
            client.graphs.CreateRecipe(
                gpb.CreateRecipeRequest(
                    parent="projects/mallory",
                    recipe_id=recipe_id,
                    recipe=gpb.Recipe(source_yaml=source),
                )
            ).recipe.name
        )


def _wait(client: MaestroClient, name: str, states: set[int]) -> gpb.Run:
    deadline = time.monotonic() + 30
    run = client.graphs.GetRun(gpb.GetRunRequest(name=name)).run
    while run.state not in states and time.monotonic() < deadline:
        time.sleep(0.05)
        run = client.graphs.GetRun(gpb.GetRunRequest(name=name)).run
    return run


def _waiting_gate(client: MaestroClient) -> str:
    _apply(client, "projects/mallory", VICTIM_YAML.replace("victim-llm", "mallory-llm"))
    name = _recipe(client, "ship", GATED_L4)
    run = client.graphs.CreateRun(
        gpb.CreateRunRequest(parent="projects/mallory", run=gpb.Run(recipe=name))
    ).run
    run = _wait(client, run.name, {gpb.Run.STATE_WAITING_FOR_APPROVAL})
    return str(run.open_gates[0])


def _global_reliability(up: Up) -> list[tuple[str, float]]:
    """How a project without config sees the operator's deployments."""
    with up.client(up.idle_key) as idle:
        explained = idle.routes.ExplainRoute(
            rpb.ExplainRouteRequest(
                request=rpb.ChooseRequest(parent="projects/mallory-idle", model="ops-gpt")
            )
        )
    return [
        (c.deployment.deployment_id, c.objective_scores.reliability)
        for c in explained.decision.candidates
    ]
