"""Eval tasks call the in-process data plane, exactly as production traffic does: routing,
policy (PII stays in-house), fallbacks, breakers and prices included."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from maestro.app.completions import read_completion
from maestro.control_plane.evals.grading import ToolCall, parse_arguments
from maestro.control_plane.evals.runner import Answer, TaskCaller, TaskRequest
from maestro.core.auth import Principal
from maestro.data_plane.relay import GenerationParams
from maestro.data_plane.service import CallInput, InferenceService
from maestro.routing.decider import ChooseInput
from maestro.routing.engine import RouteRequest
from maestro.routing.texts import wire_texts

MAX_ANSWER_TOKENS = 256


Deployments = Callable[[str], Sequence[tuple[str, str]]]
"""(deployment id, model group) of each deployment in a project's current routing snapshot."""


class DataPlaneTasks:
    """A `TaskCaller` over the data plane's InferenceService."""

    def __init__(self, service: InferenceService, deployments: Deployments) -> None:
        self._service = service
        self._deployments = deployments
        self.graph: TaskCaller | None = None
        """Runs recipe targets as agent graphs; set when GraphService runs beside."""

    def _route(self, project: str, request: TaskRequest) -> RouteRequest | str:
        """The route of a task, or why it has none (a pinned deployment not in the config)."""
        if not request.deployment:
            return RouteRequest(model=request.model_group)
        known = self._deployments(project)
        group = next((g for d, g in known if d == request.deployment), None)
        if group is None:
            return f"deployment {request.deployment!r} is not in the project's routing config"
        others = frozenset(d for d, _ in known if d != request.deployment)
        return RouteRequest(model=group, excluded_ids=others)

    async def answer(self, project: str, request: TaskRequest) -> Answer:
        if request.recipe:
            if self.graph is None:
                return Answer(error="agent graphs are not served here (graph.enabled is false)")
            return await self.graph.answer(project, request)
        route = self._route(project, request)
        if isinstance(route, str):
            return Answer(error=route)
        call = CallInput(
            choose=ChooseInput(
                parent=f"projects/{project}",
                route=route,
                texts=wire_texts(request.messages, request.tools),
                supplied_tags=request.tags,
            ),
            messages=request.messages,
            params=GenerationParams(
                max_tokens=MAX_ANSWER_TOKENS,
                tools=request.tools,
                tool_choice="auto" if request.tools else None,
                seed=request.seed,
            ),
        )
        completion = await read_completion(self._service.stream(Principal(project, None), call))
        done = completion.done
        if done is None:
            return Answer(error="the call ended without a result", deployment=completion.deployment)
        return Answer(
            text=completion.text,
            tool_calls=tuple(ToolCall(n, parse_arguments(a)) for n, a in completion.tool_calls),
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            cost_usd=done.cost_usd,
            deployment=completion.deployment,
            ttft_s=done.timings.time_to_first_token_s,
            total_s=done.timings.total_s,
            error=done.error.message if done.error is not None else "",
        )
