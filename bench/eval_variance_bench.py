"""Eval variance: repeated runs of the seed suite, their coefficient of variation per metric.

    .venv/bin/python bench/eval_variance_bench.py            # about 3-5 min
    .venv/bin/python bench/eval_variance_bench.py --quick    # a smoke run, results to *_quick

The acceptance item: five repeated runs of the seed suite (`evals/prompt_eval.yaml`,
`intelgraph_core_v1`: 600 golden and 150 critical-path tasks, 3 repetitions as the suite's
default) at a fixed seed give a coefficient of variation under 2% on every metric (the seed's
"nightly variance < 2% on stable seeds"); with the simulated provider's sampling noise on, the
note reports the measured CV.

The stack is `maestro up`'s: a real in-process control plane started from the packaged
`demo.yaml` (SQLite, API keys, the demo project bootstrapped as `maestro up` does), the seed
routing config `deploy/router/litellm.yaml` with `deploy/router/policies/routing.rego`, and the
in-process simulated provider with the demo profile's answer key and per-model accuracy. Only
the profile's latency is changed: time to first token 0 and no token pacing (the demo's 120 ms
lognormal and 80 tokens/s would make each run take minutes and add nothing to the quality
metrics), and `answers.default.sampling_noise` is set per series. The suite and its datasets are
uploaded through the gRPC API with `maestro eval`'s own helpers (`eval_cli._upload_datasets`,
`_put_suite`), each run is created with CreateEvalRun and followed with WatchEvalRun, and a
run's figures are its scorecard's aggregate metric means (dataset and slice empty).

Series, each of `--runs` runs (5), per sampling noise (0, 0.1, 0.3; one server each):

- target `router` (model group "", what `maestro eval --provider router` runs) and `gpt-4o`
  (a fixed model group; the demo config gives the in-house model no price, so the router's
  runs cost $0 and their cost_per_task CV says nothing);
- all runs at one seed, and each run at its own seed. Seeds of different runs are 1,000 apart:
  a run with seed s asks repetition r with seed s + r, so runs at seeds 7 and 8 would share two
  of their three repetitions' answers.

Without sampling noise, one more series per target: the fixed seed with each run in a fresh
Python process (this script with `--one-run`, PYTHONHASHSEED 1 to 5), as nightly runs are; the
in-process series share one simulated provider and one embedding cache, so anything that varies
between processes shows only here. The acceptance takes the larger CV of the two.

The CV is `stats.coefficient_of_variation` over the five runs' means (sample standard deviation
over the absolute mean). ttft and latency are timing noise of this shared machine, not of the
eval, and are reported apart from the quality metrics, which the acceptance is about.

Writes `results/eval_variance.json` and `results/eval_variance.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM's bundled price map

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench._measure import machine, progress  # noqa: E402
from maestro.clients import MaestroClient  # noqa: E402
from maestro.control_plane.evals import stats  # noqa: E402
from maestro.control_plane.evals.convert import METRIC_NAME  # noqa: E402
from maestro.control_plane.evals.suites import SuiteFile, find_suite, load_suite_file  # noqa: E402
from maestro.v1 import eval_service_pb2 as pb  # noqa: E402

RESULTS = BENCH / "results"
SUITE = "intelgraph_core_v1"
SUITES_DIR = ROOT / "evals"
DEMO_CONFIG = ROOT / "control_plane" / "maestro" / "control_plane" / "demo.yaml"
DEMO_PROFILE = ROOT / "data_plane" / "maestro" / "data_plane" / "sim" / "demo-profile.yaml"
ROUTING_FILE = ROOT / "deploy" / "router" / "litellm.yaml"
POLICY_FILE = ROOT / "deploy" / "router" / "policies" / "routing.rego"
PARENT = "projects/demo"  # the project `maestro up` bootstraps and the routing files configure
QUALITY_METRICS = (
    "exact_match",
    "semantic_sim",
    "tool_success",
    "cost_per_task",
    "hallucination_rate",
)
TIMING_METRICS = ("ttft", "latency")
METRICS = (*QUALITY_METRICS, *TIMING_METRICS)
CV_LIMIT = 0.02
SEED = 20260101
SEED_STRIDE = 1000
"""Between the seeds of runs meant to differ: more than the 10 repetitions a run may have."""
WATCH_TIMEOUT_S = 1800.0


# -- the stack: shared with eval_cost_bench.py ------------------------------------------------


def zero_latency_profile(folder: Path, sampling_noise: float = 0.0) -> Path:
    """The demo simulated-provider profile with no latency and the given sampling noise."""
    data = yaml.safe_load(DEMO_PROFILE.read_text(encoding="utf-8"))
    data["default"] = {"ttft": {"kind": "fixed", "ms": 0}, "tokens_per_s": 0, "jitter_ms": 0}
    answers = data["answers"]
    # The demo counts key files from the working directory (the repository root under `make up`).
    answers["key_files"] = [str(ROOT / path) for path in answers["key_files"]]
    answers["default"]["sampling_noise"] = sampling_noise
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sim-profile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def control_plane(
    folder: Path, profile: Path, routing_file: Path = ROUTING_FILE
) -> AsyncIterator[tuple[str, str]]:
    """`maestro up` in process on free ports: its demo config with `routing_file`, the simulated
    provider on `profile`, the demo project and its key. Yields (gRPC address, API key)."""
    from maestro.app import cli
    from maestro.app.config import load_config
    from maestro.app.server import start_control_plane
    from maestro.core.logs import configure_logging
    from maestro.core.settings import LoggingConfig
    from maestro.core.telemetry import build_telemetry

    config = load_config(
        DEMO_CONFIG,
        env={},
        **{
            "server.port": 0,
            "data_plane.http_port": 0,
            "store.sqlite_path": str(folder / "maestro.db"),
            "routing.config_file": str(routing_file),
            "routing.policy_files": [str(POLICY_FILE)],
            "routing.watch": False,
            "data_plane.simulated_profile": str(profile),
            "logging.level": "warning",
        },
    )
    configure_logging(LoggingConfig(level="warning"))
    cli._bootstrap_demo(config)  # what `maestro up` does first: the demo project and its key
    api_key = (folder / "demo-api-key").read_text(encoding="utf-8").strip()
    telemetry = build_telemetry(config.telemetry)
    plane = await start_control_plane(config, telemetry)
    try:
        yield plane.address, api_key
    finally:
        await plane.stop(grace_s=0)
        telemetry.shutdown()


def seed_suite() -> SuiteFile:
    return load_suite_file(find_suite(SUITE, [SUITES_DIR]))


def upload_suite(client: MaestroClient, suite: SuiteFile) -> str:
    """The suite's resource name, its datasets uploaded as `maestro eval` uploads them."""
    from maestro.app import eval_cli

    datasets = eval_cli._upload_datasets(client, PARENT, suite)
    return eval_cli._put_suite(client, PARENT, suite, datasets)


def dataset_suite(suite: SuiteFile, index: int) -> SuiteFile:
    """`suite` with only its `index`-th dataset, under its own name."""
    stem = suite.datasets[index].stem.replace("_", "-")
    return replace(
        suite,
        suite=f"{suite.suite}_{stem}",
        suite_id=f"{suite.suite_id}-{stem}",
        datasets=(suite.datasets[index],),
    )


@dataclass
class RunOutcome:
    run: pb.EvalRun
    scorecard: pb.Scorecard
    task_results: list[pb.EvalTaskResult]
    wall_s: float

    @property
    def means(self) -> dict[str, float]:
        """The scorecard's aggregate mean of each metric (dataset and slice empty)."""
        return aggregate_means(self.scorecard)

    @property
    def deployments(self) -> dict[str, int]:
        return dict(sorted(Counter(r.deployment for r in self.task_results).items()))


def aggregate_means(card: pb.Scorecard) -> dict[str, float]:
    return {
        METRIC_NAME[score.metric]: score.mean
        for score in card.metrics
        if not score.dataset and not score.slice
    }


def run_suite(
    client: MaestroClient,
    suite: str,
    *,
    model_group: str,
    seed: int,
    repetitions: int = 0,
    concurrency: int = 0,
    baseline: str = "",
    labels: dict[str, str] | None = None,
) -> RunOutcome:
    """Create a run (0: the suite's repetitions, the server's concurrency) and follow it with
    WatchEvalRun to its end, keeping every task result the stream carries."""
    started = time.perf_counter()
    created = client.evals.CreateEvalRun(
        pb.CreateEvalRunRequest(
            parent=PARENT,
            eval_run=pb.EvalRun(
                suite=suite,
                target=pb.EvalTarget(model_group=model_group),
                baseline_scorecard=baseline,
                repetitions=repetitions,
                seed=seed,
                max_concurrent_tasks=concurrency,
                labels=labels or {},
            ),
        )
    ).eval_run
    last = pb.WatchEvalRunResponse(eval_run=created)
    results: list[pb.EvalTaskResult] = []
    for message in client.evals.WatchEvalRun(
        pb.WatchEvalRunRequest(name=created.name), timeout=WATCH_TIMEOUT_S
    ):
        results.extend(message.task_results)
        last = message
    wall_s = time.perf_counter() - started
    run = last.eval_run
    if run.state != pb.EvalRun.STATE_SUCCEEDED:
        state = pb.EvalRun.State.Name(run.state)
        raise RuntimeError(f"run {run.name} ended {state}: {run.state_message}")
    # The stored scorecard, as `maestro eval` and CI read it (the stream's last message
    # carries the same one).
    card = client.evals.GetScorecard(pb.GetScorecardRequest(name=f"{run.name}/scorecard")).scorecard
    return RunOutcome(run, card, results, wall_s)


def explain(client: MaestroClient, text: str, model: str = "") -> list[dict[str, Any]]:
    """ExplainRoute for one user message: each candidate's group, id, verdict, weighted score
    and objective scores, as the router sees them now (live latency signals included)."""
    from maestro.v1 import common_pb2
    from maestro.v1 import route_service_pb2 as rpb

    message = common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=text)
    decision = client.routes.ExplainRoute(
        rpb.ExplainRouteRequest(
            request=rpb.ChooseRequest(parent=PARENT, messages=[message], model=model)
        )
    ).decision
    out = []
    for candidate in decision.candidates:
        scores = candidate.objective_scores
        out.append(
            {
                "model_group": candidate.deployment.model_group,
                "deployment_id": candidate.deployment.deployment_id,
                "verdict": rpb.RouteCandidateVerdict.Name(candidate.verdict).removeprefix(
                    "ROUTE_CANDIDATE_VERDICT_"
                ),
                "score": round(candidate.score, 4),
                "objectives": {
                    name: round(getattr(scores, name), 4)
                    for name in ("quality", "latency", "cost", "reliability", "sovereignty")
                },
                "exclusion": rpb.RouteExclusionReason.Name(candidate.exclusion_reason),
            }
        )
    return out


def finite(value: float) -> float | None:
    """JSON has no infinity: an infinite or NaN figure is written as null."""
    return value if math.isfinite(value) else None


def percent(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "inf"
    return f"{value * 100:.{digits}f} %"


# -- the variance series ------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    target: str  # "router" or a model group
    same_seed: bool


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and CV of one metric's run means."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return {
        "mean": mean,
        "sd": sd,
        "cv": finite(stats.coefficient_of_variation(values)),
        "min": min(values),
        "max": max(values),
    }


def deployment_names(client: MaestroClient) -> dict[str, str]:
    """Deployment id -> its model group, from the router's candidates."""
    return {c["deployment_id"]: c["model_group"] for c in explain(client, "Hello.")}


def one_run(
    client: MaestroClient, suite: str, noise: float, target: str, seed: int, names: dict[str, str]
) -> dict[str, Any]:
    """One run of the suite to its end: its scorecard's means and what it cost."""
    outcome = run_suite(
        client,
        suite,
        model_group="" if target == "router" else target,
        seed=seed,
        labels={"bench": "eval_variance", "sampling_noise": str(noise)},
    )
    card = outcome.scorecard
    return {
        "seed": seed,
        "run": outcome.run.name,
        "wall_s": round(outcome.wall_s, 2),
        "means": outcome.means,
        "deployments": {names.get(key, key): n for key, n in outcome.deployments.items()},
        "errored_tasks": outcome.run.progress.errored_tasks,
        "total_cost_usd": card.total_cost_usd,
        "total_tokens": card.usage.total_tokens,
        "verdict": pb.Scorecard.Verdict.Name(card.verdict).removeprefix("VERDICT_"),
    }


def summarise_series(
    noise: float, target: str, seeds: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    metrics = [m for m in METRICS if all(m in r["means"] for r in records)]
    return {
        "sampling_noise": noise,
        "target": target,
        "seeds": seeds,
        "seed_values": [r["seed"] for r in records],
        "runs": records,
        "metrics": {m: spread([r["means"][m] for r in records]) for m in metrics},
    }


def run_series(
    client: MaestroClient,
    suite: str,
    noise: float,
    series: Series,
    runs: int,
    names: dict[str, str],
) -> dict[str, Any]:
    seeds = [SEED if series.same_seed else SEED + SEED_STRIDE * i for i in range(runs)]
    records: list[dict[str, Any]] = []
    for index, seed in enumerate(seeds):
        records.append(one_run(client, suite, noise, series.target, seed, names))
        progress(
            f"  noise {noise} {series.target} {'same' if series.same_seed else 'new'} seed "
            f"run {index + 1}/{runs}: {records[-1]['wall_s']:.1f} s, exact_match "
            f"{records[-1]['means'].get('exact_match', math.nan):.4f}"
        )
    return summarise_series(
        noise, series.target, "same" if series.same_seed else "different", records
    )


async def single_run(target: str, seed: int) -> dict[str, Any]:
    """`--one-run`: a fresh server in this process, one run without sampling noise."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        async with control_plane(folder, zero_latency_profile(folder)) as (address, api_key):

            def work() -> dict[str, Any]:
                with MaestroClient(address, api_key=api_key, timeout_s=120) as client:
                    suite = upload_suite(client, seed_suite())
                    return one_run(client, suite, 0.0, target, seed, deployment_names(client))

            return await asyncio.to_thread(work)


def fresh_process_series(target: str, runs: int) -> dict[str, Any]:
    """Runs at the fixed seed, each in a fresh Python process (as nightly runs are), with
    PYTHONHASHSEED 1, 2, ...: what varies between processes shows here and nowhere else."""
    records = []
    for index in range(runs):
        env = {**os.environ, "PYTHONHASHSEED": str(index + 1)}
        done = subprocess.run(
            [sys.executable, __file__, "--one-run", target, "--seed", str(SEED)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"--one-run failed ({done.returncode}): {done.stderr[-2000:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1])
        record["python_hash_seed"] = index + 1
        records.append(record)
        progress(
            f"  fresh process {index + 1}/{runs} ({target}): {record['wall_s']:.1f} s, "
            f"semantic_sim {record['means'].get('semantic_sim', math.nan):.5f}"
        )
    return summarise_series(0.0, target, "same, fresh process each", records)


async def noise_level(
    folder: Path, noise: float, series: Sequence[Series], runs: int
) -> list[dict[str, Any]]:
    """One server with the profile's sampling noise at `noise`; every series on it."""
    profile = zero_latency_profile(folder, noise)
    async with control_plane(folder, profile) as (address, api_key):

        def work() -> list[dict[str, Any]]:
            with MaestroClient(address, api_key=api_key, timeout_s=120) as client:
                suite = upload_suite(client, seed_suite())
                names = deployment_names(client)
                return [run_series(client, suite, noise, s, runs, names) for s in series]

        return await asyncio.to_thread(work)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(["grpcio", "litellm", "numpy", "tokenizers"]),
        "suite": SUITE,
        "routing_file": str(ROUTING_FILE.relative_to(ROOT)),
        "runs_per_series": args.runs,
        "seed": SEED,
        "seed_stride": SEED_STRIDE,
        "cv_limit": CV_LIMIT,
        "series": [],
    }
    series = [Series(target, same) for target in args.targets for same in (True, False)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for noise in args.noise:
            progress(f"sampling noise {noise}: a fresh server")
            folder = Path(scratch) / f"noise-{noise}"
            results["series"] += await noise_level(folder, noise, series, args.runs)
    if 0.0 in args.noise:
        for target in args.targets:
            progress(f"no sampling noise, {target}: a fresh process per run")
            results["series"].append(
                await asyncio.to_thread(fresh_process_series, target, args.runs)
            )
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["acceptance"] = acceptance(results)
    return results


def acceptance(results: dict[str, Any]) -> dict[str, Any]:
    """Fixed seed, no sampling noise (the demo profile's), the seed suite as `maestro eval`
    runs it: the CV of every quality metric under the limit."""
    found = [
        s
        for s in results["series"]
        if s["sampling_noise"] == 0 and s["seeds"].startswith("same") and s["target"] == "router"
    ]
    if not found:
        return {"verdict": "NOT RUN"}
    cvs = {
        m: max(
            (s["metrics"][m]["cv"] for s in found), key=lambda cv: math.inf if cv is None else cv
        )
        for m in QUALITY_METRICS
        if all(m in s["metrics"] for s in found)
    }
    ok = all(cv is not None and cv < CV_LIMIT for cv in cvs.values())
    return {
        "verdict": "PASS" if ok else "FAIL",
        "quality_cv": cvs,
        "series": [s["seeds"] for s in found],
    }


# -- the report ---------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    metrics_q = [m for m in QUALITY_METRICS]
    head = "| noise | target | seeds | " + " | ".join(metrics_q) + " |"
    rule = "| --- | --- | --- | " + " | ".join("---:" for _ in metrics_q) + " |"
    rows = [head, rule]
    timing = [
        "| noise | target | seeds | ttft CV | ttft mean | latency CV | latency mean | s per run |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in results["series"]:
        m = s["metrics"]
        cells = [percent(m[k]["cv"]) if k in m else "n/a" for k in metrics_q]
        rows.append(
            f"| {s['sampling_noise']} | {s['target']} | {s['seeds']} | " + " | ".join(cells) + " |"
        )
        wall = sum(r["wall_s"] for r in s["runs"]) / len(s["runs"])
        timing.append(
            f"| {s['sampling_noise']} | {s['target']} | {s['seeds']} "
            f"| {percent(m['ttft']['cv'], 1)} | {m['ttft']['mean'] * 1000:.1f} ms "
            f"| {percent(m['latency']['cv'], 1)} | {m['latency']['mean'] * 1000:.1f} ms "
            f"| {wall:.1f} |"
        )
    means = [
        "| noise | target | seeds | " + " | ".join(f"{k} mean ± sd" for k in metrics_q) + " |",
        rule,
    ]
    for s in results["series"]:
        m = s["metrics"]
        cells = [f"{m[k]['mean']:.5f} ± {m[k]['sd']:.5f}" if k in m else "n/a" for k in metrics_q]
        means.append(
            f"| {s['sampling_noise']} | {s['target']} | {s['seeds']} | " + " | ".join(cells) + " |"
        )
    deployments = {
        f"{s['target']} (noise {s['sampling_noise']})": s["runs"][0]["deployments"]
        for s in results["series"]
        if s["seeds"] == "same"
    }
    verdict = results["acceptance"]
    lines = [
        f"**Acceptance (fixed seed, no sampling noise, router, {results['runs_per_series']} runs): "
        f"{verdict['verdict']}**: quality-metric CVs "
        + ", ".join(f"{k} {percent(v)}" for k, v in verdict.get("quality_cv", {}).items())
        + f" (limit {percent(CV_LIMIT, 0)}).",
        "",
        f"CV of the run means over {results['runs_per_series']} runs per series (quality metrics):",
        "",
        *rows,
        "",
        "The run means behind them (mean ± sample sd over the runs):",
        "",
        *means,
        "",
        "Timing (this machine's noise, not the eval's; the simulated provider has no latency):",
        "",
        *timing,
        "",
        "Deployments that answered (task executions of the first run of each same-seed series): "
        + "; ".join(f"{k}: {json.dumps(v)}" for k, v in deployments.items()),
        "",
        "How to read it: the simulated provider hashes each answer's draws from (model, task id);",
        "the request's seed enters only through sampling noise. Without noise every run answers",
        "every task the same way whatever its seed, so the quality CVs are 0 by construction and",
        "the acceptance checks that nothing else in the path (routing, grading, embedding,",
        "scoring) adds variance. With noise, runs at one seed still repeat exactly (the noise is",
        "drawn from the seed); runs at different seeds show the sampling spread. The router's",
        "runs cost $0 on the demo config (the in-house model has no price), so their",
        "cost_per_task CV is 0 trivially; the gpt-4o series carry the cost figure.",
        *cross_process(results),
        "hallucination_rate is a rare event (about 0.2% of answers, a few of 1,740 per run),",
        "so its CV across seeds is large whatever the eval does: its sd in points is the",
        "meaningful spread.",
    ]
    return "\n".join(lines)


def cross_process(results: dict[str, Any]) -> list[str]:
    """A sentence on what varied between fresh processes at the fixed seed, if anything."""
    lines = []
    for s in results["series"]:
        if not s["seeds"].endswith("fresh process each"):
            continue
        # Float summation order alone moves a mean by ~1e-16: not a variation.
        varied = [
            m
            for m in QUALITY_METRICS
            if m in s["metrics"]
            and s["metrics"][m]["sd"] > 1e-9 * max(1e-9, abs(s["metrics"][m]["mean"]))
        ]
        if varied:
            lines.append(
                f"Between fresh processes ({s['target']}, no noise, one seed) "
                + ", ".join(f"{m} varied (CV {percent(s['metrics'][m]['cv'])})" for m in varied)
                + ": the simulated provider's choice among a task's wrong answers follows the "
                "iteration order of a frozenset of words (`answers._Pool.grounded`), so it "
                "changes with PYTHONHASHSEED; the wrong answer stays wrong (exact_match does "
                "not move) but its similarity to the expected one, and its length (so its "
                "cost), do."
            )
    return lines


def notes(results: dict[str, Any]) -> str:
    by_key = {(s["sampling_noise"], s["target"], s["seeds"]): s for s in results["series"]}
    parts = []
    for noise in sorted({s["sampling_noise"] for s in results["series"]}):
        if noise == 0:
            continue
        for target in sorted({s["target"] for s in results["series"]}):
            s = by_key.get((noise, target, "different"))
            if s is None:
                continue
            m = s["metrics"]
            parts.append(
                f"- sampling noise {noise}, {target}, different seeds: exact_match CV "
                f"{percent(m['exact_match']['cv'], 2)}, semantic_sim "
                f"{percent(m['semantic_sim']['cv'], 2)}, tool_success "
                f"{percent(m['tool_success']['cv'], 2)}, cost_per_task "
                f"{percent(m['cost_per_task']['cv'], 2)}, hallucination_rate "
                f"{percent(m['hallucination_rate']['cv'], 1)} (mean "
                f"{m['hallucination_rate']['mean'] * 100:.3f} %, sd "
                f"{m['hallucination_rate']['sd'] * 100:.3f} points)"
            )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Eval variance over repeated runs.")
    parser.add_argument("--quick", action="store_true", help="3 runs, noise 0 and 0.3, router")
    parser.add_argument("--runs", type=int, default=5, help="runs per series (at least 2)")
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="sampling noise levels"
    )
    parser.add_argument(
        "--targets", nargs="+", default=["router", "gpt-4o"], help="`router` or model groups"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--one-run", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_run:  # a child of fresh_process_series: one run, its record on stdout
        print(json.dumps(asyncio.run(single_run(args.one_run, args.seed))))
        return 0
    if args.quick:
        args.runs, args.noise, args.targets = 3, [0.0, 0.3], ["router"]
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    results = asyncio.run(run(args))
    table = report(results)
    measured = notes(results)
    print(table)
    if measured:
        print("\nWith sampling noise on:\n" + measured)
    suffix = "_quick" if args.quick else ""
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"eval_variance{suffix}.json").write_text(
        json.dumps(results, indent=2) + "\n", encoding="utf-8"
    )
    command = "bench/eval_variance_bench.py" + (" --quick" if args.quick else "")
    (args.results / f"eval_variance{suffix}.md").write_text(
        f"# Eval variance: repeated runs of the seed suite\n\n`.venv/bin/python {command}` "
        f"({results['wall_s']:.0f} s)\n\n{table}\n\n"
        + (f"With sampling noise on, the measured CVs:\n\n{measured}\n\n" if measured else "")
        + f"Machine: `{json.dumps(results['machine'])}`\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
