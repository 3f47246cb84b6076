"""`maestro eval` against a real server: it uploads the suite's datasets, follows the run and
exits by the scorecard's verdict (0 PASS, 1 FAIL, 2 INCONCLUSIVE, 64 usage)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.data_plane.sim import FaultProfile
from tests.eval_support import eval_stack, jsonl, task_rows

runner = CliRunner()
ROWS = task_rows(200, prefix="cli")
"""200 tasks: a 0.1-point drop on them is within their noise (the acceptance's case)."""


async def _eval(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(runner.invoke, app, ["eval", *args])
    return result.exit_code, result.stderr


def _suite(folder: Path) -> None:
    (folder / "tasks").mkdir()
    (folder / "tasks" / "core.jsonl").write_bytes(jsonl(ROWS))
    (folder / "suite.yaml").write_text(
        "suite: cli_suite_v1\n"
        "datasets: [tasks/core.jsonl]\n"
        "metrics: [exact_match, tool_success, cost_per_task]\n"
        "repetitions: 1\n"
        "thresholds:\n  regressions_max: 0.5%\n"
    )
    (folder / "stable.yaml").write_text("name: answer\nsystem: Answer briefly.\n")
    (folder / "worse.yaml").write_text("name: answer\nsystem: '[worse] Answer briefly.'\n")
    (folder / "tiny.yaml").write_text("name: answer\nsystem: '[tiny] Answer briefly.'\n")


def _prompts(profile: FaultProfile) -> FaultProfile:
    data = profile.to_json()
    data["answers"]["prompts"] = [
        {"system_contains": "[worse]", "accuracy_delta": -0.3},
        {"system_contains": "[tiny]", "accuracy_delta": -0.001},
    ]
    return FaultProfile.model_validate(data)


@asynccontextmanager
async def _served_suite(tmp_path: Path) -> AsyncIterator[tuple[Path, tuple[str, ...]]]:
    """A suite folder and a server whose simulator knows its tasks, with the `[worse]` and
    `[tiny]` prompt versions; yields the folder and the options every call shares."""
    suites = tmp_path / "suites"
    suites.mkdir()
    _suite(suites)
    async with eval_stack(tmp_path, ROWS, accuracy=0.9) as s:
        s.primary.set_profile(_prompts(s.primary.profile))
        yield (
            suites,
            (
                "--suite",
                "cli_suite_v1",
                "--provider",
                "primary",
                "--suites-dir",
                str(suites),
                "--target",
                s.server.target,
                "--api-key",
                s.server.alpha_key,
                "--seed",
                "5",
            ),
        )


async def test_eval_exits_by_verdict_pass_then_fail_then_inconclusive(tmp_path: Path) -> None:
    async with _served_suite(tmp_path) as (suites, common):
        report = tmp_path / "out" / "scorecard.json"
        code, err = await _eval(
            *common, "--prompt", str(suites / "stable.yaml"), "--report", str(report)
        )
        assert code == 0, err  # no baseline: the regression limit is skipped, nothing fails
        written = json.loads(report.read_text())
        assert written["scorecard"]["verdict"] == "VERDICT_PASS"
        assert written["eval_run"]["state"] == "STATE_SUCCEEDED"

        code, err = await _eval(
            *common, "--prompt", str(suites / "worse.yaml"), "--baseline", str(report)
        )
        assert code == 1, err
        assert "FAILED" in err
        assert "regression_rate" in err

        code, err = await _eval(
            *common, "--prompt", str(suites / "tiny.yaml"), "--baseline", str(report)
        )
        assert code == 2, err
        assert "INCONCLUSIVE" in err


async def test_variants_are_compared_with_holms_correction_and_exit_by_the_worst(
    tmp_path: Path,
) -> None:
    async with _served_suite(tmp_path) as (suites, common):
        base = tmp_path / "base.json"
        code, err = await _eval(
            *common, "--prompt", str(suites / "stable.yaml"), "--report", str(base)
        )
        assert code == 0, err
        report = tmp_path / "variants.json"
        variants = ",".join(str(suites / f) for f in ("stable.yaml", "worse.yaml", "tiny.yaml"))
        code, err = await _eval(
            *common, "--variants", variants, "--baseline", str(base), "--report", str(report)
        )
    assert code == 1, err  # the worst verdict: the [worse] variant fails its regression limit
    written = json.loads(report.read_text())
    assert [v["scorecard"]["verdict"] for v in written["variants"]] == [
        "VERDICT_INCONCLUSIVE",
        "VERDICT_FAIL",
        "VERDICT_INCONCLUSIVE",
    ]
    exact = {
        Path(row["variant"]).stem: row
        for row in written["comparisons"]
        if row["metric"] == "exact_match"
    }
    assert exact["worse"]["significant"]
    assert exact["worse"]["holm_p_value"] >= exact["worse"]["p_value"]
    assert not exact["tiny"]["significant"]


async def test_eval_usage_errors_exit_64_not_an_eval_verdict(tmp_path: Path) -> None:
    code, _ = await _eval("--suite", "x", "--no-such-option")
    assert code == 64
    code, err = await _eval("--suite", "nowhere", "--suites-dir", str(tmp_path))
    assert code == 64
    assert "nowhere" in err
