"""The graph runtime of one replica: claim runs by lease, execute their nodes durably.

A run is driven one node at a time:

1. before the node: the budget check (the cost guard on the node's estimate against the node's
   and the run's remaining budget) and the `before_execute` hook; a failure blocks the run with
   the reason recorded and streamed, and the node does not run;
2. a gate node, or a tool with side effects below autonomy L3, opens a gate and the run waits;
3. the node's start is committed (`in_flight`, a `node_started` event) before it runs;
4. its output, the new state, the visit count, spending and the next node are committed in one
   transaction with the `node_finished` event.

Every write is fenced by the lease: the commit checks that this replica still owns the run, so a
replica that stalled past its lease cannot overwrite the new owner's work. A run found with an
`in_flight` node was interrupted (crash, kill switch, lost lease); its new owner records
`step_replayed` and runs that node again with the same idempotency key: at most one step replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace

from maestro.control_plane.errors import MaestroError
from maestro.control_plane.graph.compiled import (
    CompiledRecipe,
    PriceLookup,
    compile_recipe,
    estimate_node,
)
from maestro.control_plane.graph.hub import RunHub
from maestro.control_plane.graph.models import DataPlaneModels, ModelStepError
from maestro.control_plane.graph.recipe import END, NodeSpec, parse_recipe
from maestro.control_plane.graph.records import (
    GateRecord,
    GateStatus,
    InFlight,
    NewEvent,
    RunChange,
    RunRecord,
    RunStatus,
)
from maestro.control_plane.graph.store import RunStore, etag_of
from maestro.control_plane.graph.tools import Tool
from maestro.control_plane.route.policy import cost_violations

log = structlog.get_logger(__name__)

GATE_KIND = "GRAPH_NODE_KIND_HUMAN_GATE"
KIND_ENUM = {
    "model": "GRAPH_NODE_KIND_MODEL",
    "tool": "GRAPH_NODE_KIND_TOOL",
    "gate": GATE_KIND,
    "router": "GRAPH_NODE_KIND_ROUTER",
    "subgraph": "GRAPH_NODE_KIND_SUBGRAPH",
}
AUTONOMY_ENUM = (
    "",
    "AUTONOMY_LEVEL_L1",
    "AUTONOMY_LEVEL_L2",
    "AUTONOMY_LEVEL_L3",
    "AUTONOMY_LEVEL_L4",
)
STATE_ENUM = {s: f"STATE_{s.name}" for s in RunStatus}
STATUS_CODE = {"FAILED_PRECONDITION": 9, "DEADLINE_EXCEEDED": 4, "INTERNAL": 13, "ABORTED": 10}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the `before_execute` hook says of a node: allowed, or denied by `rule` for `reason`."""

    allowed: bool
    rule: str = ""
    reason: str = ""


BeforeExecute = Callable[[RunRecord, NodeSpec], Verdict]


def allow_all(run: RunRecord, node: NodeSpec) -> Verdict:
    return Verdict(True)


class LeaseLost(Exception):
    """Another replica owns the run now, or it stopped wanting to run (paused, cancelled)."""


class NodeFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    replica: str
    lease_s: float = 10.0
    poll_s: float = 0.5
    max_runs: int = 64


def gate_id(node_id: str, visit: int) -> str:
    return f"{node_id.replace('_', '-')}-{visit}"


def error_body(code: str, reason: str, message: str, node_id: str = "") -> dict[str, Any]:
    metadata = {"node_id": node_id} if node_id else {}
    return {
        "code": STATUS_CODE.get(code, 9),
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "maestro.dev",
                "metadata": metadata,
            }
        ],
    }


def state_changed(before: RunStatus, after: RunStatus, reason: str) -> NewEvent:
    return NewEvent(
        {
            "run_state_changed": {
                "previous_state": STATE_ENUM[before],
                "state": STATE_ENUM[after],
                "reason": reason,
            }
        }
    )


def finish(run: RunRecord, status: RunStatus, reason: str, **extra: Any) -> dict[str, Any]:
    """Column updates that end a run."""
    return {
        "status": status,
        "state_reason": reason,
        "next_node": "",
        "in_flight": None,
        "owner": "",
        "end_time": time.time(),
        **extra,
    }


class GraphRuntime:
    def __init__(
        self,
        store: RunStore,
        hub: RunHub,
        settings: RuntimeSettings,
        *,
        models: DataPlaneModels | None,
        tools: Mapping[str, Tool],
        prices: Callable[[str], PriceLookup],
        tracer: trace.Tracer,
        before_execute: BeforeExecute = allow_all,
    ) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings
        self._models = models
        self.tools = tools
        self.prices_for = prices
        self._tracer = tracer
        self._before_execute = before_execute
        self._compiled: dict[str, CompiledRecipe] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.on_step: Callable[[str, str], Awaitable[None]] | None = None
        """Test hook: awaited after each committed step with (run, node)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.hub.on_claimable = self.wake
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="graph-claim"),
            asyncio.create_task(self._renew_loop(), name="graph-renew"),
        ]

    async def stop(self) -> None:
        for task in [*self._loops, *self._tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, run: str) -> None:
        """Cancel the node in flight of a run this replica drives (kill switch, cancel)."""
        task = self._tasks.get(run)
        if task is not None:
            task.cancel()

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def _claim_loop(self) -> None:
        while True:
            free = self.settings.max_runs - len(self._tasks)
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(
                        self.store.claim, self.settings.replica, self.settings.lease_s, free
                    )
                except Exception:
                    log.exception("graph.claim_failed")
                    claimed = []
                for run, previous in claimed:
                    if run.name not in self._tasks:
                        task = asyncio.create_task(self._drive(run, previous), name=run.name)
                        self._tasks[run.name] = task
                        task.add_done_callback(self._forget)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if self._tasks.get(task.get_name()) is task:
            del self._tasks[task.get_name()]

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            names = list(self._tasks)
            try:
                held = await asyncio.to_thread(
                    self.store.renew, self.settings.replica, names, self.settings.lease_s
                )
            except Exception:
                log.exception("graph.renew_failed")
                continue
            for name in names:
                if name not in held:
                    self.interrupt(name)

    # -- driving one run ------------------------------------------------------------------------

    def compiled(self, run: RunRecord) -> CompiledRecipe:
        compiled = self._compiled.get(run.recipe_revision_id)
        if compiled is None:
            compiled = compile_recipe(parse_recipe(run.recipe_source).spec)
            self._compiled[run.recipe_revision_id] = compiled
        return compiled

    async def _change(
        self, run: RunRecord, decide: Callable[[RunRecord, dict[str, GateRecord]], RunChange]
    ) -> RunRecord:
        updated, _events = await asyncio.to_thread(self.store.change_run, run.name, decide)
        self.hub.changed(run.name)
        return updated

    def _fenced(
        self, decide: Callable[[RunRecord, dict[str, GateRecord]], RunChange]
    ) -> Callable[[RunRecord, dict[str, GateRecord]], RunChange]:
        replica = self.settings.replica

        def check(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            if run.owner != replica or run.status.final:
                raise LeaseLost(run.name)
            return decide(run, gates)

        return check

    async def _drive(self, run: RunRecord, previous_owner: str) -> None:
        try:
            with structlog.contextvars.bound_contextvars(run=run.name):
                await self._drive_steps(run, previous_owner)
        except LeaseLost:
            log.info("graph.run_released", run=run.name)
        except asyncio.CancelledError:
            log.info("graph.run_interrupted", run=run.name)
            raise
        except Exception as error:  # the run fails; the replica goes on
            log.exception("graph.run_crashed", run=run.name)
            with contextlib.suppress(Exception):
                message = f"internal error ({type(error).__name__}); the server log has details"
                await self._change(
                    run,
                    self._fenced(
                        lambda r, _g: RunChange(
                            finish(
                                r,
                                RunStatus.FAILED,
                                message,
                                error=error_body("INTERNAL", "INTERNAL", message),
                            ),
                            (state_changed(r.status, RunStatus.FAILED, message),),
                        )
                    ),
                )

    async def _drive_steps(self, run: RunRecord, previous_owner: str) -> None:
        recipe = self.compiled(run)
        replica = self.settings.replica
        if run.status is RunStatus.QUEUED:

            def started(r: RunRecord, _g: dict[str, GateRecord]) -> RunChange:
                return RunChange(
                    {"status": RunStatus.RUNNING},
                    (state_changed(r.status, RunStatus.RUNNING, "claimed by " + replica),),
                )

            run = await self._change(run, self._fenced(started))
        while True:
            if run.status is not RunStatus.RUNNING:
                return
            if run.in_flight is not None:  # found at the start only: an interrupted step
                node = recipe.nodes[run.in_flight.node_id]
                flight = run.in_flight
                run = await self._record_replay(run, flight, previous_owner)
            else:
                node = recipe.nodes[run.next_node]
                visit = run.visits.get(node.id, 0) + 1
                if not await self._admit(run, recipe, node):
                    return
                if self._needs_gate(run, recipe, node, visit):
                    await self._open_gate(run, recipe, node, visit)
                    return
                if node.kind == "gate":  # approved: the decision is already in the state
                    run = await self._commit(run, recipe, node, None, {}, 0, 0, 0.0, "")
                    continue
                flight = InFlight(
                    node.id,
                    1,
                    visit,
                    replica,
                    f"{run.name}/{node.id}/{visit}",
                    uuid.uuid4().hex,
                )
                run = await self._start(run, recipe, node, flight)
            run = await self._execute(run, recipe, node, flight)
            if self.on_step is not None:
                await self.on_step(run.name, node.id)

    async def _record_replay(
        self, run: RunRecord, flight: InFlight, previous_owner: str
    ) -> RunRecord:
        replica = self.settings.replica
        body = {
            "step_replayed": {
                "previous_replica": flight.replica or previous_owner,
                "replica": replica,
                "idempotency_key": flight.idempotency_key
                if self.compiled(run).nodes[flight.node_id].kind == "tool"
                else "",
            }
        }
        log.info("graph.step_replayed", node=flight.node_id, previous=flight.replica)
        moved = replace(flight, replica=replica)
        return await self._change(
            run,
            self._fenced(
                lambda _r, _g: RunChange(
                    {"in_flight": moved},
                    (NewEvent(body, flight.node_id, flight.attempt),),
                )
            ),
        )

    async def _admit(self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec) -> bool:
        """The budget check and the `before_execute` hook; a failure blocks the run."""
        estimate = estimate_node(node, run.state, self.prices_for(run.project))
        checks = []
        budget = run.budget
        if node.budget.max_cost_usd:
            checks.append(("node", node.budget.max_cost_usd, estimate.cost_usd))
        if budget.max_cost_usd:
            checks.append(("run", budget.max_cost_usd - run.cost_usd, estimate.cost_usd))
        tokens = estimate.prompt_tokens + estimate.completion_tokens
        if (
            budget.max_tokens
            and run.prompt_tokens + run.completion_tokens + tokens > budget.max_tokens
        ):
            checks.append(("tokens", 0.0, 1.0))  # reported as a token violation below
        elapsed = time.time() - run.create_time
        if budget.max_wall_time_s and elapsed >= budget.max_wall_time_s:
            checks.append(("wall", 0.0, 1.0))
        for scope, allowed, needed in checks:
            if scope == "tokens":
                reasons = [
                    f"Step tokens {tokens} exceed the run's remaining "
                    f"{budget.max_tokens - run.prompt_tokens - run.completion_tokens}"
                ]
                rule = "maestro.graph.token_budget"
            elif scope == "wall":
                reasons = [f"Run wall time {elapsed:.1f}s reached budget {budget.max_wall_time_s}s"]
                rule = "maestro.graph.wall_time_budget"
            else:
                reasons = cost_violations(needed, allowed)
                rule = "data.maestro.cost.violation"
            if reasons:
                limit = node.budget if scope == "node" else budget
                await self._block(
                    run,
                    node,
                    "BUDGET_EXCEEDED",
                    reasons[0],
                    {
                        "budget_exceeded": {
                            "rule": rule,
                            "reason": reasons[0],
                            "budget": _budget_json(limit),
                            "estimated_cost_usd": estimate.cost_usd,
                            "spent_cost_usd": run.cost_usd,
                        }
                    },
                )
                return False
        verdict = self._before_execute(run, node)
        if not verdict.allowed:
            await self._block(
                run,
                node,
                "POLICY_DENIED",
                verdict.reason,
                {"policy_blocked": {"rule": verdict.rule, "reason": verdict.reason}},
            )
            return False
        return True

    async def _block(
        self, run: RunRecord, node: NodeSpec, reason: str, message: str, body: dict[str, Any]
    ) -> None:
        log.info("graph.run_blocked", node=node.id, reason=reason, message=message)
        await self._change(
            run,
            self._fenced(
                lambda r, _g: RunChange(
                    finish(
                        r,
                        RunStatus.BLOCKED,
                        message,
                        error=error_body("FAILED_PRECONDITION", reason, message, node.id),
                    ),
                    (
                        NewEvent(body, node.id),
                        state_changed(r.status, RunStatus.BLOCKED, message),
                    ),
                )
            ),
        )

    # -- gates ----------------------------------------------------------------------------------

    def _needs_gate(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, visit: int
    ) -> bool:
        """A gate node, or a side-effecting tool below L3, needs an approved gate first."""
        unattended_ok = not (
            node.kind == "tool" and recipe.tools[node.tool].side_effects and run.autonomy <= 2
        )
        if node.kind != "gate" and unattended_ok:
            return False
        decided = run.state.get("gate") or {}
        return not (
            isinstance(decided, dict)
            and decided.get("gate") == f"{run.name}/gates/{gate_id(node.id, visit)}"
        )

    async def _open_gate(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, visit: int
    ) -> None:
        now = time.time()
        name = f"{run.name}/gates/{gate_id(node.id, visit)}"
        proposed = None
        if run.state.get("tool"):
            proposed = {
                "tool": run.state.get("tool"),
                "arguments": run.state.get("tool_args") or {},
            }
        if node.kind == "gate" and node.gate is not None:
            prompt, approvals = node.gate.prompt, node.gate.approvals
        else:
            prompt, approvals = (
                f"Allow {node.tool} (it has side effects) at this autonomy level?",
                1,
            )
        required = 2 if run.autonomy >= 4 else approvals

        def opened(r: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            if r.owner != self.settings.replica:
                raise LeaseLost(r.name)
            gate = GateRecord(
                name=name,
                run=r.name,
                project=r.project,
                node_id=node.id,
                status=GateStatus.OPEN,
                prompt=prompt,
                required_approvals=required,
                autonomy=r.autonomy,
                state_snapshot=r.state,
                proposed_action=proposed,
                decisions=(),
                etag=etag_of(name, now, 0),
                create_time=now,
                update_time=now,
                opened_seq=r.last_seq + 1,
            )
            return RunChange(
                {
                    "status": RunStatus.WAITING_FOR_APPROVAL,
                    "state_reason": f"waiting at gate {node.id}",
                    "owner": "",
                },
                (
                    NewEvent({"gate_opened": {"gate": gate_json(gate)}}, node.id),
                    state_changed(r.status, RunStatus.WAITING_FOR_APPROVAL, prompt),
                ),
                (gate,),
            )

        await self._change(run, opened)

    # -- one node -------------------------------------------------------------------------------

    async def _start(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> RunRecord:
        estimate = estimate_node(node, run.state, self.prices_for(run.project))
        body = {
            "node_started": {
                "kind": KIND_ENUM[node.kind],
                "estimated_cost_usd": estimate.cost_usd,
                "idempotency_key": flight.idempotency_key if node.kind == "tool" else "",
            },
            "provenance": {"id": flight.provenance_id},
        }

        def started(r: RunRecord, _g: dict[str, GateRecord]) -> RunChange:
            if r.status is not RunStatus.RUNNING:  # paused between steps: stop before the node
                raise LeaseLost(r.name)
            return RunChange({"in_flight": flight}, (NewEvent(body, node.id, flight.attempt),))

        return await self._change(run, self._fenced(started))

    async def _execute(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> RunRecord:
        while True:
            started = time.perf_counter()
            with self._tracer.start_as_current_span(
                "agent.node.run",
                attributes={
                    "maestro.run": run.name,
                    "maestro.node.id": node.id,
                    "maestro.node.kind": node.kind,
                    "maestro.node.attempt": flight.attempt,
                    "maestro.run.replica": self.settings.replica,
                },
            ) as span:
                try:
                    output, usage = await self._run_node(run, recipe, node, flight)
                except NodeFailure as failure:
                    span.set_status(trace.StatusCode.ERROR, failure.message)
                    outcome = (
                        "OUTCOME_TIMED_OUT"
                        if failure.reason == "NODE_TIMEOUT"
                        else "OUTCOME_FAILED"
                    )
                    retry = flight.attempt < node.retries.max_attempts
                    run = await self._failed(run, node, flight, failure, outcome, retry, started)
                    if not retry:
                        return run
                    await asyncio.sleep(node.retries.backoff_s * 2 ** (flight.attempt - 1))
                    flight = replace(flight, attempt=flight.attempt + 1)
                    run = await self._start(run, recipe, node, flight)
                    continue
            prompt, completion, cost, producer = usage
            return await self._commit(
                run,
                recipe,
                node,
                flight,
                output,
                prompt,
                completion,
                cost,
                producer,
                time.perf_counter() - started,
            )

    async def _run_node(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> tuple[dict[str, Any], tuple[int, int, float, str]]:
        timeout = node.timeout_s
        if run.budget.max_wall_time_s:
            left = run.budget.max_wall_time_s - (time.time() - run.create_time)
            timeout = min(timeout or left, max(left, 0.001))
        try:
            async with asyncio.timeout(timeout):
                if node.kind == "router":
                    return {}, (0, 0, 0.0, "")
                if node.kind == "tool":
                    return await self._call_tool(run, node, flight)
                if node.kind == "model":
                    return await self._call_model(run, recipe, node, flight)
                raise NodeFailure("NODE_FAILED", f"{node.kind} nodes are not supported yet")
        except TimeoutError:
            raise NodeFailure("NODE_TIMEOUT", f"node {node.id} ran past {timeout:.3g}s") from None

    async def _call_tool(
        self, run: RunRecord, node: NodeSpec, flight: InFlight
    ) -> tuple[dict[str, Any], tuple[int, int, float, str]]:
        tool = self.tools.get(node.tool)
        if tool is None:
            raise NodeFailure("NODE_FAILED", f"no implementation of tool {node.tool!r}")
        arguments = run.state.get("tool_args")
        arguments = dict(arguments) if isinstance(arguments, dict) else {}
        with self._tracer.start_as_current_span(
            "tool.call",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": node.tool,
                "maestro.tool.idempotency_key": flight.idempotency_key,
            },
        ):
            try:
                result = await tool(arguments, flight.idempotency_key)
            except MaestroError as error:
                raise NodeFailure("NODE_FAILED", error.message) from None
        return {node.id: result, "tool": None}, (0, 0, 0.0, f"tool:{node.tool}")

    async def _call_model(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> tuple[dict[str, Any], tuple[int, int, float, str]]:
        if self._models is None:
            raise NodeFailure("NODE_FAILED", "no data plane in this replica to call models")
        on_chunk = None
        if self.hub.has_chunk_watchers(run.name):

            def on_chunk(text: str, index: int) -> None:
                self.hub.chunk(run.name, (text, index, run.last_seq, node.id, flight.attempt))

        try:
            result = await self._models.call(run.project, node, run.state, recipe.tools, on_chunk)
        except (ModelStepError, MaestroError) as error:
            raise NodeFailure("NODE_FAILED", str(getattr(error, "message", error))) from None
        return result.output, (
            result.prompt_tokens,
            result.completion_tokens,
            result.cost_usd,
            result.deployment,
        )

    async def _failed(
        self,
        run: RunRecord,
        node: NodeSpec,
        flight: InFlight,
        failure: NodeFailure,
        outcome: str,
        retry: bool,
        started: float,
    ) -> RunRecord:
        error = error_body("FAILED_PRECONDITION", failure.reason, failure.message, node.id)
        body = {
            "node_finished": {
                "outcome": outcome,
                "duration": f"{time.perf_counter() - started:.6f}s",
                "error": error,
                "will_retry": retry,
            }
        }
        events = [NewEvent(body, node.id, flight.attempt)]

        def failed(r: RunRecord, _g: dict[str, GateRecord]) -> RunChange:
            if retry:
                return RunChange({}, tuple(events))
            return RunChange(
                finish(r, RunStatus.FAILED, failure.message, error=error),
                (*events, state_changed(r.status, RunStatus.FAILED, failure.message)),
            )

        return await self._change(run, self._fenced(failed))

    async def _commit(
        self,
        run: RunRecord,
        recipe: CompiledRecipe,
        node: NodeSpec,
        flight: InFlight | None,
        output: dict[str, Any],
        prompt: int,
        completion: int,
        cost: float,
        producer: str,
        duration_s: float = 0.0,
    ) -> RunRecord:
        def committed(r: RunRecord, _g: dict[str, GateRecord]) -> RunChange:
            state = {**r.state, **output}
            visits = {**r.visits, node.id: r.visits.get(node.id, 0) + 1}
            target = recipe.next_node(node.id, state, visits)
            spent = {
                "prompt_tokens": r.prompt_tokens + prompt,
                "completion_tokens": r.completion_tokens + completion,
                "cost_usd": r.cost_usd + cost,
            }
            attempt = flight.attempt if flight else 1
            provenance = {"id": flight.provenance_id if flight else uuid.uuid4().hex}
            if producer:
                provenance["producer"] = producer
            events = [
                NewEvent(
                    {
                        "node_finished": {
                            "outcome": "OUTCOME_SUCCEEDED",
                            "output": output,
                            "duration": f"{duration_s:.6f}s",
                            "usage": {
                                "prompt_tokens": prompt,
                                "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                            },
                            "cost_usd": cost,
                            "next_node_ids": [target],
                        },
                        "provenance": provenance,
                    },
                    node.id,
                    attempt,
                )
            ]
            if prompt or completion or cost:
                events.append(
                    NewEvent(
                        {
                            "cost_update": {
                                "usage": {
                                    "prompt_tokens": spent["prompt_tokens"],
                                    "completion_tokens": spent["completion_tokens"],
                                    "total_tokens": spent["prompt_tokens"]
                                    + spent["completion_tokens"],
                                },
                                "cost_usd": spent["cost_usd"],
                                "budget_used_ratio": _budget_used(r, spent),
                            }
                        }
                    )
                )
            updates: dict[str, Any] = {
                "state": state,
                "visits": visits,
                "in_flight": None,
                "next_node": "" if target == END else target,
                **spent,
            }
            if target == END:
                updates.update(finish(r, RunStatus.SUCCEEDED, "reached __end__"))
                events.append(state_changed(r.status, RunStatus.SUCCEEDED, "reached __end__"))
            elif r.status is RunStatus.PAUSED:  # PauseRun: the node commits, the run stops
                updates["owner"] = ""
            return RunChange(updates, tuple(events))

        return await self._change(run, self._fenced(committed))


def _budget_used(run: RunRecord, spent: Mapping[str, Any]) -> float:
    ratios = [0.0]
    if run.budget.max_tokens:
        used = spent["prompt_tokens"] + spent["completion_tokens"]
        ratios.append(used / run.budget.max_tokens)
    if run.budget.max_cost_usd:
        ratios.append(spent["cost_usd"] / run.budget.max_cost_usd)
    if run.budget.max_wall_time_s:
        ratios.append((time.time() - run.create_time) / run.budget.max_wall_time_s)
    return min(max(ratios), 1.0)


def _budget_json(budget: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if budget.max_tokens:
        out["max_tokens"] = budget.max_tokens
    if budget.max_cost_usd:
        out["max_cost_usd"] = budget.max_cost_usd
    if budget.max_wall_time_s:
        out["max_wall_time"] = f"{budget.max_wall_time_s}s"
    return out


def gate_json(gate: GateRecord) -> dict[str, Any]:
    """A gate in the proto's JSON form (also what the `gate_opened` event carries)."""

    def stamp(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")

    out: dict[str, Any] = {
        "name": gate.name,
        "node_id": gate.node_id,
        "prompt": gate.prompt,
        "state_snapshot": gate.state_snapshot,
        "autonomy_level": AUTONOMY_ENUM[gate.autonomy],
        "required_approvals": gate.required_approvals,
        "approvals_counted": gate.approvals_counted,
        "decisions": list(gate.decisions),
        "state": f"STATE_{gate.status.name}",
        "create_time": stamp(gate.create_time),
        "update_time": stamp(gate.update_time),
        "etag": gate.etag,
    }
    if gate.proposed_action is not None:
        out["proposed_action"] = gate.proposed_action
    return out
