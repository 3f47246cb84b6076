"""SLO load test: N concurrent streaming chat completions against a loopback target, judged.

    .venv/bin/python bench/load.py --target http://127.0.0.1:8900/v1 --concurrency 8 \\
        --duration-s 10 --slo-ttft-p99-ms 50 --slo-error-rate 0.01 --json bench/results/load.json

Prints a progress line to stderr once a second, then the figures (RPS, TTFT, inter-token
latency, total latency, tokens/s, errors by kind; p50/p90/p99/p99.9/max) and the SLO verdict to
stdout. Exits 0 when every declared goal is met, 1 when one is missed, 2 on bad options. The
measuring itself lives in `bench/_load.py`, for scripts that want the figures as data.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder is on sys.path but the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from typing import Annotated

import orjson
import typer

from bench._load import (
    DEFAULT_PROMPT,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    MAX_REQUEST_TIMEOUT_S,
    MAX_REQUESTS,
    MAX_TOKENS,
    MAX_WARMUP_S,
    LoadConfig,
    LoadReport,
    Progress,
    SloTarget,
    TargetKind,
    Verdict,
    render,
    run_load,
    slo_verdict,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def print_progress(progress: Progress) -> None:
    """One status line on stderr (stdout stays for the report)."""
    elapsed = max(progress.elapsed_s, 1e-9)
    sys.stderr.write(
        f"[{progress.phase}] {progress.elapsed_s:5.1f}/{progress.duration_s:g} s  "
        f"requests {progress.requests:,}  errors {progress.errors:,}  "
        f"in flight {progress.in_flight}  rps {progress.requests / elapsed:,.1f}  "
        f"tokens/s {progress.tokens / elapsed:,.0f}\n"
    )
    sys.stderr.flush()


def _run(config: LoadConfig, quiet: bool) -> LoadReport:
    callback = None if quiet else print_progress
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        import asyncio

        return asyncio.run(run_load(config, callback))
    return uvloop.run(run_load(config, callback))


def _write_json(path: Path, report: LoadReport, verdict: Verdict) -> None:
    document = {"report": report.to_json(), "verdict": verdict.to_json()}
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


@app.command()
def main(
    target: Annotated[
        str, typer.Option(help="OpenAI base URL (http://127.0.0.1:PORT/v1) or gRPC host:port.")
    ] = "http://127.0.0.1:8900/v1",
    target_kind: Annotated[TargetKind, typer.Option(help="Protocol of the target.")] = (
        TargetKind.OPENAI
    ),
    model: Annotated[str, typer.Option(help="Model to ask for.")] = "sim-1",
    project: Annotated[str, typer.Option(help="gRPC only: the project, projects/<this>.")] = "demo",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MAESTRO_API_KEY", help="OpenAI: Bearer token; gRPC: x-api-key metadata."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=MAX_CONCURRENCY, help="Concurrent streams.")
    ] = 8,
    duration_s: Annotated[
        float, typer.Option(min=0.001, max=MAX_DURATION_S, help="Measured window, seconds.")
    ] = 10.0,
    max_requests: Annotated[
        int, typer.Option(min=1, max=MAX_REQUESTS, help="Most requests in the window.")
    ] = 100_000,
    max_tokens: Annotated[
        int, typer.Option(min=1, max=MAX_TOKENS, help="max_tokens of each request.")
    ] = 64,
    prompt: Annotated[str, typer.Option(help="The user message.")] = DEFAULT_PROMPT,
    request_timeout_s: Annotated[
        float,
        typer.Option(
            min=0.001, max=MAX_REQUEST_TIMEOUT_S, help="Per-request deadline (error `deadline`)."
        ),
    ] = 30.0,
    warmup_s: Annotated[
        float, typer.Option(min=0, max=MAX_WARMUP_S, help="Unrecorded warm-up before the window.")
    ] = 0.0,
    include_usage: Annotated[
        bool, typer.Option(help="OpenAI: request the usage chunk to cross-check token counts.")
    ] = True,
    slo_ttft_p99_ms: Annotated[
        float | None, typer.Option(min=0, help="Goal: TTFT p99 at most this.")
    ] = None,
    slo_itl_p99_ms: Annotated[
        float | None, typer.Option(min=0, help="Goal: inter-token latency p99 at most this.")
    ] = None,
    slo_error_rate: Annotated[
        float | None, typer.Option(min=0, max=1, help="Goal: failed share at most this.")
    ] = None,
    slo_min_rps: Annotated[
        float | None, typer.Option(min=0, help="Goal: requests per second at least this.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Drive concurrent streaming chat completions for a bounded time and count; judge the SLO."""
    try:
        config = LoadConfig(
            target=target,
            target_kind=target_kind,
            model=model,
            project=project,
            api_key=api_key,
            concurrency=concurrency,
            duration_s=duration_s,
            max_requests=max_requests,
            max_tokens=max_tokens,
            prompt=prompt,
            request_timeout_s=request_timeout_s,
            warmup_s=warmup_s,
            include_usage=include_usage,
        )
    except ValueError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    report = _run(config, quiet)
    verdict = slo_verdict(
        report,
        SloTarget(
            ttft_p99_ms=slo_ttft_p99_ms,
            itl_p99_ms=slo_itl_p99_ms,
            error_rate=slo_error_rate,
            min_rps=slo_min_rps,
        ),
    )
    typer.echo(render(report, verdict))
    if json_path is not None:
        _write_json(json_path, report, verdict)
    raise typer.Exit(0 if verdict.passed else 1)


if __name__ == "__main__":
    app()
