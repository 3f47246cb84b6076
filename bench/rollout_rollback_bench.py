"""Rollout rollback latency under load (issue 18's acceptance benchmark, RolloutService).

    .venv/bin/python bench/rollout_rollback_bench.py                  # 20 + 3 rollbacks, ~2 min
    .venv/bin/python bench/rollout_rollback_bench.py --quick          # 3 + 1 rollbacks, temp dir

End to end on `maestro up` plus one remote `maestro data-plane`, each its own process, both
serving the same prompt artifact under open-loop load; the question is how long a bad prompt
version keeps being served after the control plane decides to roll it back.

Processes (all on loopback):

- `maestro sim-provider` with a profile serving two models at a fixed 20 ms time to first
  token: `good` (no faults) and `flaky` (`error_rate` 0.2, HTTP 500 only). Its answer key is the
  eval task file (`--eval-tasks`, `evals/tasks/golden.jsonl`): a request whose last user message
  is a task gets the task's `expected` answer at accuracy 0.9 (no sampling noise, so the same
  tasks every run), 0.8 when its system message contains `accuracy-minus-10` (the answer key's
  `prompts` entry: exactly the tasks whose draw lies in [0.8, 0.9) flip to wrong). The load's
  "hi" is no task: it gets the usual random words.
- `maestro up --config <tmp>/control-plane.yaml`: control plane + in-process data plane, SQLite
  in a temp dir, API keys on (the demo bootstrap's key), a routing file with two model groups,
  `good` and `flaky`, one deployment each on the sim, no fallbacks, `num_retries` 0;
  `rollouts.pause_scale` 0.005 (the seed's 10-minute pause lasts 3 s, its 30-minute one 9 s),
  `rollouts.measure_interval_s` 0.25. `data_plane.breaker_failure_ratio` 1.0 on both data planes,
  so the flaky group's breaker never opens and the bad version's error rate stays the
  simulated 20% (the breaker is a provider guard, not what is measured here).
- `maestro data-plane --config <tmp>/data-plane.yaml --control-plane ... --node-id edge-1`:
  follows the control plane (WatchConfig snapshots, ReportObservations back), so the control
  plane's per-version series sees both data planes' traffic.
- This process: the load generator and the operator. Open-loop load at `--rate` (200/s)
  alternating between the two data planes (half each), every request started on its own
  schedule (request i at t0 + i / rate, whatever earlier ones are doing), as a gRPC
  `InferenceService.CreateChatCompletion` naming the artifact (no model: the prompt version's
  `model:` picks the group), a distinct `traffic_key` per request (so about weight% of them
  get the candidate), `max_tokens` 8. Per request: start and end (time.time()), which data plane,
  the `artifact_version` returned, ok or error. In flight at most `--max-inflight`; a request
  over it is counted as skipped, never queued.

Eval data: the task file is uploaded with EvalService.CreateDataset and made a suite
(CreateEvalSuite: metric exact_match, threshold `max_regression_rate` 0.05, one repetition).

Versions of `projects/demo/artifacts/bench-answer` (a YAML prompt: one system message, one
variable with a default, so a version can be an eval target): v1 (`model: good`) is the stable
version. First a good candidate (same text, another marker, `model: good`) walks the seed's Argo
sketch (setWeight 10, pause 10m, analysis with both of its templates, `eval-score-ok` and
`error-budget-ok`, setWeight 50, pause 30m) to PROMOTED, pauses scaled by `pause_scale`.
`eval-score-ok` is an eval gate: the candidate is scored on the suite in model group `good`
against the stable version's scorecard there (the stable version is scored first when it has
none; the analysis runs both templates at once and decides when both are done).
Then `--iterations` bad candidates, one at a time, each the stable text with a unique marker
and `model: flaky` (so 20% of its calls fail), each rolled out with [setWeight 20, analysis
`error-budget-ok`]. `error-budget-ok` everywhere: indicator ERRORS, objective 0.99, one window
pair 60 s / 10 s at max burn rate 5, `min_request_count` 50.
Then `--accuracy-iterations` (3) bad candidates of the other kind: simulated accuracy 10 points
lower (the stable text with a unique marker plus `accuracy-minus-10`, `model: good`, so none of
their calls fail), each rolled out with [setWeight 20, the seed's analysis (`eval-score-ok`,
`error-budget-ok`)]: `error-budget-ok` passes, `eval-score-ok` fails (the scorecard's
regression rate is about 10%, its lower 95% bound past the 5% limit), and the rollout rolls
back. The stable version (the promoted good candidate) was scored in the walk, so each of these
costs one eval run. Reported separately: setWeight -> decision (about one eval run), the eval
run, its scorecard's verdict, and the rollback latency as below.

Per rollback: the decision time is the `create_time` of the rollout's ROLLED_BACK audit event
(the analysis verdict's commit: the candidate goes to 0% in that transaction, and its traffic
split is published with it). The last bad request is the latest *start* among requests whose
returned `artifact_version` is the bad version (on either data plane; per data plane too).
Rollback latency = last bad start - decision time; negative when the last bad pick happened
before the decision was committed (the candidate then served nothing after it). The same with
the end of that request is reported beside it. The load runs across all iterations; after each
rollback the bench waits `--settle-s` (1 s) so requests in flight finish before it computes.
Also per rollback: setWeight 20 -> decision (how long the analysis took to gather 50 candidate
requests and fail them), and the bad version's request count and error rate.

Writes `results/rollout_rollback.json` and `results/rollout_rollback.md` next to this file:
p50 and max over the rollbacks (each kind on its own), overall and per data plane, the achieved
request rate, error rate, the good version's walk (its analyses, time to PROMOTED and the
weights seen by the load), CPU of every process, and the machine. Goal (issue 18): rollback
latency max at most 5 s (the seed: under 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf import duration_pb2

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench._measure import machine, progress  # noqa: E402
from maestro.clients import AsyncMaestroClient  # noqa: E402
from maestro.v1 import common_pb2  # noqa: E402
from maestro.v1 import eval_service_pb2 as epb  # noqa: E402
from maestro.v1 import inference_service_pb2 as ipb  # noqa: E402
from maestro.v1 import inference_service_pb2_grpc as igrpc  # noqa: E402
from maestro.v1 import rollout_service_pb2 as rpb  # noqa: E402

RESULTS = BENCH / "results"
REPO = BENCH.parent
BIN = Path(sys.executable).parent
PROJECT = "demo"
PARENT = f"projects/{PROJECT}"
ARTIFACT = f"{PARENT}/artifacts/bench-answer"
GOAL_S = 5.0
SEED_GOAL_S = 120.0
TTFT_MS = 20.0
ERROR_RATE = 0.2
SEED_STEPS = (
    "setWeight 10, pause 10m, analysis (eval-score-ok, error-budget-ok), setWeight 50, pause 30m"
)
FLAKY_DEPLOYMENT = "flaky-a:"
ROLLOUT_TIMEOUT_S = 300.0
SIM_ACCURACY = 0.9
ACCURACY_MARKER = "accuracy-minus-10"
ACCURACY_DELTA = -0.10
MAX_REGRESSION_RATE = 0.05
EVAL_TASKS = REPO / "evals" / "tasks" / "golden.jsonl"
SUITE_ID = "bench-gate"
EVAL_GROUP = "good"
START_TIMEOUT_S = 60.0

PROMPT = """messages:
  - role: system
    content: "You answer questions about {{{{ product }}}} in one line. [{marker}]"
variables:
  product: {{description: The product asked about, default: kettles}}
model: {model}
"""


def sim_profile(key_file: Path) -> str:
    """Two models (`flaky` fails 20% of calls) that answer the eval tasks of `key_file`."""
    return f"""strict_models: false
default_max_tokens: 8
default:
  ttft: {{kind: fixed, ms: {TTFT_MS}}}
per_model:
  flaky: {{error_rate: {ERROR_RATE}, error_codes: {{500: 1.0}}}}
  openai/flaky: {{error_rate: {ERROR_RATE}, error_codes: {{500: 1.0}}}}
answers:
  key_files: [{json.dumps(str(key_file))}]
  default: {{accuracy: {SIM_ACCURACY}, tool_accuracy: 0.95, hallucination_rate: 0.0}}
  prompts:
    - {{system_contains: "{ACCURACY_MARKER}", accuracy_delta: {ACCURACY_DELTA}}}
"""


ROUTING = """model_list:
  - model_name: good
    litellm_params: {{model: openai/good, api_base: "{sim}", num_retries: 0}}
    model_info: {{id: good-a}}
  - model_name: flaky
    litellm_params: {{model: openai/flaky, api_base: "{sim}", num_retries: 0}}
    model_info: {{id: flaky-a}}
"""

CONTROL_PLANE = """server: {{host: 127.0.0.1, port: {port}, grace_period_s: 1}}
auth: {{mode: api_key}}
store: {{sqlite_path: "{db}"}}
telemetry: {{service_name: maestro-control-plane, otlp_endpoint: ""}}
logging: {{level: warning, format: json}}
routing: {{project: {project}, config_file: "{routing}", watch: false}}
data_plane: {{http_port: null, simulated_provider: false, breaker_failure_ratio: 1.0}}
rollouts: {{pause_scale: {pause_scale}, measure_interval_s: {measure_interval_s}}}
"""

DATA_PLANE = """server: {grace_period_s: 1}
telemetry: {otlp_endpoint: ""}
logging: {level: warning, format: json}
data_plane: {breaker_failure_ratio: 1.0}
"""


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far (/proc/<pid>/stat)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return math.nan

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, args: Sequence[str], cwd: Path) -> Proc:
    log = cwd / f"{name}.log"
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("MAESTRO_API_KEY", None)
    env.pop("MAESTRO_TARGET", None)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [str(BIN / "maestro"), *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    return Proc(name, popen, log)


async def wait_for(what: str, check: Any, timeout_s: float, procs: Sequence[Proc]) -> Any:
    """`await check()` until it returns something truthy (bounded by `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
        try:
            got = await check()
            if got:
                return got
        except (grpc.RpcError, OSError) as error:
            last = error
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last})")


# -- load ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    start: float
    end: float
    plane: int
    version: str
    ok: bool
    inferred: bool = False
    """`version` inferred from the failed call's deployment (see `Load._one`)."""


@dataclass
class Load:
    """Open-loop load over two data planes: request i starts at t0 + i / rate."""

    targets: Sequence[str]
    api_key: str
    rate: float
    max_tokens: int
    max_inflight: int
    timeout_s: float = 10.0
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    skipped: int = 0
    rpc_errors: dict[str, int] = field(default_factory=dict)
    flaky_version: str = ""
    """The bad version now rolled out: the only one whose calls reach `flaky`."""
    started_at: float = 0.0
    stopped_at: float = 0.0
    _inflight: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, max_s: float) -> None:
        channels = [grpc.aio.insecure_channel(t) for t in self.targets]
        # InferenceServiceStub on an aio channel is typed (mypy-protobuf) as the async stub.
        stubs = [igrpc.InferenceServiceStub(c) for c in channels]
        metadata = (("x-api-key", self.api_key),)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self.started_at = time.time()
        t0 = loop.time()
        limit = int(max_s * self.rate)  # bounded in count as well as time
        try:
            for i in range(limit):
                if self._stop.is_set():
                    break
                due = t0 + i / self.rate
                delay = due - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        break
                if self._inflight >= self.max_inflight:
                    self.skipped += 1
                    continue
                plane = i % len(stubs)
                task = asyncio.create_task(self._one(stubs[plane], plane, i, metadata))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
        finally:
            self.stopped_at = time.time()
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout_s + 1)
            for channel in channels:
                await channel.close(None)

    def stop(self) -> None:
        self._stop.set()

    async def _one(
        self,
        stub: igrpc.InferenceServiceAsyncStub,
        plane: int,
        i: int,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._inflight += 1
        request = ipb.CreateChatCompletionRequest(
            parent=PARENT,
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")],
            max_tokens=self.max_tokens,
            artifact=ARTIFACT,
            artifact_variables={"product": "kettles"},
            traffic_key=f"user-{i}",
        )
        start = time.time()
        try:
            response = await stub.CreateChatCompletion(
                request, metadata=metadata, timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            self.rpc_errors[code] = self.rpc_errors.get(code, 0) + 1
            # A failed call's status names the deployment, not the artifact version; only the
            # live bad version routes to `flaky`, so its errors are that version's.
            flaky = FLAKY_DEPLOYMENT in (error.details() or "")
            version = self.flaky_version if flaky else ""
            self.samples.append(Sample(start, time.time(), plane, version, False, flaky))
        else:
            version = response.artifact_version.rsplit("/", 1)[-1]
            ok = not response.HasField("error")
            self.samples.append(Sample(start, time.time(), plane, version, ok))
        finally:
            self._inflight -= 1


# -- rollouts --------------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def set_weight(percent: int) -> rpb.RolloutStep:
    return rpb.RolloutStep(set_weight=rpb.RolloutStep.SetWeight(weight_percent=percent))


def pause(seconds: float) -> rpb.RolloutStep:
    return rpb.RolloutStep(pause=rpb.RolloutStep.Pause(duration=duration(seconds)))


def error_budget_ok() -> rpb.RolloutAnalysisTemplate:
    burn = rpb.RolloutAnalysisTemplate.SloBurn
    return rpb.RolloutAnalysisTemplate(
        name="error-budget-ok",
        slo_burn=burn(
            indicator=burn.INDICATOR_ERRORS,
            objective_ratio=0.99,
            windows=[
                burn.Window(long_window=duration(60), short_window=duration(10), max_burn_rate=5.0)
            ],
            min_request_count=50,
        ),
    )


def eval_score_ok(suite: str) -> rpb.RolloutAnalysisTemplate:
    """The eval gate: the candidate scored on `suite` in group `good` against the stable
    version's scorecard (suite default repetitions, a new run for every candidate)."""
    return rpb.RolloutAnalysisTemplate(
        name="eval-score-ok",
        eval_gate=rpb.RolloutAnalysisTemplate.EvalGate(suite=suite, model_group=EVAL_GROUP),
    )


def analysis(*templates: rpb.RolloutAnalysisTemplate) -> rpb.RolloutStep:
    return rpb.RolloutStep(analysis=rpb.RolloutStep.Analysis(templates=templates))


def seed_steps(suite: str) -> list[rpb.RolloutStep]:
    """The seed's Argo sketch, its analysis with both templates."""
    return [
        set_weight(10),
        pause(600),
        analysis(eval_score_ok(suite), error_budget_ok()),
        set_weight(50),
        pause(1800),
    ]


async def create_suite(client: AsyncMaestroClient, tasks: bytes) -> tuple[str, int]:
    """The eval suite the gate scores on (exact match, `max_regression_rate`, one repetition)
    over `tasks` (JSONL) uploaded as a dataset; its name and the dataset's task count."""
    dataset = await client.evals.CreateDataset(
        epb.CreateDatasetRequest(
            parent=PARENT, dataset_id="bench-tasks", dataset=epb.Dataset(), jsonl=tasks
        )
    )
    suite = await client.evals.CreateEvalSuite(
        epb.CreateEvalSuiteRequest(
            parent=PARENT,
            eval_suite_id=SUITE_ID,
            eval_suite=epb.EvalSuite(
                datasets=[dataset.dataset.name],
                metrics=[epb.EVAL_METRIC_EXACT_MATCH],
                thresholds=epb.EvalThresholds(max_regression_rate=MAX_REGRESSION_RATE),
                default_repetitions=1,
            ),
        )
    )
    return suite.eval_suite.name, dataset.dataset.manifest.task_count


async def push_version(client: AsyncMaestroClient, marker: str, model: str) -> str:
    response = await client.rollouts.CreateArtifactVersion(
        rpb.CreateArtifactVersionRequest(
            parent=ARTIFACT,
            artifact_version=rpb.ArtifactVersion(kind=rpb.ArtifactVersion.KIND_PROMPT),
            content_text=PROMPT.format(marker=marker, model=model),
        )
    )
    return response.artifact_version.name


async def start_rollout(
    client: AsyncMaestroClient, stable: str, candidate: str, steps: list[rpb.RolloutStep]
) -> rpb.Rollout:
    response = await client.rollouts.CreateRollout(
        rpb.CreateRolloutRequest(
            parent=PARENT,
            rollout=rpb.Rollout(
                artifact=ARTIFACT,
                stable_version=stable,
                candidate_version=candidate,
                strategy=rpb.RolloutStrategy(steps=steps),
                automated=True,
            ),
        )
    )
    return response.rollout


async def watch_to_end(
    client: AsyncMaestroClient, name: str, paused_ends: bool = False
) -> tuple[rpb.Rollout, list[float]]:
    """The rollout once it ends (WatchRollout, bounded), and when each message arrived.
    `paused_ends`: PAUSED counts as an end too (a rollout with no pause step pauses only on an
    inconclusive analysis)."""
    seen: list[float] = []
    last: rpb.Rollout | None = None
    async with asyncio.timeout(ROLLOUT_TIMEOUT_S):
        async for message in client.rollouts.WatchRollout(
            rpb.WatchRolloutRequest(name=name), timeout=ROLLOUT_TIMEOUT_S
        ):
            seen.append(time.time())
            last = message.rollout
            if last.state in (
                rpb.Rollout.STATE_PROMOTED,
                rpb.Rollout.STATE_ROLLED_BACK,
                rpb.Rollout.STATE_ABORTED,
                rpb.Rollout.STATE_FAILED,
            ) or (paused_ends and last.state == rpb.Rollout.STATE_PAUSED):
                break
    assert last is not None
    return last, seen


async def audit_events(client: AsyncMaestroClient, name: str) -> list[rpb.RolloutAuditEvent]:
    response = await client.rollouts.ListRolloutAuditEvents(
        rpb.ListRolloutAuditEventsRequest(parent=name, page_size=1000)
    )
    return list(response.rollout_audit_events)


def when(event: rpb.RolloutAuditEvent) -> float:
    return event.create_time.seconds + event.create_time.nanos / 1e9


# -- figures ---------------------------------------------------------------------------------


def nearest_rank(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": nearest_rank(values, 0.5),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


@dataclass
class Rollback:
    iteration: int
    rollout: str
    candidate: str
    state: str
    state_reason: str
    weight_set_at: float
    analysis_started_at: float
    decision_at: float
    analysis_s: float
    """setWeight 20 -> decision."""
    bad_requests: int
    bad_errors: int
    bad_requests_by_plane: list[int]
    last_bad_start_by_plane: list[float | None]
    last_bad_end_by_plane: list[float | None]
    latency_s: float | None
    """Last bad start (either plane) - decision."""
    latency_by_plane_s: list[float | None]
    latency_end_s: float | None
    """Last bad end (either plane) - decision."""
    bad_after_decision: int
    """Bad-version requests that started after the decision."""
    measured_request_count: float | None
    """The candidate requests the failing analysis counted (`request_count`): more than
    either data plane sent before the decision shows both planes' reports reached it."""
    bad_before_decision_by_plane: list[int]


def rollback_figures(
    i: int, rollout: rpb.Rollout, events: list[rpb.RolloutAuditEvent], samples: list[Sample]
) -> Rollback:
    version = rollout.candidate_version.rsplit("/", 1)[-1]
    action = rpb.RolloutAuditEvent
    weight_set = next(
        when(e)
        for e in events
        if e.action == action.ACTION_WEIGHT_CHANGED and e.weight_after_percent > 0
    )
    started = next(
        (when(e) for e in events if e.action == action.ACTION_ANALYSIS_STARTED), math.nan
    )
    decided = [when(e) for e in events if e.action == action.ACTION_ROLLED_BACK]
    decision = decided[0] if decided else math.nan
    bad = [s for s in samples if s.version == version]
    by_plane = [[s for s in bad if s.plane == p] for p in (0, 1)]
    last_start = [max((s.start for s in b), default=None) for b in by_plane]
    last_end = [max((s.end for s in b), default=None) for b in by_plane]
    starts = [t for t in last_start if t is not None]
    ends = [t for t in last_end if t is not None]
    ok = not math.isnan(decision)
    return Rollback(
        iteration=i,
        rollout=rollout.name,
        candidate=rollout.candidate_version,
        state=rpb.Rollout.State.Name(rollout.state),
        state_reason=rollout.state_reason,
        weight_set_at=weight_set,
        analysis_started_at=started,
        decision_at=decision,
        analysis_s=decision - weight_set,
        bad_requests=len(bad),
        bad_errors=sum(not s.ok for s in bad),
        bad_requests_by_plane=[len(b) for b in by_plane],
        last_bad_start_by_plane=last_start,
        last_bad_end_by_plane=last_end,
        latency_s=max(starts) - decision if ok and starts else None,
        latency_by_plane_s=[t - decision if ok and t is not None else None for t in last_start],
        latency_end_s=max(ends) - decision if ok and ends else None,
        bad_after_decision=sum(s.start > decision for s in bad) if ok else 0,
        measured_request_count=next(
            (
                m.value
                for a in rollout.analysis_results
                for m in a.measurements
                if m.metric == "request_count"
            ),
            None,
        ),
        bad_before_decision_by_plane=[sum(s.start <= decision for s in b) for b in by_plane],
    )


def ts(stamp: Any) -> float | None:
    """A protobuf Timestamp in seconds; None when unset."""
    return stamp.seconds + stamp.nanos / 1e9 if stamp.seconds or stamp.nanos else None


@dataclass
class EvalFigures:
    """One `eval-score-ok` analysis: its eval run and the scorecard the gate decided on."""

    outcome: str
    message: str
    analysis_s: float | None
    """The template's own start -> end (baseline run, when there was one, included)."""
    eval_run: str
    eval_run_state: str
    eval_run_s: float | None
    """The candidate's eval run, start -> end."""
    eval_run_queued_s: float | None
    """The candidate's eval run, create -> start."""
    baseline_scorecard: str
    baseline_run_s: float | None
    """The stable version's run, start -> end, when this analysis scored it first (else None:
    an earlier scorecard was reused)."""
    scorecard: str
    verdict: str
    task_count: int
    regressed_task_count: int
    improved_task_count: int
    regression_rate: float | None
    regression_rate_bounds: list[float] | None
    regression_limit: float | None
    regression_message: str
    exact_match: float | None
    exact_match_baseline: float | None
    gate_checks: list[str]


async def eval_figures(
    client: AsyncMaestroClient, result: rpb.RolloutAnalysisResult, baseline_started_after: float
) -> EvalFigures:
    """`baseline_started_after`: a baseline run created after this was scored by this analysis."""
    run: epb.EvalRun | None = None
    card: epb.Scorecard | None = None
    baseline: epb.EvalRun | None = None
    if result.eval_run:
        run = (await client.evals.GetEvalRun(epb.GetEvalRunRequest(name=result.eval_run))).eval_run
    if result.scorecard:
        got = await client.evals.GetScorecard(epb.GetScorecardRequest(name=result.scorecard))
        card = got.scorecard
    if result.baseline_scorecard:
        name = result.baseline_scorecard.removesuffix("/scorecard")
        base = (await client.evals.GetEvalRun(epb.GetEvalRunRequest(name=name))).eval_run
        created = ts(base.create_time)
        baseline = base if created is not None and created >= baseline_started_after else None

    def span(a: Any, b: Any) -> float | None:
        x, y = ts(a), ts(b)
        return round(y - x, 3) if x is not None and y is not None else None

    regression = next(
        (
            t
            for t in (card.threshold_results if card else [])
            if t.threshold == epb.EvalThresholdResult.THRESHOLD_REGRESSION_RATE
        ),
        None,
    )
    exact = next(
        (
            m
            for m in (card.metrics if card else [])
            if m.metric == epb.EVAL_METRIC_EXACT_MATCH and not m.slice and not m.dataset
        ),
        None,
    )
    return EvalFigures(
        outcome=rpb.RolloutAnalysisResult.Outcome.Name(result.outcome),
        message=result.message[:400],
        analysis_s=span(result.start_time, result.end_time),
        eval_run=result.eval_run,
        eval_run_state=epb.EvalRun.State.Name(run.state) if run else "",
        eval_run_s=span(run.start_time, run.end_time) if run else None,
        eval_run_queued_s=span(run.create_time, run.start_time) if run else None,
        baseline_scorecard=result.baseline_scorecard,
        baseline_run_s=span(baseline.start_time, baseline.end_time) if baseline else None,
        scorecard=result.scorecard,
        verdict=epb.Scorecard.Verdict.Name(card.verdict) if card else "",
        task_count=card.task_count if card else 0,
        regressed_task_count=card.regressed_task_count if card else 0,
        improved_task_count=card.improved_task_count if card else 0,
        regression_rate=round(regression.measured, 4) if regression else None,
        regression_rate_bounds=(
            [round(regression.lower_bound, 4), round(regression.upper_bound, 4)]
            if regression
            else None
        ),
        regression_limit=regression.limit if regression else None,
        regression_message=regression.message if regression else "",
        exact_match=round(exact.mean, 4) if exact else None,
        exact_match_baseline=(
            round(exact.baseline_mean, 4) if exact and exact.HasField("baseline_mean") else None
        ),
        gate_checks=[
            f"{m.metric} {m.value:.4g} (limit {m.limit:.4g}) {'passed' if m.passed else 'FAILED'}"
            for m in result.measurements
        ],
    )


def analyses_of(rollout: rpb.Rollout) -> list[dict[str, Any]]:
    """Every analysis result of a rollout: template, outcome, duration, message."""
    return [
        {
            "template": a.template,
            "step": a.step_index,
            "outcome": rpb.RolloutAnalysisResult.Outcome.Name(a.outcome),
            "duration_s": (
                round(end - start, 3)
                if (start := ts(a.start_time)) is not None and (end := ts(a.end_time)) is not None
                else None
            ),
            "message": a.message[:300],
        }
        for a in rollout.analysis_results
    ]


def eval_result(rollout: rpb.Rollout) -> rpb.RolloutAnalysisResult | None:
    return next((a for a in rollout.analysis_results if a.template == "eval-score-ok"), None)


@dataclass
class AccuracyRollback:
    rollback: Rollback
    gate: EvalFigures | None
    analyses: list[dict[str, Any]]


def accuracy_summary(runs: list[AccuracyRollback]) -> dict[str, Any]:
    rolled = sum(a.rollback.state == "STATE_ROLLED_BACK" for a in runs)
    latencies = [x for a in runs if (x := a.rollback.latency_s) is not None]
    overall = stats(latencies)
    return {
        "rolled_back": rolled,
        "iterations": len(runs),
        "verdicts": [a.gate.verdict if a.gate else "" for a in runs],
        "latency_s": overall,
        "latency_in_process_plane_s": stats(
            [x for a in runs if (x := a.rollback.latency_by_plane_s[0]) is not None]
        ),
        "latency_remote_plane_s": stats(
            [x for a in runs if (x := a.rollback.latency_by_plane_s[1]) is not None]
        ),
        "latency_last_end_s": stats(
            [x for a in runs if (x := a.rollback.latency_end_s) is not None]
        ),
        "weight_to_decision_s": stats([a.rollback.analysis_s for a in runs]),
        "eval_run_s": stats([x for a in runs if a.gate and (x := a.gate.eval_run_s) is not None]),
        "bad_requests_after_decision_total": sum(a.rollback.bad_after_decision for a in runs),
        "bad_requests_total": sum(a.rollback.bad_requests for a in runs),
        "goal_met": bool(runs) and rolled == len(runs) and overall["max"] <= GOAL_S,
    }


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Stack:
    work: Path
    procs: list[Proc]
    control_target: str
    data_target: str
    api_key: str


@contextlib.asynccontextmanager
async def stack(args: argparse.Namespace) -> AsyncIterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="maestro-rollout-bench-"))
    procs: list[Proc] = []
    try:
        sim_port, cp_port, dp_port = free_port(), free_port(), free_port()
        (work / "sim.yaml").write_text(sim_profile(args.eval_tasks.resolve()))
        sim_url = f"http://127.0.0.1:{sim_port}/v1"
        (work / "routing.yaml").write_text(ROUTING.format(sim=sim_url))
        (work / "control-plane.yaml").write_text(
            CONTROL_PLANE.format(
                port=cp_port,
                db=work / "state" / "maestro.db",
                project=PROJECT,
                routing=work / "routing.yaml",
                pause_scale=args.pause_scale,
                measure_interval_s=args.measure_interval_s,
            )
        )
        (work / "data-plane.yaml").write_text(DATA_PLANE)
        procs.append(
            spawn("sim", ["sim-provider", "--port", str(sim_port), "--profile", "sim.yaml"], work)
        )
        procs.append(spawn("control-plane", ["up", "--config", "control-plane.yaml"], work))
        key_file = work / "state" / "demo-api-key"

        async def key() -> str:
            return key_file.read_text().strip() if key_file.exists() else ""

        api_key = await wait_for("the demo key", key, START_TIMEOUT_S, procs)
        control_target = f"127.0.0.1:{cp_port}"
        await wait_for("maestro up", lambda: models(control_target, api_key), 60, procs)
        dp_http = free_port()
        procs.append(
            spawn(
                "data-plane",
                [
                    "data-plane",
                    "--config",
                    "data-plane.yaml",
                    "--control-plane",
                    control_target,
                    "--api-key",
                    api_key,
                    "--port",
                    str(dp_port),
                    "--http-port",
                    str(dp_http),
                    "--node-id",
                    "edge-1",
                ],
                work,
            )
        )
        data_target = f"127.0.0.1:{dp_port}"
        await wait_for("maestro data-plane", lambda: models(data_target, api_key), 60, procs)
        yield Stack(work, procs, control_target, data_target, api_key)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep_logs:
            progress(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


async def models(target: str, api_key: str) -> list[str]:
    async with AsyncMaestroClient(target, api_key=api_key, timeout_s=2) as client:
        got = await client.inference.ListModels(ipb.ListModelsRequest(parent=PARENT))
    names = sorted(g.model for g in got.model_groups)
    return names if names == ["flaky", "good"] else []


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with stack(args) as s:
        progress(f"stack up: control plane {s.control_target}, data plane {s.data_target}")
        async with AsyncMaestroClient(s.control_target, api_key=s.api_key, timeout_s=20) as cp:
            suite, suite_tasks = await create_suite(cp, args.eval_tasks.read_bytes())
            stable = await push_version(cp, "stable", "good")
            good = await push_version(cp, "good-candidate", "good")
            load = Load(
                [s.control_target, s.data_target],
                s.api_key,
                args.rate,
                args.max_tokens,
                args.max_inflight,
            )
            walk = await start_rollout(cp, stable, good, seed_steps(suite))
            cpu_before = {p.name: p.cpu_s() for p in s.procs}
            own_before = time.process_time()
            load_task = asyncio.create_task(load.run(args.max_load_s))
            try:
                progress(f"good candidate walks the seed's steps ({SEED_STEPS})")
                walk_start = time.time()
                walked, _ = await watch_to_end(cp, walk.name)
                walk_end = time.time()
                walk_events = await audit_events(cp, walk.name)
                walk_eval = eval_result(walked)
                walk_gate = await eval_figures(cp, walk_eval, walk_start - 1) if walk_eval else None
                progress(
                    f"good candidate {rpb.Rollout.State.Name(walked.state)} after "
                    f"{walk_end - walk_start:.1f} s; analyses "
                    + ", ".join(f"{a['template']} {a['outcome']}" for a in analyses_of(walked))
                    + (
                        f"; eval runs {walk_gate.baseline_run_s} s (stable) and "
                        f"{walk_gate.eval_run_s} s (candidate), scorecard {walk_gate.verdict}"
                        if walk_gate
                        else ""
                    )
                )
                if walked.state != rpb.Rollout.STATE_PROMOTED:
                    raise RuntimeError(f"the good candidate did not promote: {walked}")
                stable = good
                rollbacks: list[Rollback] = []
                for i in range(args.iterations):
                    bad = await push_version(cp, f"bad-{i}", "flaky")
                    load.flaky_version = bad.rsplit("/", 1)[-1]
                    created = await start_rollout(
                        cp, stable, bad, [set_weight(20), analysis(error_budget_ok())]
                    )
                    ended, _ = await watch_to_end(cp, created.name)
                    await asyncio.sleep(args.settle_s)  # requests in flight finish
                    events = await audit_events(cp, created.name)
                    figures = rollback_figures(i, ended, events, load.samples)
                    rollbacks.append(figures)
                    progress(
                        f"rollback {i + 1}/{args.iterations}: {figures.state}, analysis "
                        f"{figures.analysis_s:.2f} s, latency {fmt(figures.latency_s)} "
                        f"(planes {', '.join(fmt(x) for x in figures.latency_by_plane_s)}), "
                        f"bad requests {figures.bad_requests} ({figures.bad_errors} errors)"
                    )
                load.flaky_version = ""
                accuracy: list[AccuracyRollback] = []
                for i in range(args.accuracy_iterations):
                    worse = await push_version(cp, f"worse-{i} {ACCURACY_MARKER}", "good")
                    created = await start_rollout(
                        cp,
                        stable,
                        worse,
                        [set_weight(20), analysis(eval_score_ok(suite), error_budget_ok())],
                    )
                    ended, _ = await watch_to_end(cp, created.name, paused_ends=True)
                    if ended.state == rpb.Rollout.STATE_PAUSED:  # inconclusive: end it here
                        await cp.rollouts.AbortRollout(rpb.AbortRolloutRequest(name=created.name))
                    await asyncio.sleep(args.settle_s)
                    events = await audit_events(cp, created.name)
                    figures = rollback_figures(i, ended, events, load.samples)
                    found = eval_result(ended)
                    gate = await eval_figures(cp, found, when(events[0])) if found else None
                    accuracy.append(AccuracyRollback(figures, gate, analyses_of(ended)))
                    progress(
                        f"accuracy rollback {i + 1}/{args.accuracy_iterations}: {figures.state}, "
                        f"setWeight -> decision {figures.analysis_s:.2f} s, latency "
                        f"{fmt(figures.latency_s)}, scorecard {gate.verdict if gate else '-'} "
                        f"(regressed {gate.regressed_task_count if gate else '-'} of "
                        f"{gate.task_count if gate else '-'}; eval run "
                        f"{gate.eval_run_s if gate else '-'} s)"
                    )
            finally:
                load.stop()
                await load_task
            own_cpu = time.process_time() - own_before
            cpu = {p.name: p.cpu_s() - cpu_before[p.name] for p in s.procs}
            cpu["load-generator (this process)"] = own_cpu
        wall = load.stopped_at - load.started_at
        result = report(args, load, wall, cpu, walked, walk_events, walk_start, walk_end, rollbacks)
        result["good_walk"]["analyses"] = analyses_of(walked)
        result["good_walk"]["eval_gate"] = asdict(walk_gate) if walk_gate else None
        result["settings"]["eval"] = {
            "suite": suite,
            "tasks_file": str(args.eval_tasks.resolve().relative_to(REPO))
            if args.eval_tasks.resolve().is_relative_to(REPO)
            else str(args.eval_tasks),
            "dataset_task_count": suite_tasks,
            "metric": "exact_match",
            "max_regression_rate": MAX_REGRESSION_RATE,
            "repetitions": 1,
            "model_group": EVAL_GROUP,
            "sim_accuracy": SIM_ACCURACY,
            "accuracy_delta": ACCURACY_DELTA,
            "accuracy_marker": ACCURACY_MARKER,
            "accuracy_steps": "setWeight 20, analysis (eval-score-ok, error-budget-ok)",
        }
        result["accuracy_rollbacks"] = [
            {
                **asdict(a.rollback),
                "analyses": a.analyses,
                "eval_gate": asdict(a.gate) if a.gate else None,
            }
            for a in accuracy
        ]
        result["summary"]["accuracy"] = accuracy_summary(accuracy)
        return result


def fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3f} s"


def walk_figures(
    walked: rpb.Rollout,
    events: list[rpb.RolloutAuditEvent],
    start: float,
    end: float,
    samples: list[Sample],
) -> dict[str, Any]:
    version = walked.candidate_version.rsplit("/", 1)[-1]
    action = rpb.RolloutAuditEvent
    created = when(events[0])
    steps = [
        {
            "at_s": round(when(e) - created, 3),
            "action": action.Action.Name(e.action),
            "weight": e.weight_after_percent,
            "reason": e.reason[:160],
        }
        for e in events
    ]
    # The candidate's share of each second of load during the walk: the weights the load saw.
    seconds: dict[int, list[int]] = {}
    for sample in samples:
        if start - 1 <= sample.start <= end + 2:
            second = int(sample.start - created)
            row = seconds.setdefault(second, [0, 0])
            row[0] += 1
            row[1] += sample.version == version
    observed = [
        {"second": k, "requests": v[0], "candidate_share": round(v[1] / v[0], 3)}
        for k, v in sorted(seconds.items())
        if v[0]
    ]
    promoted = [when(e) for e in events if e.action == action.ACTION_PROMOTED]
    return {
        "state": rpb.Rollout.State.Name(walked.state),
        "to_promoted_s": round(promoted[0] - created, 3) if promoted else None,
        "events": steps,
        "observed_candidate_share_per_second": observed,
        "weights_seen": sorted({e.weight_after_percent for e in events}),
    }


def report(
    args: argparse.Namespace,
    load: Load,
    wall: float,
    cpu: dict[str, float],
    walked: rpb.Rollout,
    walk_events: list[rpb.RolloutAuditEvent],
    walk_start: float,
    walk_end: float,
    rollbacks: list[Rollback],
) -> dict[str, Any]:
    done = load.samples
    latencies = [r.latency_s for r in rollbacks if r.latency_s is not None]
    by_plane = [
        [x for r in rollbacks if (x := r.latency_by_plane_s[p]) is not None] for p in (0, 1)
    ]
    ends = [r.latency_end_s for r in rollbacks if r.latency_end_s is not None]
    rolled_back = sum(r.state == "STATE_ROLLED_BACK" for r in rollbacks)
    overall = stats([x for x in latencies if x is not None])
    durations = sorted(s.end - s.start for s in done)
    result: dict[str, Any] = {
        "bench": "rollout_rollback",
        "machine": args.machine,
        "settings": {
            "iterations": args.iterations,
            "rate_per_s": args.rate,
            "max_tokens": args.max_tokens,
            "max_inflight": args.max_inflight,
            "pause_scale": args.pause_scale,
            "measure_interval_s": args.measure_interval_s,
            "settle_s": args.settle_s,
            "sim_ttft_ms": TTFT_MS,
            "bad_error_rate": ERROR_RATE,
            "seed_steps": SEED_STEPS,
            "bad_steps": "setWeight 20, analysis error-budget-ok",
            "error_budget_ok": "errors, objective 0.99, window 60 s / 10 s, max burn 5, "
            "min_request_count 50",
            "planes": ["maestro up (in-process data plane)", "maestro data-plane (remote)"],
        },
        "load": {
            "wall_s": round(wall, 2),
            "sent": load.sent,
            "completed": len(done),
            "skipped_over_inflight": load.skipped,
            "scheduled_rate_per_s": args.rate,
            "achieved_rate_per_s": round(load.sent / wall, 1) if wall > 0 else None,
            "completed_rate_per_s": round(len(done) / wall, 1) if wall > 0 else None,
            "error_rate": round(sum(not s.ok for s in done) / len(done), 4) if done else None,
            "rpc_errors": load.rpc_errors,
            "errors_attributed_by_deployment": sum(s.inferred for s in done),
            "errors_not_from_a_bad_version": sum(not s.ok and not s.version for s in done),
            "per_plane_completed": [sum(s.plane == p for s in done) for p in (0, 1)],
            "request_p50_ms": round(nearest_rank(durations, 0.5) * 1000, 1),
            "request_p99_ms": round(nearest_rank(durations, 0.99) * 1000, 1),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
            "cpu_share_of_one_core": {k: round(v / wall, 2) for k, v in cpu.items()},
        },
        "good_walk": walk_figures(walked, walk_events, walk_start, walk_end, done),
        "rollbacks": [asdict(r) for r in rollbacks],
        "summary": {
            "rolled_back": rolled_back,
            "iterations": len(rollbacks),
            "latency_s": overall,
            "latency_in_process_plane_s": stats(by_plane[0]),
            "latency_remote_plane_s": stats(by_plane[1]),
            "latency_last_end_s": stats(ends),
            "analysis_s": stats([r.analysis_s for r in rollbacks]),
            "bad_requests_after_decision_total": sum(r.bad_after_decision for r in rollbacks),
            "bad_requests_total": sum(r.bad_requests for r in rollbacks),
            "bad_error_rate": round(
                sum(r.bad_errors for r in rollbacks)
                / max(1, sum(r.bad_requests for r in rollbacks)),
                4,
            ),
            "goal_s": GOAL_S,
            "goal_met": rolled_back == len(rollbacks) and overall["max"] <= GOAL_S,
            "seed_goal_s": SEED_GOAL_S,
            "seed_goal_met": rolled_back == len(rollbacks) and overall["max"] < SEED_GOAL_S,
        },
    }
    return result


def markdown(result: dict[str, Any]) -> str:
    m, s, load, walk = result["machine"], result["summary"], result["load"], result["good_walk"]
    st, ev, acc = result["settings"], result["settings"]["eval"], result["summary"]["accuracy"]
    gate = walk["eval_gate"] or {}

    def ms(x: float | None) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:+.0f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def gate_cells(g: dict[str, Any] | None) -> str:
        if not g:
            return "- | - | - | - | "
        low, high = g["regression_rate_bounds"] or (None, None)
        return (
            f"{g['eval_run_s']} | {g['verdict'].removeprefix('VERDICT_')} | "
            f"{g['regressed_task_count']} of {g['task_count']} "
            f"({pct(g['regression_rate'])}; {pct(low)}..{pct(high)}) | "
            f"{pct(g['exact_match'])} ({pct(g['exact_match_baseline'])}) | "
        )

    def row(label: str, v: dict[str, float]) -> str:
        return f"| {label} | {v['n']} | {ms(v['p50'])} | {ms(v['max'])} | {ms(v['min'])} |"

    lines = [
        "# Rollout rollback latency under load (issue 18)",
        "",
        f"`.venv/bin/python bench/rollout_rollback_bench.py --iterations {st['iterations']} "
        f"--accuracy-iterations {acc['iterations']}` on "
        f"{m['nproc']} cores ({m['cpu']}), commit {m['commit']}"
        + (f" with modified files {', '.join(m['modified_files'])}" if m["modified_files"] else "")
        + f", {m['date']}; load average {m['loadavg_1m_at_start']:.2f} at start.",
        "",
        "`maestro up` (control plane + in-process data plane) and one `maestro data-plane` "
        "following it, each its own process, plus `maestro sim-provider` (20 ms time to first "
        f"token; model `flaky` fails {st['bad_error_rate']:.0%} of calls with HTTP 500). "
        f"Open-loop load at {st['rate_per_s']:g} requests/s, half to each data plane, gRPC "
        "CreateChatCompletion naming the prompt artifact, a distinct traffic key per request. "
        f"`rollouts.pause_scale` {st['pause_scale']}, `measure_interval_s` "
        f"{st['measure_interval_s']}. The sim's answer key is `{ev['tasks_file']}`: its tasks "
        f"are answered right at accuracy {ev['sim_accuracy']:g}, "
        f"{ev['sim_accuracy'] + ev['accuracy_delta']:g} when the system message contains "
        f"`{ev['accuracy_marker']}`; the same file is dataset and eval suite `{ev['suite']}` "
        f"({ev['dataset_task_count']} tasks, {ev['metric']}, `max_regression_rate` "
        f"{ev['max_regression_rate']:g}, {ev['repetitions']} repetition), which "
        f"`eval-score-ok` scores in model group `{ev['model_group']}`.",
        "",
        "Rollback latency = start of the last request answered by the bad version - "
        "`create_time` of the ROLLED_BACK audit event (the failing analysis decision). Negative: "
        "the bad version's last request started before the decision was committed.",
        "",
        f"**Error-rate candidates: rolled back {s['rolled_back']} of {s['iterations']} by "
        f"`error-budget-ok`. Accuracy-drop candidates: rolled back {acc['rolled_back']} of "
        f"{acc['iterations']} by `eval-score-ok` (scorecards "
        f"{', '.join(v.removeprefix('VERDICT_') for v in acc['verdicts']) or '-'}), setWeight -> "
        f"decision p50 {acc['weight_to_decision_s']['p50']:.2f} s, rollback latency max "
        f"{ms(acc['latency_s']['max'])} ms; goal at most {s['goal_s']:g} s: "
        f"{'met' if acc['goal_met'] else 'NOT met'}. The good candidate: both analyses "
        + (
            "PASSED"
            if [a["outcome"] for a in walk["analyses"]] == ["OUTCOME_PASSED"] * 2
            else ", ".join(f"{a['template']} {a['outcome']}" for a in walk["analyses"])
        )
        + f", {walk['state'].removeprefix('STATE_')} after {walk['to_promoted_s']} s.**",
        "",
        "## Error-rate candidates (`error-budget-ok`)",
        "",
        f"**Rolled back {s['rolled_back']} of {s['iterations']}. Rollback latency p50 "
        f"{ms(s['latency_s']['p50'])} ms, max {ms(s['latency_s']['max'])} ms; goal at most "
        f"{s['goal_s']:g} s: {'met' if s['goal_met'] else 'NOT met'} (seed: under 2 minutes: "
        f"{'met' if s['seed_goal_met'] else 'NOT met'}).**",
        "",
        "| rollback latency (ms) | n | p50 | max | min |",
        "| --- | --- | --- | --- | --- |",
        row("either data plane (last bad start)", s["latency_s"]),
        row("`maestro up`'s in-process data plane", s["latency_in_process_plane_s"]),
        row("remote `maestro data-plane`", s["latency_remote_plane_s"]),
        row("either data plane (last bad request's end)", s["latency_last_end_s"]),
        "",
        f"Bad-version requests that started after the decision, all rollbacks: "
        f"{s['bad_requests_after_decision_total']}. The bad version gets about 20% of "
        f"{st['rate_per_s']:g}/s, so its picks are about 25 ms apart (50 ms on one plane): a "
        "latency a few tens of ms below zero is that gap, not a faster rollback.",
        "",
        f"Analysis (setWeight 20 -> decision): p50 {s['analysis_s']['p50']:.2f} s, max "
        f"{s['analysis_s']['max']:.2f} s (50 candidate requests at ~20% of the load, the data "
        "planes' 1 s observation reports, 0.25 s measure interval).",
        "",
        "## Accuracy-drop candidates (`eval-score-ok`)",
        "",
        f"{acc['iterations']} candidates whose simulated accuracy is "
        f"{-ev['accuracy_delta'] * 100:g} points lower (`model: good`, marker "
        f"`{ev['accuracy_marker']}`: none of their calls fail), each rolled out with "
        f"[{ev['accuracy_steps']}]. The stable version's scorecard from the walk is the baseline, "
        "so each costs one eval run; `error-budget-ok` passes and the decision waits for the "
        "eval gate.",
        "",
        "| rollback latency (ms) | n | p50 | max | min |",
        "| --- | --- | --- | --- | --- |",
        row("either data plane (last bad start)", acc["latency_s"]),
        row("`maestro up`'s in-process data plane", acc["latency_in_process_plane_s"]),
        row("remote `maestro data-plane`", acc["latency_remote_plane_s"]),
        row("either data plane (last bad request's end)", acc["latency_last_end_s"]),
        "",
        f"setWeight 20 -> ROLLED_BACK decision: p50 {acc['weight_to_decision_s']['p50']:.2f} s, "
        f"max {acc['weight_to_decision_s']['max']:.2f} s; the candidate's eval run: p50 "
        f"{acc['eval_run_s']['p50']:.2f} s, max {acc['eval_run_s']['max']:.2f} s. Bad-version "
        f"requests after the decision: {acc['bad_requests_after_decision_total']} (of "
        f"{acc['bad_requests_total']} served).",
        "",
        "| # | state | setWeight -> decision (s) | eval run (s) | scorecard | regressed "
        "(95% bounds) | exact match (stable) | bad requests (errors) | latency either (ms) | "
        "in-process (ms) | remote (ms) | bad after decision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['iteration']} | {r['state'].removeprefix('STATE_')} | {r['analysis_s']:.2f} | "
            + gate_cells(r["eval_gate"])
            + f"{r['bad_requests']} ({r['bad_errors']}) | {ms(r['latency_s'])} | "
            f"{ms(r['latency_by_plane_s'][0])} | {ms(r['latency_by_plane_s'][1])} | "
            f"{r['bad_after_decision']} |"
            for r in result["accuracy_rollbacks"]
        ),
        "",
        *(f"- {r['iteration']}: {r['state_reason'][:400]}" for r in result["accuracy_rollbacks"]),
        "",
        "## Load",
        "",
        f"- scheduled {load['scheduled_rate_per_s']:g}/s; sent {load['achieved_rate_per_s']}/s, "
        f"completed {load['completed_rate_per_s']}/s over {load['wall_s']} s "
        f"({load['sent']} sent, {load['skipped_over_inflight']} skipped over the in-flight cap)",
        f"- error rate {load['error_rate']:.2%} (the bad versions' simulated errors); RPC "
        f"errors {load['rpc_errors'] or 'none'} ({load['errors_attributed_by_deployment']} "
        "attributed to the bad version of the moment because their status names deployment "
        "`flaky-a`: a failed call's status does not carry its artifact version; "
        f"{load['errors_not_from_a_bad_version']} errors from anything else); per plane "
        f"completed {load['per_plane_completed']}",
        f"- the bad versions served {s['bad_requests_total']} requests, "
        f"{s['bad_error_rate']:.1%} of them failed (simulated: {st['bad_error_rate']:.0%})",
        f"- request duration p50 {load['request_p50_ms']} ms, p99 {load['request_p99_ms']} ms",
        f"- load average (1 min, whole machine) {m['loadavg_1m_at_start']:.2f} at start, "
        f"{load['loadavg_1m_at_end']:.2f} at end: other work on this shared machine shows up "
        "as skipped requests, timeouts and slow analyses",
        "- CPU (share of one core over the load's wall time): "
        + ", ".join(f"{k} {v}" for k, v in load["cpu_share_of_one_core"].items()),
        "",
        "## The good candidate's walk (the seed's steps)",
        "",
        f"{st['seed_steps']}, pauses scaled by {st['pause_scale']}: {walk['state']} after "
        f"{walk['to_promoted_s']} s; weights {walk['weights_seen']}.",
        "",
        "| analysis | outcome | duration (s) | message |",
        "| --- | --- | --- | --- |",
        *(
            f"| {a['template']} | {a['outcome'].removeprefix('OUTCOME_')} | {a['duration_s']} | "
            f"{a['message']} |"
            for a in walk["analyses"]
        ),
        "",
        (
            f"`eval-score-ok` scored the stable version first (it had no scorecard; eval run "
            f"{gate.get('baseline_run_s')} s), then the candidate (eval run "
            f"{gate.get('eval_run_s')} s): scorecard "
            f"{str(gate.get('verdict', '-')).removeprefix('VERDICT_')}, "
            f"{gate.get('regressed_task_count')} of {gate.get('task_count')} tasks regressed "
            f"(95% upper bound {pct((gate.get('regression_rate_bounds') or [None, None])[1])}), "
            f"exact match {pct(gate.get('exact_match'))} vs "
            f"{pct(gate.get('exact_match_baseline'))} (stable)."
            if gate
            else "No `eval-score-ok` result."
        ),
        "",
        "| at (s) | event | weight |",
        "| --- | --- | --- |",
        *(f"| {e['at_s']} | {e['action']} | {e['weight']} |" for e in walk["events"]),
        "",
        "Candidate share of the load, per second since the rollout's creation: "
        + ", ".join(
            f"{o['second']}s {o['candidate_share']:.0%}"
            for o in walk["observed_candidate_share_per_second"]
        ),
        "",
        "## Error-rate rollbacks, one by one",
        "",
        "`counted`: the candidate requests the failing analysis counted; `sent before`: the "
        "bad version's requests started before the decision on the in-process / remote plane "
        "(the analysis counts what the planes' reports had delivered, up to 1 s old).",
        "",
        "| # | state | analysis (s) | bad requests (errors) | counted | sent before | "
        "latency either (ms) | in-process (ms) | remote (ms) | bad after decision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {r['iteration']} | {r['state'].removeprefix('STATE_')} | "
            f"{r['analysis_s']:.2f} | {r['bad_requests']} ({r['bad_errors']}) | "
            f"{r['measured_request_count'] or 0:.0f} | "
            f"{' / '.join(str(n) for n in r['bad_before_decision_by_plane'])} | "
            f"{ms(r['latency_s'])} | {ms(r['latency_by_plane_s'][0])} | "
            f"{ms(r['latency_by_plane_s'][1])} | {r['bad_after_decision']} |"
            for r in result["rollbacks"]
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20, help="Bad versions rolled back.")
    parser.add_argument(
        "--accuracy-iterations",
        type=int,
        default=3,
        help="Versions 10 points less accurate rolled back (an eval run each).",
    )
    parser.add_argument(
        "--eval-tasks", type=Path, default=EVAL_TASKS, help="Eval tasks (JSONL): suite and key."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="Requests/s, both planes.")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-inflight", type=int, default=2000)
    parser.add_argument("--pause-scale", type=float, default=0.005)
    parser.add_argument("--measure-interval-s", type=float, default=0.25)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument(
        "--max-load-s", type=float, default=540.0, help="Upper bound on the load's duration."
    )
    parser.add_argument("--quick", action="store_true", help="3 rollbacks, results to a temp dir.")
    parser.add_argument("--out", type=Path, default=None, help="Results folder.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the servers' logs.")
    args = parser.parse_args()
    if args.quick:
        args.iterations = min(args.iterations, 3)
        args.accuracy_iterations = min(args.accuracy_iterations, 1)
    out: Path = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS)
    args.machine = machine(["grpcio", "protobuf", "uvloop"])  # the load average at start
    result = uvloop.run(run(args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_rollback.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "rollout_rollback.md").write_text(markdown(result))
    s = result["summary"]
    a = s["accuracy"]
    progress(
        f"rollback latency p50 {fmt(s['latency_s']['p50'])}, max {fmt(s['latency_s']['max'])} "
        f"over {s['iterations']} ({s['rolled_back']} rolled back); accuracy drops: max "
        f"{fmt(a['latency_s']['max'])} over {a['iterations']} ({a['rolled_back']} rolled back, "
        f"scorecards {', '.join(a['verdicts'])}); goal <= {GOAL_S:g} s: "
        f"{'met' if s['goal_met'] and a['goal_met'] else 'NOT met'}; results in {out}"
    )


if __name__ == "__main__":
    main()
