"""`maestro eval`: the seed's eval runner CLI (Appendix C) over EvalService.

    maestro eval --suite intelgraph_core_v1 --provider router --report out/scorecard.json

It finds the suite file (`suite: intelgraph_core_v1` among `evals/*.yaml`), checks each dataset
against its manifest, uploads what the server does not have yet (matched by SHA-256), creates or
updates the suite, starts a run, follows it with a progress bar (WatchEvalRun), writes the
scorecard as JSON and exits by its verdict, so CI can gate on it:

    0 PASS   1 FAIL   2 INCONCLUSIVE   3 the run failed or was cancelled
    4 the server refused a call or could not be reached   64 usage (bad option, file, suite)
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
import yaml
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maestro.clients import MaestroClient, MaestroRpcError
from maestro.control_plane.evals import stats
from maestro.control_plane.evals.convert import METRIC_ENUM, thresholds_message
from maestro.control_plane.evals.datasets import DatasetError, load_dataset_file
from maestro.control_plane.evals.suites import SuiteError, SuiteFile, find_suite, load_suite_file
from maestro.v1 import eval_service_pb2 as pb
from maestro.v1 import project_service_pb2 as project_pb

EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_RUN_ENDED, EXIT_RPC, EXIT_USAGE = 0, 1, 2, 3, 4, 64
_EXIT_BY_VERDICT = {
    pb.Scorecard.VERDICT_PASS: EXIT_PASS,
    pb.Scorecard.VERDICT_FAIL: EXIT_FAIL,
    pb.Scorecard.VERDICT_INCONCLUSIVE: EXIT_INCONCLUSIVE,
}
WATCH_TIMEOUT_S = 24 * 3600.0


_UsageError: type[Exception] = typer.BadParameter.__mro__[1]
"""Click's UsageError as typer vendors it (BadParameter's base): typer exports no name for it."""


class UsageExit(typer.core.TyperCommand):
    """Bad options exit 64, not click's 2: 2 means INCONCLUSIVE to a CI job."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as error:
            error.exit_code = EXIT_USAGE  # type: ignore[attr-defined]  # click's own attribute
            raise


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _rpc(error: MaestroRpcError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(EXIT_RPC)


def _prompt(path: Path) -> pb.EvalPrompt:
    """A prompt file: YAML `{name, system}`, or plain text (the system message)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise _usage(f"cannot read prompt file {path}: {error.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text)
        if not isinstance(data, dict) or not isinstance(data.get("system"), str):
            raise _usage(f"{path}: a prompt file needs `system:` (text)")
        return pb.EvalPrompt(name=str(data.get("name") or path.stem), system=data["system"])
    return pb.EvalPrompt(name=path.stem, system=text)


def _baseline(value: str) -> str:
    """A scorecard name, or a report written by an earlier `--report`."""
    if value.startswith("projects/"):
        return value
    path = Path(value)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return str(report["scorecard"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        raise _usage(
            f"--baseline {value!r} is neither a scorecard name nor a report file with "
            "scorecard.name"
        ) from None


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _project(client: MaestroClient) -> str:
    response = client.projects.ListProjects(project_pb.ListProjectsRequest(page_size=1))
    if not response.projects:
        raise _usage("the API key acts for no project")
    return str(response.projects[0].name)


def _upload_datasets(client: MaestroClient, parent: str, suite: SuiteFile) -> list[str]:
    """The dataset names of the suite, uploading those the server does not have."""
    names = []
    for path in suite.datasets:
        try:
            parsed, manifest = load_dataset_file(path)
        except DatasetError as error:
            raise _usage(f"{path}: {error}") from None
        existing = client.evals.ListDatasets(
            pb.ListDatasetsRequest(
                parent=parent, filter=f'manifest.sha256 = "{parsed.sha256}"', page_size=1
            )
        )
        if existing.datasets:
            names.append(existing.datasets[0].name)
            continue
        stem = manifest.name if manifest is not None else path.stem
        dataset_id = "".join(c if c.isalnum() else "-" for c in stem.lower()).strip("-")[:40]
        created = client.evals.CreateDataset(
            pb.CreateDatasetRequest(
                parent=parent,
                dataset_id=f"{dataset_id}-{parsed.sha256[:8]}",
                dataset=pb.Dataset(
                    display_name=str(path),
                    description=f"{stem} ({manifest.provenance_id if manifest else 'no manifest'})",
                    source_uri=f"{path}@{_git_commit() or 'working-tree'}",
                ),
                jsonl=path.read_bytes(),
                expected_sha256=parsed.sha256,
                request_id=f"dataset-{parsed.sha256[:32]}",
            ),
            timeout=60,
        )
        names.append(created.dataset.name)
    return names


def _put_suite(
    client: MaestroClient, parent: str, suite: SuiteFile, datasets: Sequence[str]
) -> str:
    message = pb.EvalSuite(
        name=f"{parent}/evalSuites/{suite.suite_id}",
        display_name=suite.suite,
        description=suite.description or f"from {suite.source}",
        datasets=datasets,
        metrics=[METRIC_ENUM[m] for m in suite.effective_metrics],
        thresholds=thresholds_message(suite.thresholds),
        default_repetitions=suite.repetitions or 0,
        semantic_similarity_pass_min=suite.semantic_similarity_pass_min or 0.0,
    )
    try:
        client.evals.GetEvalSuite(pb.GetEvalSuiteRequest(name=message.name))
    except MaestroRpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
        client.evals.CreateEvalSuite(
            pb.CreateEvalSuiteRequest(
                parent=parent, eval_suite_id=suite.suite_id, eval_suite=message
            )
        )
        return message.name
    client.evals.UpdateEvalSuite(  # the file is the source of truth
        pb.UpdateEvalSuiteRequest(eval_suite=message, update_mask=FieldMask(paths=["*"]))
    )
    return message.name


def _follow(client: MaestroClient, run: pb.EvalRun, console: Console) -> pb.WatchEvalRunResponse:
    last = pb.WatchEvalRunResponse(eval_run=run)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(run.name.rsplit("/", 1)[-1], total=run.progress.total_tasks, note="")
        stream = client.evals.WatchEvalRun(
            pb.WatchEvalRunRequest(name=run.name), timeout=WATCH_TIMEOUT_S
        )
        for message in stream:
            last = message
            progress = message.eval_run.progress
            exact = next(
                (m.mean for m in message.partial_metrics if m.metric == pb.EVAL_METRIC_EXACT_MATCH),
                None,
            )
            note = f"errors {progress.errored_tasks}  ${progress.cost_usd:.4f}"
            if exact is not None:
                note += f"  exact {exact:.3f}"
            bar.update(
                task,
                completed=progress.completed_tasks,
                total=progress.total_tasks,
                note=note,
            )
    return last


def _summary(console: Console, card: pb.Scorecard) -> None:
    verdict = pb.Scorecard.Verdict.Name(card.verdict).removeprefix("VERDICT_")
    console.print(f"[bold]verdict: {verdict}[/bold]  ({card.name})")
    for result in card.threshold_results:
        outcome = pb.EvalThresholdResult.Outcome.Name(result.outcome).removeprefix("OUTCOME_")
        name = pb.EvalThresholdResult.Threshold.Name(result.threshold).removeprefix("THRESHOLD_")
        console.print(f"  {outcome:<12} {name.lower()}: {result.message}")
    for score in card.metrics:
        if score.dataset or score.slice:
            continue
        metric = pb.EvalMetric.Name(score.metric).removeprefix("EVAL_METRIC_").lower()
        line = f"  {metric:<24} {score.mean:.4f}  [{score.ci_low:.4f}, {score.ci_high:.4f}]"
        if score.HasField("delta"):
            line += f"  delta {score.delta:+.4f}"
        console.print(line)


@dataclass(frozen=True)
class _Plan:
    """What every run of one invocation shares."""

    parent: str
    suite: str
    baseline: str
    repeats: int
    seed: int
    concurrency: int
    labels: dict[str, str]


def _run_one(
    client: MaestroClient, plan: _Plan, target: pb.EvalTarget, console: Console
) -> tuple[pb.EvalRun, pb.Scorecard | None]:
    """One run followed to its end: the run, and its scorecard when it succeeded."""
    created = client.evals.CreateEvalRun(
        pb.CreateEvalRunRequest(
            parent=plan.parent,
            eval_run=pb.EvalRun(
                suite=plan.suite,
                target=target,
                baseline_scorecard=plan.baseline,
                repetitions=plan.repeats,
                seed=plan.seed,
                max_concurrent_tasks=plan.concurrency,
                labels=plan.labels,
            ),
        )
    ).eval_run
    final = _follow(client, created, console)
    run = final.eval_run
    if run.state != pb.EvalRun.STATE_SUCCEEDED:
        state = pb.EvalRun.State.Name(run.state).removeprefix("STATE_")
        console.print(f"run {run.name} ended {state}: {run.state_message}")
        return run, None
    if final.HasField("scorecard"):
        return run, final.scorecard
    name = f"{run.name}/scorecard"
    return run, client.evals.GetScorecard(pb.GetScorecardRequest(name=name)).scorecard


def _compare_variants(
    client: MaestroClient, base: str, cards: Sequence[tuple[str, pb.Scorecard]], console: Console
) -> list[dict[str, Any]]:
    """Each variant against `base`, with Holm's correction over every (variant, metric) p-value
    of the family: several variants tested at once inflate false positives otherwise."""
    rows: list[dict[str, Any]] = []
    for label, card in cards:
        if card.name == base:
            continue
        compared = client.evals.CompareScorecards(
            pb.CompareScorecardsRequest(base_scorecard=base, candidate_scorecard=card.name)
        )
        for diff in compared.diffs:
            if diff.dataset or not diff.HasField("p_value"):
                continue
            rows.append(
                {
                    "variant": label,
                    "metric": pb.EvalMetric.Name(diff.metric).removeprefix("EVAL_METRIC_").lower(),
                    "base_mean": diff.base_mean,
                    "mean": diff.candidate_mean,
                    "delta": diff.delta,
                    "p_value": diff.p_value,
                }
            )
    adjusted = stats.holm_adjust([row["p_value"] for row in rows]) if rows else []
    for row, holm in zip(rows, adjusted, strict=True):
        row["holm_p_value"] = holm
        row["significant"] = holm < 0.05
    if rows:
        console.print(f"variants against {base} (Holm over {len(rows)} comparisons):")
    for row in rows:
        mark = "*" if row["significant"] else " "
        console.print(
            f" {mark} {row['variant']:<24} {row['metric']:<20} {row['mean']:.4f} "
            f"(delta {row['delta']:+.4f}, p {row['p_value']:.4g}, Holm {row['holm_p_value']:.4g})"
        )
    return rows


def run_eval(
    suite_name: str,
    provider: str,
    report: Path | None,
    baseline: str | None,
    repeats: int,
    prompts: Sequence[Path | None],
    seed: int,
    concurrency: int,
    suites_dirs: Sequence[Path],
    labels: Sequence[str],
    client: MaestroClient,
) -> int:
    """The command's work; returns the exit code. Several prompts are A/B/C variants: each is
    run and compared with the baseline (or the first), and the exit code is the worst verdict."""
    console = Console(stderr=True, soft_wrap=True)
    try:
        suite = load_suite_file(find_suite(suite_name, suites_dirs))
    except SuiteError as error:
        raise _usage(str(error)) from None
    label_map: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise _usage(f"--label {label!r}: expected key=value")
        label_map[key] = value
    if commit := _git_commit():
        label_map.setdefault("git_commit", commit)
    targets: list[tuple[str, pb.EvalTarget]] = []
    for prompt in prompts:
        if provider.startswith("deployment:"):
            target = pb.EvalTarget(deployment=provider.removeprefix("deployment:"))
        else:
            target = pb.EvalTarget(model_group="" if provider == "router" else provider)
        if prompt is not None:
            target.prompt.CopyFrom(_prompt(prompt))
        targets.append((str(prompt) if prompt is not None else provider, target))
    base = _baseline(baseline) if baseline else ""
    try:
        parent = _project(client)
        datasets = _upload_datasets(client, parent, suite)
        plan = _Plan(
            parent,
            _put_suite(client, parent, suite, datasets),
            base,
            repeats,
            seed,
            concurrency,
            label_map,
        )
        results = [(label, *_run_one(client, plan, target, console)) for label, target in targets]
        cards = [(label, card) for label, _, card in results if card is not None]
        comparisons = (
            _compare_variants(client, base or cards[0][1].name, cards, console)
            if len(targets) > 1 and cards
            else []
        )
    except MaestroRpcError as error:
        raise _rpc(error) from None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any]
        if len(results) == 1:
            run, card = results[0][1], results[0][2]
            body = {"eval_run": json_format.MessageToDict(run)}
            if card is not None:
                body["scorecard"] = json_format.MessageToDict(card)
        else:
            body = {
                "variants": [
                    {
                        "variant": label,
                        "eval_run": json_format.MessageToDict(run),
                        **({"scorecard": json_format.MessageToDict(card)} if card else {}),
                    }
                    for label, run, card in results
                ],
                "comparisons": comparisons,
            }
        report.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        console.print(f"report written to {report}")
    codes = []
    for label, _, card in results:
        if card is None:
            codes.append(EXIT_RUN_ENDED)
            continue
        if len(results) > 1:
            console.print(f"[bold]{label}[/bold]")
        _summary(console, card)
        codes.append(_EXIT_BY_VERDICT.get(card.verdict, EXIT_RUN_ENDED))
    return max(codes, key=[EXIT_PASS, EXIT_INCONCLUSIVE, EXIT_FAIL, EXIT_RUN_ENDED].index)


def register(app: typer.Typer, client_for: Any) -> None:
    @app.command("eval", cls=UsageExit)
    def eval_command(
        suite: Annotated[
            str, typer.Option("--suite", help="The suite's `suite:` name, as in its YAML file.")
        ],
        provider: Annotated[
            str,
            typer.Option(
                "--provider",
                help="`router` (production routing chooses per task), a model group name, or "
                "`deployment:<id>` (that deployment only, no fallback).",
            ),
        ] = "router",
        report: Annotated[
            Path | None, typer.Option("--report", help="Write the scorecard here (JSON).")
        ] = None,
        baseline: Annotated[
            str | None,
            typer.Option(
                "--baseline",
                help="Compare against this scorecard: its name, or a report file of an "
                "earlier run. Regression and cost thresholds need one.",
            ),
        ] = None,
        repeats: Annotated[
            int, typer.Option("--repeats", help="Repetitions (1-10); 0: the suite's default.")
        ] = 0,
        prompt: Annotated[
            Path | None,
            typer.Option("--prompt", help="A prompt version to test: YAML {name, system}."),
        ] = None,
        variants: Annotated[
            str | None,
            typer.Option(
                "--variants",
                help="A/B/C test: prompt files, comma-separated; each is run, compared with "
                "--baseline (else the first) with Holm's correction, and the worst verdict "
                "is the exit code.",
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="0: the server picks one.")] = 0,
        concurrency: Annotated[
            int, typer.Option("--concurrency", help="Tasks in flight (1-64); 0: 8.")
        ] = 0,
        suites_dir: Annotated[
            list[Path] | None,
            typer.Option("--suites-dir", help="Where suite files are looked for."),
        ] = None,
        label: Annotated[
            list[str] | None, typer.Option("--label", help="key=value, recorded on the run.")
        ] = None,
        target: Annotated[
            str, typer.Option("--target", envvar="MAESTRO_TARGET", help="Server host:port.")
        ] = "127.0.0.1:50051",
        api_key: Annotated[
            str | None, typer.Option("--api-key", envvar="MAESTRO_API_KEY", help="API key.")
        ] = None,
    ) -> None:
        """Run an eval suite through the data plane and gate on its scorecard: exit 0 PASS,
        1 FAIL, 2 INCONCLUSIVE, 3 run failed or cancelled, 4 server error, 64 usage."""
        if not 0 <= repeats <= 10:
            raise _usage("--repeats must be within 0..10")
        if not 0 <= concurrency <= 64:
            raise _usage("--concurrency must be within 0..64")
        if variants and prompt is not None:
            raise _usage("give either --prompt or --variants")
        prompts: list[Path | None] = (
            [Path(v.strip()) for v in variants.split(",") if v.strip()] if variants else [prompt]
        )
        with client_for(target, api_key) as client:
            code = run_eval(
                suite,
                provider,
                report,
                baseline,
                repeats,
                prompts,
                seed,
                concurrency,
                suites_dir or [Path("evals")],
                label or [],
                client,
            )
        raise typer.Exit(code)
