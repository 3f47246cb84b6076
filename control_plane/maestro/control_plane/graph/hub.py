"""Wake-ups inside one replica: "run X changed" and live token chunks.

Watchers (StreamRunEvents, InteractRun) read stored events from the store and sleep on the hub
until the run changes; the runtime and the RPCs that change runs poke it after each commit, and
on PostgreSQL so does the LISTEN thread for changes made by other replicas. Token chunks are
never stored: they go to the live subscribers of the replica executing the node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

Chunk = tuple[str, int, int, str, int]
"""(text, index, last stored sequence, node id, attempt)."""


class RunHub:
    def __init__(self) -> None:
        self._changed: dict[str, asyncio.Event] = {}
        self._chunks: dict[str, set[asyncio.Queue[Chunk]]] = {}
        self.on_claimable: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def changed(self, run: str) -> None:
        event = self._changed.pop(run, None)
        if event is not None:
            event.set()

    def changed_threadsafe(self, run: str) -> None:
        """From a non-loop thread (the PostgreSQL listener)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._remote_change, run)

    def _remote_change(self, run: str) -> None:
        self.changed(run)
        self.on_claimable()

    async def wait_changed(self, run: str, timeout_s: float) -> None:
        event = self._changed.setdefault(run, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def subscribe_chunks(self, run: str) -> asyncio.Queue[Chunk]:
        queue: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=1024)
        self._chunks.setdefault(run, set()).add(queue)
        return queue

    def unsubscribe_chunks(self, run: str, queue: asyncio.Queue[Chunk]) -> None:
        queues = self._chunks.get(run)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._chunks[run]

    def chunk(self, run: str, chunk: Chunk) -> None:
        for queue in self._chunks.get(run, ()):
            if not queue.full():  # a slow watcher misses chunks, never slows the run
                queue.put_nowait(chunk)

    def has_chunk_watchers(self, run: str) -> bool:
        return run in self._chunks


def noop(*_args: Any) -> None:
    return None
