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

from maestro.app.completions import read_completion
from maestro.control_plane.graph.model_calls import (
    DEFAULT_MAX_TOKENS,
    ModelResult,
    ModelStepError,
    OnChunk,
)
from maestro.control_plane.graph.recipe import NodeSpec, ToolSpec
from maestro.core.auth import Principal
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
        completion = await read_completion(
            self._service.stream(Principal(project, None), call), on_chunk
        )
        done = completion.done
        if done is None:
            raise ModelStepError("the call ended without a result")
        if done.error is not None:
            raise ModelStepError(done.error.message)
        return ModelResult(
            _output(node.id, completion.text, completion.tool_calls),
            done.prompt_tokens,
            done.completion_tokens,
            done.cost_usd,
            completion.deployment,
        )


def _output(node_id: str, text: str, calls: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    if calls:
        name, raw = calls[0]
        try:
            arguments = json.loads(raw or "{}")
        except json.JSONDecodeError:
            arguments = {"input": raw}
        return {"tool": name, "tool_args": arguments}
    with contextlib.suppress(json.JSONDecodeError):
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return {"tool": None, **parsed}
    return {"tool": None, node_id: text}
