"""Running `maestro up` as a user does: its packaged demo config, readiness from its log."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def wait_ready(process: subprocess.Popen[str], deadline_s: float = 60) -> dict[str, str]:
    assert process.stderr is not None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"maestro up exited early with {process.wait()}")
        if line.startswith("{") and json.loads(line).get("event") == "server.ready":
            return dict(json.loads(line))
    raise AssertionError("maestro up did not report server.ready in time")


def demo_config(tmp_path: Path) -> Path:
    """The packaged demo config with the repo's routing files by absolute path, so the
    process can run in a scratch directory."""
    demo = (ROOT / "control_plane/maestro/control_plane/demo.yaml").read_text()
    for relative in ("deploy/router/litellm.yaml", "deploy/router/policies/routing.rego"):
        demo = demo.replace(relative, str(ROOT / relative))
    path = tmp_path / "maestro.yaml"
    path.write_text(demo)
    return path
