"""What one transaction on a running run writes: the pure part of the runtime.

A step commits in one transaction: the finished node's output, the new state and visit count,
its `node_finished` event, and whatever comes next, decided from the new state:

- `__end__`: the run succeeds;
- the next node fails the budget check or the `before_execute` hook: the run is blocked with
  the reason, and the node never starts;
- the next node needs a human (a gate node, or a tool with side effects below autonomy L3): a
  gate opens and the run waits, releasing its lease;
- a router, or a gate already approved, completes on the spot (it calls nothing);
- otherwise the next node's start is recorded (`in_flight`, `node_started`).

So a node's start is durable before it runs, its result is durable with the next node's start,
and a linear step costs one commit. Everything here is synchronous and does no I/O: it runs
inside the store's transaction (`RunStore.change_run`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from maestro.control_plane.graph.compiled import CompiledRecipe, PriceLookup, estimate_node
from maestro.control_plane.graph.recipe import END, BudgetSpec, NodeSpec
from maestro.control_plane.graph.records import (
    Budget,
    BudgetExceeded,
    CostUpdate,
    ErrorCode,
    EventPayload,
    GateOpened,
    GateRecord,
    GateStatus,
    InFlight,
    NewEvent,
    NodeFinished,
    NodeKind,
    NodeStarted,
    Outcome,
    PolicyBlocked,
    Provenance,
    RunChange,
    RunError,
    RunErrored,
    RunRecord,
    RunStateChanged,
    RunStatus,
    StepReplayed,
    Usage,
)
from maestro.control_plane.graph.store import etag_of
from maestro.routing.policy import cost_violations

MAX_INLINE_STEPS = 1000
"""Routers and approved gates chained without a model or tool call between them: a recipe
looping through routers only would otherwise never yield."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the `before_execute` hook says of a node: allowed, or denied by `rule` for `reason`."""

    allowed: bool
    rule: str = ""
    reason: str = ""


BeforeExecute = Callable[[RunRecord, NodeSpec], Verdict]


def allow_all(run: RunRecord, node: NodeSpec) -> Verdict:
    return Verdict(True)


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """A model or tool attempt that succeeded."""

    output: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    producer: str = ""
    duration_s: float = 0.0
    input_digest: str = ""
    """The blob holding what the step was given (the run's state), if stored."""


def gate_id(node_id: str, visit: int) -> str:
    return f"{node_id.replace('_', '-')}-{visit}"


def blocked_error(reason: str, message: str, node_id: str = "") -> RunError:
    """A run stopped by a node, a gate, a budget or a policy."""
    return RunError(ErrorCode.FAILED_PRECONDITION, reason, message, node_id)


def internal_error(message: str) -> RunError:
    return RunError(ErrorCode.INTERNAL, "INTERNAL", message)


def state_changed(before: RunStatus, after: RunStatus, reason: str) -> NewEvent:
    return NewEvent(RunStateChanged(before, after, reason))


def finish(status: RunStatus, reason: str, **extra: Any) -> dict[str, Any]:
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


class Stepper:
    """Plans the transactions of the runs one replica drives."""

    def __init__(
        self,
        replica: str,
        prices: Callable[[str], PriceLookup],
        before_execute: BeforeExecute = allow_all,
    ) -> None:
        self.replica = replica
        self._prices = prices
        self._before_execute = before_execute

    # -- the transactions ---------------------------------------------------------------------

    def begin(self, run: RunRecord, recipe: CompiledRecipe) -> RunChange:
        """A claimed run with nothing in flight: start it (or resume it after a gate) at
        `next_node`."""
        events: list[NewEvent] = []
        updates: dict[str, Any] = {}
        if run.status is RunStatus.QUEUED:
            updates["status"] = RunStatus.RUNNING
            events.append(
                state_changed(run.status, RunStatus.RUNNING, f"claimed by {self.replica}")
            )
        return self._advance(run, recipe, run.next_node, dict(run.state), dict(run.visits),
                             updates, events)  # fmt: skip

    def commit(
        self, run: RunRecord, recipe: CompiledRecipe, flight: InFlight, outcome: NodeOutcome
    ) -> RunChange:
        """The in-flight node succeeded: commit it and take the next step in one transaction."""
        node = recipe.nodes[flight.node_id]
        state = {**run.state, **outcome.output}
        visits = {**run.visits, node.id: run.visits.get(node.id, 0) + 1}
        target = recipe.next_node(node.id, state, visits)
        spent = {
            "prompt_tokens": run.prompt_tokens + outcome.prompt_tokens,
            "completion_tokens": run.completion_tokens + outcome.completion_tokens,
            "cost_usd": run.cost_usd + outcome.cost_usd,
        }
        provenance = Provenance(
            flight.provenance_id,
            outcome.producer,
            (outcome.input_digest,) if outcome.input_digest else (),
        )
        finished = NodeFinished(
            Outcome.SUCCEEDED,
            outcome.duration_s,
            output=outcome.output,
            usage=Usage(outcome.prompt_tokens, outcome.completion_tokens),
            cost_usd=outcome.cost_usd,
            next_node_ids=(target,),
        )
        events = [NewEvent(finished, node.id, flight.attempt, provenance)]
        if outcome.prompt_tokens or outcome.completion_tokens or outcome.cost_usd:
            total = Usage(
                run.prompt_tokens + outcome.prompt_tokens,
                run.completion_tokens + outcome.completion_tokens,
            )
            events.append(NewEvent(CostUpdate(total, spent["cost_usd"], _budget_used(run, spent))))
        updates: dict[str, Any] = {"in_flight": None, **spent}
        if run.status is RunStatus.PAUSED:  # PauseRun: the node commits, then the run stops
            updates.update({"state": state, "visits": visits, "next_node": target, "owner": ""})
            if target == END:
                updates.update(finish(RunStatus.SUCCEEDED, "reached __end__"))
                events.append(state_changed(run.status, RunStatus.SUCCEEDED, "reached __end__"))
            return RunChange(updates, tuple(events))
        return self._advance(run, recipe, target, state, visits, updates, events)

    def failed(
        self,
        run: RunRecord,
        node: NodeSpec,
        flight: InFlight,
        reason: str,
        message: str,
        timed_out: bool,
        duration_s: float,
    ) -> RunChange:
        """An attempt failed: record it, and either start the next attempt or fail the run."""
        retry = flight.attempt < node.retries.max_attempts
        error = blocked_error(reason, message, node.id)
        finished = NodeFinished(
            Outcome.TIMED_OUT if timed_out else Outcome.FAILED,
            duration_s,
            error=error,
            will_retry=retry,
        )
        events = [NewEvent(finished, node.id, flight.attempt)]
        if retry:
            again = InFlight(
                node.id,
                flight.attempt + 1,
                flight.visit,
                self.replica,
                flight.idempotency_key,
                uuid.uuid4().hex,
            )
            events.append(self._started(run, node, again))
            return RunChange({"in_flight": again}, tuple(events))
        events.append(state_changed(run.status, RunStatus.FAILED, message))
        return RunChange(finish(RunStatus.FAILED, message, error=error), tuple(events))

    def replayed(self, run: RunRecord, recipe: CompiledRecipe, previous: str) -> RunChange:
        """A claimed run whose node was in flight when its last owner stopped: run it again, with
        the same idempotency key, under this replica."""
        flight = run.in_flight
        assert flight is not None
        node = recipe.nodes[flight.node_id]
        replay = StepReplayed(
            flight.replica or previous,
            self.replica,
            flight.idempotency_key if node.kind == "tool" else "",
        )
        events = [NewEvent(replay, node.id, flight.attempt)]
        updates: dict[str, Any] = {
            "in_flight": InFlight(
                node.id,
                flight.attempt,
                flight.visit,
                self.replica,
                flight.idempotency_key,
                flight.provenance_id,
            )
        }
        if run.status is RunStatus.QUEUED:  # resumed after a kill switch or pause
            updates["status"] = RunStatus.RUNNING
            events.append(
                state_changed(run.status, RunStatus.RUNNING, f"claimed by {self.replica}")
            )
        return RunChange(updates, tuple(events))

    # -- the next step ------------------------------------------------------------------------

    def _advance(
        self,
        run: RunRecord,
        recipe: CompiledRecipe,
        target: str,
        state: dict[str, Any],
        visits: dict[str, int],
        updates: dict[str, Any],
        events: list[NewEvent],
    ) -> RunChange:
        for _ in range(MAX_INLINE_STEPS):
            updates.update({"state": state, "visits": visits, "next_node": target})
            if target == END:
                updates.update(finish(RunStatus.SUCCEEDED, "reached __end__"))
                events.append(
                    state_changed(
                        updates.get("status", run.status), RunStatus.SUCCEEDED, "reached __end__"
                    )
                )
                return RunChange(updates, tuple(events))
            node = recipe.nodes[target]
            visit = visits.get(node.id, 0) + 1
            spent = {k: v for k, v in updates.items() if k in _SPENT}
            current = replace(run, state=state, visits=visits, **spent)
            blocked = self._admission(current, node)
            if blocked is not None:
                reason, message, why = blocked
                status = updates.get("status", run.status)
                updates.update(
                    finish(
                        RunStatus.BLOCKED, message, error=blocked_error(reason, message, node.id)
                    )
                )
                events += [
                    NewEvent(why, node.id),
                    state_changed(status, RunStatus.BLOCKED, message),
                ]
                return RunChange(updates, tuple(events))
            if self._needs_gate(run, recipe, node, visit, state):
                return self._open_gate(run, node, visit, state, updates, events)
            if node.kind in ("router", "gate"):  # completes on the spot: it calls nothing
                visits = {**visits, node.id: visit}
                following = recipe.next_node(node.id, state, visits)
                finished = NodeFinished(
                    Outcome.SUCCEEDED, 0.0, output={}, next_node_ids=(following,)
                )
                events += [
                    NewEvent(NodeStarted(NodeKind(node.kind)), node.id, 1),
                    NewEvent(finished, node.id, 1, Provenance(uuid.uuid4().hex)),
                ]
                target = following
                continue
            flight = InFlight(
                node.id, 1, visit, self.replica, f"{run.name}/{node.id}/{visit}", uuid.uuid4().hex
            )
            updates["in_flight"] = flight
            events.append(self._started(current, node, flight))
            return RunChange(updates, tuple(events))
        message = f"more than {MAX_INLINE_STEPS} routing steps without a model or tool call"
        updates.update(finish(RunStatus.FAILED, message, error=internal_error(message)))
        events.append(state_changed(updates.get("status", run.status), RunStatus.FAILED, message))
        return RunChange(updates, tuple(events))

    def _started(self, run: RunRecord, node: NodeSpec, flight: InFlight) -> NewEvent:
        estimate = estimate_node(node, run.state, self._prices(run.project))
        started = NodeStarted(
            NodeKind(node.kind),
            estimate.cost_usd,
            flight.idempotency_key if node.kind == "tool" else "",
        )
        return NewEvent(started, node.id, flight.attempt, Provenance(flight.provenance_id))

    def _admission(self, run: RunRecord, node: NodeSpec) -> tuple[str, str, EventPayload] | None:
        """The budget check and the `before_execute` hook: None, or why the node may not run
        (reason, message, the event saying so)."""
        budget = run.budget
        if node.kind in ("model", "tool", "subgraph"):
            estimate = estimate_node(node, run.state, self._prices(run.project))
            checks: list[tuple[Budget | BudgetSpec, list[str], str]] = []
            if node.budget.max_cost_usd:
                checks.append(
                    (
                        node.budget,
                        cost_violations(estimate.cost_usd, node.budget.max_cost_usd),
                        "data.maestro.cost.violation",
                    )
                )
            if budget.max_cost_usd:
                left = budget.max_cost_usd - run.cost_usd
                checks.append(
                    (
                        budget,
                        cost_violations(estimate.cost_usd, left),
                        "data.maestro.cost.violation",
                    )
                )
            used = run.prompt_tokens + run.completion_tokens
            tokens = estimate.prompt_tokens + estimate.completion_tokens
            if budget.max_tokens and used + tokens > budget.max_tokens:
                left = budget.max_tokens - used
                message = f"Step tokens {tokens} exceed the run's remaining {left}"
                checks.append((budget, [message], "maestro.graph.token_budget"))
            elapsed = time.time() - run.create_time
            if budget.max_wall_time_s and elapsed >= budget.max_wall_time_s:
                checks.append(
                    (
                        budget,
                        [f"Run wall time {elapsed:.1f}s reached budget {budget.max_wall_time_s}s"],
                        "maestro.graph.wall_time_budget",
                    )
                )
            for limit, reasons, rule in checks:
                if reasons:
                    exceeded = BudgetExceeded(
                        rule,
                        reasons[0],
                        Budget(limit.max_tokens, limit.max_cost_usd, limit.max_wall_time_s),
                        estimate.cost_usd,
                        run.cost_usd,
                    )
                    return "BUDGET_EXCEEDED", reasons[0], exceeded
        verdict = self._before_execute(run, node)
        if not verdict.allowed:
            return (
                "POLICY_DENIED",
                verdict.reason,
                PolicyBlocked(verdict.rule, verdict.reason),
            )
        return None

    @staticmethod
    def _needs_gate(
        run: RunRecord, recipe: CompiledRecipe, node: NodeSpec, visit: int, state: Mapping[str, Any]
    ) -> bool:
        """A gate node, or a side-effecting tool below L3, needs this visit's gate approved."""
        unattended = node.kind == "tool" and recipe.tools[node.tool].side_effects
        if node.kind != "gate" and not (unattended and run.autonomy <= 2):
            return False
        decided = state.get("gate")
        name = f"{run.name}/gates/{gate_id(node.id, visit)}"
        return not (isinstance(decided, dict) and decided.get("gate") == name)

    def _open_gate(
        self,
        run: RunRecord,
        node: NodeSpec,
        visit: int,
        state: dict[str, Any],
        updates: dict[str, Any],
        events: list[NewEvent],
    ) -> RunChange:
        now = time.time()
        name = f"{run.name}/gates/{gate_id(node.id, visit)}"
        proposed = None
        if state.get("tool"):
            proposed = {"tool": state.get("tool"), "arguments": state.get("tool_args") or {}}
        if node.kind == "gate" and node.gate is not None:
            prompt, approvals = node.gate.prompt, node.gate.approvals
        else:
            prompt, approvals = (
                f"Allow {node.tool} (it has side effects) at this autonomy level?",
                1,
            )
        gate = GateRecord(
            name=name,
            run=run.name,
            project=run.project,
            node_id=node.id,
            status=GateStatus.OPEN,
            prompt=prompt,
            required_approvals=2 if run.autonomy >= 4 else approvals,
            autonomy=run.autonomy,
            state_snapshot=state,
            proposed_action=proposed,
            decisions=(),
            etag=etag_of(name, now, 0),
            create_time=now,
            update_time=now,
            opened_seq=run.last_seq + len(events) + 1,
            expire_time=now + node.timeout_s if node.kind == "gate" and node.timeout_s else None,
        )
        status = updates.get("status", run.status)
        updates.update(
            {
                "status": RunStatus.WAITING_FOR_APPROVAL,
                "state_reason": f"waiting at gate {node.id}",
                "owner": "",
                "in_flight": None,
            }
        )
        events += [
            NewEvent(GateOpened(gate), node.id),
            state_changed(status, RunStatus.WAITING_FOR_APPROVAL, prompt),
        ]
        return RunChange(updates, tuple(events), (gate,))


def expire_gate(run: RunRecord, gate: GateRecord | None, now: float) -> RunChange:
    """An open gate past its expiry closes as EXPIRED and blocks its run (GATE_EXPIRED); a gate
    decided in the meantime is left as it is."""
    if (
        gate is None
        or gate.status is not GateStatus.OPEN
        or gate.expire_time is None
        or gate.expire_time > now
    ):
        return RunChange({}, (), notify=False)
    expired = replace(gate, status=GateStatus.EXPIRED, update_time=now)
    message = f"gate {gate.node_id} expired without a decision"
    error = blocked_error("GATE_EXPIRED", message, gate.node_id)
    events: list[NewEvent] = [NewEvent(RunErrored(error), gate.node_id)]
    updates: dict[str, Any] = {}
    if run.status is RunStatus.WAITING_FOR_APPROVAL or run.status is RunStatus.PAUSED:
        updates = finish(RunStatus.BLOCKED, message, error=error)
        events.append(state_changed(run.status, RunStatus.BLOCKED, message))
    return RunChange(updates, tuple(events), (expired,))


_SPENT = frozenset({"prompt_tokens", "completion_tokens", "cost_usd"})


def _budget_used(run: RunRecord, spent: Mapping[str, Any]) -> float:
    ratios = [0.0]
    if run.budget.max_tokens:
        ratios.append((spent["prompt_tokens"] + spent["completion_tokens"]) / run.budget.max_tokens)
    if run.budget.max_cost_usd:
        ratios.append(spent["cost_usd"] / run.budget.max_cost_usd)
    if run.budget.max_wall_time_s:
        ratios.append((time.time() - run.create_time) / run.budget.max_wall_time_s)
    return min(max(ratios), 1.0)
