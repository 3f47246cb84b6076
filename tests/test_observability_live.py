"""The observability pack against a running Maestro: every metric, and every label on it, that
the dashboards (deploy/observability/grafana/*.json) and the Prometheus rules
(deploy/observability/prometheus/maestro-*.yaml) query is in the scrape of a `maestro up` that
has seen the traffic they describe.

One `maestro up` (the demo config, on free ports) is driven through what the panels show:
chat completions over the OpenAI-compatible ingress, streamed and not, on every model group of
deploy/router/litellm.yaml; a PII prompt that policy keeps in house; an unknown model; the
simulated provider answering 429 and 500 (fallbacks, an open breaker that later closes, calls
that fail everywhere); a burst past `data_plane.max_inflight_calls` (shed calls); graph runs
(a gate approved by a person, a node that times out and retries, a node interrupted by the kill
switch and replayed); an eval run through `maestro eval`; and a rollout that holds its canary
after an inconclusive analysis. Then /metrics is read once, and each pack file's (metric,
labels) pairs (deploy/observability/queries.py) are looked up in it.

Only the serving lane (Ray Serve + vLLM, not started by `maestro up`) exports the
`maestro_lane_*` gauges: LANE_ONLY lists them, and they are checked apart (the lane's own tests
start a lane).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from google.protobuf import struct_pb2
from openai.types.chat import ChatCompletionMessageParam

from deploy.observability.queries import (
    LANE_ONLY,
    RULE_FILES,
    Use,
    dashboard_files,
    histogram_base,
    missing_uses,
    pack_uses,
)
from maestro.clients import MaestroClient
from maestro.v1 import graph_service_pb2 as gpb
from maestro.v1 import project_service_pb2 as ppb
from maestro.v1 import rollout_service_pb2 as rpb
from tests.eval_support import jsonl, task_rows
from tests.process_support import BIN, demo_config
from tests.rollout_support import error_budget, rollout, weight

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PROJECT = "projects/demo"
MODELS = ("gpt-4o", "sonnet-3.7", "ig-local-70b")
"""The model groups of deploy/router/litellm.yaml."""
MAX_INFLIGHT = 8
SOURCES = [p.name for p in dashboard_files()] + [p.name for p in RULE_FILES]

GATED = """
autonomy: L2
nodes:
  - {id: draft, kind: model, model: gpt-4o, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
  - {id: publish, kind: model, model: gpt-4o, max_tokens: 8}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: publish, when: state.gate.decision == "approve"}
  - {from: review, to: __end__}
  - {from: publish, to: __end__}
"""
RETRYING = """
autonomy: L2
nodes:
  - {id: hurried, kind: model, max_tokens: 8, timeout_s: 0.001,
     retries: {max_attempts: 2, backoff_s: 0}}
edges:
  - {from: __start__, to: hurried}
  - {from: hurried, to: __end__}
"""
SLOW = """
autonomy: L2
nodes:
  - {id: slow, kind: model, model: sonnet-3.7, max_tokens: 4}
edges:
  - {from: __start__, to: slow}
  - {from: slow, to: __end__}
"""
PROMPT = """messages:
  - role: system
    content: "You answer questions about {{{{ product }}}}. {marker}"
variables:
  product: {{description: The product asked about}}
"""
SUITE = """suite: live_metrics_v1
datasets: [tasks/core.jsonl]
metrics: [exact_match, cost_per_task]
repetitions: 1
"""
FINAL_RUN_STATES = frozenset(
    {
        gpb.Run.STATE_SUCCEEDED,
        gpb.Run.STATE_FAILED,
        gpb.Run.STATE_CANCELLED,
        gpb.Run.STATE_BLOCKED,
    }
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Up:
    address: str
    openai_base_url: str
    simulator_url: str
    api_key: str
    metrics_url: str
    folder: Path


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def _put_json(url: str, data: object) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(data).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.read()


def _wait(what: str, done: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _maestro_up(folder: Path) -> Iterator[Up]:
    """`maestro up` with the demo config in `folder`, on free ports, until the block ends."""
    metrics_port = _free_port()
    env = {
        **os.environ,
        "MAESTRO_SERVER__GRACE_PERIOD_S": "2",
        "MAESTRO_TELEMETRY__METRICS_PORT": str(metrics_port),
        "MAESTRO_DATA_PLANE__MAX_INFLIGHT_CALLS": str(MAX_INFLIGHT),
        "MAESTRO_DATA_PLANE__BREAKER_OPEN_S": "1",
        "MAESTRO_ROLLOUTS__MAX_ANALYSIS_WAIT_S": "1",
        "MAESTRO_ROLLOUTS__MEASURE_INTERVAL_S": "0.2",
    }
    args = ["up", "--config", str(demo_config(folder)), "--port", "0", "--http-port", "0"]
    with subprocess.Popen(
        [str(BIN / "maestro"), *args],
        cwd=folder,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stderr is not None
            events: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 90
            while "server.ready" not in events:
                line = process.stderr.readline()
                if not line:
                    raise AssertionError(f"maestro up exited early with {process.wait()}")
                if line.startswith("{"):
                    event = json.loads(line)
                    events.setdefault(str(event.get("event")), event)
                if time.monotonic() > deadline:
                    raise AssertionError("maestro up did not report server.ready in time")
            # Keep reading the log so the server never blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            ready = events["server.ready"]
            yield Up(
                address=ready["address"],
                openai_base_url=ready["openai_base_url"],
                simulator_url=events["data_plane.simulated_provider"]["base_url"].removesuffix(
                    "/v1"
                ),
                api_key=(folder / ".maestro" / "demo-api-key").read_text().strip(),
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                folder=folder,
            )
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()


class Driver:
    """Drives a running `maestro up` through what the dashboards and alerts describe."""

    def __init__(self, up: Up, client: MaestroClient) -> None:
        self.up = up
        self.client = client
        self.openai = openai.OpenAI(
            base_url=up.openai_base_url, api_key=up.api_key, max_retries=0, timeout=60
        )
        self.profile: dict[str, Any] = json.loads(_get(f"{up.simulator_url}/admin/faults"))

    # -- the simulated provider's faults ----------------------------------------------------

    def faults(self, default: dict[str, Any] | None = None, **per_model: dict[str, Any]) -> None:
        """Patch the simulator's profile: `default` over every model's faults, `per_model`
        over one model's (keyed by the model string the simulator receives)."""
        profile = json.loads(json.dumps(self.profile))
        profile["default"].update(default or {})
        profile["per_model"].update(per_model)
        _put_json(f"{self.up.simulator_url}/admin/faults", profile)

    def _model_call_in_flight(self, bound_s: float = 20) -> None:
        """Until the data plane counts a call in flight (the slow run's model node), bounded."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            for line in _get(self.up.metrics_url).decode().splitlines():
                if line.startswith("maestro_inference_in_flight{") and float(line.split()[-1]) >= 1:
                    return
            time.sleep(0.1)
        raise AssertionError(f"no call in flight within {bound_s} s")

    def healthy(self) -> None:
        _put_json(f"{self.up.simulator_url}/admin/faults", self.profile)

    # -- inference ---------------------------------------------------------------------------

    def chat(self, model: str, content: str = "Say hello.", stream: bool = False) -> bool:
        """One chat completion; whether it succeeded (errors are part of the traffic)."""
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": content}]
        try:
            if stream:
                chunks = self.openai.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for _ in chunks:
                    pass
            else:
                self.openai.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=8,
                )
        except openai.APIError:
            return False
        return True

    def traffic(self) -> None:
        """Streamed and whole answers from every model group; a prompt with personal data
        (policy keeps it in house: other candidates excluded); an unknown model."""
        for model in MODELS:
            assert self.chat(model), model
            assert self.chat(model, stream=True), model
        self.chat("gpt-4o", "Email jane.doe@example.com about her order.")
        assert not self.chat("no-such-model")

    def provider_trouble(self) -> None:
        """gpt-4o answers 429 and 500: fallbacks, its breaker opens and routing moves to the
        fallback group; then every provider fails (calls fail everywhere); then all recover
        and the breaker probes and closes."""
        self.faults(
            **{
                "openai/gpt-4o": {
                    "error_rate": 1.0,
                    "error_codes": {"429": 1, "500": 3},
                    "retry_after_s": 0,
                }
            }
        )
        for _ in range(24):
            self.chat("gpt-4o")
        self.faults(
            default={"error_rate": 1.0, "error_codes": {"500": 1}},
            **{"openai/gpt-4o": {"error_rate": 1.0, "error_codes": {"500": 1}}},
        )
        for _ in range(3):
            assert not self.chat("gpt-4o")
        self.healthy()
        time.sleep(1.5)  # past breaker_open_s: the next calls probe
        for _ in range(12):
            self.chat("gpt-4o", stream=True)
            time.sleep(0.1)

    def overload(self) -> None:
        """Twice `max_inflight_calls` slow calls at once: the ones past the limit are shed."""
        self.faults(default={"ttft": {"kind": "fixed", "ms": 1500}})
        with ThreadPoolExecutor(max_workers=2 * MAX_INFLIGHT) as pool:
            results = list(pool.map(lambda _: self.chat("sonnet-3.7"), range(2 * MAX_INFLIGHT)))
        self.healthy()
        assert not all(results), "no call was shed"

    # -- graphs ------------------------------------------------------------------------------

    def _recipe(self, recipe_id: str, source: str) -> str:
        created = self.client.graphs.CreateRecipe(
            gpb.CreateRecipeRequest(
                parent=PROJECT, recipe_id=recipe_id, recipe=gpb.Recipe(source_yaml=source)
            )
        )
        return str(created.recipe.name)

    def _run(self, recipe: str) -> gpb.Run:
        state = struct_pb2.Struct()
        state.update({"task": "Summarise the release notes."})
        created = self.client.graphs.CreateRun(
            gpb.CreateRunRequest(parent=PROJECT, run=gpb.Run(recipe=recipe, input_state=state))
        )
        return created.run

    def _state(self, name: str) -> gpb.Run:
        got: gpb.Run = self.client.graphs.GetRun(gpb.GetRunRequest(name=name)).run
        return got

    def _until(self, name: str, states: frozenset[int]) -> gpb.Run:
        _wait(f"run {name} in {sorted(states)}", lambda: self._state(name).state in states)
        return self._state(name)

    def _approver_key(self) -> str:
        """Another person's key: whoever started a run may not approve its gates."""
        created = self.client.projects.CreateApiKey(
            ppb.CreateApiKeyRequest(
                parent=PROJECT,
                api_key=ppb.ApiKey(
                    display_name="approver", scopes=["approver"], principal="reviewer@example.com"
                ),
            )
        )
        return str(created.secret)

    def graphs(self) -> None:
        """A run through a gate a person approves; a node that times out, is retried and
        fails the run; a node interrupted by the kill switch, replayed after the release."""
        gated = self._run(self._recipe("live-gated", GATED))
        waiting = self._until(gated.name, frozenset({gpb.Run.STATE_WAITING_FOR_APPROVAL}))
        [gate] = waiting.open_gates
        time.sleep(0.3)  # the gate's decision latency
        with MaestroClient(self.up.address, api_key=self._approver_key()) as approver:
            approver.graphs.SubmitGateDecision(
                gpb.SubmitGateDecisionRequest(name=gate, verdict=gpb.GATE_VERDICT_APPROVE)
            )
        assert self._until(gated.name, FINAL_RUN_STATES).state == gpb.Run.STATE_SUCCEEDED

        retried = self._run(self._recipe("live-retried", RETRYING))
        assert self._until(retried.name, FINAL_RUN_STATES).state == gpb.Run.STATE_FAILED

        self.faults(**{"anthropic/claude-3.7-sonnet": {"ttft": {"kind": "fixed", "ms": 3000}}})
        slow = self._run(self._recipe("live-slow", SLOW))
        self._until(slow.name, frozenset({gpb.Run.STATE_RUNNING}))
        self._model_call_in_flight()
        switch = f"{PROJECT}/killSwitch"
        self.client.graphs.SetKillSwitch(
            gpb.SetKillSwitchRequest(name=switch, engaged=True, reason="live metrics test")
        )
        self._until(slow.name, frozenset({gpb.Run.STATE_PAUSED}))
        self.client.graphs.SetKillSwitch(
            gpb.SetKillSwitchRequest(name=switch, engaged=False, reason="live metrics test")
        )
        self.healthy()
        self.client.graphs.ResumeRun(gpb.ResumeRunRequest(name=slow.name, reason="replay"))
        assert self._until(slow.name, FINAL_RUN_STATES).state == gpb.Run.STATE_SUCCEEDED

    # -- evals and rollouts ------------------------------------------------------------------

    def eval_run(self) -> None:
        suites = self.up.folder / "suites"
        (suites / "tasks").mkdir(parents=True)
        (suites / "tasks" / "core.jsonl").write_bytes(jsonl(task_rows(4)))
        (suites / "suite.yaml").write_text(SUITE)
        ran = subprocess.run(
            [
                str(BIN / "maestro"),
                "eval",
                "--suite",
                "live_metrics_v1",
                "--suites-dir",
                str(suites),
                "--provider",
                "gpt-4o",
                "--concurrency",
                "2",
                "--target",
                self.up.address,
                "--api-key",
                self.up.api_key,
            ],
            cwd=self.up.folder,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert ran.returncode in (0, 1, 2), ran.stderr  # a verdict, not a failed run

    def rollout(self) -> None:
        """A canary at 10% whose error-budget analysis has too little traffic: INCONCLUSIVE,
        so the rollout pauses with its candidate live."""
        artifact = f"{PROJECT}/artifacts/live-answer"
        versions = [
            self.client.rollouts.CreateArtifactVersion(
                rpb.CreateArtifactVersionRequest(
                    parent=artifact,
                    artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_PROMPT),
                    content_text=PROMPT.format(marker=marker),
                )
            ).artifact_version
            for marker in ("v1", "v2")
        ]
        created = self.client.rollouts.CreateRollout(
            rpb.CreateRolloutRequest(
                parent=PROJECT,
                rollout=rollout(
                    versions[0].name,
                    versions[1].name,
                    [weight(10), error_budget(min_requests=50)],
                    artifact,
                ),
            )
        )
        name = created.rollout.name

        def paused() -> bool:
            got = self.client.rollouts.GetRollout(rpb.GetRolloutRequest(name=name)).rollout
            return bool(got.state == rpb.Rollout.STATE_PAUSED)

        _wait(f"rollout {name} paused", paused)

    def rpc_error(self) -> None:
        """A gRPC call that ends NOT_FOUND: the RPC error panel's status code label."""
        with contextlib.suppress(Exception):
            self.client.graphs.GetRun(gpb.GetRunRequest(name=f"{PROJECT}/runs/missing"))


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a `maestro up` that served all of the traffic above."""
    folder = tmp_path_factory.mktemp("live")
    with _maestro_up(folder) as up, MaestroClient(up.address, api_key=up.api_key) as client:
        driver = Driver(up, client)
        driver.traffic()
        driver.provider_trouble()
        driver.overload()
        driver.graphs()
        driver.eval_run()
        driver.rollout()
        driver.rpc_error()
        # Observations reach the live signals once per report interval: scrape until every
        # pair the pack queries is there, or give up after a bound and let the tests report.
        uses = {u: w for u, w in pack_uses().items() if histogram_base(u.metric) not in LANE_ONLY}
        deadline = time.monotonic() + 20
        while True:
            text = _get(up.metrics_url).decode()
            if not missing_uses(uses, text) or time.monotonic() > deadline:
                return text
            time.sleep(0.2)


def _uses_of(source: str) -> dict[Use, list[str]]:
    return {
        use: where
        for use, where in pack_uses().items()
        if any(w.startswith(f"{source}:") for w in where)
    }


@pytest.mark.parametrize("source", SOURCES)
def test_maestro_up_exports_every_metric_and_label_queried_by(source: str, scrape: str) -> None:
    uses = {u: w for u, w in _uses_of(source).items() if histogram_base(u.metric) not in LANE_ONLY}
    missing = missing_uses(uses, scrape)
    report = "\n".join(
        f"  {use}: {why}\n      used by {'; '.join(sorted(set(uses[use])))}" for use, why in missing
    )
    assert not missing, (
        f"{len(missing)} of the {len(uses)} (metric, labels) pairs {source} queries are not "
        f"exported:\n{report}"
    )


def test_lane_only_allowlist_names_only_lane_gauges_the_pack_queries() -> None:
    queried = {histogram_base(use.metric) for use in pack_uses()}
    assert all(name.startswith("maestro_lane_") for name in LANE_ONLY)
    assert queried >= LANE_ONLY, sorted(LANE_ONLY - queried)
    assert {name for name in queried if name.startswith("maestro_lane_")} == LANE_ONLY
