"""One data-plane call read to its end: the text, the tool calls and the final `Done`.

Graph model nodes and eval tasks both call the in-process InferenceService and need the whole
answer rather than its deltas; this is the one reader of that stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from maestro.data_plane.events import Delta, Done, Event, Routed


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    tool_calls: tuple[tuple[str, str], ...]
    """(name, arguments as sent: JSON text) of each tool call, in index order."""
    deployment: str
    done: Done | None
    """None when the stream ended without a result."""


async def read_completion(
    stream: AsyncGenerator[Event, None], on_text: Callable[[str, int], None] | None = None
) -> Completion:
    """Read `stream` to its `Done`, calling `on_text(text, index)` for each text delta."""
    text: list[str] = []
    arguments: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    deployment = ""
    async with contextlib.aclosing(stream) as events:
        async for event in events:
            if isinstance(event, Routed):
                deployment = event.deployment.deployment_id
            elif isinstance(event, Delta):
                if event.text:
                    text.append(event.text)
                    if on_text is not None:
                        on_text(event.text, event.index)
                for piece in event.tool_calls:
                    arguments.setdefault(piece.index, []).append(piece.arguments)
                    names[piece.index] = names.get(piece.index) or piece.name
            elif isinstance(event, Done):
                if event.deployment is not None:
                    deployment = event.deployment.deployment_id
                calls = tuple((names[i], "".join(arguments.get(i, []))) for i in sorted(names))
                return Completion("".join(text), calls, deployment, event)
    return Completion("".join(text), (), deployment, None)
