"""Model nodes call the in-process data plane: routing, fallbacks, breakers and budgets included.

A model node's messages are its instruction (the node description) and the run's state as JSON.
Its answer becomes output: a JSON object answer is merged into the state key by key; any other
text is stored under the node's id. A tool call becomes `tool` and `tool_args`, which tool nodes
and router conditions read.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

from maestro.control_plane.graph.model_calls import (
    DEFAULT_MAX_TOKENS,
    ModelResult,
    ModelStepError,
    OnChunk,
)
from maestro.control_plane.graph.recipe import NodeSpec, ToolSpec
from maestro.core.auth import Principal
from maestro.data_plane.events import Delta, Done, Routed
from maestro.data_plane.relay import GenerationParams
from maestro.data_plane.service import CallInput, InferenceService
from maestro.routing.decider import ChooseInput
from maestro.routing.engine import RouteRequest
from maestro.routing.texts import wire_texts


class DataPlaneModels:
    """A `ModelCaller` over the data plane's InferenceService."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def call(
        self,
        project: str,
        node: NodeSpec,
        state: Mapping[str, Any],
        tools: Mapping[str, ToolSpec],
        on_chunk: OnChunk | None = None,
    ) -> ModelResult:
        content = json.dumps(state, separators=(",", ":"), sort_keys=True)
        messages = (
            {"role": "system", "content": node.description or f"You are step {node.id}."},
            {"role": "user", "content": content},
        )
        offered = tuple(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": tools[name].description,
                    "parameters": tools[name].parameters,
                },
            }
            for name in node.tools
        )
        choice: str | dict[str, Any] | None = None
        if offered:
            choice = node.tool_choice or "auto"
            if choice not in {"auto", "required", "none"}:
                choice = {"type": "function", "function": {"name": choice}}
        call = CallInput(
            choose=ChooseInput(
                parent=f"projects/{project}",
                route=RouteRequest(model=node.model, hint=node.hint),
                texts=wire_texts(messages, offered),  # the instruction and tools too
                supplied_tags=node.tags,
            ),
            messages=messages,
            params=GenerationParams(
                max_tokens=node.max_tokens or DEFAULT_MAX_TOKENS,
                tools=offered,
                tool_choice=choice,
                seed=0,
            ),
        )
        text: list[str] = []
        calls: dict[int, list[str]] = {}
        names: dict[int, str] = {}
        deployment = ""
        stream = self._service.stream(Principal(project, None), call)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if isinstance(event, Routed):
                    deployment = event.deployment.deployment_id
                elif isinstance(event, Delta):
                    if event.text:
                        text.append(event.text)
                        if on_chunk is not None:
                            on_chunk(event.text, event.index)
                    for piece in event.tool_calls:
                        calls.setdefault(piece.index, []).append(piece.arguments)
                        names[piece.index] = names.get(piece.index) or piece.name
                elif isinstance(event, Done):
                    if event.error is not None:
                        raise ModelStepError(event.error.message)
                    return ModelResult(
                        _output(node.id, "".join(text), names, calls),
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.cost_usd,
                        event.deployment.deployment_id if event.deployment else deployment,
                    )
        raise ModelStepError("the call ended without a result")


def _output(
    node_id: str, text: str, names: dict[int, str], calls: dict[int, list[str]]
) -> dict[str, Any]:
    if names:
        first = min(names)
        try:
            arguments = json.loads("".join(calls.get(first, [])) or "{}")
        except json.JSONDecodeError:
            arguments = {"input": "".join(calls.get(first, []))}
        return {"tool": names[first], "tool_args": arguments}
    with contextlib.suppress(json.JSONDecodeError):
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return {"tool": None, **parsed}
    return {"tool": None, node_id: text}
