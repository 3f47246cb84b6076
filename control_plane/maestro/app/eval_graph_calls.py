"""Eval tasks whose target is a recipe revision: each execution is a real agent-graph run.

The task's text becomes the run's `input_state.question`; the answer is the last model node's
text, and the tool calls are those the graph's tool nodes really made (the tool and arguments a
model node chose, as each tool node that ran took them). The run acts at L2 at most: promoting a
recipe above it is what its scorecard is for. A run that stops at a human gate cannot finish
unattended: it is cancelled and the task scored as errored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from maestro.control_plane.evals.grading import ToolCall
from maestro.control_plane.evals.runner import Answer, TaskRequest
from maestro.control_plane.graph.records import (
    CostUpdate,
    EventRecord,
    NodeFinished,
    NodeKind,
    NodeStarted,
    RunStatus,
)
from maestro.control_plane.graph.service import AUTONOMY, GraphService, NewRun
from maestro.core.auth import Principal
from maestro.core.errors import MaestroError

UNATTENDED_LEVEL = AUTONOMY["L2"]
RUN_TIMEOUT_S = 300.0
POLL_S = 0.25
MAX_EVENTS = 10_000


def task_text(request: TaskRequest) -> str:
    for message in reversed(request.messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


class GraphTasks:
    """Runs a task as an agent graph of the target recipe revision."""

    def __init__(self, graph: GraphService, timeout_s: float = RUN_TIMEOUT_S) -> None:
        self._graph = graph
        self._timeout_s = timeout_s

    async def answer(self, project: str, request: TaskRequest) -> Answer:
        principal = Principal(project, None)
        graph = self._graph
        started = time.monotonic()
        try:
            record = await graph.recipes.get(principal, request.recipe)
            level = min(AUTONOMY[graph.recipes.parsed(record).spec.autonomy], UNATTENDED_LEVEL)
            run = await graph.create_run(
                principal,
                f"projects/{project}",
                NewRun(request.recipe, {"question": task_text(request)}, None, level, "", ""),
            )
        except MaestroError as error:
            return Answer(error=f"the recipe's run was refused: {error.message}")
        finished = graph.hub.final_event(run.name)  # taken before the run can finish
        deadline = started + self._timeout_s
        while not run.status.final:
            if run.status is RunStatus.WAITING_FOR_APPROVAL or time.monotonic() > deadline:
                why = (
                    "waits for a human approval"
                    if run.status is RunStatus.WAITING_FOR_APPROVAL
                    else f"did not finish in {self._timeout_s:g} s"
                )
                with contextlib.suppress(MaestroError):
                    await graph.cancel_run(principal, run.name, f"eval task: the run {why}")
                return Answer(error=f"run {run.name} {why}", total_s=time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):  # woken at once by this replica's runtime
                    await finished.wait()
            run = await graph.get_run(principal, run.name)
        events = await graph.store.aio(graph.store.list_events, run.name, 0, MAX_EVENTS, None)
        return _answer_of(run.name, run.status, events, time.monotonic() - started)


def _answer_of(name: str, status: RunStatus, events: list[EventRecord], total_s: float) -> Answer:
    text = ""
    calls: list[ToolCall] = []
    chosen: tuple[str, Any] | None = None
    kinds: dict[str, NodeKind] = {}
    cost = 0.0
    prompt_tokens = completion_tokens = 0
    for event in events:
        payload = event.payload
        if isinstance(payload, NodeStarted):
            kinds[event.node_id] = payload.kind
        elif isinstance(payload, CostUpdate):
            cost = payload.cost_usd
            prompt_tokens = payload.usage.prompt_tokens
            completion_tokens = payload.usage.completion_tokens
        elif isinstance(payload, NodeFinished) and payload.output is not None:
            kind = kinds.get(event.node_id)
            output = payload.output
            if kind is NodeKind.MODEL:
                tool = output.get("tool")
                if tool:
                    chosen = (str(tool), output.get("tool_args", {}))
                else:
                    chosen = None
                    answer = output.get("answer", output.get(event.node_id))
                    if answer is not None:
                        text = answer if isinstance(answer, str) else json.dumps(answer)
            elif kind is NodeKind.TOOL and chosen is not None:
                calls.append(ToolCall(*chosen))
                chosen = None
    error = "" if status is RunStatus.SUCCEEDED else f"run {name} ended {status.name}"
    return Answer(
        text=text,
        tool_calls=tuple(calls),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        deployment=name,
        total_s=total_s,
        error=error,
    )
