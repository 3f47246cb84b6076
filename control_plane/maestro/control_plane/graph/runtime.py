"""The graph runtime of one replica: claim runs by lease, execute their nodes durably.

A run is driven one node at a time. `steps.Stepper` plans each transaction (commit the node that
finished, then block, gate, finish or start the next node); this module executes the model and
tool calls between them, under the node's timeout and retries, inside an `agent.node.run` span.

Every write is fenced by the lease: the transaction checks that this replica still owns the run,
so a replica that stalled past its lease cannot overwrite the new owner's work. A run found with
an `in_flight` node was interrupted (crash, kill switch, lost lease); its new owner records
`step_replayed` and runs that node again with the same idempotency key: at most one step replays.

Runs are claimed by the claim loop, or adopted at once by the replica that created or resumed
them, which saves the claim's round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from maestro.control_plane.graph.blobs import BlobStore
from maestro.control_plane.graph.compiled import CompiledRecipe, PriceLookup, compile_recipe
from maestro.control_plane.graph.hub import RunHub
from maestro.control_plane.graph.metrics import GraphMetrics
from maestro.control_plane.graph.model_calls import ModelCaller, ModelStepError
from maestro.control_plane.graph.policy import GraphPolicy
from maestro.control_plane.graph.recipe import NodeSpec, parse_recipe
from maestro.control_plane.graph.records import (
    GateRecord,
    InFlight,
    RunChange,
    RunRecord,
    RunStatus,
)
from maestro.control_plane.graph.steps import (
    BeforeExecute,
    NodeOutcome,
    Stepper,
    allow_all,
    expire_gate,
    finish,
    internal_error,
    state_changed,
)
from maestro.control_plane.graph.store import RunStore
from maestro.control_plane.graph.tools import Tool, has_side_effects
from maestro.control_plane.store.sql import json_text
from maestro.core.errors import MaestroError

log = structlog.get_logger(__name__)

BLOB_MIN_BYTES = 4096
"""Step inputs from this size on are kept in the blob store."""

Decide = Callable[[RunRecord, dict[str, GateRecord]], RunChange]
StartChild = Callable[[RunRecord, NodeSpec, InFlight], Awaitable[RunRecord]]
CHILD_POLL_S = 0.5
"""How often a parent re-reads a child run driven by another replica."""


def run_context(run: RunRecord) -> tuple[Context, list[trace.Link]]:
    """The parent of a node's span, and its links: every node span of a run, on whichever
    replica, lands in the run's trace (`Run.trace_id`, the trace of the call that created it).

    A run driven by the replica that created it is driven in the creating call's context (its
    task was started there): its node spans are children of that call's span, one tree. A run
    claimed or resumed elsewhere has only the trace id to go by: a remote parent in that trace,
    and a link to the span it is driven under when there is one (the call that resumed it)."""
    trace_id = int(run.trace_id, 16)
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace_id:
        return otel_context.get_current(), []
    parent = SpanContext(
        trace_id=trace_id,
        span_id=int(run.trace_id[:16], 16) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    links = [trace.Link(current)] if current.is_valid else []
    return trace.set_span_in_context(NonRecordingSpan(parent)), links


class LeaseLost(Exception):
    """Another replica owns the run now, or it stopped wanting to run (paused, cancelled)."""


class NodeFailure(Exception):
    def __init__(self, reason: str, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    replica: str
    lease_s: float = 10.0
    poll_s: float = 0.5
    max_runs: int = 64


class GraphRuntime:
    def __init__(
        self,
        store: RunStore,
        hub: RunHub,
        settings: RuntimeSettings,
        *,
        models: ModelCaller | None,
        tools: Mapping[str, Tool],
        prices: Callable[[str], PriceLookup],
        tracer: trace.Tracer,
        policy: GraphPolicy | None = None,
        blobs: BlobStore | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.settings = settings
        self.tools = tools
        self.prices_for = prices
        self.policy = policy
        self.blobs = blobs
        self.metrics = GraphMetrics(meter or metrics.get_meter("maestro.graph"))
        self.start_child: StartChild | None = None
        """Creates (or finds, on a replay) a subgraph node's child run; set by GraphService."""
        hook: BeforeExecute = policy.before_execute if policy is not None else allow_all
        self.stepper = Stepper(settings.replica, prices, hook)
        self._models = models
        self._tracer = tracer
        self._compiled: dict[str, CompiledRecipe] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._loops)

    def start(self) -> None:
        self.hub.on_claimable = self.wake
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="graph-claim"),
            asyncio.create_task(self._renew_loop(), name="graph-renew"),
        ]

    async def stop(self) -> None:
        loops, self._loops = self._loops, []
        for task in [*loops, *self._tasks.values()]:
            task.cancel()
        await asyncio.gather(*loops, *self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def wake(self) -> None:
        self._wake.set()

    def adopt(self, run: RunRecord, begun: bool = False) -> None:
        """Drive a run this replica just leased (created or resumed it). `begun`: the lease's
        transaction also took the run's next step (`Stepper.begin`), so its in-flight node is
        new, not interrupted."""
        if not (self.running and run.owner == self.settings.replica):
            return
        if run.name not in self._tasks and run.status is RunStatus.RUNNING:
            self._spawn(run, "", begun)

    def interrupt(self, run: str) -> None:
        """Cancel the node in flight of a run this replica drives (kill switch, cancel)."""
        task = self._tasks.get(run)
        if task is not None:
            task.cancel()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def _spawn(self, run: RunRecord, previous_owner: str, begun: bool = False) -> None:
        task = asyncio.create_task(self._drive(run, previous_owner, begun), name=run.name)
        self._tasks[run.name] = task
        task.add_done_callback(self._forget)

    async def _expire_gates(self) -> None:
        """Close the open gates past their expiry (any replica may; the run's row serialises
        them)."""
        try:
            due = await self.store.aio(self.store.expired_gates, time.time(), 100)
            for gate, run in due:
                updated, _ = await self.store.aio(
                    self.store.change_run,
                    run,
                    lambda r, gates, name=gate: expire_gate(r, gates.get(name), time.time()),
                )
                self.hub.changed(run, updated.status.final)
        except Exception:
            log.exception("graph.gate_expiry_failed")

    def _forget(self, task: asyncio.Task[None]) -> None:
        if self._tasks.get(task.get_name()) is task:
            del self._tasks[task.get_name()]

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            await self._expire_gates()
            free = self.settings.max_runs - len(self._tasks)
            if free > 0:
                try:
                    claimed = await self.store.aio(
                        self.store.claim, self.settings.replica, self.settings.lease_s, free
                    )
                except Exception:
                    log.exception("graph.claim_failed")
                    claimed = []
                for run, previous in claimed:
                    if run.name not in self._tasks:
                        self._spawn(run, previous)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and this loop would then outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_s):
                    await self._wake.wait()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            names = list(self._tasks)
            try:
                held = await self.store.aio(
                    self.store.renew, self.settings.replica, names, self.settings.lease_s
                )
            except Exception:
                log.exception("graph.renew_failed")
                continue
            for name in names:
                if name not in held:
                    self.interrupt(name)

    # -- driving one run ------------------------------------------------------------------------

    def _store_input(self, run: RunRecord) -> str:
        """The digest of what the step was given (the state as JSON), kept in the blob store
        when it is large: a small input is as cheap to rebuild from the event log (the run's
        input and the outputs before the step) as to store, a large one is stored once however
        many steps and runs share it."""
        data = json_text(run.state).encode()
        if self.blobs is not None and len(data) >= BLOB_MIN_BYTES:
            return self.blobs.put(data)
        return f"sha256:{hashlib.sha256(data).hexdigest()}"

    async def prepare(self, run: RunRecord, recipe: CompiledRecipe) -> None:
        """Have the `before_execute` verdicts of the run's nodes ready for its next step."""
        if self.policy is not None:
            await self.policy.prepare(run, recipe)

    def compiled(self, run: RunRecord) -> CompiledRecipe:
        return self.compiled_revision(run.recipe_revision_id, run.recipe_source)

    def compiled_revision(self, revision_id: str, source: str) -> CompiledRecipe:
        """A recipe revision parsed and its conditions compiled, once per process."""
        compiled = self._compiled.get(revision_id)
        if compiled is None:
            compiled = compile_recipe(
                parse_recipe(source).spec, lambda name: has_side_effects(self.tools.get(name))
            )
            self._compiled[revision_id] = compiled
        return compiled

    async def _change(self, run: RunRecord, decide: Decide) -> RunRecord:
        """One fenced transaction: nothing is written unless this replica still owns the run
        and it is not finished."""
        replica = self.settings.replica

        def fenced(current: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            if current.owner != replica or current.status.final:
                raise LeaseLost(current.name)
            return decide(current, gates)

        updated, _events = await self.store.aio(self.store.change_run, run.name, fenced, run)
        self.hub.changed(run.name, updated.status.final)
        if updated.status.final:
            self.metrics.run_finished(updated.project, updated.recipe, updated.status.name.lower())
        return updated

    async def _drive(self, run: RunRecord, previous_owner: str, begun: bool) -> None:
        try:
            with structlog.contextvars.bound_contextvars(run=run.name):
                await self._drive_steps(run, previous_owner, begun)
        except LeaseLost:
            log.info("graph.run_released", run=run.name)
        except asyncio.CancelledError:
            log.info("graph.run_interrupted", run=run.name)
            raise
        except Exception as error:  # the run fails; the replica goes on
            log.exception("graph.run_crashed", run=run.name)
            message = f"internal error ({type(error).__name__}); the server log has details"
            with contextlib.suppress(Exception):
                await self._change(
                    run,
                    lambda r, _g: RunChange(
                        finish(
                            RunStatus.FAILED,
                            message,
                            error=internal_error(message),
                        ),
                        (state_changed(r.status, RunStatus.FAILED, message),),
                    ),
                )

    async def _drive_steps(self, run: RunRecord, previous_owner: str, begun: bool) -> None:
        recipe = self.compiled(run)
        stepper = self.stepper
        await self.prepare(run, recipe)
        if begun:  # the transaction that leased the run also started its next node
            pass
        elif run.in_flight is not None:  # an interrupted step: it runs again
            run = await self._change(run, lambda r, _g: stepper.replayed(r, recipe, previous_owner))
            self.metrics.replayed.add(1, ())
        else:
            run = await self._change(run, lambda r, _g: stepper.begin(r, recipe))
        while run.status is RunStatus.RUNNING and run.in_flight is not None:
            flight = run.in_flight
            node = recipe.nodes[flight.node_id]
            started = time.perf_counter()
            try:
                outcome = await self._run_node(run, recipe, node, flight)
            except NodeFailure as failure:
                elapsed = time.perf_counter() - started
                outcome_label = "timed_out" if failure.timed_out else "failed"
                self.metrics.node_attempt(node.kind, outcome_label, flight.attempt, elapsed)
                run = await self._change(
                    run, functools.partial(_failed, stepper, node, flight, failure, elapsed)
                )
                if run.in_flight is not None and node.retries.backoff_s:
                    await asyncio.sleep(node.retries.backoff_s * 2 ** (flight.attempt - 1))
                continue
            elapsed = time.perf_counter() - started
            self.metrics.node_attempt(node.kind, "succeeded", flight.attempt, elapsed)
            if node.kind != "subgraph":  # a child run counts its own
                self.metrics.run_cost(run.project, run.recipe, outcome.cost_usd)
            outcome = NodeOutcome(
                outcome.output,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.cost_usd,
                outcome.producer,
                elapsed,
                self._store_input(run),
            )
            await self.prepare(run, recipe)  # a policy applied mid-run governs the next node
            run = await self._change(
                run, functools.partial(_committed, stepper, recipe, flight, outcome)
            )

    # -- one node -------------------------------------------------------------------------------

    async def _run_node(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> NodeOutcome:
        timeout = node.timeout_s
        if run.budget.max_wall_time_s:
            left = run.budget.max_wall_time_s - (time.time() - run.create_time)
            timeout = min(timeout or left, max(left, 0.001))
        parent, links = run_context(run)
        with self._tracer.start_as_current_span(
            "agent.node.run",
            context=parent,
            links=links,
            attributes={
                "maestro.run": run.name,
                "maestro.node.id": node.id,
                "maestro.node.kind": node.kind,
                "maestro.node.attempt": flight.attempt,
                "maestro.run.replica": self.settings.replica,
            },
        ) as span:
            try:
                async with asyncio.timeout(timeout):
                    if node.kind == "tool":
                        return await self._call_tool(run, node, flight)
                    if node.kind == "model":
                        return await self._call_model(run, recipe, node, flight)
                    return await self._call_subgraph(run, node, flight)
            except TimeoutError:
                failure = NodeFailure(
                    "NODE_TIMEOUT", f"node {node.id} ran past {timeout:.3g}s", timed_out=True
                )
                span.set_status(trace.StatusCode.ERROR, failure.message)
                raise failure from None
            except NodeFailure as failure:
                span.set_status(trace.StatusCode.ERROR, failure.message)
                raise

    async def _call_tool(self, run: RunRecord, node: NodeSpec, flight: InFlight) -> NodeOutcome:
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
        return NodeOutcome({node.id: result, "tool": None}, producer=f"tool:{node.tool}")

    async def _call_subgraph(self, run: RunRecord, node: NodeSpec, flight: InFlight) -> NodeOutcome:
        """Run the node's recipe as a child run over the parent's state and wait for it: the
        child is a durable run of its own, named from (parent, node, visit), so a replayed
        parent step finds the child it started instead of starting another."""
        if self.start_child is None:
            raise NodeFailure("NODE_FAILED", "subgraph nodes need GraphService on this replica")
        try:
            child = await self.start_child(run, node, flight)
        except MaestroError as error:
            raise NodeFailure(
                "NODE_FAILED", f"cannot start the subgraph: {error.message}"
            ) from None
        while not child.status.final:
            await self.hub.wait_final(child.name, CHILD_POLL_S)
            child = await self.store.aio(self.store.get_run, child.name)
        if child.status is not RunStatus.SUCCEEDED:
            raise NodeFailure(
                "NODE_FAILED",
                f"subgraph run {child.name} ended {child.status.name}: {child.state_reason}",
            )
        return NodeOutcome(
            dict(child.state),
            child.prompt_tokens,
            child.completion_tokens,
            child.cost_usd,
            f"run:{child.name}",
        )

    async def _call_model(
        self, run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, flight: InFlight
    ) -> NodeOutcome:
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
        return NodeOutcome(
            result.output,
            result.prompt_tokens,
            result.completion_tokens,
            result.cost_usd,
            result.deployment,
        )


def _failed(
    stepper: Stepper,
    node: NodeSpec,
    flight: InFlight,
    failure: NodeFailure,
    elapsed: float,
    run: RunRecord,
    _gates: dict[str, GateRecord],
) -> RunChange:
    return stepper.failed(
        run, node, flight, failure.reason, failure.message, failure.timed_out, elapsed
    )


def _committed(
    stepper: Stepper,
    recipe: CompiledRecipe,
    flight: InFlight,
    outcome: NodeOutcome,
    run: RunRecord,
    _gates: dict[str, GateRecord],
) -> RunChange:
    return stepper.commit(run, recipe, flight, outcome)
