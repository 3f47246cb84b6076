"""The `before_execute` policy hook: Rego rules a project writes over the nodes its runs execute.

A project's policy modules (the ones applied with its routing config, and the global layer's) may
declare `package maestro.graph` with a `deny` set of reasons, evaluated for each node before it
runs with the input document::

    {"project": "acme", "recipe": "projects/acme/recipes/x", "autonomy": "L2",
     "node": {"id": "file", "kind": "tool", "tool": "create_ticket", "side_effects": true,
              "model": "", "tags": ["pii"]}}

The input holds what is fixed for a recipe revision and an autonomy level, nothing of the run's
state (spending is the budget check's business), so each node's verdict is computed once per
(policy, recipe revision, autonomy), before the run's first step, and the hook itself is a dict
look-up. Evaluation runs regopy in a short-lived worker process, as the routing policy does:
rego-cpp leaks memory on every query and has paths that crash the process. A policy that fails to
evaluate denies every node of the recipe (fail closed), with the error as the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from maestro.control_plane.graph.compiled import CompiledRecipe
from maestro.control_plane.graph.recipe import NodeSpec
from maestro.control_plane.graph.records import RunRecord
from maestro.control_plane.graph.steps import Verdict
from maestro.routing.snapshots import SnapshotRegistry

log = structlog.get_logger(__name__)

RULE = "data.maestro.graph.deny"
_PACKAGE = re.compile(r"^[ \t]*package[ \t]+maestro\.graph[ \t]*(?:#.*)?$", re.M)
_WORKER = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from maestro.control_plane.graph.policy import worker_main; worker_main()"
)
_TIMEOUT_S = 60.0
AUTONOMY_NAMES = ("", "L1", "L2", "L3", "L4")
ALLOW = Verdict(True)

Key = tuple[str, str, int]
"""(policy digest, recipe revision, autonomy level)."""


def node_input(
    project: str, recipe: str, autonomy: int, node: NodeSpec, compiled: CompiledRecipe
) -> dict[str, Any]:
    tool = compiled.tools.get(node.tool)
    return {
        "project": project,
        "recipe": recipe,
        "autonomy": AUTONOMY_NAMES[autonomy],
        "node": {
            "id": node.id,
            "kind": node.kind,
            "tool": node.tool,
            "side_effects": bool(tool and tool.side_effects),
            "model": node.model,
            "tags": list(node.tags),
        },
    }


def worker_main() -> None:
    """Evaluate `RULE` for each input document of the job on stdin; write the reasons per input
    as JSON on stdout."""
    import regopy

    job = json.load(sys.stdin)
    interpreter = regopy.Interpreter()
    interpreter.log_level = regopy.LogLevel.NONE
    for name, source in job["modules"]:
        interpreter.add_module(name, source)
    answers: list[list[str]] = []
    for document in job["inputs"]:
        interpreter.set_input(document)
        output = interpreter.query(RULE)
        if not output.ok():
            raise SystemExit(f"policy evaluation failed: {output}")
        expressions = json.loads(str(output)).get("expressions") or [{}]
        value = expressions[0]
        if isinstance(value, dict):
            answers.append(sorted(str(k) for k, v in value.items() if v))
        elif isinstance(value, list):
            answers.append(sorted(str(v) for v in value))
        else:
            answers.append([])
    json.dump(answers, sys.stdout)


def evaluate(modules: Sequence[tuple[str, str]], inputs: list[dict[str, Any]]) -> list[list[str]]:
    """The deny reasons of each input, from a worker process."""
    process = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps([p for p in sys.path if p])],
        input=json.dumps({"modules": list(modules), "inputs": inputs}),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if process.returncode != 0:
        detail = process.stderr.strip().splitlines()[-1:] or [f"exit {process.returncode}"]
        raise RuntimeError(detail[0][:300])
    answers: list[list[str]] = json.loads(process.stdout)
    return answers


class GraphPolicy:
    """Per-node verdicts of the projects' `maestro.graph` policies, computed before a run's first
    step and looked up at every node."""

    def __init__(self, registry: SnapshotRegistry) -> None:
        self._registry = registry
        self._tables: dict[Key, dict[str, Verdict]] = {}
        self._digests: dict[str, tuple[int, str, tuple[tuple[str, str], ...]]] = {}

    def _modules(self, project: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The digest and modules of the project's `maestro.graph` policy ("" and () when it has
        none), cached per published snapshot."""
        published = self._registry.current(f"projects/{project}")
        if published is None:
            return "", ()
        cached = self._digests.get(project)
        if cached is not None and cached[0] == published.generation:
            return cached[1], cached[2]
        layers = [published.revision]
        if published.global_revision is not None:
            layers.insert(0, published.global_revision)
        modules = tuple(
            (m.name, m.source)
            for layer in layers
            for m in layer.policy_modules
            if _PACKAGE.search(m.source)
        )
        digest = hashlib.sha256(json.dumps(modules).encode()).hexdigest()[:16] if modules else ""
        self._digests[project] = (published.generation, digest, modules)
        return digest, modules

    def ready(self, run: RunRecord) -> bool:
        digest, _ = self._modules(run.project)
        return not digest or (digest, run.recipe_revision_id, run.autonomy) in self._tables

    async def prepare(self, run: RunRecord, compiled: CompiledRecipe) -> None:
        """Evaluate the policy for every node of the run's recipe, unless already done."""
        digest, modules = self._modules(run.project)
        key = (digest, run.recipe_revision_id, run.autonomy)
        if not digest or key in self._tables:
            return
        nodes = list(compiled.nodes.values())
        inputs = [node_input(run.project, run.recipe, run.autonomy, n, compiled) for n in nodes]
        try:
            answers = await asyncio.to_thread(evaluate, modules, inputs)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
            log.warning("graph.policy_failed", project=run.project, error=str(error))
            reason = f"the maestro.graph policy could not be evaluated: {error}"
            self._tables[key] = {n.id: Verdict(False, RULE, reason) for n in nodes}
            return
        self._tables[key] = {
            node.id: Verdict(False, RULE, "; ".join(reasons)) if reasons else ALLOW
            for node, reasons in zip(nodes, answers, strict=True)
        }

    def before_execute(self, run: RunRecord, node: NodeSpec) -> Verdict:
        digest, _ = self._modules(run.project)
        if not digest:
            return ALLOW
        table = self._tables.get((digest, run.recipe_revision_id, run.autonomy))
        if table is None:  # not prepared: the runtime prepares before every step, so fail closed
            return Verdict(False, RULE, "the maestro.graph policy was not evaluated for this run")
        return table.get(node.id, ALLOW)
