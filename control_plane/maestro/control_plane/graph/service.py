"""GraphService as the domain sees it: recipes, runs, gates and kill switches.

No grpc here: the servicer converts messages. Every run change goes through the store's
`change_run`, so RPCs served by any replica and the runtime of whichever replica drives the run
serialise on the run's row. Built-in recipes live in the reserved project `builtin`: readable by
everyone, runnable in any project, never writable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from opentelemetry import trace

from maestro.control_plane.graph.compiled import NodeEstimate, estimate_node
from maestro.control_plane.graph.hub import RunHub
from maestro.control_plane.graph.recipe import START, NodeSpec, Recipe, RecipeSpec, parse_recipe
from maestro.control_plane.graph.records import (
    UNFINISHED,
    AuditEntry,
    Budget,
    GateRecord,
    GateStatus,
    InFlight,
    KillSwitchRecord,
    NewEvent,
    RecipeRecord,
    RunChange,
    RunRecord,
    RunStatus,
)
from maestro.control_plane.graph.runtime import GraphRuntime
from maestro.control_plane.graph.steps import error_body, finish, stamp, state_changed
from maestro.control_plane.graph.store import RunStore, etag_of
from maestro.core import names, paging
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from maestro.core.filters import STRING, parse_filter
from maestro.routing.decider import Decider
from maestro.routing.policy import cost_violations

BUILTIN = "builtin"
GLOBAL = "global"
MAX_STATE_BYTES = 1024 * 1024
_RECIPE = re.compile(rf"^projects/({names.PROJECT_ID})/recipes/({names.RESOURCE_ID})(?:@(\w+))?$")
_RUN = re.compile(rf"^projects/({names.PROJECT_ID})/runs/({names.RESOURCE_ID}|-)$")
_GATE = re.compile(rf"^(projects/({names.PROJECT_ID})/runs/{names.RESOURCE_ID})/gates/[a-z0-9-]+$")
_SWITCH = re.compile(rf"^projects/({names.PROJECT_ID})/killSwitch$")
AUTONOMY = {"L1": 1, "L2": 2, "L3": 3, "L4": 4}
RUN_STATES = frozenset(status.name for status in RunStatus)
GATE_STATES = frozenset(status.name for status in GateStatus)


@dataclass(frozen=True, slots=True)
class NewRun:
    recipe: str
    input_state: dict[str, Any]
    budget: Budget | None
    autonomy: int
    run_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: str  # APPROVE, EDIT, BLOCK
    reason: str
    state_patch: dict[str, Any] | None
    edited_action: dict[str, Any] | None
    etag: str


@dataclass(frozen=True, slots=True)
class Preview:
    nodes: Sequence[tuple[str, str, NodeEstimate, float, bool]]
    """(node id, kind, estimate of one visit, expected visits, fits the node budget)."""
    budget: Budget
    violations: list[str]
    estimated_cost: float
    worst_case_cost: float
    prompt_tokens: int
    completion_tokens: int
    p50_s: float
    p95_s: float
    success_rate: float
    """From the candidate deployments' error rates in the live window (1.0 without traffic)."""


def builtin_recipes() -> dict[str, RecipeRecord]:
    folder = resources.files("maestro.control_plane.graph") / "recipes"
    out = {}
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".yaml"):
            recipe_id = item.name.removesuffix(".yaml").replace("_", "-")
            source = item.read_text()
            revision = etag_of(source)[:12]
            out[recipe_id] = RecipeRecord(BUILTIN, recipe_id, revision, recipe_id, source, 0.0, 0.0)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class GraphService:
    def __init__(
        self,
        store: RunStore,
        hub: RunHub,
        runtime: GraphRuntime,
        routes: Decider | None = None,
        max_active_runs: int = 10_000,
    ) -> None:
        self.max_active_runs = max_active_runs
        self.store = store
        self.hub = hub
        self.runtime = runtime
        self.routes = routes
        self.builtins = builtin_recipes()
        self._parsed: dict[str, Recipe] = {}
        runtime.start_child = self.start_child

    # -- recipes --------------------------------------------------------------------------------

    def recipe_name(self, name: str, field: str) -> tuple[str, str, str]:
        match = _RECIPE.match(name)
        if match is None:
            raise InvalidArgument(
                [FieldViolation(field, "expected projects/{project}/recipes/{recipe}[@revision]")]
            )
        return match.group(1), match.group(2), match.group(3) or ""

    async def get_recipe(self, principal: Principal, name: str) -> RecipeRecord:
        project, recipe_id, revision = self.recipe_name(name, "name")
        if project == BUILTIN:
            record = self.builtins.get(recipe_id)
            if record is None or (revision and revision != record.revision_id):
                raise NotFound(f"recipe {name!r} not found", reason="RECIPE_NOT_FOUND")
            return record
        require_project(principal, project)
        return await self.store.aio(self.store.get_recipe, project, recipe_id, revision)

    def parsed(self, record: RecipeRecord) -> Recipe:
        key = f"{record.name}@{record.revision_id}"
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = parse_recipe(record.source_yaml)
            self._parsed[key] = parsed
        return parsed

    async def list_recipes(
        self, principal: Principal, parent: str, size: int, token: str
    ) -> tuple[list[RecipeRecord], str]:
        project = names.parse_project_name(parent, "parent")
        limit = paging.page_size(size)
        after = paging.decode_token(token, parent)
        if project == BUILTIN:
            items = [r for k, r in self.builtins.items() if after is None or k > after[0]]
        else:
            require_project(principal, project)
            items = await self.store.aio(
                self.store.list_recipes, project, after[0] if after else None, limit + 1
            )
        return paging.page_of(items, limit, parent, lambda r: [r.recipe_id])

    async def put_recipe(
        self,
        principal: Principal,
        project: str,
        recipe_id: str,
        source: str,
        display_name: str,
        *,
        create: bool,
        etag: str = "",
    ) -> RecipeRecord:
        if project == BUILTIN:
            raise PermissionDenied("built-in recipes are read-only", reason="BUILTIN_READ_ONLY")
        require_project(principal, project)
        parse_recipe(source)  # INVALID_ARGUMENT naming field and line; nothing stored
        return await self.store.aio(
            functools.partial(self.store.put_recipe, create=create, etag=etag),
            project,
            recipe_id,
            source,
            display_name,
        )

    async def delete_recipe(self, principal: Principal, name: str, etag: str) -> None:
        project, recipe_id, _ = self.recipe_name(name, "name")
        if project == BUILTIN:
            raise PermissionDenied("built-in recipes are read-only", reason="BUILTIN_READ_ONLY")
        require_project(principal, project)
        await self.store.aio(self.store.delete_recipe, project, recipe_id, etag)

    # -- runs -----------------------------------------------------------------------------------

    def _run_name(self, principal: Principal, name: str, field: str = "name") -> str:
        match = _RUN.match(name)
        if match is None or match.group(2) == "-":
            raise InvalidArgument([FieldViolation(field, "expected projects/{project}/runs/{run}")])
        require_project(principal, match.group(1))
        return name

    async def _switch_in_effect(self, project: str) -> str:
        for name in (f"projects/{project}/killSwitch", f"projects/{GLOBAL}/killSwitch"):
            switch = await self.store.aio(self.store.get_switch, name)
            if switch.engaged:
                return name
        return ""

    async def create_run(self, principal: Principal, parent: str, new: NewRun) -> RunRecord:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        if not new.recipe:
            raise InvalidArgument([FieldViolation("run.recipe", "required")])
        self.recipe_name(new.recipe, "run.recipe")
        record = await self.get_recipe(principal, new.recipe)
        recipe = self.parsed(record)
        spec = recipe.spec
        violations = []
        limit = AUTONOMY[spec.autonomy]
        if new.autonomy > limit:
            violations.append(
                FieldViolation(
                    "run.autonomy_level", f"may not exceed the recipe's level {spec.autonomy}"
                )
            )
        if len(json.dumps(new.input_state)) > MAX_STATE_BYTES:
            violations.append(FieldViolation("run.input_state", "must be at most 1 MiB"))
        if new.run_id and not re.fullmatch(names.RESOURCE_ID, new.run_id):
            violations.append(
                FieldViolation("run_id", "1-63 lower-case letters, digits and hyphens")
            )
        if violations:
            raise InvalidArgument(violations)
        for node in spec.nodes:  # the child recipes exist and are readable by the caller
            if node.kind == "subgraph":
                if node.recipe.split("@")[0] == new.recipe.split("@")[0]:
                    raise FailedPrecondition(
                        f"node {node.id!r} runs the recipe it belongs to", reason="RECIPE_CYCLE"
                    )
                await self.get_recipe(principal, node.recipe)
        missing = [t.name for t in spec.tools if t.name not in self.runtime_tools]
        if missing:
            raise FailedPrecondition(
                f"no implementation of tools {missing} on this server", reason="TOOL_UNAVAILABLE"
            )
        switch = await self._switch_in_effect(project)
        if switch:
            raise FailedPrecondition(
                f"kill switch {switch} is engaged", reason="KILL_SWITCH_ENGAGED"
            )
        active = await self.store.aio(self.store.active_run_count, project)
        if active >= self.max_active_runs:
            raise ResourceExhausted(
                f"projects/{project} has {active} unfinished runs, its limit",
                reason="RUN_QUOTA_EXCEEDED",
                metadata={"limit": str(self.max_active_runs)},
            )
        compiled = self.runtime.compiled_revision(record.revision_id, record.source_yaml)
        first = compiled.next_node(START, new.input_state, {})
        budget = new.budget or Budget(
            spec.budget.max_tokens, spec.budget.max_cost_usd, spec.budget.max_wall_time_s
        )
        now = time.time()
        run_id = new.run_id or uuid.uuid4().hex[:20]
        run = RunRecord(
            name=f"{parent}/runs/{run_id}",
            project=project,
            recipe=new.recipe.split("@")[0],
            recipe_revision_id=record.revision_id,
            recipe_source=record.source_yaml,
            input_state=new.input_state,
            state=new.input_state,
            status=RunStatus.QUEUED,
            budget=budget,
            autonomy=new.autonomy or limit,
            trace_id=_trace_id(),
            create_time=now,
            update_time=now,
            next_node=first,
            request_id=new.request_id or None,
            **self._lease(),
        )
        events = [state_changed(RunStatus.QUEUED, RunStatus.QUEUED, "created")]
        gates: tuple[GateRecord, ...] = ()
        if run.owner:  # this replica runs it: its first step commits with its creation
            await self.runtime.prepare(run, compiled)
            step = self.runtime.stepper.begin(run, compiled)
            run = RunStore.applied(run, step)
            events += step.events
            gates = step.gates
        created, fresh = await self.store.aio(self.store.insert_run, run, events, gates)
        self.hub.changed(created.name, created.status.final)
        if fresh:
            self._hand_over(created, begun=True)
        return created

    def _hand_over(self, run: RunRecord, begun: bool = False) -> None:
        """Start a run this replica leased, else let every replica know it is claimable."""
        if run.owner:
            self.runtime.adopt(run, begun)
        else:
            self.runtime.wake()

    async def start_child(self, parent: RunRecord, node: NodeSpec, flight: InFlight) -> RunRecord:
        """A subgraph node's child run: the node's recipe over the parent's state, at the
        parent's autonomy, within what is left of the parent's budget. Its id and request id
        derive from (parent, node, visit), so asking again returns the same run."""
        key = _child_key(parent.name, node.id, flight.visit)
        principal = Principal(parent.project, None)
        budget = parent.budget
        left = Budget(
            max(budget.max_tokens - parent.prompt_tokens - parent.completion_tokens, 1)
            if budget.max_tokens
            else 0,
            max(budget.max_cost_usd - parent.cost_usd, 1e-9) if budget.max_cost_usd else 0.0,
            max(budget.max_wall_time_s - (time.time() - parent.create_time), 0.001)
            if budget.max_wall_time_s
            else 0.0,
        )
        child = NewRun(
            recipe=node.recipe,
            input_state=dict(parent.state),
            budget=left if (left.max_tokens or left.max_cost_usd or left.max_wall_time_s) else None,
            autonomy=parent.autonomy,
            run_id=_child_id(key),
            request_id=f"subgraph-{key}",
        )
        record = await self.get_recipe(principal, node.recipe)
        limit = AUTONOMY[self.parsed(record).spec.autonomy]
        if child.autonomy > limit:  # a child recipe may cap the level further
            child = replace(child, autonomy=limit)
        return await self.create_run(principal, f"projects/{parent.project}", child)

    @property
    def runtime_tools(self) -> Mapping[str, Any]:
        return self.runtime.tools

    async def get_run(self, principal: Principal, name: str) -> RunRecord:
        return await self.store.aio(self.store.get_run, self._run_name(principal, name))

    async def list_runs(
        self,
        principal: Principal,
        parent: str,
        size: int,
        token: str,
        text_filter: str = "",
        order_by: str = "",
    ) -> tuple[list[RunRecord], str]:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        limit = paging.page_size(size)
        where: dict[str, Any] = {}
        for field, value in parse_filter(text_filter, {"state": RUN_STATES, "recipe": STRING}):
            if field == "state":
                where["status"] = RunStatus[str(value)]
            else:
                where["recipe"] = value
        order = " ".join(order_by.split())
        if order not in ("", "create_time desc", "create_time"):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "order_by", "use `create_time desc` (the default) or `create_time`"
                    )
                ]
            )
        scope = f"{parent}|{text_filter}|{order}"  # a token only continues the same listing
        after = paging.decode_token(token, scope)
        runs = await self.store.aio(
            functools.partial(
                self.store.list_runs, where=where, oldest_first=order == "create_time"
            ),
            project,
            (after[0], after[1]) if after else None,
            limit + 1,
        )
        return paging.page_of(runs, limit, scope, lambda r: [r.create_time, r.name])

    async def _change(self, name: str, decide: Any) -> RunRecord:
        run, events = await self.store.aio(self.store.change_run, name, decide)
        self.hub.changed(name, run.status.final)
        # counted by the change that makes the run final (a repeated cancel changes nothing)
        if run.status.final and any("run_state_changed" in e.body for e in events):
            self.runtime.metrics.finished.add(1, (("state", run.status.name.lower()),))
        return run

    def _lease(self) -> dict[str, Any]:
        """Columns that hand a run to this replica's runtime (adopted right after the commit),
        or leave it for any replica to claim when this one does not run graphs."""
        if not self.runtime.running:
            return {"owner": ""}
        return {
            "owner": self.runtime.settings.replica,
            "lease_expire": time.time() + self.runtime.settings.lease_s,
        }

    async def cancel_run(self, principal: Principal, name: str, reason: str) -> RunRecord:
        name = self._run_name(principal, name)
        reason = reason or "cancelled"

        before: list[RunRecord] = []

        def cancel(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            before.append(run)
            if run.status is RunStatus.CANCELLED:
                return RunChange({}, (), notify=False)
            if run.status.final:
                raise FailedPrecondition(
                    f"the run is {run.status.name} already", reason="RUN_FINISHED"
                )
            expired = tuple(
                replace(gate, status=GateStatus.EXPIRED, update_time=time.time())
                for gate in gates.values()
                if gate.status is GateStatus.OPEN
            )
            return RunChange(
                finish(RunStatus.CANCELLED, reason),
                (state_changed(run.status, RunStatus.CANCELLED, reason),),
                expired,
            )

        run = await self._change(name, cancel)
        self.runtime.interrupt(name)
        await self._cancel_child(principal, before[-1], reason)
        return run

    async def _cancel_child(self, principal: Principal, parent: RunRecord, reason: str) -> None:
        """A cancelled parent cancels the child run its subgraph node is waiting for."""
        flight = parent.in_flight
        if flight is None:
            return
        node = self.runtime.compiled(parent).nodes.get(flight.node_id)
        if node is None or node.kind != "subgraph":
            return
        child_id = _child_id(_child_key(parent.name, node.id, flight.visit))
        child = f"projects/{parent.project}/runs/{child_id}"
        with contextlib.suppress(NotFound, FailedPrecondition):
            await self.cancel_run(principal, child, f"parent {parent.name} cancelled: {reason}")

    async def pause_run(self, principal: Principal, name: str, reason: str) -> RunRecord:
        name = self._run_name(principal, name)
        reason = reason or "paused"

        def pause(run: RunRecord, _gates: dict[str, GateRecord]) -> RunChange:
            if run.status not in UNFINISHED or run.status is RunStatus.PAUSED:
                raise FailedPrecondition(
                    f"only a queued, running or waiting run can be paused; it is {run.status.name}",
                    reason="RUN_NOT_PAUSABLE",
                )
            updates: dict[str, Any] = {"status": RunStatus.PAUSED, "state_reason": reason}
            if run.in_flight is None:
                updates["owner"] = ""
            return RunChange(updates, (state_changed(run.status, RunStatus.PAUSED, reason),))

        return await self._change(name, pause)

    async def resume_run(self, principal: Principal, name: str, reason: str) -> RunRecord:
        name = self._run_name(principal, name)
        project = name.split("/")[1]
        switch = await self._switch_in_effect(project)
        if switch:
            raise FailedPrecondition(
                f"kill switch {switch} is engaged", reason="KILL_SWITCH_ENGAGED"
            )
        reason = reason or "resumed"

        def resume(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            if run.status is not RunStatus.PAUSED:
                raise FailedPrecondition(
                    f"only a paused run can be resumed; it is {run.status.name}",
                    reason="RUN_NOT_PAUSED",
                )
            waiting = any(g.status is GateStatus.OPEN for g in gates.values())
            status = RunStatus.WAITING_FOR_APPROVAL if waiting else RunStatus.RUNNING
            lease = self._lease() if status is RunStatus.RUNNING else {"owner": ""}
            return RunChange(
                {"status": status, "state_reason": reason, "kill_switch": "", **lease},
                (state_changed(run.status, status, reason),),
            )

        run = await self._change(name, resume)
        self._hand_over(run)
        return run

    # -- events ---------------------------------------------------------------------------------

    async def list_events(
        self, principal: Principal, parent: str, after: int, limit: int, node_id: str | None
    ) -> list[Any]:
        name = self._run_name(principal, parent, "parent")
        await self.store.aio(self.store.get_run, name)  # NOT_FOUND for an unknown run
        return await self.store.aio(self.store.list_events, name, after, limit, node_id)

    # -- gates ----------------------------------------------------------------------------------

    def _gate_name(self, principal: Principal, name: str, field: str = "name") -> str:
        match = _GATE.match(name)
        if match is None:
            raise InvalidArgument(
                [FieldViolation(field, "expected projects/{project}/runs/{run}/gates/{gate}")]
            )
        require_project(principal, match.group(2))
        return match.group(1)

    async def get_gate(self, principal: Principal, name: str) -> GateRecord:
        self._gate_name(principal, name)
        return await self.store.aio(self.store.get_gate, name)

    async def list_gates(
        self, principal: Principal, parent: str, size: int, token: str, text_filter: str = ""
    ) -> tuple[list[GateRecord], str]:
        match = _RUN.match(parent)
        if match is None:
            raise InvalidArgument(
                [FieldViolation("parent", "expected projects/{project}/runs/{run} or runs/-")]
            )
        require_project(principal, match.group(1))
        limit = paging.page_size(size)
        where: dict[str, Any] = {}
        for field, value in parse_filter(text_filter, {"state": GATE_STATES, "node_id": STRING}):
            if field == "state":
                where["status"] = GateStatus[str(value)]
            else:
                where["node_id"] = value
        scope = f"{parent}|{text_filter}"
        after = paging.decode_token(token, scope)
        run = None if match.group(2) == "-" else parent
        gates = await self.store.aio(
            functools.partial(self.store.list_gates, where=where),
            run,
            match.group(1),
            (after[0], after[1]) if after else None,
            limit + 1,
        )
        return paging.page_of(gates, limit, scope, lambda g: [g.create_time, g.name])

    async def decide_gate(
        self, principal: Principal, name: str, decision: Decision
    ) -> tuple[GateRecord, dict[str, Any]]:
        run_name = self._gate_name(principal, name)
        violations = []
        if decision.verdict not in {"APPROVE", "EDIT", "BLOCK"}:
            violations.append(FieldViolation("verdict", "must be APPROVE, EDIT or BLOCK"))
        if decision.verdict in {"EDIT", "BLOCK"} and not decision.reason:
            violations.append(FieldViolation("reason", f"required for {decision.verdict}"))
        if len(decision.reason) > 2000:
            violations.append(FieldViolation("reason", "at most 2,000 characters"))
        edits = decision.state_patch is not None or decision.edited_action is not None
        if decision.verdict == "EDIT" and not edits:
            violations.append(
                FieldViolation("state_patch", "EDIT needs state_patch or edited_action")
            )
        if decision.verdict != "EDIT" and edits:
            violations.append(
                FieldViolation("state_patch", "only EDIT may carry state_patch or edited_action")
            )
        if violations:
            raise InvalidArgument(violations)
        approver = principal.api_key or f"insecure:{principal.project_id}"
        outcome: dict[str, Any] = {}

        def decide(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            gate = gates.get(name)
            if gate is None:
                raise NotFound(f"gate {name!r} not found", reason="GATE_NOT_FOUND")
            if gate.status is not GateStatus.OPEN:
                raise FailedPrecondition(f"the gate is {gate.status.name}", reason="GATE_NOT_OPEN")
            if decision.etag and decision.etag != gate.etag:
                raise Aborted(
                    "the gate changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            now = time.time()
            provenance = uuid.uuid4().hex
            decisions = list(gate.decisions)
            snapshot, proposed = gate.state_snapshot, gate.proposed_action
            opened: tuple[GateRecord, ...] = ()
            if decision.verdict == "EDIT":  # earlier approvals were of another version
                decisions = [{**d, "counted": False} for d in decisions]
                if decision.state_patch is not None:
                    snapshot = merge_patch(snapshot, decision.state_patch)
                if decision.edited_action is not None:
                    proposed = {**(proposed or {}), "arguments": decision.edited_action}
            counted_by = {d["approver"] for d in decisions if d.get("counted")}
            counts = decision.verdict != "BLOCK" and approver not in counted_by
            record: dict[str, Any] = {
                "approver": approver,
                "verdict": f"GATE_VERDICT_{decision.verdict}",
                "reason": decision.reason,
                "counted": counts,
                "provenance_id": provenance,
                "decide_time": stamp(now),
            }
            if decision.state_patch is not None:
                record["state_patch"] = decision.state_patch
            if decision.edited_action is not None:
                record["edited_action"] = decision.edited_action
            decisions.append(record)
            approvals = sum(1 for d in decisions if d.get("counted"))
            if decision.verdict == "BLOCK":
                status = GateStatus.BLOCKED
            elif approvals >= gate.required_approvals:
                status = GateStatus.APPROVED
            else:
                status = GateStatus.OPEN
            after = replace(
                gate,
                status=status,
                decisions=tuple(decisions),
                state_snapshot=snapshot,
                proposed_action=proposed,
                update_time=now,
                etag=etag_of(name, now, len(decisions)),
            )
            outcome["decision"] = record
            outcome["gate"] = after
            events = [
                NewEvent(
                    {
                        "gate_decided": {
                            "gate": name,
                            "decision": record,
                            "gate_state": f"STATE_{status.name}",
                        },
                        "provenance": {"id": provenance, "producer": approver},
                    },
                    gate.node_id,
                )
            ]
            updates: dict[str, Any] = {}
            if status is GateStatus.BLOCKED:
                message = f"gate {gate.node_id} blocked by {approver}: {decision.reason}"
                updates = finish(
                    RunStatus.BLOCKED,
                    message,
                    error=error_body("FAILED_PRECONDITION", "GATE_BLOCKED", message, gate.node_id),
                )
                events.append(state_changed(run.status, RunStatus.BLOCKED, message))
            elif status is GateStatus.APPROVED:
                state = dict(snapshot)
                if proposed and "arguments" in proposed:
                    state["tool_args"] = proposed["arguments"]
                state["gate"] = {
                    "gate": name,
                    "decision": "approve",
                    "approvers": sorted({d["approver"] for d in decisions if d.get("counted")}),
                }
                updates = {"state": state}
                if run.status is RunStatus.WAITING_FOR_APPROVAL:
                    updates.update(
                        {
                            "status": RunStatus.RUNNING,
                            "state_reason": "gate approved",
                            **self._lease(),
                        }
                    )
                    events.append(
                        state_changed(
                            run.status, RunStatus.RUNNING, f"gate {gate.node_id} approved"
                        )
                    )
                    policy = self.runtime.policy
                    if updates["owner"] and (policy is None or policy.ready(run)):
                        # this replica resumes it, in this transaction
                        resumed = RunStore.applied(run, RunChange(updates))
                        step = self.runtime.stepper.begin(resumed, self.runtime.compiled(resumed))
                        updates.update(step.updates)
                        events.extend(step.events)
                        opened = step.gates
            audit = AuditEntry(
                approver,
                f"gate.{decision.verdict.lower()}",
                name,
                decision.reason,
                {"provenance_id": provenance, "counted": counts},
            )
            return RunChange(updates, tuple(events), (after, *opened), audit=(audit,))

        run = await self._change(run_name, decide)
        self.runtime.metrics.decisions.add(1, (("verdict", decision.verdict.lower()),))
        if run.status is RunStatus.RUNNING:
            self._hand_over(run, begun=run.in_flight is not None)
        return outcome["gate"], outcome["decision"]

    # -- kill switches --------------------------------------------------------------------------

    def _switch_name(self, principal: Principal, name: str) -> str:
        match = _SWITCH.match(name)
        if match is None:
            raise InvalidArgument(
                [FieldViolation("name", "expected projects/{project}/killSwitch")]
            )
        if match.group(1) != GLOBAL:
            require_project(principal, match.group(1))
        return match.group(1)

    async def get_switch(self, principal: Principal, name: str) -> tuple[KillSwitchRecord, bool]:
        project = self._switch_name(principal, name)
        switch = await self.store.aio(self.store.get_switch, name)
        in_effect = switch.engaged or (
            project != GLOBAL and bool(await self._switch_in_effect(project))
        )
        return switch, in_effect

    async def set_switch(
        self,
        principal: Principal,
        name: str,
        engaged: bool,
        reason: str,
        etag: str,
        operators: frozenset[str],
    ) -> tuple[KillSwitchRecord, int]:
        project = self._switch_name(principal, name)
        if not 1 <= len(reason) <= 1000:
            raise InvalidArgument([FieldViolation("reason", "required, 1-1,000 characters")])
        if project == GLOBAL and principal.project_id not in operators:
            raise PermissionDenied(
                "the global kill switch needs an operator credential", reason="NOT_AN_OPERATOR"
            )
        actor = principal.api_key or f"insecure:{principal.project_id}"
        switch, changed = await self.store.aio(
            self.store.set_switch, name, engaged, reason, actor, etag
        )
        paused = 0
        if engaged and changed:
            for run_name in await self.store.aio(
                self.store.unfinished_runs, None if project == GLOBAL else project
            ):
                paused += await self._halt(run_name, name, reason)
        return switch, paused

    async def _halt(self, run_name: str, switch: str, reason: str) -> int:
        def halt(run: RunRecord, _gates: dict[str, GateRecord]) -> RunChange:
            if run.status not in UNFINISHED:
                return RunChange({}, (), notify=False)
            return RunChange(
                {
                    "status": RunStatus.PAUSED,
                    "state_reason": f"kill switch: {reason}",
                    "kill_switch": switch,
                    "owner": "",
                },
                (state_changed(run.status, RunStatus.PAUSED, f"kill switch: {reason}"),),
            )

        await self._change(run_name, halt)
        self.runtime.interrupt(run_name)
        return 1

    # -- preview --------------------------------------------------------------------------------

    async def preview(
        self,
        principal: Principal,
        parent: str,
        recipe_name: str,
        state: dict[str, Any],
        budget: Budget | None,
    ) -> Preview:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        if not recipe_name:
            raise InvalidArgument([FieldViolation("run.recipe", "required")])
        record = await self.get_recipe(principal, recipe_name)
        spec: RecipeSpec = self.parsed(record).spec
        budget = budget or Budget(
            spec.budget.max_tokens, spec.budget.max_cost_usd, spec.budget.max_wall_time_s
        )
        prices = self.runtime.prices_for(project)
        live = self._live_signals(principal, parent)
        rows = []
        total = worst = 0.0
        prompt = completion = 0
        p50 = p95 = 0.0
        success = 1.0
        for node in spec.nodes:
            estimate = estimate_node(node, state, prices)
            # A node a conditional edge leads back to is expected twice (a loop's usual run).
            looped = any(e.target == node.id and e.when for e in spec.edges)
            visits = 2.0 if looped else 1.0
            fits = not node.budget.max_cost_usd or estimate.cost_usd <= node.budget.max_cost_usd
            node_p50 = node_p95 = estimate.p95_s
            if node.kind == "model":
                candidates = [
                    view
                    for deployment, view in live
                    if not node.model
                    or node.model in (deployment.model_name, deployment.deployment_id)
                ]
                measured = [v for v in candidates if v.sample_count and v.p95_latency_ms]
                if measured:
                    node_p95 = max(v.p95_latency_ms or 0.0 for v in measured) / 1000
                    node_p50 = max(v.p50_latency_ms or 0.0 for v in measured) / 1000
                # The call fails only when every candidate it can fall back to fails.
                failing = math.prod(v.error_rate for v in candidates) if candidates else 0.0
                success *= (1.0 - failing) ** visits
            rows.append((node.id, node.kind, replace(estimate, p95_s=node_p95), visits, fits))
            total += estimate.cost_usd * visits
            worst += estimate.cost_usd * visits * 2 * node.retries.max_attempts
            prompt += int(estimate.prompt_tokens * visits)
            completion += int(estimate.completion_tokens * visits)
            p95 += node_p95 * visits
            p50 += node_p50 * visits
        violations = []
        if budget.max_cost_usd:
            violations += cost_violations(total, budget.max_cost_usd)
        if budget.max_tokens and prompt + completion > budget.max_tokens:
            violations.append(f"Run tokens {prompt + completion} exceed budget {budget.max_tokens}")
        violations += [f"Node {r[0]} exceeds its own budget" for r in rows if not r[4]]
        return Preview(
            rows, budget, violations, total, worst, prompt, completion, p50, p95, success
        )

    def _live_signals(self, principal: Principal, parent: str) -> list[tuple[Any, Any]]:
        """The project's deployments and their live signals (latency, errors) over the last
        window; none before its routing config exists."""
        if self.routes is None:
            return []
        try:
            return self.routes.deployment_signals(principal, parent)
        except MaestroError:
            return []


def _trace_id() -> str:
    """The trace of the call creating the run (its node spans join it), else a new one."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else uuid.uuid4().hex


def _child_key(parent: str, node_id: str, visit: int) -> str:
    return hashlib.sha256(f"{parent}/{node_id}/{visit}".encode()).hexdigest()


def _child_id(key: str) -> str:
    return f"sub-{key[:24]}"
