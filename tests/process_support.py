"""Running `maestro up` as a user does: its packaged demo config, readiness from its log."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
    # Metrics on a free port, not the demo's 9464: a `maestro up` running beside the tests
    # (or another test's) would hold that one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        demo = demo.replace("metrics_port: 9464", f"metrics_port: {probe.getsockname()[1]}")
    path = tmp_path / "maestro.yaml"
    path.write_text(demo)
    return path


@contextmanager
def maestro_process(
    args: list[str], cwd: Path, env: Mapping[str, str]
) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    """`maestro ARGS` (`up`, `data-plane`) in `cwd`: its server.ready log line once it is
    ready, and the process, killed on the way out if it is still running."""
    with subprocess.Popen(
        [str(BIN / "maestro"), *args],
        cwd=cwd,
        env=dict(env),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            ready = wait_ready(process)
            # Keep reading the log so the server never blocks on a full pipe.
            assert process.stderr is not None
            threading.Thread(target=process.stderr.read, daemon=True).start()
            yield ready, process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
