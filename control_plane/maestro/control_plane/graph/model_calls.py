"""How a model node reaches a model: the interface the runtime calls, and what it answers.

The runtime never imports the data plane. The composition root (`maestro.app`) hands it an
implementation of `ModelCaller`; in `maestro up` that is the in-process data plane, with routing,
fallbacks, breakers and budgets included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from maestro.control_plane.graph.recipe import NodeSpec, ToolSpec

DEFAULT_MAX_TOKENS = 256
OnChunk = Callable[[str, int], None]
"""Called with each text chunk of a model's answer and its choice index, as it streams."""


@dataclass(frozen=True, slots=True)
class ModelResult:
    output: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    deployment: str


class ModelStepError(Exception):
    """The call could not complete (every deployment failed, budget, ...)."""


class ModelCaller(Protocol):
    async def call(
        self,
        project: str,
        node: NodeSpec,
        state: Mapping[str, Any],
        tools: Mapping[str, ToolSpec],
        on_chunk: OnChunk | None = None,
    ) -> ModelResult:
        """Run one model node over the run's state: its output, tokens, cost and deployment."""
        ...
