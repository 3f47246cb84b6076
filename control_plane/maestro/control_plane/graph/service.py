"""GraphService as the domain sees it: runs, their events and gates, kill switches, cost
previews; recipes through its `RecipeCatalog`.

No grpc here: the servicer converts messages. Every run change goes through the store's
`change_run`, so RPCs served by any replica and the runtime of whichever replica drives the run
serialise on the run's row.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace

from maestro.control_plane.graph.cost_preview import LiveSignals, Preview, estimate_run
from maestro.control_plane.graph.gates import Decided, Decision, check_decision, decide
from maestro.control_plane.graph.hub import RunHub
from maestro.control_plane.graph.recipe import START, BudgetSpec, NodeSpec, RecipeSpec
from maestro.control_plane.graph.recipe_catalog import BUILTIN, RecipeCatalog
from maestro.control_plane.graph.records import (
    UNFINISHED,
    Budget,
    EventRecord,
    GateDecision,
    GateRecord,
    GateStatus,
    GateVerdict,
    InFlight,
    KillSwitchRecord,
    RecipeRecord,
    RunChange,
    RunRecord,
    RunStateChanged,
    RunStatus,
)
from maestro.control_plane.graph.runtime import GraphRuntime
from maestro.control_plane.graph.steps import finish, state_changed
from maestro.control_plane.graph.store import ChangeFn, RunStore
from maestro.core import names, paging
from maestro.core.auth import OPERATOR, Principal, require_project, require_scope
from maestro.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
    ResourceExhausted,
)
from maestro.core.paging import STRING, parse_filter
from maestro.routing.decider import Decider

GLOBAL = "global"
MAX_STATE_BYTES = 1024 * 1024
_RUN = re.compile(rf"^projects/({names.PROJECT_ID})/runs/({names.RESOURCE_ID}|-)$")
_GATE = re.compile(rf"^(projects/({names.PROJECT_ID})/runs/{names.RESOURCE_ID})/gates/[a-z0-9-]+$")
_SWITCH = re.compile(rf"^projects/({names.PROJECT_ID})/killSwitch$")
_VERDICT_ATTRIBUTES = {verdict: {"verdict": verdict.value} for verdict in GateVerdict}
AUTONOMY = {"L1": 1, "L2": 2, "L3": 3, "L4": 4}
RUN_STATES = frozenset(status.name for status in RunStatus)
GATED_LEVEL = AUTONOMY["L3"]
"""Runs at this autonomy level or above need a passing autonomy gate for their recipe revision
(EvalService.EvaluateGate, kind AUTONOMY_PROMOTION); the built-in recipes ship reviewed."""
AutonomyGate = Callable[[str, str, str, int], Awaitable[str | None]]
"""(project, recipe, revision id, level) -> the id of a passing promotion decision, or None."""
GATE_STATES = frozenset(status.name for status in GateStatus)


@dataclass(frozen=True, slots=True)
class NewRun:
    recipe: str
    input_state: dict[str, Any]
    budget: Budget | None
    autonomy: int
    run_id: str
    request_id: str
    creator: str = ""
    """Set for child runs (their parent's creator); a caller's run records its principal."""
    gate_override_reason: str = ""
    """An operator starting a run above L2 without an autonomy promotion: audited."""
    artifact: str = ""
    """A recipe artifact (`projects/{p}/artifacts/{a}`) instead of `recipe`: its version is
    picked from the traffic split (`GraphService.artifact_recipe`) and the run keeps it."""


ArtifactRecipe = Callable[[Principal, str, str], Awaitable[RecipeRecord]]
"""(caller, artifact name, traffic key) -> the recipe of the version the artifact's traffic
split picks for that key (`RecipeRecord.artifact_version` set); NOT_FOUND when it serves no
version, INVALID_ARGUMENT when it is not a recipe artifact."""


class GraphService:
    def __init__(
        self,
        store: RunStore,
        recipes: RecipeCatalog,
        hub: RunHub,
        runtime: GraphRuntime,
        routes: Decider | None = None,
        max_active_runs: int = 10_000,
    ) -> None:
        self.max_active_runs = max_active_runs
        self.store = store
        self.recipes = recipes
        self.hub = hub
        self.runtime = runtime
        self.routes = routes
        runtime.start_child = self.start_child
        self.autonomy_gate: AutonomyGate | None = None
        """Set by the wiring when EvalService runs beside this service."""
        self.artifact_recipe: ArtifactRecipe | None = None
        """Set by the wiring when RolloutService runs beside this service."""
        self.kill_switch_listeners: list[Callable[[str | None, str, str], Awaitable[object]]] = []
        """Told (project id, or None for the global switch; actor; reason) when a switch is
        engaged: RolloutService aborts the rollouts it covers."""

    # -- runs -----------------------------------------------------------------------------------

    def _run_name(self, principal: Principal, name: str, field: str = "name") -> str:
        match = _RUN.fullmatch(name)
        if match is None or match.group(2) == "-":
            raise InvalidArgument([FieldViolation(field, "expected projects/{project}/runs/{run}")])
        require_project(principal, match.group(1))
        return name

    async def switch_in_effect(self, project: str) -> str:
        """The kill switch that stops the project (its own, else the global one), or ""."""
        return await self._switch_in_effect(project)

    async def _switch_in_effect(self, project: str) -> str:
        for name in (f"projects/{project}/killSwitch", f"projects/{GLOBAL}/killSwitch"):
            switch = await self.store.aio(self.store.get_switch, name)
            if switch.engaged:
                return name
        return ""

    async def _check_autonomy_gate(
        self, principal: Principal, record: RecipeRecord, level: int, override: str
    ) -> None:
        """FAILED_PRECONDITION naming the gate unless a run of this recipe revision may act at
        `level`: below L3, a built-in recipe, a passing promotion recorded for it, or an
        operator's override (audited before the run starts)."""
        if level < GATED_LEVEL or record.project == BUILTIN or self.autonomy_gate is None:
            return
        recipe = record.name
        if not record.artifact_version and await self.autonomy_gate(
            record.project, recipe, record.revision_id, level
        ):
            return
        shown = next(name for name, value in AUTONOMY.items() if value == level)
        if override:
            require_scope(principal, OPERATOR)
            if len(override) > 1000:
                raise InvalidArgument(
                    [FieldViolation("autonomy_gate_override_reason", "at most 1,000 characters")]
                )
            await self.store.aio(
                self.store.record_audit,
                principal.who,
                "autonomy_gate_override",
                record.artifact_version or f"{recipe}@{record.revision_id}",
                override,
                {"level": shown},
            )
            return
        if record.artifact_version:
            raise FailedPrecondition(
                f"a run at {shown} of recipe artifact version {record.artifact_version} needs an "
                "operator's override (autonomy promotions are recorded for recipes, not artifact "
                "versions); or run it at a lower autonomy_level",
                reason="AUTONOMY_GATE_REQUIRED",
                metadata={"artifact_version": record.artifact_version, "level": shown},
            )
        raise FailedPrecondition(
            f"a run at {shown} of {recipe} revision {record.revision_id} needs a passing "
            f"autonomy gate: EvaluateGate kind AUTONOMY_PROMOTION, subject {recipe}, to "
            f"{shown}, on a scorecard of this revision; or run it at a lower autonomy_level",
            reason="AUTONOMY_GATE_REQUIRED",
            metadata={"recipe": recipe, "revision": record.revision_id, "level": shown},
        )

    async def _recipe_of(self, principal: Principal, project: str, new: NewRun) -> RecipeRecord:
        """The recipe revision a new run pins: `run.recipe`'s, or the version of `run.artifact`
        its traffic split picks (keyed by the request id, else the run id, else at random)."""
        if new.recipe and new.artifact:
            raise InvalidArgument(
                [FieldViolation("run.artifact", "give a recipe or an artifact, not both")]
            )
        if new.artifact:
            if not new.artifact.startswith(f"projects/{project}/artifacts/"):
                raise InvalidArgument(
                    [
                        FieldViolation(
                            "run.artifact", f"must be projects/{project}/artifacts/{{artifact}}"
                        )
                    ]
                )
            if self.artifact_recipe is None:
                raise FailedPrecondition(
                    "recipe artifacts need RolloutService, which this server does not run",
                    reason="ROLLOUTS_DISABLED",
                )
            return await self.artifact_recipe(principal, new.artifact, new.request_id or new.run_id)
        if not new.recipe:
            raise InvalidArgument([FieldViolation("run.recipe", "required (or run.artifact)")])
        self.recipes.name_parts(new.recipe, "run.recipe")
        return await self.recipes.get(principal, new.recipe)

    async def create_run(self, principal: Principal, parent: str, new: NewRun) -> RunRecord:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        record = await self._recipe_of(principal, project, new)
        recipe = self.recipes.parsed(record)
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
                if node.recipe.split("@")[0] == record.name:
                    raise FailedPrecondition(
                        f"node {node.id!r} runs the recipe it belongs to", reason="RECIPE_CYCLE"
                    )
                await self.recipes.get(principal, node.recipe)
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
        await self._check_autonomy_gate(
            principal, record, new.autonomy or limit, new.gate_override_reason
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
        budget = run_budget(new.budget, spec.budget)
        now = time.time()
        run_id = new.run_id or uuid.uuid4().hex[:20]
        run = RunRecord(
            name=f"{parent}/runs/{run_id}",
            project=project,
            recipe=record.name if record.artifact_version else new.recipe.split("@")[0],
            artifact_version=record.artifact_version,
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
            # Without a key (insecure dev mode) there is no one to tell apart: no creator.
            creator=new.creator or (principal.who if principal.api_key else ""),
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
        record = await self.recipes.get(principal, node.recipe)
        spec = self.recipes.parsed(record).spec
        child = NewRun(
            recipe=node.recipe,
            input_state=dict(parent.state),
            budget=_tighter(left, spec.budget),
            autonomy=parent.autonomy,
            run_id=_child_id(key),
            request_id=f"subgraph-{key}",
            creator=parent.creator,
        )
        limit = AUTONOMY[spec.autonomy]
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

    async def _change(self, name: str, decide: ChangeFn) -> RunRecord:
        run, events = await self.store.aio(self.store.change_run, name, decide)
        self.hub.changed(name, run.status.final)
        # counted by the change that makes the run final (a repeated cancel changes nothing)
        if run.status.final and any(isinstance(e.payload, RunStateChanged) for e in events):
            self.runtime.metrics.run_finished(run.project, run.recipe, run.status.name.lower())
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
    ) -> list[EventRecord]:
        name = self._run_name(principal, parent, "parent")
        await self.store.aio(self.store.get_run, name)  # NOT_FOUND for an unknown run
        return await self.store.aio(self.store.list_events, name, after, limit, node_id)

    # -- gates ----------------------------------------------------------------------------------

    def _gate_name(self, principal: Principal, name: str, field: str = "name") -> str:
        match = _GATE.fullmatch(name)
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
        match = _RUN.fullmatch(parent)
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
    ) -> tuple[GateRecord, GateDecision]:
        """Record a decision on a gate (see `gates`): the gate after it, and the decision as
        recorded. The replica that approves a gate resumes the run itself."""
        run_name = self._gate_name(principal, name)
        verdict = check_decision(decision)  # INVALID_ARGUMENT before anything is read
        approver = principal.who
        outcome: list[Decided] = []

        def begin(resumed: RunRecord) -> RunChange | None:
            policy = self.runtime.policy
            if not resumed.owner or (policy is not None and not policy.ready(resumed)):
                return None
            return self.runtime.stepper.begin(resumed, self.runtime.compiled(resumed))

        def change(run: RunRecord, gates: dict[str, GateRecord]) -> RunChange:
            decided = decide(
                run, gates.get(name), name, decision, approver, time.time(), self._lease, begin
            )
            outcome.append(decided)
            return decided.change

        run = await self._change(run_name, change)
        self.runtime.metrics.decisions.add(1, (("verdict", verdict.value),))
        decided = outcome[-1]
        self.runtime.metrics.gate_latency.record(
            max(decided.decision.decide_time - decided.gate.create_time, 0.0),
            _VERDICT_ATTRIBUTES[verdict],
        )
        if run.status is RunStatus.RUNNING:
            self._hand_over(run, begun=run.in_flight is not None)
        return outcome[-1].gate, outcome[-1].decision

    # -- kill switches --------------------------------------------------------------------------

    def _switch_name(self, principal: Principal, name: str) -> str:
        match = _SWITCH.fullmatch(name)
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
    ) -> tuple[KillSwitchRecord, int]:
        project = self._switch_name(principal, name)
        if not 1 <= len(reason) <= 1000:
            raise InvalidArgument([FieldViolation("reason", "required, 1-1,000 characters")])
        if project == GLOBAL:
            require_scope(principal, OPERATOR)
        actor = principal.who
        switch, changed = await self.store.aio(
            self.store.set_switch, name, engaged, reason, actor, etag
        )
        paused = 0
        if engaged and changed:
            for run_name in await self.store.aio(
                self.store.unfinished_runs, None if project == GLOBAL else project
            ):
                paused += await self._halt(run_name, name, reason)
            for listener in self.kill_switch_listeners:
                await listener(None if project == GLOBAL else project, actor, reason)
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
        """PreviewRunCost: the recipe's run over `state` estimated before it starts."""
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        if not recipe_name:
            raise InvalidArgument([FieldViolation("run.recipe", "required")])
        record = await self.recipes.get(principal, recipe_name)
        spec: RecipeSpec = self.recipes.parsed(record).spec
        budget = budget or Budget(
            spec.budget.max_tokens, spec.budget.max_cost_usd, spec.budget.max_wall_time_s
        )
        prices = self.runtime.prices_for(project)
        return estimate_run(spec, state, budget, prices, self._live_signals(principal, parent))

    def _live_signals(self, principal: Principal, parent: str) -> LiveSignals:
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


_BUDGET_FIELDS = ("max_tokens", "max_cost_usd", "max_wall_time_s")


def run_budget(requested: Budget | None, recipe: BudgetSpec) -> Budget:
    """A run's budget: the recipe's, or a caller's that is no looser. Zero means unlimited, so
    a caller may give zero only where the recipe is unlimited too."""
    if requested is None:
        return Budget(recipe.max_tokens, recipe.max_cost_usd, recipe.max_wall_time_s)
    violations = []
    for field in _BUDGET_FIELDS:
        cap, asked = getattr(recipe, field), getattr(requested, field)
        if cap and not asked:
            violations.append(
                FieldViolation(
                    f"run.budget.{field}", f"0 means unlimited; the recipe caps it at {cap}"
                )
            )
        elif cap and asked > cap:
            violations.append(
                FieldViolation(f"run.budget.{field}", f"may not exceed the recipe's {cap}")
            )
    if violations:
        raise InvalidArgument(violations)
    return requested


def _tighter(left: Budget, recipe: BudgetSpec) -> Budget:
    """A child run's budget: on each dimension the smaller of what its parent has left and its
    own recipe's cap (zero on both: unlimited)."""
    values = []
    for field in _BUDGET_FIELDS:
        limits = [v for v in (getattr(left, field), getattr(recipe, field)) if v]
        values.append(min(limits) if limits else 0)
    return Budget(int(values[0]), float(values[1]), float(values[2]))
