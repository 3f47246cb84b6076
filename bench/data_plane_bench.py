"""Data-plane benchmarks, one run, every Maestro figure against a baseline of the same run.

    .venv/bin/python bench/data_plane_bench.py           # about 4.5 minutes on 2 cores
    .venv/bin/python bench/data_plane_bench.py --quick   # a smoke run (results to a temp dir)

Processes: one simulated provider (`maestro sim-provider`, its own process) serving three
models: `sim-1` unpaced (as fast as it can write), `sim-ttft` unpaced after a fixed 20 ms time
to first token, `sim-paced` at 200 tokens/s; one `maestro up` (control plane + data plane,
routing config = one model group per sim model, logging at info, default telemetry, default
coalescing 16 tokens / 20 ms); for (2) only, the LiteLLM proxy with one worker
(`_litellm_proxy.py`). The load client is this process (`_load.run_load`, or the loops below).

(1) Relay tokens/s per process. Every relay runs in this process against the sim, the same
    concurrency (8, 32), 2,000-token completions, a bounded window each:
    (a) Maestro: the real data plane in process (`start_control_plane`, the same assembly as
        `maestro up`, without its ingresses; then `settle_heap()`, gc.collect + gc.freeze, as
        `maestro up` runs it once start-up is done), called as the ingresses call it:
        `InferenceService.stream` on the body the HTTP ingress would build (`call_input`):
        admission, routing, the relay with its coalescing, the native OpenAI-compatible
        client, telemetry. Counted: Delta.token_count.
    (b) Maestro through its LiteLLM adapter (reported, no goal): the same plane and call, on
        model group `sim-1-litellm`, a deployment of the same sim model with
        `model_info.client: litellm` (its `api_key: os.environ/MAESTRO_BENCH_SIM_KEY`, set in
        this process): what a LiteLLM-translated provider costs inside Maestro.
    (c) LiteLLM: `litellm.acompletion(model="openai/sim-1", api_base=sim, stream=True)`,
        iterating chunks; one content chunk is one token (the sim sends one per chunk).
    All relays run in this one frozen process (litellm is imported before the freeze). Once
    (1) is done, `gc.unfreeze()` (and a gc.collect) returns the heap to the collector, so the
    later sections' load client runs as an ordinary, unfrozen process.
    Figures: delivered tokens/s, and tokens per CPU-second of this process (the relaying
    process; the sim is measured apart), which is the capacity of one relay process per core
    when the shared sim, not the relay, limits the wall-clock rate. Also listed: the same per
    CPU-second figure of the `maestro up` process from (4), HTTP ingress included.
(2) Ingress vs the LiteLLM proxy (one worker) vs the sim directly: `run_load` (OpenAI mode),
    concurrency 16, max_tokens 256, one window each.
(3) Time to first token overhead: sequential requests (concurrency 1, 16 tokens), direct vs
    the HTTP ingress vs gRPC StreamChatCompletion; the p50/p99 differences. Judged on `sim-ttft`
    (the processes idle while the provider "thinks", as with a real one); `sim-1` (answers at
    once, caches stay warm) is reported beside it.
(4) Throughput of the `maestro up` process with coalescing at concurrency 32 (2,000-token
    completions, unpaced) for several coalescing settings and gRPC; and the delay coalescing
    adds, on a paced stream (`sim-paced`, 200 tokens/s): TTFT and inter-token gaps through
    Maestro against the sim directly. Per-request settings ride in the body's `maestro`
    object; `_load` has no option for extra body fields, so `_extra_body` patches its client.

CPU time of every process (/proc/<pid>/stat) is read at each window's edges: utilisation near
1.0 (one core) marks a single-threaded bottleneck; the machine has `nproc` cores in all.
Writes `results/data_plane_bench.md` and `results/data_plane_bench.json` next to this file.
"""

from __future__ import annotations

import os

# Before anything imports litellm: never fetch the price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import contextlib
import gc
import json
import math
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is on sys.path but the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson
import uvloop

from bench import _load
from bench._litellm_proxy import PROXY_MASTER_KEY, ensure_proxy_venv, start_litellm_proxy
from bench._load import LoadConfig, LoadReport, TargetKind, run_load
from bench._measure import machine as measure_machine

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT = "client (bench)"
SIM = "sim"
MAESTRO = "maestro up"
PROXY = "litellm proxy"
OTHERS = "other processes"
"""The machine's busy CPU time (/proc/stat) less this bench's processes: other work on the
shared machine, the kernel's softirq work for loopback traffic included."""
PROMPT = [{"role": "user", "content": "Write a long story about the sea."}]
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 90.0

GOAL_RELAY_RATIO = 20.0
GOAL_PROXY_RATIO = 20.0
GOAL_DIRECT_SHARE = 0.5
GOAL_TTFT_OVERHEAD_MS = 1.0
GOAL_COALESCED_TPS = 100_000.0

SIM_PROFILE = """\
models: [sim-1]
default: {}
per_model:
  sim-ttft: {ttft: {kind: fixed, ms: 20}}
  sim-paced: {tokens_per_s: 200}
"""
PACED_TOKENS_PER_S = 200
SIM_TTFT_MS = 20

ROUTER_CONFIG = """\
model_list:
  - model_name: sim-1
    litellm_params: {{model: openai/sim-1, api_base: "{base}"}}
    model_info: {{id: sim-a}}
  - model_name: sim-ttft
    litellm_params: {{model: openai/sim-ttft, api_base: "{base}"}}
    model_info: {{id: sim-ttft-a}}
  - model_name: sim-paced
    litellm_params: {{model: openai/sim-paced, api_base: "{base}"}}
    model_info: {{id: sim-paced-a}}
  - model_name: sim-1-litellm
    litellm_params: {{model: openai/sim-1, api_base: "{base}", api_key: os.environ/{key_env}}}
    model_info: {{id: sim-a-litellm, client: litellm}}
"""
ADAPTER_MODEL = "sim-1-litellm"
# The adapter deployment's key: routing files take only `os.environ/NAME` references (LiteLLM
# wants a key for `openai/...`; the sim ignores it). Set at import, before any plane starts, it is
# in this process's data plane and in `maestro up`'s environment.
SIM_KEY_ENV = "MAESTRO_BENCH_SIM_KEY"
os.environ.setdefault(SIM_KEY_ENV, "sk-none")

RELAY_MAESTRO = "Maestro (InferenceService.stream)"
RELAY_ADAPTER = "Maestro through its LiteLLM adapter (model_info.client: litellm)"
RELAY_LITELLM = "LiteLLM (litellm.acompletion)"

# Coalescing settings of (4): label -> the body's `maestro` object (None: the config defaults).
COALESCING: dict[str, dict[str, Any] | None] = {
    "default (16 tok / 20 ms)": None,
    "16 tok / 5 ms": {"max_chunk_tokens": 16, "max_chunk_delay_ms": 5},
    "none (1 tok / 0 ms)": {"max_chunk_tokens": 1, "max_chunk_delay_ms": 0},
}


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure; `--quick` shrinks every window."""

    relay_concurrency: tuple[int, ...] = (8, 32)
    relay_tokens: int = 2000
    relay_warmup_s: float = 1.0
    relay_window_s: float = 10.0
    ingress_concurrency: int = 16
    ingress_tokens: int = 256
    ingress_warmup_s: float = 1.0
    ingress_window_s: float = 10.0
    ttft_requests: int = 300
    ttft_warmup_requests: int = 20
    ttft_tokens: int = 16
    ttft_max_s: float = 30.0
    throughput_concurrency: int = 32
    throughput_tokens: int = 2000
    throughput_warmup_s: float = 1.0
    throughput_window_s: float = 8.0
    # One stream at a time: equal-length streams started together stay in lock-step, and each
    # wave's simultaneous arrivals would queue behind one another, hiding the coalescing delay.
    paced_concurrency: int = 1
    paced_tokens: int = 50
    paced_warmup_s: float = 1.0
    paced_window_s: float = 8.0


QUICK = Plan(
    relay_concurrency=(8,),
    relay_tokens=500,
    relay_warmup_s=0.3,
    relay_window_s=1.5,
    ingress_window_s=1.5,
    ingress_warmup_s=0.3,
    ttft_requests=30,
    ttft_warmup_requests=3,
    throughput_warmup_s=0.3,
    throughput_window_s=1.5,
    paced_warmup_s=0.3,
    paced_window_s=1.5,
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes and their CPU time -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proc:
    """A process this script started, in its own session so its whole group can be stopped."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after STOP_TIMEOUT_S."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def spawn(name: str, command: list[str], cwd: Path) -> Proc:
    log = cwd / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # [0] is field 3 (state)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def tree_cpu_s(pid: int, children: Mapping[int, list[int]]) -> float:
    """User + system CPU seconds of `pid` and its live descendants."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        fields = _stat_fields(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        stack.extend(children.get(current, ()))
    return total


def find_child(needle: bytes) -> int | None:
    """The pid of a child of this process whose command line contains `needle`."""
    for pid in _children().get(os.getpid(), ()):
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    times = os.times()
    snapshot = {CLIENT: times.user + times.system}
    children = _children()
    for name, pid in pids.items():
        snapshot[name] = tree_cpu_s(pid, children)
    snapshot[OTHERS] = machine_busy_s() - sum(snapshot.values())
    return snapshot


@dataclass(frozen=True, slots=True)
class CpuWindow:
    """CPU seconds each process spent in a window of `wall_s` seconds."""

    wall_s: float
    cpu_s: dict[str, float]

    def util(self, name: str) -> float:
        """Cores busy on average: 1.0 is one core all the time."""
        value = self.cpu_s.get(name)
        return value / self.wall_s if value is not None and self.wall_s > 0 else math.nan

    def busiest(self) -> str:
        """The busiest of this bench's processes."""
        ours = [name for name in self.cpu_s if name != OTHERS]
        return max(ours, key=lambda name: self.cpu_s[name]) if ours else "?"

    def text(self) -> str:
        """Each process's cores busy; the busiest one in capitals (the likely bottleneck)."""
        busiest = self.busiest()
        return ", ".join(
            f"{name.upper() if name == busiest else name} {self.util(name):.2f}"
            for name in self.cpu_s
        )


@contextlib.contextmanager
def cpu_window(pids: Mapping[str, int], into: list[CpuWindow]) -> Iterator[None]:
    before = cpu_snapshot(pids)
    started = time.perf_counter()
    yield
    wall = time.perf_counter() - started
    after = cpu_snapshot(pids)
    into.append(CpuWindow(wall, {name: after[name] - before[name] for name in before}))


# -- the sim and `maestro up` -----------------------------------------------------------------


async def wait_sim(proc: Proc, origin: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"the sim exited early:\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{origin}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the sim did not answer within {START_TIMEOUT_S:.0f} s:\n{proc.tail()}")


@dataclass(frozen=True, slots=True)
class MaestroUp:
    proc: Proc
    grpc_address: str
    openai_base_url: str
    api_key: str


def maestro_config(directory: Path, router: Path, *, http: bool) -> Path:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 2},
        "auth": {"mode": "api_key"},
        "store": {"sqlite_path": str(directory / "maestro.db")},
        "telemetry": {"service_name": "maestro-data-plane-bench"},
        # server.ready is an info line; nothing on the request path logs at info.
        "logging": {"level": "info" if http else "warning", "format": "json"},
        "routing": {
            "project": "demo",
            "config_file": str(router),
            "policy_files": [],
            "watch": False,
        },
        "data_plane": {"http_port": 0 if http else None, "simulated_provider": False},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "maestro.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


async def start_maestro(directory: Path, router: Path) -> MaestroUp:
    """`maestro up`; it runs `settle_heap()` itself just after logging server.ready, long
    before the first measured window."""
    config = maestro_config(directory, router, http=True)
    proc = spawn(MAESTRO, [str(BIN / "maestro"), "up", "--config", str(config)], directory)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"maestro up exited early:\n{proc.tail()}")
        with contextlib.suppress(OSError):
            for line in proc.log.read_text(errors="replace").splitlines():
                if '"server.ready"' not in line:
                    continue
                ready = json.loads(line)
                key = (directory / "demo-api-key").read_text().strip()
                return MaestroUp(proc, ready["address"], ready["openai_base_url"], key)
        await asyncio.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"maestro up was not ready within {START_TIMEOUT_S:.0f} s:\n{proc.tail()}")


# -- (1) relays in this process ---------------------------------------------------------------


@dataclass
class _Tally:
    deadline_ns: int
    max_requests: int
    tokens: int = 0
    requests: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


StreamOnce = Callable[[_Tally], Awaitable[None]]


async def relay_window(
    stream_once: StreamOnce, concurrency: int, window_s: float, max_requests: int = 100_000
) -> tuple[_Tally, float]:
    """`concurrency` workers stream request after request until the window closes; a stream
    open at the deadline stops counting there. Bounded by time and by request count."""
    clock = time.perf_counter_ns
    start = clock()
    tally = _Tally(start + int(window_s * 1e9), max_requests)

    async def worker() -> None:
        while clock() < tally.deadline_ns and tally.requests < tally.max_requests:
            tally.requests += 1
            try:
                async with asyncio.timeout(window_s + 30):
                    await stream_once(tally)
            except Exception as error:  # counted; one failure must not end the window
                tally.errors[type(error).__name__] += 1

    async with asyncio.timeout(window_s + 60):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, (clock() - start) / 1e9


@contextlib.asynccontextmanager
async def maestro_in_process(
    directory: Path, router: Path, max_tokens: int, models: tuple[str, ...]
) -> AsyncIterator[dict[str, StreamOnce]]:
    """The data plane as `maestro up` assembles it, in this process, with no ingress; yields,
    for each model group, a function that runs one call the way the HTTP ingress runs it and
    counts its tokens. The heap is settled (gc.collect + gc.freeze) once the plane is up, as
    `maestro up` does, and unfrozen again when the plane has stopped."""
    from maestro.app.config import load_config
    from maestro.app.server import start_control_plane
    from maestro.control_plane.projects.service import ProjectService
    from maestro.control_plane.projects.store import ProjectStore
    from maestro.control_plane.schema import MIGRATIONS
    from maestro.control_plane.store.opening import open_store
    from maestro.core.auth import Principal
    from maestro.core.heap import settle_heap
    from maestro.core.logs import configure_logging
    from maestro.core.telemetry import build_telemetry
    from maestro.data_plane.events import Delta
    from maestro.data_plane.http_ingress import ChatBody, call_input

    config = load_config(maestro_config(directory, router, http=False), env={})
    configure_logging(config.logging)
    # What `maestro up` does first: the routing files configure project `demo`, which must exist.
    sql = open_store(config.store, MIGRATIONS)
    try:
        ProjectService(ProjectStore(sql)).create_project("demo", "Demo project")
    finally:
        sql.close()
    telemetry = build_telemetry(config.telemetry)
    plane = await start_control_plane(config, telemetry)
    try:
        data = plane.data
        if data is None:
            raise RuntimeError("the data plane is disabled")
        service = data.service
        principal = Principal("demo", None)

        def relay(model: str) -> StreamOnce:
            body = {"model": model, "messages": PROMPT, "stream": True, "max_tokens": max_tokens}
            call = call_input(ChatBody.model_validate(body), "projects/demo")

            async def once(tally: _Tally) -> None:
                clock = time.perf_counter_ns
                async with contextlib.aclosing(service.stream(principal, call)) as events:
                    async for event in events:
                        if isinstance(event, Delta):
                            tally.tokens += event.token_count
                            if clock() >= tally.deadline_ns:
                                return
                tally.completed += 1

            return once

        relays = {model: relay(model) for model in models}
        settle_heap()  # as `maestro up` once start-up is done; litellm is already imported
        yield relays
    finally:
        await plane.stop(grace_s=0)
        telemetry.shutdown()
        # The rest of the run (the load client of (2)-(4)) is an ordinary, unfrozen process.
        gc.unfreeze()
        gc.collect()


def litellm_once(base_url: str, max_tokens: int) -> StreamOnce:
    import litellm

    litellm.suppress_debug_info = True
    acompletion: Any = litellm.acompletion

    async def once(tally: _Tally) -> None:
        clock = time.perf_counter_ns
        response: Any = await acompletion(
            model="openai/sim-1",
            api_base=base_url,
            api_key="sk-none",
            messages=PROMPT,
            max_tokens=max_tokens,
            stream=True,
        )
        try:
            async for chunk in response:
                choices = chunk.choices
                if choices and choices[0].delta.content:
                    tally.tokens += 1
                if clock() >= tally.deadline_ns:
                    return
            tally.completed += 1
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    return once


@dataclass(frozen=True, slots=True)
class RelayRow:
    relay: str
    concurrency: int
    tokens: int
    requests: int
    completed: int
    errors: dict[str, int]
    elapsed_s: float
    cpu: CpuWindow

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def tokens_per_cpu_s(self) -> float:
        """Per CPU-second of the relaying process (this one)."""
        cpu = self.cpu.cpu_s.get(CLIENT, 0.0)
        return self.tokens / cpu if cpu > 0 else math.nan


async def bench_relays(
    plan: Plan, directory: Path, sim_base: str, router: Path, pids: Mapping[str, int]
) -> list[RelayRow]:
    rows: list[RelayRow] = []
    progress("(1) importing litellm and starting the in-process data plane")
    litellm_stream = litellm_once(sim_base, plan.relay_tokens)
    async with maestro_in_process(
        directory / "in-process", router, plan.relay_tokens, ("sim-1", ADAPTER_MODEL)
    ) as maestro_streams:
        relays = (
            (RELAY_MAESTRO, maestro_streams["sim-1"]),
            (RELAY_ADAPTER, maestro_streams[ADAPTER_MODEL]),
            (RELAY_LITELLM, litellm_stream),
        )
        for concurrency in plan.relay_concurrency:
            for label, once in relays:
                await relay_window(once, concurrency, plan.relay_warmup_s)
                windows: list[CpuWindow] = []
                with cpu_window(pids, windows):
                    tally, elapsed = await relay_window(once, concurrency, plan.relay_window_s)
                row = RelayRow(
                    label,
                    concurrency,
                    tally.tokens,
                    tally.requests,
                    tally.completed,
                    dict(tally.errors),
                    elapsed,
                    windows[0],
                )
                rows.append(row)
                progress(
                    f"(1) {label} c={concurrency}: {row.tokens_per_s:,.0f} tokens/s, "
                    f"{row.tokens_per_cpu_s:,.0f} tokens per CPU-s, {row.completed} streams, "
                    f"errors {dict(tally.errors) or 0}; cores: {row.cpu.text()}"
                )
    return rows


# -- load runs (2), (3), (4) ------------------------------------------------------------------


@contextlib.contextmanager
def _extra_body(fields: Mapping[str, Any] | None) -> Iterator[None]:
    """Adds `fields` to every OpenAI request body `_load` sends (it has no option for them)."""
    if not fields:
        yield
        return
    original = _load._make_client

    def make(config: LoadConfig) -> _load._Client:
        client = original(config)
        if isinstance(client, _load._OpenAIClient):
            body = orjson.loads(client._body)
            body.update(fields)
            client._body = orjson.dumps(body)
        return client

    _load._make_client = make
    try:
        yield
    finally:
        _load._make_client = original


@dataclass(frozen=True, slots=True)
class LoadRow:
    section: str
    label: str
    report: LoadReport
    cpu: CpuWindow
    extra_body: dict[str, Any] | None = None

    @property
    def server(self) -> str:
        """The process that served this row's requests."""
        if self.label.startswith("Maestro"):
            return MAESTRO
        return PROXY if self.label.startswith("LiteLLM") else SIM

    @property
    def server_cpu_ms_per_request(self) -> float:
        cpu = self.cpu.cpu_s.get(self.server)
        requests = self.report.requests
        return cpu / requests * 1e3 if cpu is not None and requests else math.nan

    @property
    def chunks(self) -> int:
        """Content chunks of the successful requests: a first chunk plus one per gap."""
        return self.report.itl.count + self.report.ttft.count

    @property
    def tokens_per_chunk(self) -> float:
        return self.report.tokens / self.chunks if self.chunks else math.nan

    def tokens_per_cpu_s(self, process: str) -> float:
        cpu = self.cpu.cpu_s.get(process, 0.0)
        return self.report.tokens / cpu if cpu > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "label": self.label,
            "extra_body": self.extra_body,
            "report": self.report.to_json(),
            "tokens_per_chunk": _finite(self.tokens_per_chunk),
            "server": self.server,
            "server_cpu_ms_per_request": _finite(self.server_cpu_ms_per_request),
            "tokens_per_server_cpu_s": _finite(self.tokens_per_cpu_s(self.server)),
            "cpu": asdict(self.cpu),
            "cores_busy": {name: _finite(self.cpu.util(name)) for name in self.cpu.cpu_s},
        }


async def measure(
    section: str,
    label: str,
    config: LoadConfig,
    pids: Mapping[str, int],
    *,
    warmup_s: float = 0.0,
    warmup_requests: int = 0,
    extra_body: Mapping[str, Any] | None = None,
) -> LoadRow:
    """A warm-up run (discarded), then the measured run with every process's CPU around it."""
    with _extra_body(extra_body):
        if warmup_s > 0 or warmup_requests > 0:
            await run_load(
                replace(
                    config,
                    duration_s=warmup_s or config.duration_s,
                    max_requests=warmup_requests or config.max_requests,
                    warmup_s=0.0,
                )
            )
        windows: list[CpuWindow] = []
        with cpu_window(pids, windows):
            report = await run_load(config)
    row = LoadRow(section, label, report, windows[0], dict(extra_body) if extra_body else None)
    errors = dict(report.errors) or 0
    progress(
        f"({section}) {label}: {report.tokens_per_s:,.0f} tokens/s, {report.requests} requests, "
        f"TTFT p50/p99 {report.ttft.p50_ms:.2f}/{report.ttft.p99_ms:.2f} ms, ITL p50/p99 "
        f"{report.itl.p50_ms:.2f}/{report.itl.p99_ms:.2f} ms, errors {errors}; "
        f"cores: {row.cpu.text()}"
    )
    return row


def openai_load(target: str, api_key: str | None, **fields: Any) -> LoadConfig:
    return LoadConfig(target=target, target_kind=TargetKind.OPENAI, api_key=api_key, **fields)


async def bench_ttft(
    plan: Plan, sim_base: str, maestro: MaestroUp, pids: Mapping[str, int]
) -> list[LoadRow]:
    """`sim-ttft` (a provider that takes 20 ms to start, so each process idles between
    requests, as against a real provider) is the goal's figure; `sim-1` (answers at once, the
    processes never idle) shows the overhead with warm caches."""
    rows = []
    for model, note in (("sim-ttft", f"{SIM_TTFT_MS} ms TTFT"), ("sim-1", "no TTFT")):
        common: dict[str, Any] = {
            "model": model,
            "concurrency": 1,
            "max_tokens": plan.ttft_tokens,
            "duration_s": plan.ttft_max_s,
            "max_requests": plan.ttft_requests,
        }
        grpc_config = LoadConfig(
            target=maestro.grpc_address,
            target_kind=TargetKind.GRPC,
            api_key=maestro.api_key,
            **common,
        )
        targets = (
            (f"sim directly, {model} ({note}) (baseline)", openai_load(sim_base, None, **common)),
            (f"Maestro HTTP ingress, {model} ({note})",
             openai_load(maestro.openai_base_url, maestro.api_key, **common)),
            (f"Maestro gRPC StreamChatCompletion, {model} ({note})", grpc_config),
        )  # fmt: skip
        for label, config in targets:
            rows.append(
                await measure("3", label, config, pids, warmup_requests=plan.ttft_warmup_requests)
            )
    return rows


async def _direct_and_coalesced(
    section: str,
    baseline: str,
    common: Mapping[str, Any],
    warmup_s: float,
    sim_base: str,
    maestro: MaestroUp,
    pids: Mapping[str, int],
) -> list[LoadRow]:
    """The sim called directly, then the Maestro ingress at each coalescing setting."""
    rows = [
        await measure(
            section, baseline, openai_load(sim_base, None, **common), pids, warmup_s=warmup_s
        )
    ]
    for label, extra in COALESCING.items():
        rows.append(
            await measure(
                section,
                f"Maestro HTTP ingress, coalescing {label}",
                openai_load(maestro.openai_base_url, maestro.api_key, **common),
                pids,
                warmup_s=warmup_s,
                extra_body={"maestro": extra} if extra else None,
            )
        )
    return rows


async def bench_throughput(
    plan: Plan,
    sim_base: str,
    maestro: MaestroUp,
    pids: Mapping[str, int],
) -> list[LoadRow]:
    common: dict[str, Any] = {
        "model": "sim-1",
        "concurrency": plan.throughput_concurrency,
        "max_tokens": plan.throughput_tokens,
        "duration_s": plan.throughput_window_s,
    }
    rows = await _direct_and_coalesced(
        "4a",
        "sim directly (client-bound reference)",
        common,
        plan.throughput_warmup_s,
        sim_base,
        maestro,
        pids,
    )
    grpc_config = LoadConfig(
        target=maestro.grpc_address, target_kind=TargetKind.GRPC, api_key=maestro.api_key, **common
    )
    rows.append(
        await measure(
            "4a",
            f"Maestro gRPC StreamChatCompletion, coalescing {next(iter(COALESCING))}",
            grpc_config,
            pids,
            warmup_s=plan.throughput_warmup_s,
        )
    )
    return rows


async def bench_paced(
    plan: Plan, sim_base: str, maestro: MaestroUp, pids: Mapping[str, int]
) -> list[LoadRow]:
    common: dict[str, Any] = {
        "model": "sim-paced",
        "concurrency": plan.paced_concurrency,
        "max_tokens": plan.paced_tokens,
        "duration_s": plan.paced_window_s,
    }
    return await _direct_and_coalesced(
        "4b", "sim directly (baseline)", common, plan.paced_warmup_s, sim_base, maestro, pids
    )


async def bench_ingress(
    plan: Plan, sim_base: str, maestro: MaestroUp, pids: dict[str, int]
) -> list[LoadRow]:
    common: dict[str, Any] = {
        "model": "sim-1",
        "concurrency": plan.ingress_concurrency,
        "max_tokens": plan.ingress_tokens,
        "duration_s": plan.ingress_window_s,
    }
    progress("(2) starting the LiteLLM proxy (one worker)")
    python = await asyncio.to_thread(ensure_proxy_venv)
    rows: list[LoadRow] = []
    async with start_litellm_proxy(python, sim_base, "sim-1", free_port()) as proxy_base:
        proxy_pid = find_child(b"proxy_cli")
        with_proxy = {**pids, PROXY: proxy_pid} if proxy_pid is not None else dict(pids)
        targets = (
            ("LiteLLM proxy, 1 worker (baseline)", proxy_base, PROXY_MASTER_KEY),
            ("Maestro HTTP ingress", maestro.openai_base_url, maestro.api_key),
            ("sim directly (baseline)", sim_base, None),
        )
        for label, target, key in targets:
            config = openai_load(target, key, **common)
            rows.append(
                await measure("2", label, config, with_proxy, warmup_s=plan.ingress_warmup_s)
            )
    return rows


# -- report -----------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _n(value: float, digits: int = 2) -> str:
    """A number for a table; "-" when there is none."""
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def machine() -> dict[str, Any]:
    return measure_machine(
        ("maestro", "litellm", "aiohttp", "grpcio", "orjson", "uvloop", "openai")
    )


@dataclass(frozen=True, slots=True)
class Goal:
    section: str
    figure: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    passed: bool | None  # None: informational

    @property
    def verdict(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class Report:
    machine: dict[str, Any]
    plan: Plan
    relays: list[RelayRow] = field(default_factory=list)
    ingress: list[LoadRow] = field(default_factory=list)
    ttft: list[LoadRow] = field(default_factory=list)
    throughput: list[LoadRow] = field(default_factory=list)
    paced: list[LoadRow] = field(default_factory=list)
    wall_s: float = 0.0

    @staticmethod
    def _find(rows: list[LoadRow], start: str) -> LoadRow | None:
        return next((row for row in rows if row.label.startswith(start)), None)

    def goals(self) -> list[Goal]:
        goals: list[Goal] = []
        for concurrency in self.plan.relay_concurrency:
            found = {r.relay: r for r in self.relays if r.concurrency == concurrency}
            theirs = found.get(RELAY_LITELLM)
            if theirs is None:
                continue
            # Maestro's native client is judged; its LiteLLM adapter is reported.
            for label, who, judged in (
                (RELAY_MAESTRO, "", True),
                (RELAY_ADAPTER, ", Maestro's LiteLLM adapter", False),
            ):
                mine = found.get(label)
                if mine is None:
                    continue
                for what, a, b in (
                    ("tokens/s", mine.tokens_per_s, theirs.tokens_per_s),
                    ("tokens per CPU-s of the relay process", mine.tokens_per_cpu_s,
                     theirs.tokens_per_cpu_s),
                ):  # fmt: skip
                    ratio = _ratio(a, b)
                    goals.append(
                        Goal(
                            "1",
                            f"relay {what}, {concurrency} streams{who}, vs litellm.acompletion",
                            f"{a:,.0f}",
                            f"{b:,.0f}",
                            f"{ratio:.1f}x" if judged else f"{ratio:.2f}x",
                            f">= {GOAL_RELAY_RATIO:.0f}x" if judged else "(reported)",
                            ratio >= GOAL_RELAY_RATIO if judged else None,
                        )
                    )
        ingress = self._find(self.ingress, "Maestro")
        proxy = self._find(self.ingress, "LiteLLM")
        direct = self._find(self.ingress, "sim directly")
        if ingress is not None and proxy is not None:
            a, b = ingress.report.tokens_per_s, proxy.report.tokens_per_s
            goals.append(
                Goal("2", f"ingress tokens/s, {self.plan.ingress_concurrency} streams, vs "
                     "LiteLLM proxy (1 worker)", f"{a:,.0f}", f"{b:,.0f}", f"{_ratio(a, b):.1f}x",
                     f">= {GOAL_PROXY_RATIO:.0f}x", _ratio(a, b) >= GOAL_PROXY_RATIO)
            )  # fmt: skip
        if ingress is not None and direct is not None:
            a, b = ingress.report.tokens_per_s, direct.report.tokens_per_s
            goals.append(
                Goal("2", "ingress tokens/s vs the sim directly", f"{a:,.0f}", f"{b:,.0f}",
                     f"{_ratio(a, b):.2f}x", f">= {GOAL_DIRECT_SHARE:g}x",
                     _ratio(a, b) >= GOAL_DIRECT_SHARE)
            )  # fmt: skip
        for row in self.ttft:
            model = row.report.config.model
            base = next(
                (r for r in self.ttft
                 if r.label.startswith("sim directly") and r.report.config.model == model),
                None,
            )  # fmt: skip
            if base is None or row is base:
                continue
            p50 = row.report.ttft.p50_ms - base.report.ttft.p50_ms
            p99 = row.report.ttft.p99_ms - base.report.ttft.p99_ms
            # The goal is judged on the realistic provider (sim-ttft); the warm one is reported.
            judged = model == "sim-ttft"
            goals.append(
                Goal("3", f"TTFT overhead p50, {row.label}", f"{row.report.ttft.p50_ms:.2f} ms",
                     f"{base.report.ttft.p50_ms:.2f} ms", f"+{p50:.2f} ms",
                     f"<= +{GOAL_TTFT_OVERHEAD_MS:g} ms" if judged else "(reported)",
                     p50 <= GOAL_TTFT_OVERHEAD_MS if judged else None)
            )  # fmt: skip
            goals.append(
                Goal("3", f"TTFT overhead p99, {row.label}", f"{row.report.ttft.p99_ms:.2f} ms",
                     f"{base.report.ttft.p99_ms:.2f} ms", f"+{p99:.2f} ms", "(reported)", None)
            )  # fmt: skip
        coalesced = self._find(self.throughput, "Maestro HTTP ingress, coalescing default")
        reference = self._find(self.throughput, "sim directly")
        if coalesced is not None:
            a = coalesced.report.tokens_per_s
            b = reference.report.tokens_per_s if reference is not None else math.nan
            goals.append(
                Goal("4", f"coalesced tokens/s delivered by one maestro up process, "
                     f"{self.plan.throughput_concurrency} streams", f"{a:,.0f}",
                     f"{b:,.0f} (sim directly)", f"{_ratio(a, b):.2f}x",
                     f">= {GOAL_COALESCED_TPS:,.0f} tokens/s", a >= GOAL_COALESCED_TPS)
            )  # fmt: skip
            per_cpu = coalesced.tokens_per_cpu_s(MAESTRO)
            goals.append(
                Goal("4", "same, tokens per CPU-second of the maestro up process",
                     f"{per_cpu:,.0f}", "", "", "(reported)", None)
            )  # fmt: skip
        paced_base = self._find(self.paced, "sim directly")
        for row in self.paced:
            if paced_base is None or row is paced_base:
                continue
            itl50 = row.report.itl.p50_ms - paced_base.report.itl.p50_ms
            itl99 = row.report.itl.p99_ms - paced_base.report.itl.p99_ms
            ttft50 = row.report.ttft.p50_ms - paced_base.report.ttft.p50_ms
            goals.append(
                Goal("4", f"added delay on a {PACED_TOKENS_PER_S} tokens/s stream, "
                     f"{row.label.removeprefix('Maestro HTTP ingress, ')}",
                     f"ITL p50/p99 {row.report.itl.p50_ms:.1f}/{row.report.itl.p99_ms:.1f} ms",
                     f"{paced_base.report.itl.p50_ms:.1f}/{paced_base.report.itl.p99_ms:.1f} ms",
                     f"ITL +{itl50:.1f}/+{itl99:.1f} ms, TTFT p50 +{ttft50:.1f} ms",
                     "(reported)", None)
            )  # fmt: skip
        return goals

    # -- rendering --

    def table(self) -> str:
        m = self.machine
        v = m["versions"]
        goals = self.goals()
        fw = max((len(g.figure) for g in goals), default=6)
        lines = [
            f"Maestro data-plane benchmark, {m['date']}, commit {m['commit'] or '?'}"
            + (f" + uncommitted {', '.join(m['modified_files'])}" if m["modified_files"] else ""),
            f"{m['cpu']} ({m['nproc']} CPUs, nproc), Python {m['python']}, litellm "
            f"{v.get('litellm')}, aiohttp {v.get('aiohttp')}, grpcio {v.get('grpcio')}, "
            f"uvloop {v.get('uvloop')}",
            f"load average (1 min) {m['loadavg_1m_at_start']:.2f} at start, "
            f"{m.get('loadavg_1m_at_end', math.nan):.2f} at end (a shared machine)",
            "Processes: the sim, maestro up, the LiteLLM proxy (section 2 only) and this client "
            "share the cores;",
            "'cores busy' = CPU seconds / wall seconds of each process in the measured window "
            "(busiest in capitals);",
            f"'{OTHERS}' = the machine's busy time less ours (other work, kernel softirqs).",
            "",
            "Goals",
            f"{'sec':<4} {'figure':<{fw}} {'measured':>26} {'baseline':>22} {'ratio':>34} "
            f"{'goal':>20}  result",
        ]
        lines += [
            f"{g.section:<4} {g.figure:<{fw}} {g.measured:>26} {g.baseline:>22} {g.ratio:>34} "
            f"{g.goal:>20}  {g.verdict}"
            for g in goals
        ]
        if self.relays:
            p = self.plan
            w = max(len(r.relay) for r in self.relays)
            lines += [
                "",
                f"(1) Relay in this process (heap settled as in maestro up), "
                f"{p.relay_tokens}-token unpaced completions from the sim, "
                f"{p.relay_window_s:g} s window after {p.relay_warmup_s:g} s warm-up",
                f"{'relay':<{w}} {'streams':>7} {'tokens/s':>10} {'tok/CPU-s':>10} "
                f"{'completed':>9} {'errors':>6}  cores busy",
            ]
            lines += [
                f"{r.relay:<{w}} {r.concurrency:>7} {r.tokens_per_s:>10,.0f} "
                f"{r.tokens_per_cpu_s:>10,.0f} {r.completed:>9} {sum(r.errors.values()):>6}  "
                f"{r.cpu.text()}"
                for r in self.relays
            ]
            coalesced = self._find(self.throughput, "Maestro HTTP ingress, coalescing default")
            if coalesced is not None:
                lines.append(
                    f"{'maestro up process (HTTP ingress, 4a)':<{w}} "
                    f"{self.plan.throughput_concurrency:>7} "
                    f"{coalesced.report.tokens_per_s:>10,.0f} "
                    f"{coalesced.tokens_per_cpu_s(MAESTRO):>10,.0f}   (tok/CPU-s of maestro up)"
                )
        sections = (
            ("(2) Concurrent streaming through each relay, "
             f"{self.plan.ingress_concurrency} streams, max_tokens {self.plan.ingress_tokens}, "
             f"{self.plan.ingress_window_s:g} s window", self.ingress),
            (f"(3) Sequential requests, max_tokens {self.plan.ttft_tokens}; sim-ttft: fixed "
             f"{SIM_TTFT_MS} ms TTFT then unpaced; sim-1: no TTFT", self.ttft),
            (f"(4a) maestro up throughput, {self.plan.throughput_concurrency} streams, "
             f"max_tokens {self.plan.throughput_tokens}, unpaced sim", self.throughput),
            (f"(4b) Paced stream ({PACED_TOKENS_PER_S} tokens/s), {self.plan.paced_concurrency} "
             f"streams, max_tokens {self.plan.paced_tokens}", self.paced),
        )  # fmt: skip
        for title, rows in sections:
            if rows:
                lines += ["", title, *self._load_table(rows)]
        lines.append(f"\nwall time {self.wall_s:.0f} s")
        return "\n".join(lines)

    @staticmethod
    def _load_table(rows: list[LoadRow]) -> list[str]:
        out = [
            f"{'target':<70} {'req':>6} {'err':>4} {'tokens/s':>10} {'tok/':>6} "
            f"{'TTFT p50':>9} {'p99':>7} {'ITL p50':>8} {'p99':>7} {'server CPU':>11} "
            f"{'tok/server':>11}  cores busy",
            f"{'':<70} {'':>6} {'':>4} {'':>10} {'chunk':>6} {'ms':>9} {'ms':>7} {'ms':>8} "
            f"{'ms':>7} {'ms/request':>11} {'CPU-s':>11}",
        ]
        for row in rows:
            r = row.report
            out.append(
                f"{row.label:<70} {r.requests:>6} {r.failed:>4} {_n(r.tokens_per_s, 0):>10} "
                f"{_n(row.tokens_per_chunk, 1):>6} {_n(r.ttft.p50_ms):>9} {_n(r.ttft.p99_ms):>7} "
                f"{_n(r.itl.p50_ms):>8} {_n(r.itl.p99_ms):>7} "
                f"{_n(row.server_cpu_ms_per_request):>11} "
                f"{_n(row.tokens_per_cpu_s(row.server), 0):>11}  {row.cpu.text()}"
            )
        return out

    def markdown(self, command: str, notes: str) -> str:
        m = self.machine
        lines = [
            "# Data-plane benchmark results",
            "",
            f"`{command}`",
            "",
            f"- date: {m['date']}; commit {m['commit'] or '?'}"
            + (f" (uncommitted: {', '.join(m['modified_files'])})" if m["modified_files"] else ""),
            f"- machine: {m['cpu']}, nproc {m['nproc']}, Python {m['python']}, {m['platform']}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
            f"- load average (1 min): {m['loadavg_1m_at_start']:.2f} at start, "
            f"{m.get('loadavg_1m_at_end', math.nan):.2f} at end",
            f"- wall time: {self.wall_s:.0f} s",
            "- cores busy: CPU seconds / wall seconds of each process over the measured window "
            f"(1.00 = one core; {m['nproc']} in all); the busiest of the bench's processes in "
            f"capitals; '{OTHERS}' is the machine's busy time less the bench's processes "
            "(other work on this shared machine, kernel softirq time of loopback traffic).",
            "",
            "## Goals",
            "",
            "| section | figure | measured | baseline (same run) | ratio / difference | goal "
            "| result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {g.section} | {g.figure} | {g.measured} | {g.baseline} | {g.ratio} | "
            f"{g.goal.replace('>=', '≥').replace('<=', '≤')} | {g.verdict} |"
            for g in self.goals()
        ]
        if self.relays:
            p = self.plan
            lines += [
                "",
                "## (1) Relay tokens/s per process, Maestro vs LiteLLM",
                "",
                f"In this process, {p.relay_tokens}-token unpaced completions from the sim, "
                f"{p.relay_window_s:g} s window after a {p.relay_warmup_s:g} s warm-up. Maestro: "
                "the data plane assembled as `maestro up` does, called through "
                "`InferenceService.stream` (routing, relay, coalescing, native client, telemetry);"
                " Maestro through its LiteLLM adapter (reported, no goal): the same plane and "
                f"call on model group `{ADAPTER_MODEL}`, a deployment of the same sim model with "
                f"`model_info.client: litellm` and `api_key: os.environ/{SIM_KEY_ENV}`, so the "
                "provider call goes through `litellm.acompletion` inside Maestro; LiteLLM: "
                "`litellm.acompletion(stream=True)` called bare. As in `maestro up`, "
                "`settle_heap()` (gc.collect + gc.freeze) runs once the plane is started and "
                "configured, before any measurement, with litellm already imported: all relays "
                "run in this same frozen process. When (1) is done, `gc.unfreeze()` (and a "
                "gc.collect) hands the heap back to the collector, so the load client of the "
                "later sections runs as an ordinary, unfrozen process. tok/CPU-s: tokens per "
                "CPU-second of this (the relaying) process.",
                "",
                "| relay | streams | tokens/s | tokens per CPU-s | streams completed | errors "
                "| cores busy |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {r.relay} | {r.concurrency} | {r.tokens_per_s:,.0f} | "
                f"{r.tokens_per_cpu_s:,.0f} | {r.completed} | {sum(r.errors.values())} | "
                f"{r.cpu.text()} |"
                for r in self.relays
            ]
            coalesced = self._find(self.throughput, "Maestro HTTP ingress, coalescing default")
            if coalesced is not None:
                lines.append(
                    f"| `maestro up` process, HTTP ingress included (from 4a) | "
                    f"{self.plan.throughput_concurrency} | {coalesced.report.tokens_per_s:,.0f} | "
                    f"{coalesced.tokens_per_cpu_s(MAESTRO):,.0f} (of maestro up) | | | "
                    f"{coalesced.cpu.text()} |"
                )
        sections = (
            ("## (2) Ingress vs LiteLLM proxy (one worker) vs the sim directly",
             f"`run_load`, {self.plan.ingress_concurrency} concurrent streams, max_tokens "
             f"{self.plan.ingress_tokens}, {self.plan.ingress_window_s:g} s window after "
             f"{self.plan.ingress_warmup_s:g} s warm-up, one sim behind all three.", self.ingress),
            ("## (3) TTFT overhead",
             f"Sequential (concurrency 1) requests, {self.plan.ttft_requests} per path after "
             f"{self.plan.ttft_warmup_requests} warm-up, max_tokens {self.plan.ttft_tokens}; "
             f"model `sim-ttft` (fixed {SIM_TTFT_MS} ms TTFT, then unpaced: every process "
             "idles while waiting, as with a real provider; the goal's figure) and `sim-1` "
             "(no TTFT: caches stay warm). Server CPU per request: the serving process's CPU "
             "time over the window / requests.",
             self.ttft),
            ("## (4a) Throughput of one `maestro up` process with coalescing",
             f"{self.plan.throughput_concurrency} concurrent streams, max_tokens "
             f"{self.plan.throughput_tokens}, unpaced sim, {self.plan.throughput_window_s:g} s "
             "window. Coalescing per request in the body's `maestro` object "
             "(`max_chunk_tokens`, `max_chunk_delay_ms`); the default row uses the config "
             "defaults.", self.throughput),
            ("## (4b) Delay added by coalescing on a paced stream",
             f"Model `sim-paced` ({PACED_TOKENS_PER_S} tokens/s, one token per "
             f"{1000 / PACED_TOKENS_PER_S:g} ms), {self.plan.paced_concurrency} streams, "
             f"max_tokens {self.plan.paced_tokens}, {self.plan.paced_window_s:g} s window. ITL "
             "is the gap between consecutive content chunks as the client sees them. The relay "
             "sends a call's first output at once; coalescing applies to what follows.",
             self.paced),
        )  # fmt: skip
        for title, text, rows in sections:
            if not rows:
                continue
            lines += [
                "",
                title,
                "",
                text,
                "",
                "| target | requests | failed | tokens/s | tokens/chunk | TTFT p50 ms | "
                "TTFT p99 ms | ITL p50 ms | ITL p99 ms | server CPU ms/request | "
                "tokens per server CPU-s | cores busy |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for row in rows:
                r = row.report
                lines.append(
                    f"| {row.label} | {r.requests} | {r.failed} | {_n(r.tokens_per_s, 0)} | "
                    f"{_n(row.tokens_per_chunk, 1)} | {_n(r.ttft.p50_ms)} | {_n(r.ttft.p99_ms)} | "
                    f"{_n(r.itl.p50_ms)} | {_n(r.itl.p99_ms)} | "
                    f"{_n(row.server_cpu_ms_per_request)} | "
                    f"{_n(row.tokens_per_cpu_s(row.server), 0)} | {row.cpu.text()} |"
                )
        if notes:
            lines += ["", "## Notes", "", notes.strip()]
        lines += ["", "## Console output", "", "```", self.table(), "```", ""]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "plan": asdict(self.plan),
            "relays": [
                {
                    **{k: v for k, v in asdict(r).items() if k != "cpu"},
                    "tokens_per_s": _finite(r.tokens_per_s),
                    "tokens_per_cpu_s": _finite(r.tokens_per_cpu_s),
                    "cpu": asdict(r.cpu),
                }
                for r in self.relays
            ],
            "ingress": [row.to_json() for row in self.ingress],
            "ttft": [row.to_json() for row in self.ttft],
            "throughput": [row.to_json() for row in self.throughput],
            "paced": [row.to_json() for row in self.paced],
            "goals": [{**asdict(g), "verdict": g.verdict} for g in self.goals()],
            "wall_s": self.wall_s,
        }


# -- main -------------------------------------------------------------------------------------


async def run(plan: Plan, directory: Path, sections: set[str]) -> Report:
    report = Report(machine(), plan)
    started = time.perf_counter()
    procs: list[Proc] = []
    try:
        sim_port = free_port()
        (directory / "sim-profile.yaml").write_text(SIM_PROFILE)
        sim = spawn(
            SIM,
            [str(BIN / "maestro"), "sim-provider", "--port", str(sim_port), "--profile",
             str(directory / "sim-profile.yaml")],
            directory,
        )  # fmt: skip
        procs.append(sim)
        sim_origin = f"http://127.0.0.1:{sim_port}"
        sim_base = f"{sim_origin}/v1"
        router = directory / "router.yaml"
        router.write_text(ROUTER_CONFIG.format(base=sim_base, key_env=SIM_KEY_ENV))
        await wait_sim(sim, sim_origin)
        progress(f"sim ready at {sim_base} (pid {sim.pid})")
        maestro = await start_maestro(directory / "maestro-up", router)
        procs.append(maestro.proc)
        progress(
            f"maestro up ready: gRPC {maestro.grpc_address}, {maestro.openai_base_url} "
            f"(pid {maestro.proc.pid})"
        )
        pids = {SIM: sim.pid, MAESTRO: maestro.proc.pid}
        if "1" in sections:
            report.relays = await bench_relays(plan, directory, sim_base, router, pids)
        if "3" in sections:
            report.ttft = await bench_ttft(plan, sim_base, maestro, pids)
        if "4" in sections:
            report.throughput = await bench_throughput(plan, sim_base, maestro, pids)
            report.paced = await bench_paced(plan, sim_base, maestro, pids)
        if "2" in sections:
            report.ingress = await bench_ingress(plan, sim_base, maestro, pids)
        for proc in procs:
            if not proc.alive() and proc.popen.returncode not in (0, -signal.SIGTERM):
                raise RuntimeError(f"{proc.name} died during the run:\n{proc.tail()}")
    finally:
        for proc in reversed(procs):
            proc.stop()
    report.wall_s = time.perf_counter() - started
    report.machine["loadavg_1m_at_end"] = os.getloadavg()[0]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Maestro data-plane benchmarks.")
    parser.add_argument("--quick", action="store_true", help="a smoke run with short windows")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where results go (default: bench/results; --quick: a temp dir)",
    )
    parser.add_argument(
        "--sections", default="1234", help="which sections to run, e.g. 14 (default: all)"
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="a Markdown file whose text goes into the results' Notes section",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    results: Path = args.results or (
        Path(tempfile.gettempdir()) / "maestro-data-plane-bench-quick" if args.quick else RESULTS
    )
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maestro-data-plane-bench-") as directory:
        report = uvloop.run(run(plan, Path(directory), set(args.sections)))
    table = report.table()
    print(table)
    command = "bench/data_plane_bench.py" + (" --quick" if args.quick else "")
    notes = args.notes.read_text() if args.notes is not None else ""
    (results / "data_plane_bench.json").write_text(
        json.dumps(report.as_json(), indent=2, allow_nan=True) + "\n"
    )
    (results / "data_plane_bench.md").write_text(
        report.markdown(f".venv/bin/python {command}", notes)
    )
    progress(f"wrote {results / 'data_plane_bench.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
