"""Trace linkage, measured (issue 19's acceptance): do a request's spans form one trace tree?

    .venv/bin/python bench/trace_linkage_bench.py              # 2,000 + 260 requests, ~3 min
    .venv/bin/python bench/trace_linkage_bench.py --quick      # 300 + 104 requests, to a temp dir
    .venv/bin/python bench/trace_linkage_bench.py --no-lane    # without the vLLM lane

Processes, all on loopback, every one exporting OTLP/gRPC to a receiver this process serves
(`_otlp_receiver.py`, built on the official OTLP protos):

- `maestro sim-provider`: two models, `steady` (no faults) and `flaky` (60% of calls answer
  HTTP 500), 5 ms to the first token.
- `maestro up`: control plane + in-process data plane + OpenAI-compatible HTTP ingress, SQLite in
  a temp dir, API keys on (the demo key), `MAESTRO_TELEMETRY__OTLP_ENDPOINT` (and
  `telemetry.otlp_endpoint`) at the receiver. Routing: `steady`; `flaky`, which falls back to
  `steady` on error; `tiny`, the lane (`maestro_lane/tiny-llama`), falling back to `steady`.
  `breaker_failure_ratio` 1.0, so the flaky group's breaker never opens and its failures are
  provider errors the relay falls back from.
- `maestro data-plane --node-id edge-1`: a remote data plane following `maestro up`
  (WatchConfig), with its own gRPC and HTTP ingress.
- The vLLM lane (`python -m serving run` from `.venv-serving`, niced, one lane `tiny` on the tiny
  Llama built locally), `OTEL_EXPORTER_OTLP_ENDPOINT` at the receiver (`serving/telemetry.py`).
- This process: the load, and a tracer of its own (`service.name` maestro-bench) that exports
  the caller's span of every request to the same receiver.

Request kinds (`KINDS`): HTTP ingress (unary and streamed) and gRPC `InferenceService` through
the Python client (`AsyncMaestroClient`, unary and streamed), each to `maestro up` and to the
remote data plane, on `steady`; the same on `flaky` (about 60% of them fall back to `steady`);
on `tiny` (the lane); and graph runs (`GraphService.CreateRun` of the built-in `toolformer`, one
turn, and `critique-improve`, up to 8 model nodes), waited for to their end.

Two ways a request's trace is found:

1. `caller` mode (most of the load, `--requests`): the bench opens a span per request and sends
   its context (`traceparent`: an HTTP header; gRPC metadata through the client's OpenTelemetry
   interceptor). The request's trace is that trace id; it is linked when it holds every span the
   kind expects (below), has exactly one root (the bench's span) and every span's parent is in
   the trace.
2. `root` mode (`--root-per-kind` per kind, one kind at a time after the mixed load): nothing is
   sent; the server starts the trace. A run's trace is `Run.trace_id`; for the other kinds there
   is no per-request key in the spans, so each kind runs alone in a time window and the traces
   that start in it and hold any request span are checked the same way (root: the ingress span).
   Linked share = complete traces / requests sent; the other traces there are fragments.

Expected spans (roles, `role_of`): `ingress` (a SERVER span of the maestro process the request
entered: gRPC `/maestro.v1.InferenceService/...`, `/maestro.v1.GraphService/CreateRun`, or the
HTTP ingress's), `route` (`maestro.route.choose`), `chat` (`chat {model}`, CLIENT), and the hop
out: `lane` (`serve.vllm.request`) when the lane served the call, else `provider` (a CLIENT span
of the data plane's HTTP call to the provider: any CLIENT span that is neither `chat ...` nor a
gRPC call); runs also `node` (`agent.node.run`) and take either hop. Requests that failed still
count (their spans should link too); a run that did not reach a final state is reported apart.

After the load every process is stopped with SIGTERM (their batch span processors flush on the
way out; the lane's schedule delay is 200 ms and it is given time first), the receiver waits for
quiet, and the spans are analysed. Writes `results/trace_linkage.json` and `.md` next to this
file (`--out` elsewhere): the linked share per kind and mode, overall, the reasons, the first
failures, where each role's spans ended up, the parent of each role's spans, and each service's
resource attributes. Goal 100%, seed floor 95%. Every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import uvloop
from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench._measure import machine, progress  # noqa: E402
from bench._otlp_receiver import OtlpReceiver, StoredSpan  # noqa: E402
from maestro.clients import AsyncMaestroClient  # noqa: E402
from maestro.v1 import common_pb2  # noqa: E402
from maestro.v1 import graph_service_pb2 as gpb  # noqa: E402
from maestro.v1 import inference_service_pb2 as ipb  # noqa: E402

RESULTS = BENCH / "results"
REPO = BENCH.parent
BIN = Path(sys.executable).parent
SERVING_PYTHON = REPO / ".venv-serving" / "bin" / "python"
PROJECT = "demo"
PARENT = f"projects/{PROJECT}"
BENCH_SERVICE = "maestro-bench"
LANE_SERVICE = "maestro-serving"
LANE_DEPLOYMENT = "lane-tiny"
SERVED_MODEL = "tiny-llama"
GOAL = 1.0
SEED_FLOOR = 0.95
START_TIMEOUT_S = 90.0
LANE_START_TIMEOUT_S = 600.0
FLAKY_ERROR_RATE = 0.6
MAX_TOKENS = 8
STOP_TIMEOUT_S = 30.0
FINAL_RUN_STATES = frozenset(
    {
        gpb.Run.STATE_SUCCEEDED,
        gpb.Run.STATE_FAILED,
        gpb.Run.STATE_CANCELLED,
        gpb.Run.STATE_BLOCKED,
    }
)

SIM_PROFILE = f"""strict_models: false
default_max_tokens: {MAX_TOKENS}
default:
  ttft: {{kind: fixed, ms: 5}}
  tokens_per_s: 5000
per_model:
  flaky: {{error_rate: {FLAKY_ERROR_RATE}, error_codes: {{500: 1.0}}}}
  openai/flaky: {{error_rate: {FLAKY_ERROR_RATE}, error_codes: {{500: 1.0}}}}
"""

ROUTING = """model_list:
  - model_name: steady
    litellm_params: {{model: openai/steady, api_base: "{sim}", num_retries: 0}}
    model_info: {{id: steady-a, quality: 0.9}}
  - model_name: flaky
    litellm_params: {{model: openai/flaky, api_base: "{sim}", num_retries: 0}}
    model_info: {{id: flaky-a, quality: 0.5}}
{lane}router:
  fallbacks: [{fallbacks}]
"""
LANE_ROUTE = """  - model_name: tiny
    litellm_params: {{model: maestro_lane/{served}, api_base: "http://127.0.0.1:{port}/tiny/v1"}}
    model_info: {{id: {deployment}, quality: 0.3}}
"""

CONTROL_PLANE = """server: {{host: 127.0.0.1, port: {port}, grace_period_s: 2}}
auth: {{mode: api_key}}
store: {{sqlite_path: "{db}"}}
telemetry: {{service_name: maestro-control-plane, otlp_endpoint: "{otlp}"}}
logging: {{level: warning, format: json}}
routing: {{project: {project}, config_file: "{routing}", watch: false}}
data_plane: {{http_port: {http_port}, simulated_provider: false, breaker_failure_ratio: 1.0,
             first_token_timeout_s: 60}}
"""

DATA_PLANE = """server: {{grace_period_s: 2}}
telemetry: {{otlp_endpoint: "{otlp}"}}
logging: {{level: warning, format: json}}
data_plane: {{breaker_failure_ratio: 1.0, first_token_timeout_s: 60}}
"""

LANES = """http: {{host: 127.0.0.1, port: {port}}}
lanes:
  - name: tiny
    model: {model}
    served_model_name: {served}
    engine: {{dtype: float32, max_model_len: 1024, max_num_seqs: 16, enforce_eager: true}}
    serve: {{max_ongoing_requests: 16, max_queued_requests: 64, num_cpus: 0.25,
             graceful_shutdown_timeout_s: 30}}
    stream: {{max_chunk_delay_ms: 20}}
"""

BSP_ENV = {
    # Spans leave in batches every 500 ms (the lane: 200 ms, its replicas may be killed on
    # shutdown); a queue large enough that a burst is never dropped (the SDK's default, 2,048,
    # would drop spans under this load and read as broken links).
    "OTEL_BSP_SCHEDULE_DELAY": "500",
    "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
}


# -- request kinds ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    transport: str
    """http, grpc or run."""
    plane: str
    """up (`maestro up`) or edge (the remote data plane)."""
    stream: bool
    model: str
    """steady, flaky, tiny; a run: its recipe id."""
    weight: float
    """Share of the `caller`-mode load (normalised over the kinds that run)."""

    @property
    def group(self) -> str:
        if self.transport == "run":
            return "graph run"
        return {"steady": "direct", "flaky": "fallback", "tiny": "lane"}[self.model]


def _kinds() -> tuple[Kind, ...]:
    kinds: list[Kind] = []
    for model, weight in (("steady", 1.0), ("flaky", 0.6), ("tiny", 0.25)):
        for transport in ("http", "grpc"):
            for plane in ("up", "edge"):
                for stream in (False, True):
                    mode = "stream" if stream else "unary"
                    name = f"{transport}-{plane}-{mode}-{model}"
                    kinds.append(Kind(name, transport, plane, stream, model, weight))
    kinds.append(Kind("run-toolformer", "run", "up", False, "toolformer", 0.25))
    kinds.append(Kind("run-critique-improve", "run", "up", False, "critique-improve", 0.15))
    return tuple(kinds)


KINDS = _kinds()


@dataclass(slots=True)
class Outcome:
    kind: str
    mode: str
    """caller or root."""
    trace_id: str = ""
    """caller mode: the bench span's trace; a run: `Run.trace_id`."""
    ok: bool = False
    status: str = ""
    deployment_id: str = ""
    fallbacks: int = 0
    started_ns: int = 0
    ended_ns: int = 0
    run: str = ""
    run_state: str = ""
    run_trace_matches: bool | None = None
    """caller mode runs: whether `Run.trace_id` is the caller's trace."""


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None
    stop_s: float = 0.0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (span processors flush on the way out), SIGKILL past `timeout_s`."""
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.exit_code = self.popen.returncode
        self.stop_s = time.monotonic() - started

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


def spawn(
    name: str, argv: Sequence[str], cwd: Path, env: Mapping[str, str], *, new_session: bool = False
) -> Proc:
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=new_session,
        )
    return Proc(name, popen, log)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc), to stop what a launcher leaves behind."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class Lane:
    proc: Proc
    port: int
    started_s: float
    _family: set[int] = field(default_factory=set)

    def remember_family(self) -> None:
        self._family |= descendants(self.proc.popen.pid)

    def stop(self) -> None:
        """SIGTERM to the launcher (it shuts Ray Serve and Ray down); whatever of the processes
        it started is still there afterwards is killed by pid, nothing else."""
        self.remember_family()
        self.proc.stop(timeout_s=90)
        for pid in sorted(self._family):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


async def wait_until(what: str, check: Any, timeout_s: float, procs: Sequence[Proc]) -> Any:
    """`await check()` until it returns something truthy (bounded by `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            got = await check()
            if got:
                return got
        except (grpc.RpcError, OSError, aiohttp.ClientError) as error:
            last = error
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last!r})")


@dataclass
class Stack:
    work: Path
    procs: list[Proc]
    lane: Lane | None
    api_key: str
    grpc_targets: dict[str, str]
    http_bases: dict[str, str]
    startup_s: dict[str, float] = field(default_factory=dict)


JURISDICTION = "eu"


def base_env(receiver: OtlpReceiver) -> dict[str, str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **BSP_ENV}
    for name in ("MAESTRO_API_KEY", "MAESTRO_TARGET"):
        env.pop(name, None)
    # Maestro's own setting, and the SDK's for whatever reads it (the simulator, say).
    env["MAESTRO_TELEMETRY__OTLP_ENDPOINT"] = receiver.endpoint
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    # Every process says where it runs, and sends its log lines over OTLP too.
    env["MAESTRO_TELEMETRY__JURISDICTION"] = JURISDICTION
    env["MAESTRO_TELEMETRY__OTLP_LOGS"] = "true"
    return env


async def start_lane(work: Path, receiver: OtlpReceiver, port: int) -> Lane:
    started = time.monotonic()
    model = work / "tiny-llama"
    build = await asyncio.create_subprocess_exec(
        str(SERVING_PYTHON),
        "-m",
        "serving",
        "tiny-model",
        str(model),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(build.communicate(), 300)
    if build.returncode != 0:
        raise RuntimeError(f"the tiny model did not build: {err.decode()[-2000:]}")
    config = work / "lanes.yaml"
    config.write_text(LANES.format(port=port, model=model, served=SERVED_MODEL))
    env = {**os.environ, **BSP_ENV}
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "MAESTRO_JURISDICTION": JURISDICTION,
        }
    )
    # Niced, as tests/lane_support.py does: vLLM's CPU engine busy-polls, and on a 2-core
    # machine it would starve the data planes whose spans are measured.
    argv = [
        "nice",
        "-n",
        "15",
        str(SERVING_PYTHON),
        "-m",
        "serving",
        "run",
        "--config",
        str(config),
    ]
    proc = spawn("lane", argv, work, env, new_session=True)
    lane = Lane(proc, port, 0.0)
    deadline = time.monotonic() + LANE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the lane exited:\n{proc.tail()}")
        if '"lane.ready"' in proc.tail(200_000):
            lane.started_s = time.monotonic() - started
            lane.remember_family()
            return lane
        lane.remember_family()
        await asyncio.sleep(1.0)
    lane.stop()
    raise TimeoutError(f"the lane was not ready after {LANE_START_TIMEOUT_S:.0f} s")


@contextlib.asynccontextmanager
async def stack(args: argparse.Namespace, receiver: OtlpReceiver) -> AsyncIterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="maestro-trace-bench-"))
    procs: list[Proc] = []
    lane: Lane | None = None
    lane_task: asyncio.Task[Lane] | None = None
    env = base_env(receiver)
    startup: dict[str, float] = {}
    try:
        sim_port, cp_port, cp_http, dp_port, dp_http = (free_port() for _ in range(5))
        lane_port = free_port()
        if args.lane:
            lane_task = asyncio.create_task(start_lane(work, receiver, lane_port))
        (work / "sim.yaml").write_text(SIM_PROFILE)
        sim_url = f"http://127.0.0.1:{sim_port}/v1"
        fallbacks = ["{primary: flaky, on_error: [steady]}"]
        lane_route = ""
        if args.lane:
            lane_route = LANE_ROUTE.format(
                served=SERVED_MODEL, port=lane_port, deployment=LANE_DEPLOYMENT
            )
            fallbacks.append("{primary: tiny, on_error: [steady]}")
        (work / "routing.yaml").write_text(
            ROUTING.format(sim=sim_url, lane=lane_route, fallbacks=", ".join(fallbacks))
        )
        (work / "control-plane.yaml").write_text(
            CONTROL_PLANE.format(
                port=cp_port,
                db=work / "state" / "maestro.db",
                otlp=receiver.endpoint,
                project=PROJECT,
                routing=work / "routing.yaml",
                http_port=cp_http,
            )
        )
        (work / "data-plane.yaml").write_text(DATA_PLANE.format(otlp=receiver.endpoint))
        maestro = str(BIN / "maestro")
        t0 = time.monotonic()
        procs.append(
            spawn(
                "sim",
                [maestro, "sim-provider", "--port", str(sim_port), "--profile", "sim.yaml"],
                work,
                env,
            )
        )
        procs.append(
            spawn("maestro-up", [maestro, "up", "--config", "control-plane.yaml"], work, env)
        )
        key_file = work / "state" / "demo-api-key"

        async def key() -> str:
            return key_file.read_text().strip() if key_file.exists() else ""

        api_key: str = await wait_until("the demo key", key, START_TIMEOUT_S, procs)
        control = f"127.0.0.1:{cp_port}"
        await wait_until("maestro up", lambda: models(control, api_key), START_TIMEOUT_S, procs)
        startup["maestro_up_s"] = time.monotonic() - t0
        procs.append(
            spawn(
                "data-plane",
                [
                    maestro,
                    "data-plane",
                    "--config",
                    "data-plane.yaml",
                    "--control-plane",
                    control,
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
                env,
            )
        )
        edge = f"127.0.0.1:{dp_port}"
        await wait_until(
            "maestro data-plane", lambda: models(edge, api_key), START_TIMEOUT_S, procs
        )
        startup["data_plane_s"] = time.monotonic() - t0
        http_bases = {
            "up": f"http://127.0.0.1:{cp_http}/v1",
            "edge": f"http://127.0.0.1:{dp_http}/v1",
        }
        for plane, base in http_bases.items():
            await wait_until(
                f"the HTTP ingress of {plane}",
                lambda base=base: http_ready(base, api_key),
                START_TIMEOUT_S,
                procs,
            )
        if lane_task is not None:
            progress("maestro up and the remote data plane ready; waiting for the lane")
            lane = await lane_task
            lane_task = None
            startup["lane_s"] = lane.started_s
        yield Stack(work, procs, lane, api_key, {"up": control, "edge": edge}, http_bases, startup)
    finally:
        if lane_task is not None:
            lane_task.cancel()
            with contextlib.suppress(BaseException):
                await lane_task
        await asyncio.to_thread(stop_all, procs, lane)
        if args.keep_logs:
            progress(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def stop_all(procs: Sequence[Proc], lane: Lane | None) -> None:
    """Callers first (the remote data plane, then `maestro up`), then the lane and the sim."""
    by_name = {p.name: p for p in procs}
    for name in ("data-plane", "maestro-up"):
        if name in by_name:
            by_name[name].stop()
    if lane is not None:
        lane.stop()
    if "sim" in by_name:
        by_name["sim"].stop()


async def models(target: str, api_key: str) -> list[str]:
    async with AsyncMaestroClient(
        target, api_key=api_key, timeout_s=2, tracer_provider=NoOpTracerProvider()
    ) as client:
        got = await client.inference.ListModels(ipb.ListModelsRequest(parent=PARENT))
    return sorted(g.model for g in got.model_groups)


async def http_ready(base: str, api_key: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base}/models", headers={"Authorization": f"Bearer {api_key}"}) as response,
    ):
        return response.status == 200


# -- load ------------------------------------------------------------------------------------


class Driver:
    """Sends one request of a kind, in either mode, and records its outcome."""

    def __init__(self, s: Stack, tracer_provider: TracerProvider, timeout_s: float) -> None:
        self.stack = s
        self.tracer = tracer_provider.get_tracer("maestro.bench")
        self.timeout_s = timeout_s
        self.propagator = TraceContextTextMapPropagator()
        self.traced = {
            plane: AsyncMaestroClient(
                target, api_key=s.api_key, timeout_s=timeout_s, tracer_provider=tracer_provider
            )
            for plane, target in s.grpc_targets.items()
        }
        self.plain = {
            plane: AsyncMaestroClient(
                target,
                api_key=s.api_key,
                timeout_s=timeout_s,
                tracer_provider=NoOpTracerProvider(),
            )
            for plane, target in s.grpc_targets.items()
        }
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def close(self) -> None:
        await self.session.close()
        for client in (*self.traced.values(), *self.plain.values()):
            await client.close()

    async def send(self, kind: Kind, mode: str, i: int) -> Outcome:
        outcome = Outcome(kind.name, mode, started_ns=time.time_ns())
        try:
            if mode == "caller":
                with self.tracer.start_as_current_span(
                    f"bench.request {kind.name}", kind=trace.SpanKind.CLIENT
                ) as span:
                    outcome.trace_id = f"{span.get_span_context().trace_id:032x}"
                    await self._dispatch(kind, mode, i, outcome)
            else:
                await self._dispatch(kind, mode, i, outcome)
            if outcome.run:
                # Outside the caller's span: the polls must not join the run's trace (the
                # plain client's no-op tracer still propagates the current context).
                await self._wait_run(outcome)
        except Exception as error:  # counted; one failure must not end the load
            outcome.ok = False
            outcome.status = outcome.status or f"{type(error).__name__}: {str(error)[:160]}"
        outcome.ended_ns = time.time_ns()
        return outcome

    async def _dispatch(self, kind: Kind, mode: str, i: int, outcome: Outcome) -> None:
        if kind.transport == "http":
            await self._http(kind, mode, i, outcome)
        elif kind.transport == "grpc":
            await self._grpc(kind, mode, i, outcome)
        else:
            await self._run(kind, mode, outcome)

    async def _http(self, kind: Kind, mode: str, i: int, outcome: Outcome) -> None:
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        if mode == "caller":
            self.propagator.inject(headers)
        body: dict[str, Any] = {
            "model": kind.model,
            "messages": [{"role": "user", "content": f"Write about the sea ({i})."}],
            "max_tokens": MAX_TOKENS,
            "stream": kind.stream,
        }
        if kind.stream:
            body["stream_options"] = {"include_usage": True}
        url = f"{self.stack.http_bases[kind.plane]}/chat/completions"
        async with self.session.post(url, json=body, headers=headers) as response:
            outcome.status = str(response.status)
            if not kind.stream or response.status != 200:
                payload = await response.json(content_type=None)
                maestro = payload.get("maestro") or {}
                outcome.deployment_id = str(maestro.get("deployment_id", ""))
                outcome.fallbacks = len(maestro.get("fallbacks") or [])
                outcome.ok = response.status == 200 and "error" not in maestro
                return
            errored = False
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    errored = True
                maestro = chunk.get("maestro") or {}
                if "fallback" in maestro:
                    outcome.fallbacks += 1
                if "deployment_id" in maestro:
                    outcome.deployment_id = str(maestro["deployment_id"])
                    if maestro.get("error"):
                        errored = True
            outcome.ok = not errored

    async def _grpc(self, kind: Kind, mode: str, i: int, outcome: Outcome) -> None:
        client = (self.traced if mode == "caller" else self.plain)[kind.plane]
        messages = [
            common_pb2.ChatMessage(
                role=common_pb2.CHAT_ROLE_USER, content=f"Write about the sea ({i})."
            )
        ]
        try:
            if kind.stream:
                stream_request = ipb.StreamChatCompletionRequest(
                    parent=PARENT, model=kind.model, messages=messages, max_tokens=MAX_TOKENS
                )
                done: ipb.ChatCompletionDone | None = None
                async for event in client.inference.StreamChatCompletion(stream_request):
                    which = event.WhichOneof("event")
                    if which == "fallback":
                        outcome.fallbacks += 1
                    elif which == "done":
                        done = event.done
                if done is not None:
                    outcome.deployment_id = done.deployment.deployment_id
                    outcome.ok = not done.HasField("error")
                outcome.status = "OK"
            else:
                request = ipb.CreateChatCompletionRequest(
                    parent=PARENT, model=kind.model, messages=messages, max_tokens=MAX_TOKENS
                )
                response = await client.inference.CreateChatCompletion(request)
                outcome.deployment_id = response.deployment.deployment_id
                outcome.fallbacks = len(response.fallbacks)
                outcome.ok = not response.HasField("error")
                outcome.status = "OK"
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            outcome.status = code.name if code is not None else type(error).__name__
            outcome.ok = False

    async def _run(self, kind: Kind, mode: str, outcome: Outcome) -> None:
        client = (self.traced if mode == "caller" else self.plain)["up"]
        state = struct_pb2.Struct()
        if kind.model == "toolformer":
            state.update({"question": "Where is the kettle?", "max_turns": 1})
        else:
            state.update({"topic": "kettles"})
        response = await client.graphs.CreateRun(
            gpb.CreateRunRequest(
                parent=PARENT,
                run=gpb.Run(recipe=f"projects/builtin/recipes/{kind.model}", input_state=state),
            )
        )
        run = response.run
        outcome.run = run.name
        if mode == "caller":
            outcome.run_trace_matches = run.trace_id == outcome.trace_id
        else:
            outcome.trace_id = run.trace_id

    async def _wait_run(self, outcome: Outcome) -> None:
        deadline = time.monotonic() + self.timeout_s
        poll = self.plain["up"]
        while True:
            got = await poll.graphs.GetRun(gpb.GetRunRequest(name=outcome.run))
            state = got.run.state
            if state in FINAL_RUN_STATES or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        outcome.run_state = gpb.Run.State.Name(state)
        outcome.status = outcome.run_state
        outcome.ok = state == gpb.Run.STATE_SUCCEEDED


@dataclass
class LoadResult:
    started_ns: int
    outcomes: list[Outcome]
    planned: int
    not_started: int
    wall_s: float


async def caller_load(
    driver: Driver, kinds: Sequence[Kind], total: int, args: argparse.Namespace
) -> LoadResult:
    """`total` requests over `kinds` by weight, shuffled (fixed seed), each class of work under
    its own concurrency limit; nothing starts after `args.max_load_s`."""
    weights = sum(k.weight for k in kinds)
    plan: list[Kind] = []
    for kind in kinds:
        plan += [kind] * max(1, round(total * kind.weight / weights))
    random.Random(19).shuffle(plan)
    limits = {
        "chat": asyncio.Semaphore(args.concurrency),
        "lane": asyncio.Semaphore(args.lane_concurrency),
        "run": asyncio.Semaphore(args.run_concurrency),
    }
    started = time.monotonic()
    started_ns = time.time_ns()
    deadline = started + args.max_load_s
    outcomes: list[Outcome] = []
    not_started = 0
    done_count = 0

    async def one(kind: Kind, i: int) -> None:
        nonlocal not_started, done_count
        limit = limits[
            "run" if kind.transport == "run" else "lane" if kind.model == "tiny" else "chat"
        ]
        async with limit:
            if time.monotonic() > deadline:
                not_started += 1
                return
            outcomes.append(await driver.send(kind, "caller", i))
            done_count += 1
            if done_count % 250 == 0:
                progress(f"caller mode: {done_count} of {len(plan)} done")

    await asyncio.wait_for(
        asyncio.gather(*(one(kind, i) for i, kind in enumerate(plan))),
        args.max_load_s + driver.timeout_s + 30,
    )
    return LoadResult(started_ns, outcomes, len(plan), not_started, time.monotonic() - started)


@dataclass
class Phase:
    kind: str
    start_ns: int
    end_ns: int
    outcomes: list[Outcome]


async def root_phases(
    driver: Driver, kinds: Sequence[Kind], per_kind: int, args: argparse.Namespace
) -> list[Phase]:
    """Each kind alone, `per_kind` requests with no trace context, in a window of its own."""
    phases: list[Phase] = []
    for kind in kinds:
        await asyncio.sleep(args.phase_gap_s)
        limit = asyncio.Semaphore(min(4, per_kind))
        start = time.time_ns()

        async def one(i: int, kind: Kind = kind, limit: asyncio.Semaphore = limit) -> Outcome:
            async with limit:
                return await driver.send(kind, "root", 100_000 + i)

        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(per_kind))), driver.timeout_s * per_kind + 30
        )
        phases.append(Phase(kind.name, start, time.time_ns(), list(outcomes)))
    await asyncio.sleep(args.phase_gap_s)
    return phases


# -- analysis --------------------------------------------------------------------------------

INGRESS_MARKERS = ("InferenceService/", "GraphService/CreateRun", "chat/completions", "POST")


def role_of(span: StoredSpan) -> str:
    if span.service == BENCH_SERVICE:
        return "caller"
    if span.name == "maestro.route.choose":
        return "route"
    if span.name.startswith("chat ") and span.kind == "client":
        return "chat"
    if span.name == "serve.vllm.request":
        return "lane"
    if span.name == "agent.node.run":
        return "node"
    if span.name == "tool.call":
        return "tool"
    if span.service == LANE_SERVICE:
        return "lane-other"
    if span.kind == "server":
        is_http = any(k.startswith(("http.", "url.")) for k in span.attributes)
        if is_http or any(m in span.name for m in INGRESS_MARKERS):
            return "ingress"
        return "server-other"
    if span.kind == "client":
        return "rpc-client" if "rpc.system" in span.attributes else "provider"
    return "other"


PROVIDER_SIDE_PARENTS = frozenset({"chat", "provider"})


def trace_roles(spans: Iterable[StoredSpan]) -> dict[str, str]:
    """Span id -> role within one trace. A SERVER span under a `chat` or provider span (or
    from a simulator's service) is the provider's side of the hop (`provider`), not an ingress:
    a provider that traces (the simulator) answers under the propagated `traceparent`."""
    members = list(spans)
    base = {s.span_id: role_of(s) for s in members}
    roles = dict(base)
    for span in members:
        if span.kind != "server" or base[span.span_id] not in {"ingress", "server-other"}:
            continue
        if base.get(span.parent_span_id) in PROVIDER_SIDE_PARENTS or "sim" in span.service:
            roles[span.span_id] = "provider"
    return roles


REQUEST_ROLES = frozenset({"ingress", "route", "chat", "lane", "provider", "node", "tool"})


def expected_roles(kind: Kind, outcome: Outcome) -> list[tuple[str, ...]]:
    """Each entry: the roles any one of which must be present."""
    roles: list[tuple[str, ...]] = [("ingress",), ("route",), ("chat",)]
    if outcome.mode == "caller":
        roles.insert(0, ("caller",))
    if kind.transport == "run":
        roles.insert(-2, ("node",))
        roles.append(("provider", "lane"))
    elif outcome.deployment_id == LANE_DEPLOYMENT or (
        not outcome.deployment_id and kind.model == "tiny"
    ):
        roles.append(("lane",))
    else:
        roles.append(("provider",))
    return roles


def deployment_in(spans: Iterable[StoredSpan]) -> str:
    """The deployment that answered, as the `chat` span records it ("" if none does)."""
    for span in spans:
        if role_of(span) == "chat" and span.attributes.get("maestro.deployment_id"):
            return str(span.attributes["maestro.deployment_id"])
    return ""


def attempts_traced(spans: Sequence[StoredSpan]) -> int:
    """Provider attempts the trace shows: the data plane's CLIENT spans for them when it makes
    any, else the providers' and lane's own spans."""
    roles = trace_roles(spans)
    clients = sum(roles[s.span_id] == "provider" and s.kind == "client" for s in spans)
    servers = sum(roles[s.span_id] == "provider" and s.kind == "server" for s in spans)
    lanes = sum(roles[s.span_id] == "lane" for s in spans)
    return max(clients, servers + lanes)


def short(span_id: str) -> str:
    return span_id[:8]


def check_trace(
    spans: Sequence[StoredSpan], expected: Sequence[tuple[str, ...]], root_role: str
) -> list[str]:
    """Why this trace is not one linked tree holding the expected spans (empty: it is)."""
    if not spans:
        return ["no spans with this trace id"]
    reasons: list[str] = []
    role = trace_roles(spans)
    roles = Counter(role.values())
    for alternatives in expected:
        if not any(roles[r] for r in alternatives):
            reasons.append(f"missing {' or '.join(alternatives)} span")
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    orphans = [s for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    for name, count in Counter(s.name for s in orphans).items():
        reasons.append(f"orphan: {name} (parent not in the trace) x{count}")
    if len(roots) > 1:
        names = ", ".join(sorted({s.name for s in roots}))
        reasons.append(f"{len(roots)} roots: {names}")
    elif not roots and not orphans:
        reasons.append("no root")
    if len(roots) == 1 and role[roots[0].span_id] != root_role:
        reasons.append(
            f"root is {roots[0].name!r} ({role[roots[0].span_id]}), not the {root_role} span"
        )
    return reasons


def reason_key(reason: str) -> str:
    """A reason without its counts, for tallies."""
    return reason.split(" x", 1)[0]


@dataclass
class KindFigures:
    kind: str
    group: str
    mode: str
    sent: int = 0
    ok: int = 0
    linked: int = 0
    traces_found: int = 0
    fallbacks_taken: int = 0
    fallback_attempts_traced: int = 0
    """Of the requests that fell back: those whose trace holds a hop span per attempt."""
    lane_served: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return min(self.linked, self.sent) / self.sent if self.sent else float("nan")


def by_trace(spans: Iterable[StoredSpan]) -> dict[str, list[StoredSpan]]:
    out: dict[str, list[StoredSpan]] = defaultdict(list)
    for span in spans:
        out[span.trace_id].append(span)
    return out


def analyse(
    spans: list[StoredSpan],
    caller: LoadResult,
    phases: list[Phase],
    kinds: Sequence[Kind],
) -> dict[str, Any]:
    traces = by_trace(spans)
    # Spans of traces begun before the measured load (the warm-up calls) are left out.
    measured = {
        trace_id: members
        for trace_id, members in traces.items()
        if min(m.start_ns for m in members) >= caller.started_ns
    }
    kind_of = {k.name: k for k in kinds}
    figures: dict[tuple[str, str], KindFigures] = {}
    failures: list[dict[str, Any]] = []
    request_traces: set[str] = set()
    window_traces: set[str] = set()
    """root mode: the traces found in a kind's window."""

    def fig(kind: Kind, mode: str) -> KindFigures:
        key = (kind.name, mode)
        if key not in figures:
            figures[key] = KindFigures(kind.name, kind.group, mode)
        return figures[key]

    def tally(f: KindFigures, outcome: Outcome, reasons: list[str]) -> None:
        f.sent += 1
        f.ok += outcome.ok
        f.fallbacks_taken += outcome.fallbacks > 0
        f.lane_served += outcome.deployment_id == LANE_DEPLOYMENT
        if not reasons:
            f.linked += 1
        for reason in reasons:
            key = reason_key(reason)
            f.reasons[key] = f.reasons.get(key, 0) + 1

    def per_request(outcome: Outcome, root_role: str) -> None:
        kind = kind_of[outcome.kind]
        trace_spans = traces.get(outcome.trace_id, [])
        request_traces.add(outcome.trace_id)
        reasons = check_trace(trace_spans, expected_roles(kind, outcome), root_role)
        if outcome.mode == "caller" and outcome.run_trace_matches is False:
            reasons.append("Run.trace_id is not the creating call's trace")
        f = fig(kind, outcome.mode)
        f.traces_found += bool(trace_spans)
        if outcome.fallbacks and attempts_traced(trace_spans) >= 1 + outcome.fallbacks:
            f.fallback_attempts_traced += 1
        tally(f, outcome, reasons)
        if reasons and len(failures) < 400:
            failures.append(failure_record(outcome, trace_spans, reasons))

    for outcome in caller.outcomes:
        per_request(outcome, "caller")

    phase_notes: dict[str, dict[str, Any]] = {}
    for phase in phases:
        kind = kind_of[phase.kind]
        if kind.transport == "run":
            for outcome in phase.outcomes:
                per_request(outcome, "ingress")
            continue
        window = [
            t
            for t, members in traces.items()
            if t not in request_traces
            and t not in window_traces
            and phase.start_ns <= min(s.start_ns for s in members) <= phase.end_ns
            and any(r in REQUEST_ROLES for r in trace_roles(members).values())
        ]
        window_traces.update(window)
        f = fig(kind, "root")
        complete = 0
        fragment_shapes: Counter[str] = Counter()
        for t in window:
            members = traces[t]
            served = Outcome(kind.name, "root", trace_id=t, deployment_id=deployment_in(members))
            reasons = check_trace(members, expected_roles(kind, served), "ingress")
            if not reasons:
                complete += 1
            else:
                shape = "+".join(sorted(set(trace_roles(members).values())))
                fragment_shapes[shape] += 1
                if len(failures) < 400:
                    failures.append(failure_record(served, members, reasons))
            for reason in reasons:
                key = reason_key(reason)
                f.reasons[key] = f.reasons.get(key, 0) + 1
        f.traces_found = len(window)
        for outcome in phase.outcomes:
            f.sent += 1
            f.ok += outcome.ok
            f.fallbacks_taken += outcome.fallbacks > 0
            f.lane_served += outcome.deployment_id == LANE_DEPLOYMENT
        f.linked = min(complete, f.sent)
        phase_notes[phase.kind] = {
            "traces_in_window": len(window),
            "complete": complete,
            "fragments_by_roles": dict(fragment_shapes.most_common()),
        }

    return {
        "figures": [asdict(f) | {"share": f.share} for f in figures.values()],
        "failures": failures,
        "root_phases": phase_notes,
        "whereabouts": whereabouts(measured, request_traces | window_traces),
        "parents": parent_roles(measured, request_traces | window_traces),
        "hops_under_chat": hops_under_chat(measured, request_traces | window_traces),
        "resources": resources(spans),
    }


def failure_record(
    outcome: Outcome, spans: Sequence[StoredSpan], reasons: list[str]
) -> dict[str, Any]:
    ids = {s.span_id for s in spans}
    return {
        "kind": outcome.kind,
        "mode": outcome.mode,
        "trace_id": outcome.trace_id,
        "status": outcome.status,
        "deployment_id": outcome.deployment_id,
        "reasons": reasons,
        "spans": [
            {
                "name": s.name,
                "service": s.service,
                "kind": s.kind,
                "span": short(s.span_id),
                "parent": short(s.parent_span_id) if s.parent_span_id else "",
                "parent_present": (s.parent_span_id in ids) if s.parent_span_id else None,
            }
            for s in sorted(spans, key=lambda s: s.start_ns)
        ][:40],
    }


PLACES = ("in a request's trace", "elsewhere, a root", "elsewhere, under a parent")


def whereabouts(
    traces: Mapping[str, Sequence[StoredSpan]], request_traces: set[str]
) -> dict[str, dict[str, int]]:
    """Per role: spans in a request's trace, and elsewhere (as a root, or under a parent)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for trace_id, members in traces.items():
        roles = trace_roles(members)
        for span in members:
            role = roles[span.span_id]
            if role not in REQUEST_ROLES:
                continue
            if trace_id in request_traces:
                out[role][PLACES[0]] += 1
            elif not span.parent_span_id:
                out[role][PLACES[1]] += 1
            else:
                out[role][PLACES[2]] += 1
    return {role: dict(c) for role, c in sorted(out.items())}


def parent_roles(
    traces: Mapping[str, Sequence[StoredSpan]], request_traces: set[str]
) -> dict[str, dict[str, int]]:
    """Per role, in the requests' traces: the role of each span's parent."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for trace_id in request_traces:
        members = traces.get(trace_id, ())
        roles = trace_roles(members)
        for span in members:
            role = roles[span.span_id]
            if not span.parent_span_id:
                out[role]["(root)"] += 1
            else:
                out[role][roles.get(span.parent_span_id, "(absent)")] += 1
    return {role: dict(c.most_common()) for role, c in sorted(out.items())}


def hops_under_chat(
    traces: Mapping[str, Sequence[StoredSpan]], request_traces: set[str]
) -> dict[str, dict[str, int]]:
    """Per hop role (lane, provider): its spans in the requests' traces with a `chat` span among
    their ancestors, and without (a sibling of the call's span rather than inside it)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for trace_id in request_traces:
        members = traces.get(trace_id, ())
        roles = trace_roles(members)
        parent_of = {s.span_id: s.parent_span_id for s in members}
        for span in members:
            role = roles[span.span_id]
            if role not in {"lane", "provider"}:
                continue
            ancestor, seen = span.parent_span_id, 0
            while ancestor and roles.get(ancestor) != "chat" and seen < 64:
                ancestor, seen = parent_of.get(ancestor, ""), seen + 1
            out[role]["under chat" if ancestor else "not under chat"] += 1
    return {role: dict(c) for role, c in sorted(out.items())}


EXPECTED_RESOURCE = ("service.name", "service.version", "maestro.project", "jurisdiction")


def resources(spans: Sequence[StoredSpan]) -> dict[str, dict[str, Any]]:
    """Per service.name: its spans and the values of each resource attribute seen."""
    out: dict[str, dict[str, Any]] = {}
    for span in spans:
        entry = out.setdefault(span.service, {"spans": 0, "attributes": defaultdict(set)})
        entry["spans"] += 1
        for key, value in span.resource.items():
            if len(entry["attributes"][key]) < 5:
                entry["attributes"][key].add(str(value))
    return {
        service: {
            "spans": entry["spans"],
            "attributes": {k: sorted(v) for k, v in sorted(entry["attributes"].items())},
        }
        for service, entry in sorted(out.items())
    }


# -- where a break is ------------------------------------------------------------------------

HINTS = {
    # Where to look, from reading the code (commit aa91131 and the working tree of 2025-12-05);
    # the figures above are what the run measured.
    "missing ingress span": (
        "the entry process made no SERVER span for the request: gRPC servers get one from "
        "aio_server_interceptor (data_plane/maestro/core/rpc/server.py); the HTTP ingress from "
        "OpenAIIngress's tracing middleware (data_plane/maestro/data_plane/http_ingress.py)."
    ),
    "missing provider span": (
        "no span of the data plane's call to the provider: the relay's attempt "
        "(data_plane/maestro/data_plane/relay.py, Relay._attempt, which opens the stream "
        "through providers/openai_compat.py OpenAICompatClient.open, or litellm_adapter.py) "
        "makes no CLIENT span, and `maestro sim-provider` (data_plane/maestro/data_plane/sim/) "
        "exports none of its own under the `traceparent` it is sent."
    ),
    "missing lane span": (
        "no `serve.vllm.request` in the trace: the lane makes it in serving/app.py "
        "(VllmGateway) from the request's headers, which relay.py _trace_headers fills; see "
        "`whereabouts` for whether lane spans went to other traces or never arrived."
    ),
    "missing node span": (
        "no `agent.node.run` in the run's trace "
        "(control_plane/maestro/control_plane/graph/runtime.py, GraphRuntime._run_node)."
    ),
    "orphan: agent.node.run": (
        "control_plane/maestro/control_plane/graph/runtime.py, run_context(): a node span "
        "parented to a synthetic span id (Run.trace_id's first 16 hex digits) that no span "
        "has; the CreateRun server span should be the parent."
    ),
}


HINTS["missing provider or lane span"] = HINTS["missing provider span"]


def hint_for(reason: str) -> str:
    for key, hint in HINTS.items():
        if reason.startswith(key):
            return hint
    return ""


# -- report ----------------------------------------------------------------------------------


def summarise(figures: list[dict[str, Any]]) -> dict[str, Any]:
    def share(rows: list[dict[str, Any]]) -> dict[str, Any]:
        sent = sum(r["sent"] for r in rows)
        linked = sum(min(r["linked"], r["sent"]) for r in rows)
        return {"sent": sent, "linked": linked, "share": linked / sent if sent else None}

    out: dict[str, Any] = {}
    for mode in ("caller", "root"):
        rows = [r for r in figures if r["mode"] == mode]
        groups = sorted({r["group"] for r in rows})
        out[mode] = {
            "overall": share(rows),
            "by_group": {g: share([r for r in rows if r["group"] == g]) for g in groups},
            "by_transport": {
                t: share([r for r in rows if r["kind"].startswith(t)])
                for t in ("http", "grpc", "run")
            },
        }
    total = share(figures)
    out["overall"] = total
    out["goal"] = GOAL
    out["seed_floor"] = SEED_FLOOR
    out["goal_met"] = total["share"] is not None and total["share"] >= GOAL
    out["floor_met"] = total["share"] is not None and total["share"] >= SEED_FLOOR
    return out


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        "# Trace linkage (bench/trace_linkage_bench.py)",
        "",
        "Issue 19's acceptance: requests into `maestro up` + a remote `maestro data-plane` (+ the "
        "vLLM lane), every process exporting OTLP/gRPC to a receiver the bench serves "
        "(official OTLP protos); the share of requests whose ingress, route, chat, provider or "
        "lane (and, for runs, node) spans share one trace id and form one tree (one root, every "
        f"parent present). Goal {pct(GOAL)}, seed floor {pct(SEED_FLOOR)}.",
        "",
        f"Command: `{result['command']}`; wall time {result['wall_s']:.0f} s (load "
        f"{result['load']['wall_s']:.0f} s); machine: {result['machine']['nproc']} CPUs, load "
        f"average {result['machine']['loadavg_1m_at_start']:.2f} at start, commit "
        f"{result['machine']['commit']}"
        + (
            f" with modified files {', '.join(result['machine']['modified_files'])}"
            if result["machine"]["modified_files"]
            else ""
        )
        + f". Lane: {'on' if result['lane'] else 'off'}.",
        "",
        f"**Overall: {s['overall']['linked']} of {s['overall']['sent']} requests linked, "
        f"{pct(s['overall']['share'])}** (goal {pct(GOAL)}: "
        f"{'met' if s['goal_met'] else 'NOT met'}; floor {pct(SEED_FLOOR)}: "
        f"{'met' if s['floor_met'] else 'NOT met'}).",
        "",
        "| mode | overall | direct | fallback | lane | graph run | HTTP | gRPC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("caller", "root"):
        m = s[mode]
        g = m["by_group"]
        t = m["by_transport"]

        def cell(x: dict[str, Any] | None) -> str:
            return f"{pct(x['share'])} ({x['linked']}/{x['sent']})" if x and x["sent"] else "-"

        lines.append(
            f"| {mode} | {cell(m['overall'])} | {cell(g.get('direct'))} | "
            f"{cell(g.get('fallback'))} | {cell(g.get('lane'))} | {cell(g.get('graph run'))} | "
            f"{cell(t.get('http'))} | {cell(t.get('grpc'))} |"
        )
    lines += [
        "",
        "`caller`: the bench sends `traceparent` (its own span is the expected root); `root`: "
        "nothing is sent, the server's ingress span is the expected root (per kind alone in a "
        "window; runs by `Run.trace_id`).",
        "",
        "## Per kind",
        "",
        "| kind | mode | sent | answered ok | fell back (every attempt traced) | lane served | "
        "traces found | linked | "
        "share | reasons (requests) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["figures"], key=lambda r: (r["mode"], r["kind"])):
        reasons = "; ".join(
            f"{k}: {v}" for k, v in sorted(r["reasons"].items(), key=lambda x: -x[1])
        )
        lines.append(
            f"| {r['kind']} | {r['mode']} | {r['sent']} | {r['ok']} | {r['fallbacks_taken']} "
            f"({r['fallback_attempts_traced']}) | "
            f"{r['lane_served']} | {r['traces_found']} | {r['linked']} | {pct(r['share'])} | "
            f"{reasons or '-'} |"
        )
    reasons_total: Counter[str] = Counter()
    for r in result["figures"]:
        reasons_total.update(r["reasons"])
    lines += ["", "## Why requests are not linked, and where", ""]
    if not reasons_total:
        lines.append("Every request linked.")
    for reason, count in reasons_total.most_common():
        hint = hint_for(reason)
        lines.append(f"- **{reason}**: {count}" + (f". Where: {hint}" if hint else ""))
    lines += [
        "",
        "## Where each role's spans ended up",
        "",
        "| role | in a request's trace | elsewhere, a root | elsewhere, under a parent |",
        "|---|---|---|---|",
    ]
    for role, where in result["whereabouts"].items():
        cells = " | ".join(str(where.get(place, 0)) for place in PLACES)
        lines.append(f"| {role} | {cells} |")
    lines += [
        "",
        "## Parent of each role's spans (in the requests' traces)",
        "",
        "| role | parents |",
        "|---|---|",
    ]
    for role, parents in result["parents"].items():
        lines.append(f"| {role} | {', '.join(f'{p}: {n}' for p, n in parents.items())} |")
    hops = result["hops_under_chat"]
    if hops:
        lines += [
            "",
            "Hop spans inside the call's `chat` span (an ancestor) or not: "
            + "; ".join(
                f"{role}: {c.get('under chat', 0)} under, {c.get('not under chat', 0)} not"
                for role, c in hops.items()
            )
            + ". Not part of the linked criterion (a sibling still makes one tree).",
        ]
    if result["root_phases"]:
        lines += [
            "",
            "## Root mode: traces in each kind's window",
            "",
            "| kind | traces | complete | fragments, by the roles they hold |",
            "|---|---|---|---|",
        ]
        for kind, note in result["root_phases"].items():
            shapes = ", ".join(f"{k}: {v}" for k, v in note["fragments_by_roles"].items())
            lines.append(
                f"| {kind} | {note['traces_in_window']} | {note['complete']} | {shapes or '-'} |"
            )
    lines += [
        "",
        "## Resource attributes per service",
        "",
        "| service.name | spans | missing of "
        + ", ".join(f"`{k}`" for k in EXPECTED_RESOURCE)
        + " | resource attributes |",
        "|---|---|---|---|",
    ]
    for service, entry in result["resources"].items():
        missing = ", ".join(k for k in EXPECTED_RESOURCE if k not in entry["attributes"]) or "-"
        attrs = "; ".join(
            f"`{k}`={'/'.join(v)}"
            for k, v in entry["attributes"].items()
            if not k.startswith("telemetry.")
        )
        lines.append(f"| {service or '(none)'} | {entry['spans']} | {missing} | {attrs} |")
    lines += ["", "## First failures", ""]
    seen: set[tuple[str, str, str]] = set()
    shown = 0
    for failure in result["failures"]:
        key = (
            failure["kind"].split("-")[0],
            failure["mode"],
            "; ".join(map(reason_key, failure["reasons"])),
        )
        if key in seen:
            continue
        seen.add(key)
        shown += 1
        lines.append(
            f"- `{failure['kind']}` ({failure['mode']}, trace `{failure['trace_id']}`, status "
            f"{failure['status'] or '-'}, deployment {failure['deployment_id'] or '-'}): "
            + "; ".join(failure["reasons"])
        )
        for span in failure["spans"][:12]:
            parent = span["parent"] or "-"
            if span["parent_present"] is False:
                parent += " (absent)"
            lines.append(
                f"  - {span['name']} [{span['service']}, {span['kind']}] {span['span']} <- {parent}"
            )
        if shown >= 8:
            break
    c = result["receiver"]
    services = ", ".join(f"{k or '(none)'}: {v}" for k, v in sorted(c["services"].items()))
    stops = ", ".join(
        f"{p['name']} {p['stop_s']:.1f} s (exit {p['exit_code']})" for p in result["processes"]
    )
    lines += [
        "",
        f"Receiver: {c['spans']} spans in {c['trace_requests']} exports ({c['spans_dropped']} "
        f"dropped), {c['log_records']} log records ({c['traced_log_records']} with a trace "
        f"id), {c['metric_points']} metric points; spans per service: {services}.",
        f"Process stops (SIGTERM to exit): {stops}.",
        "",
    ]
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------


def bench_tracer(receiver: OtlpReceiver) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": BENCH_SERVICE}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True),
            max_queue_size=262_144,
            schedule_delay_millis=500,
        )
    )
    return provider


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    receiver = OtlpReceiver()
    receiver.start()
    progress(f"OTLP receiver on {receiver.endpoint}")
    kinds = [k for k in KINDS if args.lane or k.model != "tiny"]
    if args.only:
        kinds = [k for k in kinds if any(o in k.name for o in args.only)]
    provider = bench_tracer(receiver)
    procs: list[dict[str, Any]] = []
    try:
        async with stack(args, receiver) as s:
            progress(f"stack up: {s.startup_s}")
            driver = Driver(s, provider, args.timeout_s)
            try:
                # A few untimed calls per kind first (connections, the lane's first batch); their
                # traces are not counted.
                await asyncio.gather(*(driver.send(k, "root", -1) for k in kinds))
                await asyncio.sleep(args.phase_gap_s)
                progress(f"caller mode: {args.requests} requests over {len(kinds)} kinds")
                caller = await caller_load(driver, kinds, args.requests, args)
                progress(
                    f"caller mode: {len(caller.outcomes)} sent in {caller.wall_s:.0f} s "
                    f"({caller.not_started} not started)"
                )
                await asyncio.sleep(args.phase_gap_s)
                phases = (
                    await root_phases(driver, kinds, args.root_per_kind, args)
                    if args.root_per_kind
                    else []
                )
                progress(f"root mode: {sum(len(p.outcomes) for p in phases)} sent")
            finally:
                await driver.close()
            # The lane's replicas may be killed rather than shut down: give its exporters (200 ms
            # schedule) time before the processes stop.
            await asyncio.sleep(2.0)
            progress("stopping the processes (SIGTERM), then waiting for the last spans")
        procs = [{"name": p.name, "exit_code": p.exit_code, "stop_s": p.stop_s} for p in s.procs]
        if s.lane is not None:
            procs.append(
                {"name": "lane", "exit_code": s.lane.proc.exit_code, "stop_s": s.lane.proc.stop_s}
            )
        provider.shutdown()
        await asyncio.to_thread(receiver.wait_quiet, 3.0, 60.0)
    finally:
        provider.shutdown()
        receiver.stop()
    received = receiver.spans()
    # One copy of each span (an exporter that retried a batch the receiver had taken sends it
    # again); the copies are counted.
    unique = {(span.trace_id, span.span_id): span for span in received}
    spans = list(unique.values())
    progress(f"{len(received)} spans received ({len(received) - len(spans)} copies); analysing")
    if args.dump_spans:
        with args.dump_spans.open("w") as dump:
            for span in spans:
                dump.write(json.dumps(asdict(span), default=str) + "\n")
    analysis = analyse(spans, caller, phases, kinds)
    result: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/trace_linkage_bench.py", *sys.argv[1:]]),
        "machine": args.machine,
        "lane": args.lane,
        "startup_s": s.startup_s,
        "load": {
            "requests_planned": caller.planned,
            "requests_sent": len(caller.outcomes),
            "not_started": caller.not_started,
            "wall_s": caller.wall_s,
            "root_mode_sent": sum(len(p.outcomes) for p in phases),
            "concurrency": {
                "chat": args.concurrency,
                "lane": args.lane_concurrency,
                "run": args.run_concurrency,
            },
            "kinds": [asdict(k) for k in kinds],
        },
        "bsp_env": BSP_ENV,
        "receiver": asdict(receiver.counts) | {"duplicate_spans": len(received) - len(spans)},
        "processes": procs,
        **analysis,
        "summary": summarise(analysis["figures"]),
        "wall_s": time.monotonic() - started,
    }
    result["failures"] = result["failures"][:100]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="caller-mode requests")
    parser.add_argument("--root-per-kind", type=int, default=10, help="root-mode requests per kind")
    parser.add_argument("--concurrency", type=int, default=12, help="chat calls in flight")
    parser.add_argument("--lane-concurrency", type=int, default=4)
    parser.add_argument("--run-concurrency", type=int, default=4)
    parser.add_argument(
        "--timeout-s", type=float, default=90.0, help="per request (a run: to its end)"
    )
    parser.add_argument("--max-load-s", type=float, default=420.0, help="no request starts later")
    parser.add_argument("--phase-gap-s", type=float, default=1.5)
    parser.add_argument("--no-lane", dest="lane", action="store_false", help="skip the vLLM lane")
    parser.add_argument("--only", nargs="*", default=[], help="kinds whose name contains these")
    parser.add_argument("--quick", action="store_true", help="300 requests, results to a temp dir")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--dump-spans", type=Path, default=None, help="every span, JSON lines")
    args = parser.parse_args()
    if args.lane and not SERVING_PYTHON.exists():
        progress(f"{SERVING_PYTHON} is missing (make serving-setup): running without the lane")
        args.lane = False
    if args.quick:
        args.requests = min(args.requests, 300)
        args.root_per_kind = min(args.root_per_kind, 4)
    out: Path = args.out or (Path(tempfile.mkdtemp()) if args.quick else RESULTS)
    args.machine = machine(["grpcio", "opentelemetry-sdk", "opentelemetry-instrumentation-grpc"])
    result = uvloop.run(run(args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace_linkage.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    (out / "trace_linkage.md").write_text(text)
    print(text)
    s = result["summary"]["overall"]
    progress(f"linked {s['linked']} of {s['sent']} ({pct(s['share'])}); results in {out}")


if __name__ == "__main__":
    main()
