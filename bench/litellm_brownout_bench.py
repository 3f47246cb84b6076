"""A LiteLLM proxy config through a brownout of its primary: Maestro vs the LiteLLM proxy.

    .venv/bin/python bench/litellm_brownout_bench.py            # 5,000 calls per system
    .venv/bin/python bench/litellm_brownout_bench.py --quick    # 300 calls, results to a temp dir
    .venv/bin/python bench/litellm_brownout_bench.py --calls 1000 --systems maestro

Issue 16's acceptance item: a LiteLLM proxy config with `stream_timeout: 2`, `num_retries: 1`
and `fallbacks`, started with no Maestro-specific setting, completes at least 99.9 % of 5,000
streamed calls at 16 in flight through a brownout of its primary (70 % of the run with 50 %
faults: 500, 429 with Retry-After, a stall after a few tokens, a mid-stream cut, a 5 s first
token); the same run through the LiteLLM proxy (one worker) on the same config beside it.

The config (`ROUTER_CONFIG`, written to the run's folder and recorded in the results) is a
typical LiteLLM proxy config and nothing else: model groups `primary` and `backup`, one
deployment each on the simulated provider (`openai/sim-primary`, `openai/sim-backup`, `api_key:
os.environ/BROWNOUT_SIM_KEY`), `timeout: 10` and `stream_timeout: 2` on each, and
`router_settings: {num_retries: 1, fallbacks: [{primary: [backup]}]}`. Maestro runs it with
`maestro up --http-port 0` on a server config that names only its gRPC port, auth (API keys,
the demo key), its SQLite path and the routing file: no `data_plane.*` setting. The proxy runs
the same file with one worker (`_litellm_proxy.start_litellm_proxy_config`; its master key
comes from its environment, so the file carries none).

The simulated provider (`maestro sim-provider`, its own process, restarted for each system) is
healthy to begin with: 50 ms to first token, then 100 tokens/s. Calls are numbered in the
order they start; just before call `0.15 * calls` starts the brownout profile is put in place
(`PUT /admin/faults`: a brownout window of `sim-primary` from then on), and just before call
`0.85 * calls` the healthy profile again, so 70 % of the calls start inside the brownout
whatever each system's pace; no call starts while the profile is being switched. In the
brownout, 50 % of `sim-primary`'s requests are faulty: 10 % answer HTTP 500, 10 % HTTP 429
with `retry-after: 1`, and of the rest each of these is drawn independently at 14.5 %: a stall
after 2 to 6 tokens that lasts until the client goes away, a cut of the connection after 4 to
24 of the 32 tokens (no finish_reason, no [DONE]), a 5 s first token (the sim's
`slow_first_token_rate`); 1 - 0.8 * 0.855^3 = 50 % of requests get at least one. `sim-backup`
stays healthy.

The client (this process) sends raw SSE requests with aiohttp: `model: primary`, `stream:
true`, `max_tokens: 32`, 16 in flight, each call under a 15 s `asyncio.timeout`. A call is
complete only if it answers 200 and ends normally before the deadline: a chunk with a
`finish_reason`, then `data: [DONE]`, no error event, and non-empty content. Anything else is
a failure, by kind: `http_<status>`, `deadline_before_content` / `deadline_after_content`,
`error_event` (an SSE event carrying `error`), `truncated` (the stream ended or broke without
`[DONE]`), `no_finish_reason`, `empty`, `connection` (no response at all). Each system gets a
short healthy warm-up first (not counted) and a wall-clock cap (calls never started count as
`not_started`). Recorded per system: completed %, inside and outside the brownout, failures by
kind with a few samples of their text, latency and TTFT p50/p99 of completed calls, wall time,
the sim's counters, each process's CPU, and where a completed call's text came from (exactly
`sim-primary`'s or `sim-backup`'s deterministic completion, or something else, e.g. a
continuation stitched after a failure).

Writes `results/litellm_brownout.md` and `results/litellm_brownout.json` next to this file.
"""

from __future__ import annotations

import os

# Before anything imports litellm: never fetch the price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is on sys.path but the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson
import uvloop

from bench._litellm_proxy import (
    PROXY_MASTER_KEY,
    ensure_proxy_venv,
    start_litellm_proxy_config,
)
from bench._measure import machine as measure_machine
from bench._measure import summarise
from bench.data_plane_bench import (
    CpuWindow,
    Proc,
    cpu_window,
    find_child,
    free_port,
    spawn,
    wait_sim,
)
from maestro.data_plane.sim import completion_text

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90.0

MAESTRO = "maestro"
PROXY = "litellm-proxy"
SYSTEM_LABELS = {MAESTRO: "Maestro (`maestro up`)", PROXY: "LiteLLM proxy (1 worker)"}

GOAL_COMPLETED = 0.999
CONCURRENCY = 16
DEADLINE_S = 15.0
MAX_TOKENS = 32
TOKENS_PER_S = 100
TTFT_MS = 50
BROWNOUT_START = 0.15
BROWNOUT_SHARE = 0.70
ISSUE_FAULT_SHARE = 0.50
FAULT_SHARE = ISSUE_FAULT_SHARE
ERROR_RATE = 0.20  # half 500, half 429
STREAM_FAULTS = 3  # stall, cut, slow first token: each drawn independently among the rest


def stream_fault_rate(fault_share: float) -> float:
    """The rate of each stream fault that, with ERROR_RATE, makes `fault_share` faulty."""
    return round(1 - float(((1 - fault_share) / (1 - ERROR_RATE)) ** (1 / STREAM_FAULTS)), 4)


STREAM_FAULT_RATE = stream_fault_rate(FAULT_SHARE)
SLOW_FIRST_TOKEN_MS = 5000
RETRY_AFTER_S = 1
WARMUP_CALLS = 32
SIM_KEY_ENV = "BROWNOUT_SIM_KEY"
os.environ.setdefault(SIM_KEY_ENV, "sk-sim-none")  # the sim ignores it; LiteLLM wants one

PRIMARY, BACKUP = "primary", "backup"
SIM_PRIMARY, SIM_BACKUP = "sim-primary", "sim-backup"
MESSAGES = [{"role": "user", "content": "Write a short paragraph about the sea."}]
SAMPLES_PER_KIND = 3

ROUTER_CONFIG = """\
# A typical LiteLLM proxy config: two model groups, a per-deployment stream timeout, one retry
# and a fallback from primary to backup. Nothing in it is Maestro's.
model_list:
  - model_name: {primary}
    litellm_params:
      model: openai/{sim_primary}
      api_base: {api_base}
      api_key: os.environ/{key_env}
      timeout: 10
      stream_timeout: 2
  - model_name: {backup}
    litellm_params:
      model: openai/{sim_backup}
      api_base: {api_base}
      api_key: os.environ/{key_env}
      timeout: 10
      stream_timeout: 2
router_settings:
  num_retries: 1
  fallbacks:
    - {primary}: [{backup}]
"""


def router_config(api_base: str) -> str:
    return ROUTER_CONFIG.format(
        primary=PRIMARY,
        backup=BACKUP,
        sim_primary=SIM_PRIMARY,
        sim_backup=SIM_BACKUP,
        api_base=api_base,
        key_env=SIM_KEY_ENV,
    )


def sim_profile(brownout: bool) -> dict[str, Any]:
    """The sim's profile: healthy, or with `sim-primary` browned out from the moment it is put."""
    profile: dict[str, Any] = {
        "seed": 16,
        "models": [SIM_PRIMARY, SIM_BACKUP],
        "default": {"ttft": {"kind": "fixed", "ms": TTFT_MS}, "tokens_per_s": TOKENS_PER_S},
    }
    if brownout:
        profile["brownouts"] = [
            {
                "start_s": 0,
                "end_s": 86_400,
                "models": [SIM_PRIMARY],
                "faults": {
                    "error_rate": ERROR_RATE,
                    "error_codes": {"500": 1, "429": 1},
                    "retry_after_s": RETRY_AFTER_S,
                    "stall_rate": STREAM_FAULT_RATE,
                    "stall_after": {"lo": 2, "hi": 6},
                    "stall_ms": None,
                    "cut_rate": STREAM_FAULT_RATE,
                    "cut_after": {"lo": 4, "hi": 24},
                    "slow_first_token_rate": STREAM_FAULT_RATE,
                    "slow_first_token_ms": SLOW_FIRST_TOKEN_MS,
                },
            }
        ]
    return profile


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- one call -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    index: int
    in_brownout: bool
    kind: str = "not_started"
    latency_ns: int = 0
    ttft_ns: int | None = None
    content: str = ""
    detail: str = ""


async def stream_call(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, call: Call
) -> None:
    """One streamed call, classified into `call` (see the module's docstring)."""
    clock = time.perf_counter_ns
    started = clock()
    parts: list[str] = []
    status: int | None = None
    finish: str | None = None
    done = False
    error_event: Any = None
    try:
        async with (
            asyncio.timeout(DEADLINE_S),
            session.post(url, data=body, headers=headers) as response,
        ):
            status = response.status
            if status != 200:
                call.kind = f"http_{status}"
                call.detail = (await response.text(errors="replace"))[:300]
                return
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    error_event = error_event or f"not JSON: {payload[:200]!r}"
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("error") is not None:
                    error_event = error_event or event["error"]
                    continue
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content:
                        if not parts:
                            call.ttft_ns = clock() - started
                        parts.append(content)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
    except TimeoutError:
        call.kind = "deadline_after_content" if parts else "deadline_before_content"
    except (aiohttp.ClientError, OSError) as error:
        call.kind = "truncated" if status == 200 else "connection"
        call.detail = f"{type(error).__name__}: {error}"[:300]
    else:
        if error_event is not None:
            call.kind = "error_event"
            call.detail = json.dumps(error_event, default=str)[:300]
        elif not done:
            call.kind = "truncated"
            call.detail = "the stream ended without [DONE]"
        elif finish is None:
            call.kind = "no_finish_reason"
        elif not parts:
            call.kind = "empty"
        else:
            call.kind = "complete"
    finally:
        call.latency_ns = clock() - started
        call.content = "".join(parts)


# -- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str
    api_key: str
    pid: int | None


async def put_profile(session: aiohttp.ClientSession, sim_origin: str, brownout: bool) -> None:
    async with session.put(f"{sim_origin}/admin/faults", json=sim_profile(brownout)) as response:
        if response.status != 200:
            raise RuntimeError(f"the sim refused the profile: {await response.text()}")


async def sim_stats(session: aiohttp.ClientSession, sim_origin: str, reset: bool = False) -> Any:
    method, path = ("POST", "/admin/stats/reset") if reset else ("GET", "/admin/stats")
    async with session.request(method, f"{sim_origin}{path}") as response:
        return await response.json()


async def run_calls(
    target: Target, sim_origin: str, calls: int, max_wall_s: float, switch: bool
) -> tuple[list[Call], float]:
    """`calls` calls, CONCURRENCY in flight, numbered as they start; with `switch`, the brownout
    profile is put in place before call `on_at` and taken away before call `off_at`, while no
    other call starts. Calls not started when `max_wall_s` has passed stay `not_started`."""
    on_at = round(BROWNOUT_START * calls)
    off_at = on_at + round(BROWNOUT_SHARE * calls)
    records = [Call(i, switch and on_at <= i < off_at) for i in range(calls)]
    url = f"{target.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
    body = orjson.dumps(
        {"model": PRIMARY, "messages": MESSAGES, "stream": True, "max_tokens": MAX_TOKENS}
    )
    gate = asyncio.Event()
    gate.set()
    next_index = 0
    stop_at = time.monotonic() + max_wall_s
    connector = aiohttp.TCPConnector(limit=4 * CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session,
        aiohttp.ClientSession(trust_env=False) as admin,
    ):

        async def worker() -> None:
            nonlocal next_index
            while next_index < calls and time.monotonic() < stop_at:
                index = next_index
                next_index += 1
                if switch and index in (on_at, off_at):
                    gate.clear()
                    try:
                        await put_profile(admin, sim_origin, brownout=index == on_at)
                    finally:
                        gate.set()
                await gate.wait()
                await stream_call(session, url, headers, body, records[index])

        started = time.perf_counter()
        # Every call is bounded by DEADLINE_S, so the whole is bounded by the cap plus one.
        async with asyncio.timeout(max_wall_s + DEADLINE_S + 30):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return records, time.perf_counter() - started


# -- the systems ----------------------------------------------------------------------------------


def maestro_server_config(directory: Path, router: Path) -> Path:
    """`maestro up`'s config: ports, auth, store and the routing file; nothing else."""
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"mode": "api_key"},
        "store": {"sqlite_path": str(directory / "maestro.db")},
        "routing": {"project": "demo", "config_file": str(router)},
    }
    path = directory / "maestro.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


@contextlib.asynccontextmanager
async def maestro_up(directory: Path, router: Path) -> AsyncIterator[Target]:
    config = maestro_server_config(directory, router)
    command = [str(BIN / "maestro"), "up", "--config", str(config), "--http-port", "0"]
    proc = spawn("maestro up", command, directory)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        target = None
        while target is None:
            if not proc.alive():
                raise RuntimeError(f"maestro up exited early:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"maestro up not ready in {START_TIMEOUT_S:.0f} s:\n{proc.tail()}"
                )
            with contextlib.suppress(OSError):
                for line in proc.log.read_text(errors="replace").splitlines():
                    if '"server.ready"' in line:
                        ready = json.loads(line)
                        key = (directory / "demo-api-key").read_text().strip()
                        target = Target(ready["openai_base_url"], key, proc.pid)
                        break
            await asyncio.sleep(0.2)
        yield target
        if not proc.alive():
            raise RuntimeError(f"maestro up died during the run:\n{proc.tail()}")
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def litellm_proxy(python: str, router: Path) -> AsyncIterator[Target]:
    async with start_litellm_proxy_config(python, router, free_port(), [PRIMARY, BACKUP]) as url:
        yield Target(url, PROXY_MASTER_KEY, find_child(b"litellm.proxy.proxy_cli"))


# -- one system's run ---------------------------------------------------------------------------


def pct(n: int, d: int) -> float:
    return 100.0 * n / d if d else math.nan


@dataclass
class SystemRun:
    system: str
    calls: int
    wall_s: float
    records: list[Call] = field(repr=False)
    sim: dict[str, Any]
    cpu: CpuWindow | None

    def completed(self, where: Callable[[Call], bool] = lambda _c: True) -> tuple[int, int]:
        chosen = [c for c in self.records if where(c)]
        return sum(c.kind == "complete" for c in chosen), len(chosen)

    @property
    def completed_share(self) -> float:
        done, total = self.completed()
        return done / total if total else math.nan

    def failures(self) -> Counter[str]:
        return Counter(c.kind for c in self.records if c.kind != "complete")

    def samples(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for call in self.records:
            if call.kind != "complete" and call.detail:
                seen = out.setdefault(call.kind, [])
                if call.detail not in seen and len(seen) < SAMPLES_PER_KIND:
                    seen.append(call.detail)
        return out

    def origins(self) -> Counter[str]:
        primary = completion_text(SIM_PRIMARY, MESSAGES, max_tokens=MAX_TOKENS)
        backup = completion_text(SIM_BACKUP, MESSAGES, max_tokens=MAX_TOKENS)
        names = {primary: SIM_PRIMARY, backup: SIM_BACKUP}
        return Counter(names.get(c.content, "other") for c in self.records if c.kind == "complete")

    def latency_ms(self, which: str) -> dict[str, float]:
        done = [c for c in self.records if c.kind == "complete"]
        values = (
            [c.latency_ns for c in done]
            if which == "latency"
            else [c.ttft_ns for c in done if c.ttft_ns is not None]
        )
        summary = summarise(values)
        return {
            "n": summary.n,
            "p50": summary.p50_us / 1000,
            "p99": summary.p99_us / 1000,
            "max": summary.max_us / 1000,
        }

    def as_json(self) -> dict[str, Any]:
        inside = self.completed(lambda c: c.in_brownout)
        outside = self.completed(lambda c: not c.in_brownout)
        return {
            "system": self.system,
            "calls": self.calls,
            "completed": self.completed()[0],
            "completed_pct": pct(*self.completed()),
            "completed_in_brownout": {"completed": inside[0], "calls": inside[1]},
            "completed_outside_brownout": {"completed": outside[0], "calls": outside[1]},
            "goal_pct": GOAL_COMPLETED * 100,
            "passed": self.completed_share >= GOAL_COMPLETED,
            "failures": dict(self.failures().most_common()),
            "failures_outside_brownout": dict(
                Counter(
                    c.kind for c in self.records if c.kind != "complete" and not c.in_brownout
                ).most_common()
            ),
            "failed_calls": [
                [c.index, c.kind, round(c.latency_ns / 1e6)]
                for c in self.records
                if c.kind != "complete"
            ],
            "failure_samples": self.samples(),
            "latency_ms": self.latency_ms("latency"),
            "ttft_ms": self.latency_ms("ttft"),
            "wall_s": self.wall_s,
            "calls_per_s": self.calls / self.wall_s if self.wall_s else math.nan,
            "completed_text_from": dict(self.origins().most_common()),
            "sim_stats": self.sim,
            "cores_busy": {}
            if self.cpu is None
            else {name: self.cpu.util(name) for name in self.cpu.cpu_s},
        }


def prepare(directory: Path) -> tuple[int, Path, Path]:
    """The sim's port, and the config and the sim's healthy profile written in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    sim_port = free_port()
    router = directory / "litellm-config.yaml"
    router.write_text(router_config(f"http://127.0.0.1:{sim_port}/v1"))
    profile = directory / "sim-profile.yaml"
    profile.write_text(json.dumps(sim_profile(brownout=False), indent=2))  # JSON is YAML
    return sim_port, router, profile


async def run_system(
    system: str, calls: int, directory: Path, proxy_python: str | None
) -> SystemRun:
    """A fresh sim (healthy), the system on the shared config, a warm-up, then the calls."""
    sim_port, router, profile = prepare(directory)
    sim_origin = f"http://127.0.0.1:{sim_port}"
    sim: Proc = spawn(
        "sim",
        [str(BIN / "maestro"), "sim-provider", "--port", str(sim_port), "--profile", str(profile)],
        directory,
    )
    try:
        await wait_sim(sim, sim_origin)
        context = (
            maestro_up(directory, router)
            if system == MAESTRO
            else litellm_proxy(proxy_python or "", router)
        )
        async with context as target:
            progress(f"{system}: up at {target.base_url}; warm-up ({WARMUP_CALLS} calls, healthy)")
            warm, _ = await run_calls(target, sim_origin, WARMUP_CALLS, 60.0, switch=False)
            warm_failed = Counter(c.kind for c in warm if c.kind != "complete")
            if warm_failed:
                progress(f"{system}: warm-up failures {dict(warm_failed)}")
            async with aiohttp.ClientSession(trust_env=False) as admin:
                await sim_stats(admin, sim_origin, reset=True)
            max_wall_s = max(120.0, 0.25 * calls)
            progress(f"{system}: {calls} calls, {CONCURRENCY} in flight (cap {max_wall_s:.0f} s)")
            pids = {"sim": sim.pid} | ({system: target.pid} if target.pid else {})
            windows: list[CpuWindow] = []
            with cpu_window(pids, windows):
                records, wall_s = await run_calls(
                    target, sim_origin, calls, max_wall_s, switch=True
                )
            async with aiohttp.ClientSession(trust_env=False) as admin:
                stats = await sim_stats(admin, sim_origin)
        run = SystemRun(system, calls, wall_s, records, stats, windows[0] if windows else None)
        done, total = run.completed()
        progress(
            f"{system}: completed {done}/{total} ({pct(done, total):.2f} %) in {wall_s:.0f} s; "
            f"failures {dict(run.failures().most_common())}"
        )
        return run
    finally:
        sim.stop()


# -- the report -----------------------------------------------------------------------------


def _proxy_version(python: str | None) -> str | None:
    if python is None:
        return None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    return None


def _ms(value: float) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else f"{value:,.0f}"


def markdown(report: dict[str, Any], command: str) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    modified = m.get("modified_files") or []
    uncommitted = f" (uncommitted: {', '.join(modified)})" if modified else ""
    runs = report["runs"]
    lines = [
        "# LiteLLM config through a brownout of its primary: Maestro vs the LiteLLM proxy",
        "",
        f"`{command}`",
        "",
        f"- date: {m['date']}; commit {m['commit']}{uncommitted}",
        f"- machine: {m['cpu']}, nproc {m['nproc']}, Python {m['python']}, {m['platform']}",
        f"- versions: {versions}; LiteLLM proxy: litellm {report['proxy_litellm'] or '-'}",
        f"- load average (1 min): {m['loadavg_1m_at_start']:.2f} at start, "
        f"{m['loadavg_1m_at_end']:.2f} at end; wall time {report['wall_s']:.0f} s",
        f"- load: {report['calls']:,} streamed calls per system, {CONCURRENCY} in flight, "
        f"`max_tokens: {MAX_TOKENS}`, raw SSE (aiohttp); a call is complete only if it answers "
        f"200, ends with a finish_reason and `[DONE]` and no error event, has content, within "
        f"{DEADLINE_S:.0f} s",
        f"- brownout of `{SIM_PRIMARY}` (model group `{PRIMARY}`) from call "
        f"{round(BROWNOUT_START * report['calls']):,} to call "
        f"{round(BROWNOUT_START * report['calls']) + round(BROWNOUT_SHARE * report['calls']):,} "
        f"({BROWNOUT_SHARE:.0%} of the calls start inside it): "
        f"{ERROR_RATE / 2:.0%} HTTP 500, {ERROR_RATE / 2:.0%} HTTP 429 (retry-after "
        f"{RETRY_AFTER_S} s), then each drawn at {STREAM_FAULT_RATE:.1%} of the rest: a stall "
        f"after 2-6 tokens until the client leaves, a cut after 4-24 tokens, a "
        f"{SLOW_FIRST_TOKEN_MS / 1000:.0f} s first token: {FAULT_SHARE:.0%} of requests faulty. "
        f"Healthy: {TTFT_MS} ms to first token, {TOKENS_PER_S} tokens/s. `{SIM_BACKUP}` healthy "
        "throughout. The sim is restarted for each system.",
        "- both systems run the same file (below); Maestro: `maestro up --http-port 0` with a "
        "server config of port, auth, store and `routing.config_file` only; the proxy: one "
        "worker, master key from its environment",
        "",
        "## Result",
        "",
        "| system | completed | completed % | in brownout | outside | "
        f"goal ≥ {GOAL_COMPLETED:.1%} | latency p50 / p99 ms | TTFT p50 / p99 ms | wall s | "
        "failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        inside, outside = run["completed_in_brownout"], run["completed_outside_brownout"]
        failures = ", ".join(f"{k} {v}" for k, v in run["failures"].items()) or "none"
        lat, ttft = run["latency_ms"], run["ttft_ms"]
        lines.append(
            f"| {SYSTEM_LABELS[run['system']]} | {run['completed']:,} / {run['calls']:,} | "
            f"{run['completed_pct']:.2f} % | "
            f"{pct(inside['completed'], inside['calls']):.2f} % | "
            f"{pct(outside['completed'], outside['calls']):.2f} % | "
            f"{'PASS' if run['passed'] else 'FAIL'} | {_ms(lat['p50'])} / {_ms(lat['p99'])} | "
            f"{_ms(ttft['p50'])} / {_ms(ttft['p99'])} | {run['wall_s']:.0f} | {failures} |"
        )
    lines += [
        "",
        "The goal is Maestro's (issue 16); the LiteLLM proxy's row is the baseline on the same "
        "config and the same fault profile, marked against the same threshold for comparison.",
        "",
        "## Details",
        "",
        "| system | completed text from | sim: requests / completed / by status / cut / stalled "
        "/ client disconnects | cores busy |",
        "| --- | --- | --- | --- |",
    ]
    for run in runs:
        sim = run["sim_stats"]
        origins = ", ".join(f"{k} {v}" for k, v in run["completed_text_from"].items()) or "-"
        statuses = " ".join(f"{k}: {v}" for k, v in sim.get("failed_by_status", {}).items())
        cores = ", ".join(f"{k} {v:.2f}" for k, v in run["cores_busy"].items())
        lines.append(
            f"| {SYSTEM_LABELS[run['system']]} | {origins} | {sim.get('requests_started')} / "
            f"{sim.get('requests_completed')} / {{{statuses}}} / {sim.get('streams_cut')} / "
            f"{sim.get('streams_stalled')} / {sim.get('client_disconnects')} | {cores} |"
        )
    lines += [
        "",
        "Completed text from: which of the sim's deterministic completions a completed call's "
        f"text equals, `{SIM_PRIMARY}`'s or `{SIM_BACKUP}`'s; `other`: neither, e.g. a primary "
        "attempt's output continued by another attempt after a failure mid-stream. The sim's "
        "counters cover the measured calls of both models, retries and fallbacks included "
        "(requests per call above 1 are extra attempts); cores busy: CPU seconds / wall "
        "seconds of each process over the measured calls, 'other processes' being the rest of "
        "this shared machine's busy time.",
    ]
    if any(run["failure_samples"] for run in runs):
        lines += ["", "Samples of each failure kind's text (at most three distinct):", ""]
    for run in runs:
        for kind, samples in run["failure_samples"].items():
            for sample in samples:
                text = sample.replace("|", "\\|").replace("\n", " ")
                lines.append(f"- {SYSTEM_LABELS[run['system']]}, `{kind}`: {text}")
    lines += [
        "",
        "## The config (both systems)",
        "",
        "```yaml",
        report["router_config"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


async def run(calls: int, systems: list[str], directory: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proxy_python = ensure_proxy_venv() if PROXY in systems else None
    report: dict[str, Any] = {
        "machine": measure_machine(["maestro", "aiohttp", "orjson", "uvloop"]),
        "proxy_litellm": _proxy_version(proxy_python),
        "calls": calls,
        "concurrency": CONCURRENCY,
        "deadline_s": DEADLINE_S,
        "max_tokens": MAX_TOKENS,
        "goal_completed": GOAL_COMPLETED,
        "router_config": router_config("http://127.0.0.1:<sim port>/v1"),
        "sim_profile_healthy": sim_profile(brownout=False),
        "sim_profile_brownout": sim_profile(brownout=True),
        "brownout_calls": [
            round(BROWNOUT_START * calls),
            round(BROWNOUT_START * calls) + round(BROWNOUT_SHARE * calls),
        ],
        "runs": [],
    }
    for system in systems:
        result = await run_system(system, calls, directory / system, proxy_python)
        report["runs"].append(result.as_json())
    report["wall_s"] = time.perf_counter() - started
    report["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per system (5000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 calls")
    parser.add_argument(
        "--systems",
        default=f"{MAESTRO},{PROXY}",
        help=f"comma-separated, in order: {MAESTRO}, {PROXY} (default: both)",
    )
    parser.add_argument(
        "--fault-share",
        type=float,
        default=ISSUE_FAULT_SHARE,
        help="share of the primary's requests that fail during the brownout (0.5, the "
        "issue's; a lower one, below the breakers' failure ratio, keeps the traffic on the "
        "primary and exercises per-call retries, timeouts and fallbacks); results other than "
        "0.5 go to litellm_brownout_faults<percent>.*",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where results go (default: bench/results; --quick: a temp dir)",
    )
    args = parser.parse_args(argv)
    calls = args.calls or (300 if args.quick else 5000)
    if not 1 <= calls <= 20_000:
        parser.error("--calls: 1..20000")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or set(systems) - {MAESTRO, PROXY}:
        parser.error(f"--systems: {MAESTRO} and/or {PROXY}")
    results: Path = args.results or (
        Path(tempfile.gettempdir()) / "maestro-litellm-brownout-quick" if args.quick else RESULTS
    )
    results.mkdir(parents=True, exist_ok=True)
    if not ERROR_RATE <= args.fault_share < 1:
        parser.error(f"--fault-share: {ERROR_RATE}..1")
    global FAULT_SHARE, STREAM_FAULT_RATE  # one run, one fault mix
    FAULT_SHARE, STREAM_FAULT_RATE = args.fault_share, stream_fault_rate(args.fault_share)
    stem = (
        "litellm_brownout"
        if FAULT_SHARE == ISSUE_FAULT_SHARE
        else f"litellm_brownout_faults{round(FAULT_SHARE * 100)}"
    )
    with tempfile.TemporaryDirectory(prefix="maestro-litellm-brownout-") as directory:
        report = uvloop.run(run(calls, systems, Path(directory)))
    command = ".venv/bin/python bench/litellm_brownout_bench.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    text = markdown(report, command)
    (results / f"{stem}.md").write_text(text)
    print(text)
    progress(f"wrote {results / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
