"""CPU benchmark of the serving lane: Ray Serve + vLLM's CPU build running the tiny model.

Three measurements, one run, one machine:
1. Throughput: tokens/s at 1 and 32 concurrent streams, on the bare engine (vLLM's AsyncLLM in
   one process, `_serving_bare.py`) and through the lane over HTTP (Ray Serve's HAProxy ingress,
   the gateway, coalesced SSE). Ratios: 32 vs 1 on the lane (seed: >= 2.5x), lane vs bare at
   each level (goal: overhead <= 5%).
2. Shedding through the data plane (`maestro up`): 2x a small lane's capacity at once, non-PII
   (the excess spills to a simulated provider) and PII (the excess gets RESOURCE_EXHAUSTED, HTTP
   429); p95 time to first token of the requests the lane admitted, from the client.

    .venv/bin/python bench/serving_bench.py      # about 5 minutes; needs `make serving-setup`

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

ROOT = Path(__file__).resolve().parent.parent
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
TOKENS = 256
LEVELS = (1, 32)
WALL_CAP_S = 600.0
"""No single load runs longer than this."""

LANES = """
http: {{host: 127.0.0.1, port: {port}}}
lanes:
  - name: tiny
    model: {model}
    served_model_name: tiny-llama
    engine: {{dtype: float32, max_model_len: 1024, max_num_seqs: 64, enforce_eager: true}}
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
class Level:
    concurrency: int
    tokens_per_s: float
    ttft_p50_ms: float


@dataclass
class Report:
    machine: dict[str, Any]
    tokens_per_request: int
    chunk_delay_ms: float
    bare: list[Level] = field(default_factory=list)
    lane: list[Level] = field(default_factory=list)
    shedding: dict[str, Any] = field(default_factory=dict)


async def bench_lane(base: str, rounds: int) -> list[Level]:
    url = f"{base}/tiny/v1/chat/completions"
    await concurrent(url, lane_body(16), 4)  # warm the connections and the engine
    levels = []
    for n in LEVELS:
        runs = []
        for _ in range(rounds):
            results, elapsed = await concurrent(url, lane_body(TOKENS), n)
            assert all(r.status == 200 and r.tokens == TOKENS for r in results), results[:2]
            runs.append((sum(r.tokens for r in results) / elapsed, [r.ttft_s for r in results]))
        levels.append(
            Level(
                n,
                statistics.median(t for t, _ in runs),
                statistics.median(p(ttfts, 0.5) for _, ttfts in runs) * 1000,
            )
        )
        progress(f"lane, {n} concurrent: {levels[-1].tokens_per_s:,.0f} tokens/s")
    return levels


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
                    "max_tokens": TOKENS,
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


def bare(model: Path, rounds: int) -> list[Level]:
    output = subprocess.run(
        [
            str(SERVING_PYTHON),
            str(ROOT / "bench" / "_serving_bare.py"),
            str(model),
            ",".join(map(str, LEVELS)),
            str(TOKENS),
            str(rounds),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WALL_CAP_S,
        check=True,
    )
    # vLLM logs to stdout too: the results are the one line that is a JSON object of levels.
    [line] = [line for line in output.stdout.splitlines() if line.startswith('{"')]
    figures = json.loads(line)
    levels = [Level(int(n), f["tokens_per_s"], f["ttft_p50_ms"]) for n, f in figures.items()]
    for level in levels:
        progress(f"bare engine, {level.concurrency} concurrent: {level.tokens_per_s:,.0f} tokens/s")
    return levels


def start_lane(directory: Path, model: Path, chunk_ms: float) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    config = directory / "lanes.yaml"
    config.write_text(LANES.format(port=port, model=model, chunk_ms=chunk_ms))
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


async def measure_lane(report: Report, port: int, rounds: int, directory: Path) -> None:
    report.lane = await bench_lane(f"http://127.0.0.1:{port}", rounds)
    report.shedding = await bench_shedding(port, directory)


def run(rounds: int, chunk_ms: float) -> Report:
    report = Report(
        machine={"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        tokens_per_request=TOKENS,
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
        progress("bare engine")
        report.bare = bare(model, rounds)
        lane, port = start_lane(directory, model, chunk_ms)
        progress("lane ready")
        try:
            asyncio.run(measure_lane(report, port, rounds, directory))
        finally:
            stop_lane(lane)
    return report


def markdown(report: Report) -> str:
    bare = {level.concurrency: level for level in report.bare}
    lane = {level.concurrency: level for level in report.lane}
    low, high = LEVELS
    scaling = lane[high].tokens_per_s / lane[low].tokens_per_s
    lines = [
        "# Serving lane on CPU (bench/serving_bench.py)",
        "",
        f"Machine: {report.machine['cpus']} CPUs, {report.machine['platform']}, load average "
        f"{report.machine['load'][0]:.2f} at start. Tiny Llama (2 layers, hidden 256, float32), "
        f"{report.tokens_per_request} tokens per request (`ignore_eos`), lane chunk delay "
        f"{report.chunk_delay_ms:g} ms, medians of the rounds.",
        "",
        "| concurrency | bare engine tokens/s | lane tokens/s | lane / bare | bare TTFT p50 ms | "
        "lane TTFT p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for n in LEVELS:
        lines.append(
            f"| {n} | {bare[n].tokens_per_s:,.0f} | {lane[n].tokens_per_s:,.0f} | "
            f"{lane[n].tokens_per_s / bare[n].tokens_per_s:.2f}x | {bare[n].ttft_p50_ms:.1f} | "
            f"{lane[n].ttft_p50_ms:.1f} |"
        )
    lines += [
        "",
        f"- Lane, {high} concurrent vs 1: **{scaling:.1f}x** (seed goal >= 2.5x: "
        f"{'PASS' if scaling >= 2.5 else 'NOT MET'}).",
        f"- Lane overhead vs the bare engine at {high} concurrent: "
        f"**{(1 - lane[high].tokens_per_s / bare[high].tokens_per_s) * 100:.0f}%** (goal <= 5%: "
        f"{'PASS' if lane[high].tokens_per_s >= 0.95 * bare[high].tokens_per_s else 'NOT MET'}).",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    report = run(args.rounds, args.chunk_delay_ms)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving_bench.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "serving_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
