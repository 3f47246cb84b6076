"""Wake-ups inside one replica: "run X changed" and live token chunks.

Watchers (StreamRunEvents) read stored events from the store and sleep on the hub until the run
changes; the runtime and the RPCs that change runs poke it after each commit, and on PostgreSQL
so does the LISTEN thread for changes made by other replicas. A watcher's flag is level
triggered: it clears it before reading the store, so a change that lands while it reads is not
lost. Token chunks are never stored: they go to the live subscribers of the replica executing
the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Chunk = tuple[str, int, int, str, int]
"""(text, index, last stored sequence, node id, attempt)."""


class RunHub:
    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._final: dict[str, asyncio.Event] = {}
        self._chunks: dict[str, set[asyncio.Queue[Chunk]]] = {}
        self.on_claimable: Callable[[], None] = lambda: None

    def changed(self, run: str, final: bool = False) -> None:
        for flag in self._watchers.get(run, ()):
            flag.set()
        if final:
            done = self._final.pop(run, None)
            if done is not None:
                done.set()

    def final_event(self, run: str) -> asyncio.Event:
        """Set when this replica sees the run finish; take it before the run can finish (a run
        finished by another replica is seen by reading the store)."""
        return self._final.setdefault(run, asyncio.Event())

    async def wait_final(self, run: str, timeout_s: float) -> bool:
        """Wait until this replica sees the run finish; False on time-out."""
        event = self.final_event(run)
        try:
            async with asyncio.timeout(timeout_s):  # cancel-safe, unlike wait_for on 3.11
                await event.wait()
        except TimeoutError:
            return False
        return True

    def remote_change(self, run: str) -> None:
        """Another replica changed the run (PostgreSQL NOTIFY): wake watchers, and the runtime,
        which may now claim it."""
        self.changed(run)
        self.on_claimable()

    def watch(self, run: str) -> asyncio.Event:
        """A flag set whenever the run changes, until `unwatch`."""
        flag = asyncio.Event()
        self._watchers.setdefault(run, set()).add(flag)
        return flag

    def unwatch(self, run: str, flag: asyncio.Event) -> None:
        flags = self._watchers.get(run)
        if flags is not None:
            flags.discard(flag)
            if not flags:
                del self._watchers[run]

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
