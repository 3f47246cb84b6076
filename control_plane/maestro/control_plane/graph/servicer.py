"""gRPC face of GraphService: validate requests, convert them, delegate.

`convert` turns messages into domain values and back; `service.GraphService` does the work;
StreamRunEvents and InteractRun stream what `follow.follow_run` and `interaction.run_session`
yield. No handler here holds a loop of its own beyond rendering those items.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from maestro.control_plane.graph import convert
from maestro.control_plane.graph.follow import follow_run
from maestro.control_plane.graph.interaction import run_session
from maestro.control_plane.graph.recipe import mermaid, parse_recipe
from maestro.control_plane.graph.records import RecipeRecord
from maestro.control_plane.graph.service import GraphService
from maestro.core import names, paging
from maestro.core.auth import current_principal
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.core.rpc.request_checks import checks_each_request
from maestro.v1 import graph_service_pb2 as pb
from maestro.v1 import graph_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class GraphServicer(pb_grpc.GraphServiceServicer):
    def __init__(self, service: GraphService) -> None:
        self._service = service

    def _recipe(self, record: RecipeRecord) -> pb.Recipe:
        return convert.recipe_message(record, self._service.recipes.parsed(record).spec)

    async def GetRecipe(
        self, request: pb.GetRecipeRequest, context: Context
    ) -> pb.GetRecipeResponse:
        record = await self._service.recipes.get(current_principal(), request.name)
        return pb.GetRecipeResponse(recipe=self._recipe(record))

    async def ListRecipes(
        self, request: pb.ListRecipesRequest, context: Context
    ) -> pb.ListRecipesResponse:
        items, token = await self._service.recipes.page(
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
        record = await self._service.recipes.put(
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
        project, recipe_id, _ = self._service.recipes.name_parts(request.recipe.name, "recipe.name")
        current = await self._service.recipes.get(current_principal(), request.recipe.name)
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
        record = await self._service.recipes.put(
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
        await self._service.recipes.delete(current_principal(), request.name, request.etag)
        return pb.DeleteRecipeResponse()

    async def ExportRecipeDiagram(
        self, request: pb.ExportRecipeDiagramRequest, context: Context
    ) -> pb.ExportRecipeDiagramResponse:
        record = await self._service.recipes.get(current_principal(), request.name)
        spec = self._service.recipes.parsed(record).spec
        return pb.ExportRecipeDiagramResponse(mermaid=mermaid(spec), revision_id=record.revision_id)

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        created = await self._service.create_run(
            current_principal(), request.parent, convert.new_run_from(request)
        )
        return pb.CreateRunResponse(run=convert.run_message(created))

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(
            run=convert.run_message(await self._service.get_run(current_principal(), request.name))
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
        return pb.ListRunsResponse(
            runs=[convert.run_message(r) for r in runs], next_page_token=token
        )

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        run = await self._service.cancel_run(current_principal(), request.name, request.reason)
        return pb.CancelRunResponse(run=convert.run_message(run))

    async def PauseRun(self, request: pb.PauseRunRequest, context: Context) -> pb.PauseRunResponse:
        run = await self._service.pause_run(current_principal(), request.name, request.reason)
        return pb.PauseRunResponse(run=convert.run_message(run))

    async def ResumeRun(
        self, request: pb.ResumeRunRequest, context: Context
    ) -> pb.ResumeRunResponse:
        run = await self._service.resume_run(current_principal(), request.name, request.reason)
        return pb.ResumeRunResponse(run=convert.run_message(run))

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
            events=[convert.event_message(e) for e in events], next_page_token=next_token
        )

    async def StreamRunEvents(
        self, request: pb.StreamRunEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamRunEventsResponse]:
        events = follow_run(
            self._service,
            current_principal(),
            request.name,
            request.after_sequence,
            request.include_token_chunks,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield pb.StreamRunEventsResponse(event=convert.event_message(event))

    async def GetGate(self, request: pb.GetGateRequest, context: Context) -> pb.GetGateResponse:
        return pb.GetGateResponse(
            gate=convert.gate_message(
                await self._service.get_gate(current_principal(), request.name)
            )
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
        return pb.ListGatesResponse(
            gates=[convert.gate_message(g) for g in gates], next_page_token=token
        )

    async def SubmitGateDecision(
        self, request: pb.SubmitGateDecisionRequest, context: Context
    ) -> pb.SubmitGateDecisionResponse:
        gate, recorded = await self._service.decide_gate(
            current_principal(), request.name, convert.decision_from(request)
        )
        return pb.SubmitGateDecisionResponse(
            gate=convert.gate_message(gate), decision=convert.decision_message(recorded)
        )

    @checks_each_request  # convert.session_command answers a bad command on the stream
    async def InteractRun(
        self, request_iterator: AsyncIterator[pb.InteractRunRequest], context: Context
    ) -> AsyncIterator[pb.InteractRunResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("command") != "start":
            raise InvalidArgument(
                [FieldViolation("start", "the first message of the session must be `start`")]
            )
        session = run_session(
            self._service,
            current_principal(),
            first.start.name,
            first.start.after_sequence,
            first.start.include_token_chunks,
            (convert.session_command(message) async for message in request_iterator),
        )
        async with contextlib.aclosing(session):
            async for item in session:
                yield convert.session_response(item)

    async def GetKillSwitch(
        self, request: pb.GetKillSwitchRequest, context: Context
    ) -> pb.GetKillSwitchResponse:
        switch, in_effect = await self._service.get_switch(current_principal(), request.name)
        return pb.GetKillSwitchResponse(kill_switch=convert.switch_message(switch, in_effect))

    async def SetKillSwitch(
        self, request: pb.SetKillSwitchRequest, context: Context
    ) -> pb.SetKillSwitchResponse:
        switch, paused = await self._service.set_switch(
            current_principal(),
            request.name,
            request.engaged,
            request.reason,
            request.etag,
        )
        in_effect = switch.engaged
        return pb.SetKillSwitchResponse(
            kill_switch=convert.switch_message(switch, in_effect), paused_run_count=paused
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
            convert.budget_from(run.budget) if run.HasField("budget") else None,
        )
        return convert.preview_response(preview)


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
