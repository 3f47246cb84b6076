"""Eval throughput (issue 17): samples/s of a Maestro eval run beside Inspect AI, same run.

The same 2,000 exact-match tasks (JSONL of Maestro's `maestro.eval.task.v1` schema: `id`,
`input`, `expected`, `slices`, built deterministically here) go through:

- Maestro: a real control plane started in this process (gRPC on loopback, SQLite in a temp
  dir, the in-process data plane), routing model group `primary` to a `SimProvider` at zero
  latency (first token at once, tokens as fast as they go) whose answer key is the same tasks,
  right for 90% of them. The dataset and a suite with only `exact_match` are created over the
  API; each timed run is `CreateEvalRun` (repetitions 1) followed by `WatchEvalRun` to its
  terminal message, as `maestro eval` does. samples/s = tasks / (CreateEvalRun sent -> terminal
  message received). Every task's result is stored (`eval_task_results`); the bench checks the
  stored count. Runs at `max_concurrent_tasks` 8 (the default), 32 and 64. The run's own
  duration as the server records it (`create_time` -> `end_time`) is reported beside it: the
  difference is WatchEvalRun's delivery, which sends at most one message a second.
- Inspect AI (its own venv, bench/.venv-inspect, built from requirements-inspect.txt; see
  `_inspect_eval.py`): the same tasks as `Sample`s, `generate()` scored by `exact()`, on
  `mockllm/model` given `custom_outputs` (a function answering each prompt with its task's
  expected answer, wrong for ~10%, token usage set), with its default logging (an `.eval` log
  with every sample) and with `log_samples=False`. It runs offline: `HTTP(S)_PROXY` points at a
  closed port and an audit hook in the script lists any socket connect (there must be none).

The measurements are interleaved: `--trials` rounds (5), each one Maestro run per concurrency
then one Inspect eval per setting (each in a fresh process), so both systems see the same load;
each setting's figure is the median of its rounds. Warm-up: one untimed run of 100 tasks on
Maestro's server, and 100 samples in each Inspect process before its timed eval.
The machine is shared (other work may run beside), so the load average is recorded with each
section.

Run: `.venv/bin/python bench/eval_bench.py` (about 3 minutes, plus about 30 s the first time to
build Inspect's venv); `--quick` for a smoke run (200 tasks, 1 trial, results to a temp dir).
Writes `results/eval_bench.json` and `results/eval_bench.md`.
"""

from __future__ import annotations

import os

# Before anything imports litellm: its bundled price map, never the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench._measure import machine, progress  # noqa: E402

RESULTS = BENCH / "results"
INSPECT_VENV = BENCH / ".venv-inspect"
INSPECT_REQUIREMENTS = BENCH / "requirements-inspect.txt"
INSPECT_SCRIPT = BENCH / "_inspect_eval.py"
_STAMP = ".maestro-requirements.sha256"

PROJECT = "bench"
PARENT = f"projects/{PROJECT}"
ACCURACY = 0.9
CONCURRENCY = (0, 32, 64)
"""`max_concurrent_tasks` of the timed runs; 0 is the server's default (8)."""
DEFAULT_CONCURRENCY = 8
SEED = 7
RUN_TIMEOUT_S = 600.0
INSPECT_TIMEOUT_S = 900.0

CITIES = (
    "Porto", "Lyon", "Graz", "Turku", "Bergen", "Gdansk", "Malmo", "Utrecht", "Ghent", "Brno",
    "Aarhus", "Cork", "Basel", "Bilbao", "Tartu", "Split",
)  # fmt: skip
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne")

ROUTING = """
model_list:
  - model_name: primary
    litellm_params: {{model: openai/primary, api_base: "{api_base}"}}
    model_info: {{id: primary-a}}
"""

LOOPBACK_TENANT_ENDPOINTS = {
    "*": [
        {"api_base": "http://127.0.0.1", "trust_tenant_facts": True},
        {"api_base": "http://localhost", "trust_tenant_facts": True},
    ]
}
"""The simulated provider is the tenant's own: loopback, trusted facts (as in the tests)."""

CLOSED_PROXY = "http://127.0.0.1:9"
INSPECT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "INSPECT_DISPLAY": "none",
    "NO_COLOR": "1",
    # Anything that tries the network through a proxy-aware client fails at once.
    "HTTP_PROXY": CLOSED_PROXY,
    "HTTPS_PROXY": CLOSED_PROXY,
    "http_proxy": CLOSED_PROXY,
    "https_proxy": CLOSED_PROXY,
    "ALL_PROXY": CLOSED_PROXY,
    "NO_PROXY": "",
    "no_proxy": "",
}


# -- the tasks ------------------------------------------------------------------------------------


def task_rows(count: int) -> list[dict[str, Any]]:
    """`count` short-answer questions whose answer (a city) is named in the question, beside one
    other city (the plausible wrong answer the simulated provider gives)."""
    rows: list[dict[str, Any]] = []
    for i in range(count):
        city = CITIES[i % len(CITIES)]
        other = CITIES[(i * 7 + 3) % len(CITIES)]
        if other == city:
            other = CITIES[(i + 1) % len(CITIES)]
        company = COMPANIES[(i // len(CITIES)) % len(COMPANIES)]
        rows.append(
            {
                "id": f"q-{i:05d}",
                "input": (
                    f"Where is office {i} of {company} now? Context: office {i} of {company} "
                    f"moved from {other} to {city} in spring. Answer with the city only."
                ),
                "expected": city,
                "slices": {"kind": "qa", "company": company.lower()},
            }
        )
    return rows


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def loadavg() -> float:
    return os.getloadavg()[0]


# -- Maestro --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def maestro_stack(folder: Path, key_file: Path) -> AsyncIterator[tuple[Any, Any]]:
    """A control plane (gRPC on loopback, SQLite, the in-process data plane) routing `primary`
    to a zero-latency simulated provider that knows the answers of `key_file`; yields the
    plane and a client."""
    from maestro.app.config import load_config
    from maestro.app.server import start_control_plane
    from maestro.clients import AsyncMaestroClient
    from maestro.core.logs import configure_logging
    from maestro.core.telemetry import build_telemetry
    from maestro.data_plane.sim import FaultProfile, SimProvider
    from maestro.v1 import route_service_pb2 as rpb

    config = load_config(
        None,
        env={},
        **{
            "server.port": 0,
            "store.sqlite_path": str(folder / "maestro.db"),
            "data_plane.http_port": 0,
            "routing.tenant_endpoints": LOOPBACK_TENANT_ENDPOINTS,
            "auth.mode": "insecure",
            "auth.insecure_project": PROJECT,
            "logging.level": "warning",
        },
    )
    profile = FaultProfile.model_validate(
        {
            "strict_models": False,  # default faults: ttft fixed 0 ms, tokens_per_s 0 (no pacing)
            "answers": {"key_files": [str(key_file)], "default": {"accuracy": ACCURACY}},
        }
    )
    configure_logging(config.logging)  # as `maestro up` does
    telemetry = build_telemetry(config.telemetry)  # what `maestro up` runs with
    async with SimProvider(profile) as sim:
        plane = await start_control_plane(config, telemetry)
        try:
            async with AsyncMaestroClient(plane.address, timeout_s=60) as client:
                await client.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(
                            name=f"{PARENT}/routeConfig",
                            config_yaml=ROUTING.format(api_base=sim.base_url),
                        )
                    )
                )
                yield plane, client
        finally:
            await plane.stop(grace_s=0)
            telemetry.shutdown()


async def create_suite(client: Any, dataset_id: str, rows: list[dict[str, Any]]) -> str:
    from maestro.v1 import eval_service_pb2 as epb

    dataset = (
        await client.evals.CreateDataset(
            epb.CreateDatasetRequest(
                parent=PARENT, dataset_id=dataset_id, dataset=epb.Dataset(), jsonl=jsonl(rows)
            )
        )
    ).dataset
    suite = await client.evals.CreateEvalSuite(
        epb.CreateEvalSuiteRequest(
            parent=PARENT,
            eval_suite_id=f"{dataset_id}-suite",
            eval_suite=epb.EvalSuite(
                datasets=[dataset.name],
                metrics=[epb.EVAL_METRIC_EXACT_MATCH],
                default_repetitions=1,
            ),
        )
    )
    return str(suite.eval_suite.name)


async def timed_run(plane: Any, client: Any, suite: str, concurrency: int, count: int) -> Any:
    """One run, CreateEvalRun to WatchEvalRun's terminal message; its figures, checked."""
    from maestro.v1 import eval_service_pb2 as epb

    terminal = {
        epb.EvalRun.STATE_SUCCEEDED,
        epb.EvalRun.STATE_FAILED,
        epb.EvalRun.STATE_CANCELLED,
    }
    started = time.perf_counter()
    created = await client.evals.CreateEvalRun(
        epb.CreateEvalRunRequest(
            parent=PARENT,
            eval_run=epb.EvalRun(
                suite=suite,
                target=epb.EvalTarget(model_group="primary"),
                repetitions=1,
                seed=SEED,
                max_concurrent_tasks=concurrency,
            ),
        )
    )
    last = None
    messages = streamed = 0
    stream = client.evals.WatchEvalRun(
        epb.WatchEvalRunRequest(name=created.eval_run.name), timeout=RUN_TIMEOUT_S
    )
    async for message in stream:
        messages += 1
        streamed += len(message.task_results)
        last = message
        if message.eval_run.state in terminal and (
            message.eval_run.state != epb.EvalRun.STATE_SUCCEEDED or message.HasField("scorecard")
        ):
            break
    seconds = time.perf_counter() - started
    stream.cancel()
    assert last is not None, "WatchEvalRun sent nothing"
    run = last.eval_run
    assert run.state == epb.EvalRun.STATE_SUCCEEDED, (run.state, run.state_message)
    run_id = run.name.rsplit("/", 1)[1]
    stored = await asyncio.to_thread(plane.evals.store.results, PROJECT, run_id)
    assert len(stored) == count, f"{len(stored)} task results stored, expected {count}"
    assert run.progress.completed_tasks == count
    assert run.progress.errored_tasks == 0, run.progress
    exact = next(m for m in last.scorecard.metrics if m.metric == epb.EVAL_METRIC_EXACT_MATCH)
    server_s = (
        run.end_time.seconds
        + run.end_time.nanos / 1e9
        - run.create_time.seconds
        - run.create_time.nanos / 1e9
    )
    return {
        "seconds": seconds,
        "samples_per_s": count / seconds,
        "server_seconds": server_s,
        "server_samples_per_s": count / server_s if server_s > 0 else None,
        "stored_results": len(stored),
        "streamed_results": streamed,
        "watch_messages": messages,
        "exact_match": exact.mean,
        "max_concurrent_tasks": run.max_concurrent_tasks,
    }


# -- Inspect AI -----------------------------------------------------------------------------------


def ensure_inspect_venv(path: Path = INSPECT_VENV) -> str:
    """Create Inspect's venv at `path` if missing or stale (hashed pins); its python's path."""
    python = path / "bin" / "python"
    digest = hashlib.sha256(INSPECT_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = path / _STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return str(python)
    progress(f"building {path} from {INSPECT_REQUIREMENTS.name}")
    if not python.exists():
        base = shutil.which("python3.11") or sys.executable
        subprocess.run([base, "-m", "venv", str(path)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "-r",
         str(INSPECT_REQUIREMENTS)],
        check=True,
        timeout=900,
    )  # fmt: skip
    stamp.write_text(digest + "\n")
    return str(python)


def inspect_trial(
    python: str, tasks: Path, count: int, log_samples: bool, warmup: int, folder: Path
) -> dict[str, Any]:
    """One timed Inspect eval: `_inspect_eval.py` in Inspect's venv, offline, in a scratch
    folder, a fresh process (warmed up with `warmup` samples first); its JSON."""
    logs = folder / ("logs" if log_samples else "logs-no-samples")
    logs.mkdir(parents=True, exist_ok=True)
    command = [
        *(python, str(INSPECT_SCRIPT), "--jsonl", str(tasks), "--log-dir", str(logs)),
        *("--trials", "1", "--warmup", str(warmup), "--accuracy", str(ACCURACY)),
    ]
    if not log_samples:
        command.append("--no-log-samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSPECT_", "VIRTUAL_ENV"))}
    env |= INSPECT_ENV | {"INSPECT_LOG_DIR": str(logs), "HOME": str(folder / "home")}
    load = loadavg()
    done = subprocess.run(
        command,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSPECT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"Inspect failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["network"]:
        raise RuntimeError(f"Inspect tried the network: {result['network'][:5]}")
    (trial,) = result.pop("trials")
    assert trial["status"] == "success", trial
    if log_samples:  # per-sample results recorded in the log
        assert trial["samples_in_log"] == count, trial
    return {**result, **trial, "loadavg_1m_before": load}


# -- both, interleaved ----------------------------------------------------------------------------


async def measure(rows: list[dict[str, Any]], trials: int, warmup: int) -> dict[str, Any]:
    """`trials` rounds, each one Maestro run per concurrency then one Inspect eval per setting,
    so both systems see the same load on a shared machine."""
    python = ensure_inspect_venv()
    maestro: dict[str, list[dict[str, Any]]] = {f"c{c or 8}": [] for c in CONCURRENCY}
    inspect: dict[str, list[dict[str, Any]]] = {"default": [], "log_samples_false": []}
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as scratch:
        folder = Path(scratch)
        (folder / "home").mkdir()
        tasks = folder / "tasks.jsonl"
        tasks.write_bytes(jsonl(rows))
        async with maestro_stack(folder, tasks) as (plane, client):
            suite = await create_suite(client, "bench", rows)
            if warmup:
                progress(f"maestro: warm-up run of {warmup} tasks")
                small = await create_suite(client, "warmup", rows[:warmup])
                await timed_run(plane, client, small, 0, warmup)
            for trial in range(trials):
                for concurrency in CONCURRENCY:
                    label = f"c{concurrency or 8}"
                    load = loadavg()
                    run = await timed_run(plane, client, suite, concurrency, len(rows))
                    maestro[label].append({**run, "loadavg_1m_before": load})
                    progress(
                        f"round {trial + 1}/{trials}: maestro {label} "
                        f"{run['samples_per_s']:.0f} samples/s "
                        f"(the run itself {run['server_samples_per_s']:.0f})"
                    )
                for label, log_samples in (("default", True), ("log_samples_false", False)):
                    figures = await asyncio.to_thread(
                        inspect_trial, python, tasks, len(rows), log_samples, warmup, folder
                    )
                    inspect[label].append(figures)
                    progress(
                        f"round {trial + 1}/{trials}: inspect {label} "
                        f"{figures['samples_per_s']:.0f} samples/s"
                    )
    return {
        "maestro": {
            label: {
                "max_concurrent_tasks": runs[0]["max_concurrent_tasks"],
                "default": label == f"c{DEFAULT_CONCURRENCY}",
                "samples_per_s": median([r["samples_per_s"] for r in runs]),
                "server_samples_per_s": median([r["server_samples_per_s"] for r in runs]),
                "trials": runs,
            }
            for label, runs in maestro.items()
        },
        "inspect": {
            label: {
                "inspect_ai": runs[0]["inspect_ai"],
                "max_connections": runs[0]["max_connections"],
                "log_samples": runs[0]["log_samples"],
                "samples_per_s": median([r["samples_per_s"] for r in runs]),
                "trials": runs,
            }
            for label, runs in inspect.items()
        },
    }


# -- the report -----------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "NOT MET"


def report(results: dict[str, Any]) -> str:
    ours = results["maestro"]
    theirs = results["inspect"]
    default = theirs["default"]["samples_per_s"]
    quiet = theirs["log_samples_false"]["samples_per_s"]
    n = results["samples"]
    trials = f"median of {results['trials']}"
    rows = [
        f"| system, setting ({n} exact-match samples, {trials}) | samples/s | run's own "
        "samples/s (server create → end) | vs Inspect default | vs Inspect `log_samples=False` "
        "| goal ≥ 10x Inspect default |",
        "|---|---|---|---|---|---|",
    ]
    for figures in ours.values():
        rate = figures["samples_per_s"]
        concurrency = figures["max_concurrent_tasks"]
        name = f"Maestro, `max_concurrent_tasks` {concurrency}" + (
            " (default)" if figures["default"] else ""
        )
        rows.append(
            f"| {name} | {rate:.0f} | {figures['server_samples_per_s']:.0f} "
            f"| {rate / default:.1f}x | {rate / quiet:.1f}x | {_verdict(rate >= 10 * default)} |"
        )
    connections = theirs["default"]["max_connections"]
    rows += [
        f"| Inspect AI {theirs['default']['inspect_ai']}, mockllm, default logging "
        f"(`.eval` log with every sample; max_connections {connections}) "
        f"| {default:.0f} | | 1.0x | {default / quiet:.2f}x | |",
        f"| Inspect AI {theirs['default']['inspect_ai']}, mockllm, `log_samples=False` "
        f"| {quiet:.0f} | | {quiet / default:.2f}x | 1.0x | |",
    ]
    return "\n".join(rows)


def markdown(results: dict[str, Any], table: str, command: str) -> str:
    m = results["machine"]
    sections = [
        *((f"Maestro {label}", figures) for label, figures in results["maestro"].items()),
        *((f"Inspect {label}", figures) for label, figures in results["inspect"].items()),
    ]
    trials = "; ".join(
        label + " " + ", ".join(f"{t['samples_per_s']:.0f}" for t in figures["trials"])
        for label, figures in sections
    )
    return f"""# Eval throughput: Maestro vs Inspect AI

`{command}`

{table}

- Samples/s: tasks / wall time. Maestro: `CreateEvalRun` sent to `WatchEvalRun`'s terminal
  message (with the scorecard) received, on a control plane in the bench's process, gRPC on
  loopback, SQLite, the in-process data plane, routed to the simulated provider at zero latency
  (the provider runs in the same process and event loop, so its cost is counted in Maestro's
  time). Every task's result is stored (`eval_task_results`, count checked per run) and
  streamed to the watcher. "Run's own": the run's `create_time` → `end_time` as stored, without
  WatchEvalRun's delivery (it sends at most one message a second, so the terminal message can
  come up to 1 s after the run ends).
- Inspect: `inspect_ai.eval()` timed alone (`generate()` + `exact()`, the log written), on
  `mockllm/model` with `custom_outputs` (a function returning the task's answer, wrong for ~10%,
  with token usage set, so mockllm never loads a tokenizer), `display="none"`, other settings
  default. Its own venv (`bench/.venv-inspect`, from `bench/requirements-inspect.txt`), offline
  (HTTP(S)_PROXY on a closed port; an audit hook saw no socket connect).
- Per-trial samples/s: {trials}.
- Exact-match accuracy: Maestro {_first_exact(results):.3f}, Inspect
  {results["inspect"]["default"]["trials"][0]["accuracy"]:.3f} (the simulated answers are right
  for ~90%).
- Machine: {m["nproc"]} cores ({m["cpu"]}), Python {m["python"]}, commit {m["commit"]}
  {"(with uncommitted changes)" if m["modified_files"] else ""}; both systems in the same run,
  interleaved: {results["trials"]} rounds of one Maestro run per concurrency then one Inspect
  eval per setting, after warm-ups. The machine is shared: 1-minute load average
  {m["loadavg_1m_at_start"]:.2f} at the start, {_loads(results)} before the timed runs.
"""


def _first_exact(results: dict[str, Any]) -> float:
    first = next(iter(results["maestro"].values()))
    return float(first["trials"][0]["exact_match"])


def _loads(results: dict[str, Any]) -> str:
    loads = [
        trial["loadavg_1m_before"]
        for section in ("maestro", "inspect")
        for figures in results[section].values()
        for trial in figures["trials"]
    ]
    return f"{min(loads):.2f} to {max(loads):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Eval throughput, Maestro vs Inspect AI.")
    parser.add_argument("--quick", action="store_true", help="200 tasks, 1 trial: a smoke run")
    parser.add_argument("--samples", type=int, help="tasks per run (default 2000; --quick 200)")
    parser.add_argument(
        "--trials", type=int, help="rounds: timed runs per system and setting (default 5)"
    )
    parser.add_argument(
        "--results", type=Path, help="where results go (default bench/results; --quick: temp)"
    )
    args = parser.parse_args(argv)
    samples = args.samples or (200 if args.quick else 2000)
    trials = args.trials or (1 if args.quick else 5)
    warmup = 20 if args.quick else 100
    results_dir: Path = args.results or (
        Path(tempfile.mkdtemp(prefix="eval-bench-results-")) if args.quick else RESULTS
    )
    rows = task_rows(samples)
    results: dict[str, Any] = {
        "machine": machine(["grpcio", "litellm", "aiohttp"]),
        "samples": samples,
        "trials": trials,
        "warmup_samples": warmup,
        "accuracy": ACCURACY,
        "tasks_sha256": hashlib.sha256(jsonl(rows)).hexdigest(),
    }
    progress(f"{samples} tasks, {trials} round(s)")
    results |= asyncio.run(measure(rows, trials, warmup))
    table = report(results)
    print(table)
    command = ".venv/bin/python bench/eval_bench.py" + (" --quick" if args.quick else "")
    given: list[tuple[str, int | None]] = [
        ("samples", args.samples),
        ("trials", args.trials),
    ]
    command += "".join(f" --{k} {v}" for k, v in given if v)
    results["command"] = command
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "eval_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / "eval_bench.md").write_text(markdown(results, table, command))
    progress(f"wrote {results_dir / 'eval_bench'}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
