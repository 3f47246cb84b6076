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


def run_eval(
    suite_name: str,
    provider: str,
    report: Path | None,
    baseline: str | None,
    repeats: int,
    prompt: Path | None,
    seed: int,
    concurrency: int,
    suites_dirs: Sequence[Path],
    labels: Sequence[str],
    client: MaestroClient,
) -> int:
    """The command's work; returns the exit code."""
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
    target = pb.EvalTarget(model_group="" if provider == "router" else provider)
    if prompt is not None:
        target.prompt.CopyFrom(_prompt(prompt))
    try:
        parent = _project(client)
        datasets = _upload_datasets(client, parent, suite)
        suite_resource = _put_suite(client, parent, suite, datasets)
        created = client.evals.CreateEvalRun(
            pb.CreateEvalRunRequest(
                parent=parent,
                eval_run=pb.EvalRun(
                    suite=suite_resource,
                    target=target,
                    baseline_scorecard=_baseline(baseline) if baseline else "",
                    repetitions=repeats,
                    seed=seed,
                    max_concurrent_tasks=concurrency,
                    labels=label_map,
                ),
            )
        ).eval_run
        final = _follow(client, created, console)
        run = final.eval_run
        if run.state != pb.EvalRun.STATE_SUCCEEDED:
            state = pb.EvalRun.State.Name(run.state).removeprefix("STATE_")
            console.print(f"run {run.name} ended {state}: {run.state_message}")
            return EXIT_RUN_ENDED
        card = final.scorecard if final.HasField("scorecard") else None
        if card is None:
            card = client.evals.GetScorecard(
                pb.GetScorecardRequest(name=f"{run.name}/scorecard")
            ).scorecard
    except MaestroRpcError as error:
        raise _rpc(error) from None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any] = {
            "eval_run": json_format.MessageToDict(run),
            "scorecard": json_format.MessageToDict(card),
        }
        report.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        console.print(f"scorecard written to {report}")
    _summary(console, card)
    return _EXIT_BY_VERDICT.get(card.verdict, EXIT_RUN_ENDED)


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
                help="`router` (production routing chooses per task) or a model group name.",
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
        with client_for(target, api_key) as client:
            code = run_eval(
                suite,
                provider,
                report,
                baseline,
                repeats,
                prompt,
                seed,
                concurrency,
                suites_dir or [Path("evals")],
                label or [],
                client,
            )
        raise typer.Exit(code)
