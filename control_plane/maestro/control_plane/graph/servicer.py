"""gRPC face of GraphService: convert messages, delegate to `service.GraphService`.

Stored events and gates are kept in the proto's JSON form, so rendering them is one
`json_format.ParseDict`. StreamRunEvents and InteractRun share one follower of a run's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from maestro.control_plane.graph.hub import Chunk
from maestro.control_plane.graph.recipe import RecipeSpec, mermaid, parse_recipe
from maestro.control_plane.graph.records import (
    Budget,
    EventRecord,
    GateRecord,
    KillSwitchRecord,
    RecipeRecord,
    RunRecord,
)
from maestro.control_plane.graph.service import AUTONOMY, Decision, GraphService, NewRun
from maestro.control_plane.graph.steps import KIND_ENUM, gate_json
from maestro.core import names, paging
from maestro.core.auth import Principal, current_principal
from maestro.core.errors import FieldViolation, InvalidArgument, MaestroError
from maestro.v1 import common_pb2
from maestro.v1 import graph_service_pb2 as pb
from maestro.v1 import graph_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
CHUNK_POLL_S = 0.05
"""How often a watcher of token chunks flushes them."""
WATCH_POLL_S = 1.0
"""How often a watcher re-reads the store without a wake-up (changes made by a SQLite replica in
another process; PostgreSQL replicas are woken by NOTIFY)."""


def _stamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def budget_message(budget: Budget) -> common_pb2.Budget:
    out = common_pb2.Budget(max_tokens=budget.max_tokens, max_cost_usd=budget.max_cost_usd)
    if budget.max_wall_time_s:
        out.max_wall_time.FromNanoseconds(int(budget.max_wall_time_s * 1e9))
    return out


def budget_from(message: common_pb2.Budget) -> Budget:
    return Budget(
        message.max_tokens, message.max_cost_usd, message.max_wall_time.ToNanoseconds() / 1e9
    )


def recipe_message(record: RecipeRecord, spec: RecipeSpec) -> pb.Recipe:
    recipe = pb.Recipe(
        name=record.name,
        display_name=record.display_name,
        source_yaml=record.source_yaml,
        description=spec.description,
        autonomy_level=AUTONOMY[spec.autonomy],  # type: ignore[arg-type]
        budget=budget_message(
            Budget(spec.budget.max_tokens, spec.budget.max_cost_usd, spec.budget.max_wall_time_s)
        ),
        revision_id=record.revision_id,
        create_time=_stamp(record.create_time),
        update_time=_stamp(record.update_time),
        etag=record.revision_id,
    )
    for node in spec.nodes:
        out = recipe.nodes.add(
            id=node.id,
            kind=KIND_ENUM[node.kind],
            description=node.description,
            max_attempts=node.retries.max_attempts,
            tags=node.tags,
        )
        out.retry_backoff.FromNanoseconds(int(node.retries.backoff_s * 1e9))
        if node.timeout_s:
            out.timeout.FromNanoseconds(int(node.timeout_s * 1e9))
        if node.kind == "model":
            hint = {"draft": 1, "finalization": 2}.get(node.hint, 0)
            out.model_step.model = node.model
            out.model_step.step_hint = hint  # type: ignore[assignment]
        elif node.kind == "tool":
            out.tool_step.tool = node.tool
        elif node.kind == "gate" and node.gate is not None:
            out.gate_step.required_approvals = node.gate.approvals
            out.gate_step.prompt = node.gate.prompt
        elif node.kind == "subgraph":
            out.subgraph_step.recipe = node.recipe
    for edge in spec.edges:
        recipe.edges.add(
            from_node_id=edge.source, to_node_id=edge.target, condition=edge.when, label=edge.label
        )
    for tool in spec.tools:
        recipe.tools.add(
            name=tool.name,
            description=tool.description,
            parameters_schema=_struct(tool.parameters),
            side_effects=tool.side_effects,
        )
    return recipe


def run_message(run: RunRecord) -> pb.Run:
    message = pb.Run(
        name=run.name,
        recipe=run.recipe,
        recipe_revision_id=run.recipe_revision_id,
        input_state=_struct(run.input_state),
        graph_state=_struct(run.state),
        state=int(run.status),  # type: ignore[arg-type]
        state_reason=run.state_reason,
        current_node_ids=(
            [run.in_flight.node_id]
            if run.in_flight
            else ([run.next_node] if run.next_node and not run.status.final else [])
        ),
        usage=common_pb2.Usage(
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            total_tokens=run.prompt_tokens + run.completion_tokens,
        ),
        cost_usd=run.cost_usd,
        budget=budget_message(run.budget),
        autonomy_level=run.autonomy,  # type: ignore[arg-type]
        kill_switch=run.kill_switch,
        open_gates=run.open_gates,
        last_event_sequence=run.last_seq,
        owner_replica=run.owner,
        trace_id=run.trace_id,
        create_time=_stamp(run.create_time),
        update_time=_stamp(run.update_time),
        end_time=_stamp(run.end_time),
    )
    if run.owner:
        message.lease_expire_time.FromDatetime(datetime.fromtimestamp(run.lease_expire, UTC))
    if run.error is not None:
        json_format.ParseDict(run.error, message.error)
    return message


def event_message(event: EventRecord) -> pb.RunEvent:
    message = pb.RunEvent(
        run=event.run,
        sequence=event.seq,
        event_time=_stamp(event.event_time),
        node_id=event.node_id,
        attempt=event.attempt,
    )
    json_format.ParseDict(event.body, message, ignore_unknown_fields=True)
    return message


def gate_message(gate: GateRecord) -> pb.Gate:
    return json_format.ParseDict(gate_json(gate), pb.Gate())


def switch_message(switch: KillSwitchRecord, in_effect: bool) -> pb.KillSwitch:
    return pb.KillSwitch(
        name=switch.name,
        engaged=switch.engaged,
        in_effect=in_effect,
        reason=switch.reason,
        updated_by=switch.updated_by,
        update_time=_stamp(switch.update_time),
        etag=switch.etag,
    )


_VERDICTS = {1: "APPROVE", 2: "EDIT", 3: "BLOCK"}


class GraphServicer(pb_grpc.GraphServiceServicer):
    def __init__(self, service: GraphService, operators: frozenset[str]) -> None:
        self._service = service
        self._operators = operators

    def _recipe(self, record: RecipeRecord) -> pb.Recipe:
        return recipe_message(record, self._service.parsed(record).spec)

    async def GetRecipe(
        self, request: pb.GetRecipeRequest, context: Context
    ) -> pb.GetRecipeResponse:
        record = await self._service.get_recipe(current_principal(), request.name)
        return pb.GetRecipeResponse(recipe=self._recipe(record))

    async def ListRecipes(
        self, request: pb.ListRecipesRequest, context: Context
    ) -> pb.ListRecipesResponse:
        items, token = await self._service.list_recipes(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListRecipesResponse(
            recipes=[self._recipe(r) for r in items], next_page_token=token
        )

    async def CreateRecipe(
        self, request: pb.CreateRecipeRequest, context: Context
    ) -> pb.CreateRecipeResponse:
        recipe_id = request.recipe_id
        if not recipe_id or not _valid_id(recipe_id):
            raise InvalidArgument(
                [FieldViolation("recipe_id", "required: 1-63 lower-case letters, digits, hyphens")]
            )
        if request.validate_only:
            parse_recipe(request.recipe.source_yaml)
            return pb.CreateRecipeResponse(recipe=request.recipe)
        record = await self._service.put_recipe(
            current_principal(),
            _project(request.parent),
            recipe_id,
            request.recipe.source_yaml,
            request.recipe.display_name,
            create=True,
        )
        return pb.CreateRecipeResponse(recipe=self._recipe(record))

    async def UpdateRecipe(
        self, request: pb.UpdateRecipeRequest, context: Context
    ) -> pb.UpdateRecipeResponse:
        project, recipe_id, _ = self._service.recipe_name(request.recipe.name, "recipe.name")
        current = await self._service.get_recipe(current_principal(), request.recipe.name)
        paths = set(request.update_mask.paths) or {"source_yaml", "display_name"}
        unknown = paths - {"source_yaml", "display_name"}
        if unknown:
            raise InvalidArgument(
                [FieldViolation("update_mask", f"cannot update {sorted(unknown)}")]
            )
        source = request.recipe.source_yaml if "source_yaml" in paths else current.source_yaml
        display = request.recipe.display_name if "display_name" in paths else current.display_name
        if request.validate_only:
            parse_recipe(source)
            return pb.UpdateRecipeResponse(recipe=self._recipe(current))
        record = await self._service.put_recipe(
            current_principal(),
            project,
            recipe_id,
            source,
            display,
            create=False,
            etag=request.recipe.etag,
        )
        return pb.UpdateRecipeResponse(recipe=self._recipe(record))

    async def DeleteRecipe(
        self, request: pb.DeleteRecipeRequest, context: Context
    ) -> pb.DeleteRecipeResponse:
        await self._service.delete_recipe(current_principal(), request.name, request.etag)
        return pb.DeleteRecipeResponse()

    async def ExportRecipeDiagram(
        self, request: pb.ExportRecipeDiagramRequest, context: Context
    ) -> pb.ExportRecipeDiagramResponse:
        record = await self._service.get_recipe(current_principal(), request.name)
        spec = self._service.parsed(record).spec
        return pb.ExportRecipeDiagramResponse(mermaid=mermaid(spec), revision_id=record.revision_id)

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        run = request.run
        new = NewRun(
            recipe=run.recipe,
            input_state=json_format.MessageToDict(run.input_state),
            budget=budget_from(run.budget) if run.HasField("budget") else None,
            autonomy=int(run.autonomy_level),
            run_id=request.run_id,
            request_id=request.request_id,
        )
        created = await self._service.create_run(current_principal(), request.parent, new)
        return pb.CreateRunResponse(run=run_message(created))

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(
            run=run_message(await self._service.get_run(current_principal(), request.name))
        )

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        runs, token = await self._service.list_runs(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
        )
        return pb.ListRunsResponse(runs=[run_message(r) for r in runs], next_page_token=token)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._service.cancel_run(current_principal(), request.name, request.reason)
        return pb.CancelRunResponse(run=run_message(run))

    async def PauseRun(self, request: pb.PauseRunRequest, context: Context) -> pb.PauseRunResponse:
        run = await self._service.pause_run(current_principal(), request.name, request.reason)
        return pb.PauseRunResponse(run=run_message(run))

    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: Context
    ) -> pb.ResumeRunResponse:
        run = await self._service.resume_run(current_principal(), request.name, request.reason)
        return pb.ResumeRunResponse(run=run_message(run))

    async def ListRunEvents(
        self, request: pb.ListRunEventsRequest, context: Context
    ) -> pb.ListRunEventsResponse:
        node_id, after = _event_filter(request.filter)
        limit = request.page_size or 100
        if limit < 0:
            raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
        limit = min(limit, 1000)
        token = paging.decode_token(request.page_token, request.parent)
        if token is not None:
            after = max(after, int(token[0]))
        events = await self._service.list_events(
            current_principal(), request.parent, after, limit + 1, node_id
        )
        events, next_token = paging.page_of(events, limit, request.parent, lambda e: [e.seq])
        return pb.ListRunEventsResponse(
            events=[event_message(e) for e in events], next_page_token=next_token
        )

    async def StreamRunEvents(
        self, request: pb.StreamRunEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamRunEventsResponse]:
        principal = current_principal()
        await self._service.get_run(principal, request.name)  # NOT_FOUND, PERMISSION_DENIED
        async for event in self._follow(
            principal, request.name, request.after_sequence, request.include_token_chunks, None
        ):
            assert isinstance(event, pb.RunEvent)
            yield pb.StreamRunEventsResponse(event=event)

    async def _follow(
        self,
        principal: Principal,
        name: str,
        after: int,
        include_chunks: bool,
        results: asyncio.Queue[pb.InteractRunResponse.CommandResult] | None,
    ) -> AsyncIterator[pb.RunEvent | pb.InteractRunResponse.CommandResult]:
        """A run's stored events after `after`, then live ones (and token chunks, and the
        results a session's commands put in `results`), until the run's final event."""
        service = self._service
        chunks = service.hub.subscribe_chunks(name) if include_chunks else None
        pending: list[Chunk] = []
        changed = service.hub.watch(name)
        try:
            while True:
                changed.clear()  # before reading: a change during the read wakes the next wait
                while results is not None and not results.empty():
                    yield results.get_nowait()
                events = await service.list_events(principal, name, after, 1000, None)
                for event in events:
                    after = event.seq
                    yield event_message(event)
                if len(events) == 1000:
                    continue
                run = await service.get_run(principal, name)
                if run.status.final and run.last_seq <= after:
                    return
                while chunks is not None and not chunks.empty():
                    pending.append(chunks.get_nowait())
                while pending and pending[0][2] <= after:  # never ahead of the stored events
                    text, index, _seq, node_id, attempt = pending.pop(0)
                    yield pb.RunEvent(
                        run=name,
                        sequence=after,
                        node_id=node_id,
                        attempt=attempt,
                        token_chunk=pb.RunEvent.TokenChunk(text=text, index=index),
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        changed.wait(), WATCH_POLL_S if chunks is None else CHUNK_POLL_S
                    )
        finally:
            service.hub.unwatch(name, changed)
            if chunks is not None:
                service.hub.unsubscribe_chunks(name, chunks)

    async def GetGate(self, request: pb.GetGateRequest, context: Context) -> pb.GetGateResponse:
        return pb.GetGateResponse(
            gate=gate_message(await self._service.get_gate(current_principal(), request.name))
        )

    async def ListGates(
        self, request: pb.ListGatesRequest, context: Context
    ) -> pb.ListGatesResponse:
        gates, token = await self._service.list_gates(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return pb.ListGatesResponse(gates=[gate_message(g) for g in gates], next_page_token=token)

    async def SubmitGateDecision(
        self, request: pb.SubmitGateDecisionRequest, context: Context
    ) -> pb.SubmitGateDecisionResponse:
        decision = _decision(request)
        gate, recorded = await self._service.decide_gate(
            current_principal(), request.name, decision
        )
        return pb.SubmitGateDecisionResponse(
            gate=gate_message(gate), decision=json_format.ParseDict(recorded, pb.GateDecision())
        )

    async def InteractRun(
        self, request_iterator: AsyncIterator[pb.InteractRunRequest], context: Context
    ) -> AsyncIterator[pb.InteractRunResponse]:
        principal = current_principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("command") != "start":
            raise InvalidArgument(
                [FieldViolation("start", "the first message of the session must be `start`")]
            )
        name = first.start.name
        run = await self._service.get_run(principal, name)
        gates = [await self._service.get_gate(principal, gate) for gate in run.open_gates]
        yield pb.InteractRunResponse(
            snapshot=pb.InteractRunResponse.Snapshot(
                run=run_message(run), open_gates=[gate_message(g) for g in gates]
            )
        )
        results: asyncio.Queue[pb.InteractRunResponse.CommandResult] = asyncio.Queue()
        reader = asyncio.create_task(self._commands(principal, name, request_iterator, results))
        try:
            async for item in self._follow(
                principal, name, first.start.after_sequence, first.start.include_token_chunks,
                results,
            ):  # fmt: skip
                if isinstance(item, pb.RunEvent):
                    yield pb.InteractRunResponse(event=item)
                else:
                    yield pb.InteractRunResponse(result=item)
            while not results.empty():  # answers to commands that ended the run
                yield pb.InteractRunResponse(result=results.get_nowait())
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _commands(
        self,
        principal: Principal,
        name: str,
        requests: AsyncIterator[pb.InteractRunRequest],
        results: asyncio.Queue[pb.InteractRunResponse.CommandResult],
    ) -> None:
        """Carry out a session's commands; each gets a result, and a rejected one does not end
        the session."""
        async for message in requests:
            result = pb.InteractRunResponse.CommandResult(request_id=message.request_id)
            try:
                kind = message.WhichOneof("command")
                if kind == "decide":
                    decide = message.decide
                    if not decide.gate.startswith(f"{name}/gates/"):
                        raise InvalidArgument(
                            [FieldViolation("decide.gate", "must be a gate of this session's run")]
                        )
                    gate, _ = await self._service.decide_gate(
                        principal, decide.gate, _decision(decide)
                    )
                    result.gate.CopyFrom(gate_message(gate))
                elif kind == "cancel":
                    run = await self._service.cancel_run(principal, name, message.cancel.reason)
                    result.run.CopyFrom(run_message(run))
                else:
                    raise InvalidArgument(
                        [FieldViolation("command", "`start` only opens the session; send decide "
                                        "or cancel")]
                    )  # fmt: skip
                result.status.code = 0
            except MaestroError as error:
                result.status.CopyFrom(error.to_status())
            await results.put(result)
            self._service.hub.changed(name)  # wakes the session's loop to send it

    async def GetKillSwitch(
        self, request: pb.GetKillSwitchRequest, context: Context
    ) -> pb.GetKillSwitchResponse:
        switch, in_effect = await self._service.get_switch(current_principal(), request.name)
        return pb.GetKillSwitchResponse(kill_switch=switch_message(switch, in_effect))

    async def SetKillSwitch(
        self, request: pb.SetKillSwitchRequest, context: Context
    ) -> pb.SetKillSwitchResponse:
        switch, paused = await self._service.set_switch(
            current_principal(),
            request.name,
            request.engaged,
            request.reason,
            request.etag,
            self._operators,
        )
        in_effect = switch.engaged
        return pb.SetKillSwitchResponse(
            kill_switch=switch_message(switch, in_effect), paused_run_count=paused
        )

    async def PreviewRunCost(
        self, request: pb.PreviewRunCostRequest, context: Context
    ) -> pb.PreviewRunCostResponse:
        run = request.run
        preview = await self._service.preview(
            current_principal(),
            request.parent,
            run.recipe,
            json_format.MessageToDict(run.input_state),
            budget_from(run.budget) if run.HasField("budget") else None,
        )
        out = pb.PreviewRunCostResponse(
            estimated_usage=common_pb2.Usage(
                prompt_tokens=preview.prompt_tokens,
                completion_tokens=preview.completion_tokens,
                total_tokens=preview.prompt_tokens + preview.completion_tokens,
            ),
            estimated_cost_usd=preview.estimated_cost,
            worst_case_cost_usd=preview.worst_case_cost,
            budget=budget_message(preview.budget),
            fits_budget=not preview.violations,
            budget_violations=preview.violations,
        )
        for node_id, kind, estimate, visits, fits in preview.nodes:
            row = out.nodes.add(
                node_id=node_id,
                kind=KIND_ENUM[kind],
                deployment=estimate.deployment,
                expected_visits=visits,
                estimated_usage=common_pb2.Usage(
                    prompt_tokens=int(estimate.prompt_tokens * visits),
                    completion_tokens=int(estimate.completion_tokens * visits),
                    total_tokens=int(
                        (estimate.prompt_tokens + estimate.completion_tokens) * visits
                    ),
                ),
                estimated_cost_usd=estimate.cost_usd * visits,
                fits_budget=fits,
            )
            row.p95_latency.FromNanoseconds(int(estimate.p95_s * 1e9))
        forecast = out.slo_forecast
        forecast.p50_wall_time.FromNanoseconds(int(preview.p50_s * 1e9))
        forecast.p95_wall_time.FromNanoseconds(int(preview.p95_s * 1e9))
        forecast.success_rate = preview.success_rate
        wall = preview.budget.max_wall_time_s
        forecast.within_slo = not wall or preview.p95_s <= wall
        return out


def _decision(
    request: pb.SubmitGateDecisionRequest | pb.InteractRunRequest.Decide,
) -> Decision:
    return Decision(
        verdict=_VERDICTS.get(int(request.verdict), ""),
        reason=request.reason,
        state_patch=(
            json_format.MessageToDict(request.state_patch)
            if request.HasField("state_patch")
            else None
        ),
        edited_action=(
            json_format.MessageToDict(request.edited_action)
            if request.HasField("edited_action")
            else None
        ),
        etag=request.etag,
    )


_EVENT_CLAUSE = re.compile(r'^\s*(?:node_id\s*=\s*"([^"]*)"|sequence\s*>\s*(\d+))\s*$')


def _event_filter(text: str) -> tuple[str | None, int]:
    """ListRunEvents' filter: `node_id = "..."` and `sequence > N`, joined by AND."""
    node_id, after = None, 0
    if not text.strip():
        return node_id, after
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _EVENT_CLAUSE.match(part)
        if match is None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "filter",
                        f'cannot read {part.strip()!r}; use node_id = "..." and sequence > N, '
                        "joined by AND",
                    )
                ]
            )
        if match.group(1) is not None:
            node_id = match.group(1)
        else:
            after = max(after, int(match.group(2)))
    return node_id, after


def _valid_id(value: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9-]{0,62}", value) is not None


def _project(parent: str) -> str:
    return names.parse_project_name(parent, "parent")
