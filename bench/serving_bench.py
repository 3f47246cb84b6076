"""CPU benchmark of the serving lane: Ray Serve + vLLM's CPU build running the tiny model.

Two measurements, one run, one machine:
1. Throughput: tokens/s at 1 and 32 concurrent streams, 256 and 1024 tokens each, on the bare
   engine (vLLM's AsyncLLM in one process, `_serving_bare.py`) and through the lane over HTTP
   (Ray Serve's HAProxy ingress, the gateway, SSE). Bare and lane rounds alternate, so drift on
   the machine hits both alike; each ratio is the median of the rounds' lane/bare ratios.
   Both sides use the same CPU placement (`cpu_placement`): the engine worker has its CPUs to
   itself, and everything else (the lane's Ray processes, ingress and replica, or the bare
   process, and this load generator) runs on the rest. Ratios: 32 vs 1 on the lane (seed:
   >= 2.5x), lane vs bare (goal: overhead <= 5%).
2. Shedding through the data plane (`maestro up`): 2x a small lane's capacity at once, non-PII
   (the excess spills to a simulated provider) and PII (the excess gets RESOURCE_EXHAUSTED, HTTP
   429); p95 time to first token of the requests the lane admitted, from the client.

    .venv/bin/python bench/serving_bench.py      # about 7 minutes; needs `make serving-setup`

Writes bench/results/serving_bench.{json,md}. Every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from data_plane_bench import free_port, progress, spawn, start_maestro, wait_sim

from serving.placement import parse_cpus

ROOT = Path(__file__).resolve().parent.parent
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
TOKENS = (256, 1024)
"""Per request (`ignore_eos`): short runs include the ramp-up (connections, first tokens, the
batch filling); long ones are dominated by steady decoding."""
LEVELS = (1, 32)
IDLE_SPIN_S = 1.5
"""Pause before each round: an engine that just went idle busy-waits for new work for a second
(vLLM's shared-memory queue), which would take CPU from the other side's round."""
WALL_CAP_S = 600.0
"""No single load runs longer than this."""

LANES = """
cpu_placement: {{engine_cpus: "{engine_cpus}"}}
http: {{host: 127.0.0.1, port: {port}}}
lanes:
  - name: tiny
    model: {model}
    served_model_name: tiny-llama
    engine: {{dtype: float32, max_model_len: 2048, max_num_seqs: 64, enforce_eager: true}}
    serve: {{max_ongoing_requests: 64, max_queued_requests: -1, num_cpus: 0.25}}
    stream: {{max_chunk_delay_ms: {chunk_ms}}}
  - name: small
    model: {model}
    served_model_name: tiny-llama
    engine: {{dtype: float32, max_model_len: 1024, max_num_seqs: 8, enforce_eager: true}}
    serve: {{max_ongoing_requests: 8, max_queued_requests: 8, num_cpus: 0.25}}
    stream: {{max_chunk_delay_ms: {chunk_ms}}}
"""
SMALL_CAPACITY = 16
ROUTES = """
model_list:
  - model_name: tiny
    litellm_params: {{model: maestro_lane/tiny-llama, api_base: "http://127.0.0.1:{port}/small/v1"}}
    model_info: {{id: lane-small, quality: 0.8}}
  - model_name: hosted
    litellm_params: {{model: openai/hosted, api_base: "{sim}"}}
    model_info: {{id: sim-hosted, quality: 0.5}}
router:
  fallbacks: [{{primary: tiny, on_error: [hosted]}}]
policies:
  content_tags: {{pii: [tiny]}}
"""


_CONTENT = b'"delta":{"content":"'
"""A text delta (the lane's role chunk has `"role"` first, so it does not match)."""
_TOKENS = b'"token_count":'
"""The data plane's chunks carry their token count, also when the text is still empty."""
_USAGE = b'"usage":{'
_DEPLOYMENT = b'"deployment_id"'


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Stream:
    status: int
    tokens: int = 0
    ttft_s: float = 0.0
    deployment_id: str = ""
    error_code: str = ""


async def stream(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Stream:
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers or {}) as response:
        if response.status != 200:
            error = (await response.json()).get("error", {})
            return Stream(response.status, error_code=str(error.get("code", "")))
        result = Stream(200)
        async for line in response.content:
            # Only the lines that matter are decoded: the client shares this machine's two
            # cores with the lane, so its parsing cost would count as lane overhead.
            if not result.ttft_s and (_CONTENT in line or _TOKENS in line):
                result.ttft_s = time.perf_counter() - started
            if _USAGE in line or _DEPLOYMENT in line:
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                maestro = chunk.get("maestro") or {}
                if "deployment_id" in maestro:
                    result.deployment_id = maestro["deployment_id"]
        return result


async def concurrent(
    url: str, body: dict[str, Any], n: int, headers: dict[str, str] | None = None
) -> tuple[list[Stream], float]:
    timeout = aiohttp.ClientTimeout(total=WALL_CAP_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(session, url, body, headers) for _ in range(n)))
        return list(results), time.perf_counter() - started


def lane_body(tokens: int) -> dict[str, Any]:
    return {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Write about the sea."}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class Shape:
    concurrency: int
    tokens: int
    bare_tokens_per_s: float
    lane_tokens_per_s: float
    lane_over_bare: float
    """The median of the rounds' lane/bare ratios (each round runs bare, then lane)."""
    bare_ttft_p50_ms: float
    lane_ttft_p50_ms: float
    rounds: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Report:
    machine: dict[str, Any]
    engine_cpus: str
    chunk_delay_ms: float
    shapes: list[Shape] = field(default_factory=list)
    bare_alone: dict[str, float] = field(default_factory=dict)
    """Bare engine tokens/s at 32 concurrent before the lane starts, by tokens per request: the
    alternating rounds run with the lane up and idle, whose Ray processes use CPU too."""
    shedding: dict[str, Any] = field(default_factory=dict)


class BareEngine:
    """`_serving_bare.py` kept running: one round at a time, on request."""

    def __init__(self, model: Path, engine_cpus: str, log: Path) -> None:
        self._proc = subprocess.Popen(
            [
                str(SERVING_PYTHON),
                str(ROOT / "bench" / "_serving_bare.py"),
                str(model),
                engine_cpus,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + WALL_CAP_S
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the bare engine exited with {self._proc.wait()}")
            if line.startswith("{"):  # vLLM logs to stdout too
                answer: dict[str, Any] = json.loads(line)
                return answer
        raise RuntimeError("the bare engine did not answer in time")

    def round(self, concurrency: int, tokens: int) -> tuple[float, float]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{concurrency} {tokens}\n")
        self._proc.stdin.flush()
        answer = self._read()
        return answer["tokens_per_s"], answer["ttft_p50_ms"]

    def close(self) -> None:
        assert self._proc.stdin is not None
        if self._proc.stdin.closed:
            return
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()


async def lane_round(url: str, concurrency: int, tokens: int) -> tuple[float, float]:
    results, elapsed = await concurrent(url, lane_body(tokens), concurrency)
    assert all(r.status == 200 and r.tokens == tokens for r in results), results[:2]
    return sum(r.tokens for r in results) / elapsed, p([r.ttft_s for r in results], 0.5) * 1000


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


async def bench_throughput(base: str, bare: BareEngine, rounds: int) -> list[Shape]:
    url = f"{base}/tiny/v1/chat/completions"
    await concurrent(url, lane_body(16), 4)  # warm the connections and the engine
    shapes = []
    for tokens in TOKENS:
        for concurrency in LEVELS:
            runs = []
            for _ in range(rounds):
                await asyncio.sleep(IDLE_SPIN_S)
                bare_rate, bare_ttft = bare.round(concurrency, tokens)
                await asyncio.sleep(IDLE_SPIN_S)
                lane_rate, lane_ttft = await lane_round(url, concurrency, tokens)
                runs.append(
                    {
                        "bare_tokens_per_s": bare_rate,
                        "lane_tokens_per_s": lane_rate,
                        "bare_ttft_p50_ms": bare_ttft,
                        "lane_ttft_p50_ms": lane_ttft,
                    }
                )

            shape = Shape(
                concurrency,
                tokens,
                median(runs, "bare_tokens_per_s"),
                median(runs, "lane_tokens_per_s"),
                statistics.median(r["lane_tokens_per_s"] / r["bare_tokens_per_s"] for r in runs),
                median(runs, "bare_ttft_p50_ms"),
                median(runs, "lane_ttft_p50_ms"),
                runs,
            )
            shapes.append(shape)
            progress(
                f"{concurrency} x {tokens} tokens: bare {shape.bare_tokens_per_s:,.0f}, lane "
                f"{shape.lane_tokens_per_s:,.0f} tokens/s, lane/bare {shape.lane_over_bare:.2f}"
            )
    return shapes


async def bench_shedding(base_port: int, directory: Path) -> dict[str, Any]:
    sim_port = free_port()
    profile = directory / "sim.json"
    profile.write_text(json.dumps({"strict_models": False}))
    sim = spawn(
        "sim",
        [str(BIN / "maestro"), "sim-provider", "--port", str(sim_port), "--profile", str(profile)],
        directory,
    )
    try:
        await wait_sim(sim, f"http://127.0.0.1:{sim_port}")
        router = directory / "routes.yaml"
        router.write_text(ROUTES.format(port=base_port, sim=f"http://127.0.0.1:{sim_port}/v1"))
        maestro = await start_maestro(directory / "maestro", router)
        try:
            url = f"{maestro.openai_base_url}/chat/completions"
            headers = {"Authorization": f"Bearer {maestro.api_key}"}
            report: dict[str, Any] = {"capacity": SMALL_CAPACITY, "calls": 2 * SMALL_CAPACITY}
            for label, tags in (("non_pii", []), ("pii", ["pii"])):
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "Write about the sea."}],
                    "max_tokens": TOKENS[0],
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "maestro": {"step_tags": tags},
                }
                await asyncio.sleep(2)  # let the lane monitor see the lane idle again
                results, elapsed = await concurrent(url, body, 2 * SMALL_CAPACITY, headers)
                admitted = [r for r in results if r.deployment_id == "lane-small"]
                spilled = [r for r in results if r.deployment_id == "sim-hosted"]
                refused = [r for r in results if r.status != 200]
                report[label] = {
                    "admitted_by_lane": len(admitted),
                    "spilled_to_hosted": len(spilled),
                    "refused": len(refused),
                    "refusals": sorted({f"{r.status} {r.error_code}" for r in refused}),
                    "admitted_ttft_p50_ms": p([r.ttft_s for r in admitted], 0.5) * 1000,
                    "admitted_ttft_p95_ms": p([r.ttft_s for r in admitted], 0.95) * 1000,
                    "spilled_ttft_p95_ms": p([r.ttft_s for r in spilled], 0.95) * 1000,
                    "wall_s": elapsed,
                }
                progress(f"shedding, {label}: {report[label]}")
            return report
        finally:
            maestro.proc.stop()
    finally:
        sim.stop()


def start_lane(
    directory: Path, model: Path, chunk_ms: float, engine_cpus: str
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    config = directory / "lanes.yaml"
    config.write_text(
        LANES.format(port=port, model=model, chunk_ms=chunk_ms, engine_cpus=engine_cpus)
    )
    lane = subprocess.Popen(
        [str(SERVING_PYTHON), "-m", "serving", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(directory / "lane.log").open("w"),
        text=True,
    )
    assert lane.stdout is not None
    deadline = time.monotonic() + WALL_CAP_S
    while time.monotonic() < deadline:
        line = lane.stdout.readline()
        if not line:
            raise RuntimeError(f"the lane exited with {lane.wait()}")
        if '"lane.ready"' in line:
            return lane, port
    raise RuntimeError("the lane was not ready in time")


def stop_lane(lane: subprocess.Popen[str]) -> None:
    lane.send_signal(signal.SIGTERM)
    try:
        lane.wait(timeout=60)
    except subprocess.TimeoutExpired:
        lane.kill()
    # Ray's own processes outlive a killed driver.
    subprocess.run([str(SERVING_PYTHON.parent / "ray"), "stop", "--force"], capture_output=True)


def run(rounds: int, chunk_ms: float, engine_cpus: str) -> Report:
    report = Report(
        machine={"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        engine_cpus=engine_cpus,
        chunk_delay_ms=chunk_ms,
    )
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        model = directory / "tiny-llama"
        subprocess.run(
            [str(SERVING_PYTHON), "-m", "serving", "tiny-model", str(model)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        progress("bare engine and lane starting")
        bare = BareEngine(model, engine_cpus, directory / "bare.log")
        try:
            for tokens in TOKENS:
                rates = [bare.round(LEVELS[-1], tokens)[0] for _ in range(rounds)]
                alone = report.bare_alone[str(tokens)] = statistics.median(rates)
                progress(f"bare engine alone, {LEVELS[-1]} x {tokens}: {alone:,.0f} tokens/s")
            lane, port = start_lane(directory, model, chunk_ms, engine_cpus)
            try:
                progress("lane ready")
                everywhere = os.sched_getaffinity(0)
                # The load generator stays off the engine CPUs, as the bare engine's does.
                os.sched_setaffinity(0, everywhere - parse_cpus(engine_cpus))
                try:
                    report.shapes = asyncio.run(
                        bench_throughput(f"http://127.0.0.1:{port}", bare, rounds)
                    )
                finally:
                    os.sched_setaffinity(0, everywhere)
                bare.close()
                report.shedding = asyncio.run(bench_shedding(port, directory))
            finally:
                stop_lane(lane)
        finally:
            bare.close()
    return report


def markdown(report: Report) -> str:
    shapes = {(shape.concurrency, shape.tokens): shape for shape in report.shapes}
    low, high = LEVELS
    lines = [
        "# Serving lane on CPU (bench/serving_bench.py)",
        "",
        f"Machine: {report.machine['cpus']} CPUs, {report.machine['platform']}, load average "
        f"{report.machine['load'][0]:.2f} at start. Tiny Llama (2 layers, hidden 256, float32), "
        f"`ignore_eos`, lane chunk delay {report.chunk_delay_ms:g} ms. CPU placement on both "
        f"sides: the engine worker on CPU {report.engine_cpus}, everything else (Ray, ingress, "
        "replica, or the bare process; the load generator) on the others. Bare and lane rounds "
        f"alternate; medians of {len(report.shapes[0].rounds)} rounds, lane/bare is the median "
        "of the rounds' ratios.",
        "",
        "| concurrency x tokens | bare engine tokens/s | lane tokens/s | lane / bare | "
        "bare TTFT p50 ms | lane TTFT p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for shape in report.shapes:
        lines.append(
            f"| {shape.concurrency} x {shape.tokens} | {shape.bare_tokens_per_s:,.0f} | "
            f"{shape.lane_tokens_per_s:,.0f} | {shape.lane_over_bare:.3f} | "
            f"{shape.bare_ttft_p50_ms:.1f} | {shape.lane_ttft_p50_ms:.1f} |"
        )
    lines += [
        "",
        f"The bare engine alone (before the lane started), {high} concurrent: "
        + ", ".join(
            f"{tokens} tokens {report.bare_alone[str(tokens)]:,.0f} tokens/s (the lane "
            f"{shapes[high, tokens].lane_tokens_per_s / report.bare_alone[str(tokens)]:.3f}x "
            "of that)"
            for tokens in TOKENS
        )
        + ".",
        "",
    ]
    for tokens in TOKENS:
        scaling = shapes[high, tokens].lane_tokens_per_s / shapes[low, tokens].lane_tokens_per_s
        overhead = 1 - shapes[high, tokens].lane_over_bare
        lines += [
            f"- {tokens} tokens: lane, {high} concurrent vs 1: **{scaling:.1f}x** (seed goal "
            f">= 2.5x: {'PASS' if scaling >= 2.5 else 'NOT MET'}); lane overhead vs the bare "
            f"engine at {high} concurrent: **{overhead * 100:.1f}%** (goal <= 5%: "
            f"{'PASS' if overhead <= 0.05 else 'NOT MET'}).",
        ]
    lines += [
        "",
        f"## Shedding through the data plane ({report.shedding['calls']} calls at once, lane "
        f"capacity {report.shedding['capacity']})",
        "",
        "| work | admitted by the lane | spilled to the hosted sim | refused | admitted TTFT p50 / "
        "p95 ms | spilled TTFT p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label in ("non_pii", "pii"):
        row = report.shedding[label]
        lines.append(
            f"| {label} | {row['admitted_by_lane']} | {row['spilled_to_hosted']} | "
            f"{row['refused']} {', '.join(row['refusals'])} | "
            f"{row['admitted_ttft_p50_ms']:.0f} / {row['admitted_ttft_p95_ms']:.0f} | "
            f"{row['spilled_ttft_p95_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def default_engine_cpus() -> str:
    """Every CPU but the last for the engine worker; the last for everything else."""
    cpus = sorted(os.sched_getaffinity(0))
    engine = cpus[:-1] or cpus
    return ",".join(map(str, engine))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    parser.add_argument(
        "--engine-cpus",
        default=default_engine_cpus(),
        help="the engine worker's CPUs (vLLM's list syntax); default: all but the last",
    )
    args = parser.parse_args(argv)
    report = run(args.rounds, args.chunk_delay_ms, args.engine_cpus)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving_bench.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "serving_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
