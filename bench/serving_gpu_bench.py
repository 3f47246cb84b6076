"""The serving lane against vLLM's own OpenAI server, on one GPU (an H100), same engine settings.

    python bench/serving_gpu_bench.py --model /models/llama-3.1-8b-instruct
    python bench/serving_gpu_bench.py --model DIR --quick            # levels 1 and 8, one round
    python bench/serving_gpu_bench.py --model DIR --skip-vllm        # the lane only

(a) Starts `python -m vllm.entrypoints.openai.api_server --model DIR` (the baseline), waits for
    `/v1/models`, drives it, stops it. (b) Writes a lane config with the same engine settings and
    starts `python -m serving run --config <it>` (Ray Serve + vLLM AsyncLLM), waits for
    `/<lane>/v1/models`, drives it the same way, stops it.

At each concurrency level C (default 1, 8, 32, 64, 128): C workers, each sending streamed chat
completions one after another (fixed prompt, `max_tokens` 256, `ignore_eos`,
`stream_options.include_usage`) until C x `--rounds` requests are done or `--level-timeout-s`
passes. Per request: time to the first content chunk (TTFT), completion tokens from the usage
chunk, and time per output token after the first (TPOT). Per level: output tokens/s over the
level's wall time, TTFT p50/p95, TPOT p50, errors; then lane / vLLM-server ratios.

Nothing here imports maestro or serving: both servers are subprocesses, so the script runs with
any Python that has aiohttp, and `--python` names the interpreter that has vLLM (and the lane).
Writes `results/serving_gpu_bench.json` and `results/serving_gpu_bench.md` next to this file
(`--out-dir` for elsewhere);
server logs go to a temporary folder, printed at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LANE_NAME = "bench-lane"
PROMPT = (
    "You are benchmarking a language model server. Write a long, detailed story about a "
    "lighthouse keeper who finds a map in a bottle, with many characters and places."
)


@dataclass(frozen=True, slots=True)
class Engine:
    """Engine settings given to both servers."""

    dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    quantization: str | None
    gpu_memory_utilization: float
    enforce_eager: bool
    stream_interval: int
    tensor_parallel_size: int


@dataclass(slots=True)
class Sample:
    ok: bool
    ttft_s: float = math.nan
    latency_s: float = math.nan
    tokens: int = 0
    usage_seen: bool = False
    error: str = ""


@dataclass(slots=True)
class LevelResult:
    concurrency: int
    requests_planned: int
    requests_done: int
    errors: int
    timed_out: bool
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    tpot_p50_ms: float
    mean_tokens_per_request: float
    usage_missing: int
    first_errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ServerRun:
    name: str
    base_url: str
    command: list[str]
    log: str
    startup_s: float = math.nan
    levels: list[LevelResult] = field(default_factory=list)
    failure: str = ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as in `_measure.summarise`; NaN when empty."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def vllm_command(args: argparse.Namespace, engine: Engine, port: int) -> list[str]:
    command = [
        args.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        args.model,
        "--served-model-name",
        args.served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        engine.dtype,
        "--max-model-len",
        str(engine.max_model_len),
        "--max-num-seqs",
        str(engine.max_num_seqs),
        "--max-num-batched-tokens",
        str(engine.max_num_batched_tokens),
        "--gpu-memory-utilization",
        str(engine.gpu_memory_utilization),
        "--tensor-parallel-size",
        str(engine.tensor_parallel_size),
        "--stream-interval",
        str(engine.stream_interval),
    ]
    if engine.quantization:
        command += ["--quantization", engine.quantization]
    if engine.enforce_eager:
        command.append("--enforce-eager")
    return command


def lane_config(args: argparse.Namespace, engine: Engine, port: int) -> dict[str, Any]:
    """One lane, sized so that Serve never queues or sheds below the highest level: the
    comparison is of the serving path, not of admission control."""
    top = max(args.levels)
    engine_dict: dict[str, Any] = asdict(engine)
    if engine.quantization is None:
        del engine_dict["quantization"]
    return {
        "http": {"host": "127.0.0.1", "port": port},
        "lanes": [
            {
                "name": LANE_NAME,
                "model": args.model,
                "served_model_name": args.served_model_name,
                "version": "1",
                "engine": engine_dict,
                "serve": {
                    "max_ongoing_requests": max(top, engine.max_num_seqs),
                    "max_queued_requests": 2 * max(top, engine.max_num_seqs),
                    "autoscaling": {
                        "min_replicas": 1,
                        "max_replicas": 1,
                        "target_ongoing_requests": top,
                    },
                    "health_check_period_s": 10,
                    "health_check_timeout_s": 30,
                    "graceful_shutdown_timeout_s": 30,
                    "num_cpus": args.lane_num_cpus,
                    "num_gpus": (
                        engine.tensor_parallel_size
                        if args.lane_num_gpus is None
                        else args.lane_num_gpus
                    ),
                },
                "stream": {"max_chunk_delay_ms": args.max_chunk_delay_ms},
            }
        ],
    }


def write_lane_yaml(config: dict[str, Any], path: Path) -> None:
    # JSON is YAML: no yaml dependency needed here.
    path.write_text(json.dumps(config, indent=2) + "\n")


def start(command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    print(f"  $ {' '.join(command)}\n    log: {log}", flush=True)
    handle = log.open("wb")
    try:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    finally:
        handle.close()


def stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGINT to the server process alone (its clean shutdown: `serve.shutdown()` and
    `ray.shutdown()` for the lane), then SIGTERM and SIGKILL to its whole process group; each step
    waits at most `grace_s`. Then whatever is left of the group (engine cores, Ray workers):
    SIGTERM, up to 10 s, SIGKILL."""
    steps = [
        (process.send_signal, signal.SIGINT),
        (lambda sig: os.killpg(process.pid, sig), signal.SIGTERM),
        (lambda sig: os.killpg(process.pid, sig), signal.SIGKILL),
    ]
    for send, sig in steps:
        if process.poll() is not None:
            break
        try:
            send(sig)
            process.wait(timeout=grace_s)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ready(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    process: subprocess.Popen[bytes],
    timeout_s: float,
) -> float:
    """Polls `{base_url}/v1/models` until it lists `model`; seconds taken. Raises if the process
    exits or `timeout_s` passes."""
    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            async with session.get(
                f"{base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                body = await response.text()
                if response.status == 200:
                    ids = [m.get("id") for m in json.loads(body).get("data", [])]
                    if model in ids:
                        return time.monotonic() - started
                    last = f"models {ids}"
                else:
                    last = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            last = type(exc).__name__
        await asyncio.sleep(2)
    raise TimeoutError(f"not ready after {timeout_s:.0f} s ({last})")


def gpu_memory_used_mib() -> list[int] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [int(line) for line in out.split() if line.strip().isdigit()]


def wait_gpu_released(limit_mib: int, timeout_s: float) -> None:
    """After a server stops, waits (bounded) until every GPU's used memory is under
    `limit_mib`, so that the next server can take its share."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used = gpu_memory_used_mib()
        if used is None or all(u < limit_mib for u in used):
            return
        time.sleep(2)
    print(f"  warning: GPU memory still in use after {timeout_s:.0f} s: {used} MiB", flush=True)


# ---------------------------------------------------------------------------------------------
# Load


def request_body(model: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,  # a vLLM extension to the OpenAI body
        }
    ).encode()


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout_s: float
) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    content_chunks = 0
    sample = Sample(ok=False)
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if response.status != 200:
                sample.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return sample
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk: dict[str, Any] = json.loads(data)
                if "error" in chunk:
                    sample.error = f"stream error: {str(chunk['error'])[:200]}"
                    return sample
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        content_chunks += 1
                        if first is None:
                            first = time.perf_counter()
                usage = chunk.get("usage")
                if usage:
                    sample.tokens = int(usage.get("completion_tokens") or 0)
                    sample.usage_seen = True
    except TimeoutError:
        sample.error = "cut at the level's wall-time cap"
        return sample
    except (aiohttp.ClientError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
        return sample
    ended = time.perf_counter()
    if not sample.usage_seen:
        sample.tokens = content_chunks  # a lower bound when chunks carry several tokens
    sample.ok = first is not None
    sample.ttft_s = (first - started) if first is not None else math.nan
    sample.latency_s = ended - started
    if not sample.ok:
        sample.error = "stream ended without content"
    return sample


async def drive_level(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    concurrency: int,
    total: int,
    timeout_s: float,
) -> tuple[list[Sample], float, bool]:
    """`concurrency` closed-loop workers share `total` requests; the level stops at `timeout_s`
    (in-flight requests cancelled). Returns samples, wall seconds, whether it timed out."""
    remaining = total
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + timeout_s

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            remaining -= 1
            samples.append(await one_request(session, url, body, left))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s + 5)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - started
    timed_out = bool(pending) or len(samples) < total
    return samples, wall, timed_out


def summarise_level(
    concurrency: int, planned: int, samples: list[Sample], wall: float, timed_out: bool
) -> LevelResult:
    good = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in good)
    tpot = [(s.latency_s - s.ttft_s) / (s.tokens - 1) * 1000 for s in good if s.tokens > 1]
    errors = [s.error for s in samples if not s.ok]
    return LevelResult(
        concurrency=concurrency,
        requests_planned=planned,
        requests_done=len(good),
        errors=len(errors),
        timed_out=timed_out,
        wall_s=round(wall, 3),
        output_tokens=tokens,
        tokens_per_s=round(tokens / wall, 1) if wall > 0 else math.nan,
        ttft_p50_ms=round(percentile([s.ttft_s * 1000 for s in good], 0.50), 1),
        ttft_p95_ms=round(percentile([s.ttft_s * 1000 for s in good], 0.95), 1),
        tpot_p50_ms=round(percentile(tpot, 0.50), 2),
        mean_tokens_per_request=round(tokens / len(good), 1) if good else math.nan,
        usage_missing=sum(1 for s in good if not s.usage_seen),
        first_errors=sorted(set(errors))[:3],
    )


async def measure(run: ServerRun, args: argparse.Namespace) -> None:
    url = f"{run.base_url}/v1/chat/completions"
    body = request_body(args.served_model_name, args.max_tokens)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up, not recorded: first requests pay for lazy compilation and allocation.
        warm = min(8, max(args.levels))
        await drive_level(session, url, body, warm, warm, args.level_timeout_s)
        for concurrency in args.levels:
            planned = concurrency * args.rounds
            samples, wall, timed_out = await drive_level(
                session, url, body, concurrency, planned, args.level_timeout_s
            )
            level = summarise_level(concurrency, planned, samples, wall, timed_out)
            run.levels.append(level)
            print(
                f"  {run.name:>11} C={concurrency:<4} {level.tokens_per_s:>9.1f} tok/s  "
                f"TTFT p50 {level.ttft_p50_ms:>8.1f} ms p95 {level.ttft_p95_ms:>8.1f} ms  "
                f"TPOT p50 {level.tpot_p50_ms:>6.2f} ms  "
                f"{level.requests_done}/{planned} ok"
                + (f", {level.errors} errors" if level.errors else "")
                + (" (timed out)" if timed_out else ""),
                flush=True,
            )


async def run_server(
    run: ServerRun,
    ready_url: str,
    args: argparse.Namespace,
    cwd: Path,
    env: dict[str, str],
) -> None:
    process = start(run.command, Path(run.log), cwd, env)
    try:
        async with aiohttp.ClientSession() as session:
            run.startup_s = round(
                await wait_ready(
                    session, ready_url, args.served_model_name, process, args.startup_timeout_s
                ),
                1,
            )
        print(f"  {run.name} ready after {run.startup_s:.0f} s", flush=True)
        await measure(run, args)
    except (RuntimeError, TimeoutError) as exc:
        run.failure = str(exc)
        print(f"  {run.name} failed: {exc}\n{log_tail(Path(run.log))}", flush=True)
    finally:
        stop(process, args.stop_grace_s)
        wait_gpu_released(args.gpu_free_mib, args.stop_grace_s)


# ---------------------------------------------------------------------------------------------
# Report


def ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return round(a / b, 3)


def comparison(runs: dict[str, ServerRun]) -> list[dict[str, Any]]:
    base, lane = runs.get("vllm-server"), runs.get("lane")
    if base is None or lane is None:
        return []
    by_level = {level.concurrency: level for level in base.levels}
    rows = []
    for level in lane.levels:
        other = by_level.get(level.concurrency)
        if other is None:
            continue
        rows.append(
            {
                "concurrency": level.concurrency,
                "tokens_per_s_ratio": ratio(level.tokens_per_s, other.tokens_per_s),
                "ttft_p50_ratio": ratio(level.ttft_p50_ms, other.ttft_p50_ms),
                "ttft_p95_ratio": ratio(level.ttft_p95_ms, other.ttft_p95_ms),
            }
        )
    return rows


def machine() -> dict[str, Any]:
    gpus: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "gpus": gpus,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
    }


def package_version(python: str, module: str) -> str:
    try:
        return subprocess.run(
            [python, "-c", f"import {module}; print({module}.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def markdown(report: dict[str, Any], runs: dict[str, ServerRun]) -> str:
    lines = [
        "# Serving lane vs vLLM's OpenAI server (one GPU)",
        "",
        f"{report['finished']}; model `{report['model']}`; "
        f"GPUs: {', '.join(report['machine']['gpus']) or 'unknown'}; "
        f"vLLM {report['versions']['vllm']}, Ray {report['versions']['ray']}; "
        f"load average {report['machine']['load_average']}.",
        "",
        f"Each level: C closed-loop streams, C x {report['rounds']} requests, fixed prompt, "
        f"max_tokens {report['max_tokens']}, ignore_eos. Engine settings, both servers: "
        f"`{json.dumps(report['engine'])}`.",
        "",
        "| server | C | tokens/s | TTFT p50 ms | TTFT p95 ms | TPOT p50 ms | ok / planned "
        "| errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs.values():
        if run.failure:
            lines.append(f"| {run.name} | failed: {run.failure} | | | | | | |")
        for level in run.levels:
            lines.append(
                f"| {run.name} | {level.concurrency} | {fmt(level.tokens_per_s)} | "
                f"{fmt(level.ttft_p50_ms)} | {fmt(level.ttft_p95_ms)} | "
                f"{fmt(level.tpot_p50_ms, 2)} | {level.requests_done} / "
                f"{level.requests_planned}{' (timed out)' if level.timed_out else ''} | "
                f"{level.errors} |"
            )
    if report["ratios"]:
        lines += [
            "",
            "Lane / vLLM server (tokens/s above 1 is better; TTFT below 1 is better):",
            "",
            "| C | tokens/s | TTFT p50 | TTFT p95 |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for row in report["ratios"]:
            lines.append(
                f"| {row['concurrency']} | {fmt(row['tokens_per_s_ratio'], 3)} | "
                f"{fmt(row['ttft_p50_ratio'], 3)} | {fmt(row['ttft_p95_ratio'], 3)} |"
            )
    startups = ", ".join(f"{r.name} {fmt(r.startup_s, 0)} s" for r in runs.values())
    lines += ["", f"Startup to ready: {startups}.", ""]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """NaN becomes null: the JSON file stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_report(args: argparse.Namespace, engine: Engine, runs: dict[str, ServerRun]) -> None:
    results: Path = args.out_dir
    report: dict[str, Any] = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "served_model_name": args.served_model_name,
        "engine": asdict(engine),
        "levels": args.levels,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "max_chunk_delay_ms": args.max_chunk_delay_ms,
        "machine": machine(),
        "versions": {
            "vllm": package_version(args.python, "vllm"),
            "ray": package_version(args.lane_python, "ray"),
        },
        "runs": {name: asdict(run) for name, run in runs.items()},
        "ratios": comparison(runs),
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "serving_gpu_bench.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    text = markdown(report, runs)
    (results / "serving_gpu_bench.md").write_text(text)
    print("\n" + text)
    print(f"wrote {results / 'serving_gpu_bench.json'} and {results / 'serving_gpu_bench.md'}")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="HF model folder (or hub id)")
    parser.add_argument("--served-model-name", default="bench-model")
    parser.add_argument(
        "--levels",
        default="1,8,32,64,128",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="concurrency levels, comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=3, help="requests per level = C x rounds")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--level-timeout-s", type=float, default=300.0)
    parser.add_argument("--startup-timeout-s", type=float, default=900.0)
    parser.add_argument("--stop-grace-s", type=float, default=60.0)
    parser.add_argument(
        "--gpu-free-mib", type=int, default=2048, help="GPU memory counted as released"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with vLLM")
    parser.add_argument(
        "--lane-python", default=None, help="interpreter with the lane (default: --python)"
    )
    parser.add_argument("--skip-vllm", action="store_true", help="run the lane only")
    parser.add_argument("--skip-lane", action="store_true", help="run vLLM's server only")
    parser.add_argument("--quick", action="store_true", help="levels 1,8 and one round")
    parser.add_argument("--out-dir", type=Path, default=BENCH / "results")
    engine = parser.add_argument_group("engine settings (both servers)")
    engine.add_argument("--dtype", default="bfloat16")
    engine.add_argument("--max-model-len", type=int, default=8192)
    engine.add_argument("--max-num-seqs", type=int, default=256)
    engine.add_argument("--max-num-batched-tokens", type=int, default=8192)
    engine.add_argument(
        "--quantization", default=None, help="fp8, awq or gptq (the lane accepts these three)"
    )
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--enforce-eager", action="store_true")
    engine.add_argument("--stream-interval", type=int, default=1)
    engine.add_argument("--tensor-parallel-size", type=int, default=1)
    lane = parser.add_argument_group("lane only")
    lane.add_argument("--max-chunk-delay-ms", type=float, default=0.0)
    lane.add_argument("--lane-num-cpus", type=float, default=4.0)
    lane.add_argument(
        "--lane-num-gpus",
        type=float,
        default=None,
        help="GPUs per replica (default: --tensor-parallel-size; 0 for a CPU-only smoke run)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.rounds = [1, 8], 1
    if not args.levels or min(args.levels) < 1 or args.rounds < 1:
        parser.error("levels and rounds must be positive")
    args.lane_python = args.lane_python or args.python
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    engine = Engine(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        quantization=args.quantization,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        stream_interval=args.stream_interval,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    logs = Path(tempfile.mkdtemp(prefix="serving_gpu_bench_"))
    print(f"server logs and the lane config: {logs}", flush=True)
    env = dict(os.environ)
    runs: dict[str, ServerRun] = {}

    if not args.skip_vllm:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        run = ServerRun(
            "vllm-server", base, vllm_command(args, engine, port), str(logs / "vllm.log")
        )
        runs[run.name] = run
        print("(a) vLLM OpenAI server", flush=True)
        asyncio.run(run_server(run, base, args, REPO, env))

    if not args.skip_lane:
        port = free_port()
        config_path = logs / "lane.yaml"
        write_lane_yaml(lane_config(args, engine, port), config_path)
        base = f"http://127.0.0.1:{port}/{LANE_NAME}"
        command = [args.lane_python, "-m", "serving", "run", "--config", str(config_path)]
        run = ServerRun("lane", base, command, str(logs / "lane.log"))
        runs[run.name] = run
        lane_env = dict(env)
        lane_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
        )
        print("(b) serving lane (Ray Serve + vLLM AsyncLLM)", flush=True)
        asyncio.run(run_server(run, base, args, REPO, lane_env))

    write_report(args, engine, runs)
    return 1 if any(r.failure for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
