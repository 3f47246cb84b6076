"""Following a run: its stored events after a sequence number, then the live ones as they
commit (and token chunks, for a follower that asks), until the run's final event.

StreamRunEvents and InteractRun both follow a run this way; this yields domain values and the
servicer renders them. A follower sleeps on the hub (`RunHub.watch`) between reads and clears its
flag before each read, so a change that lands meanwhile wakes the next wait. Token chunks are
never stored; they come from the hub of the replica running the node, and are held back until
the stored events they follow have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TypeVar

from maestro.control_plane.graph.hub import Chunk
from maestro.control_plane.graph.records import EventRecord
from maestro.control_plane.graph.service import GraphService
from maestro.core.auth import Principal

CHUNK_POLL_S = 0.05
"""How often a follower of token chunks flushes them."""
WATCH_POLL_S = 1.0
"""How often a follower re-reads the store without a wake-up (changes made by a SQLite replica in
another process; PostgreSQL replicas are woken by NOTIFY)."""
READ_SIZE = 1000
"""Stored events read at a time."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LiveChunk:
    """A piece of a model node's answer as it streams. `seq`: the run's last stored event when
    it is sent (a chunk never runs ahead of the stored events)."""

    run: str
    seq: int
    node_id: str
    attempt: int
    text: str
    index: int


async def follow_run(
    service: GraphService,
    principal: Principal,
    name: str,
    after: int,
    include_chunks: bool,
    interjections: asyncio.Queue[T] | None = None,
) -> AsyncGenerator[EventRecord | LiveChunk | T, None]:
    """The run's events after sequence `after`, then live ones, until its final event. Items
    put in `interjections` (a session's command results) are yielded between reads; whoever puts
    one wakes the follower with `hub.changed(name)`."""
    await service.get_run(principal, name)  # NOT_FOUND, PERMISSION_DENIED before anything else
    hub = service.hub
    chunks = hub.subscribe_chunks(name) if include_chunks else None
    pending: list[Chunk] = []
    changed = hub.watch(name)
    try:
        while True:
            changed.clear()  # before reading: a change during the read wakes the next wait
            while interjections is not None and not interjections.empty():
                yield interjections.get_nowait()
            events = await service.list_events(principal, name, after, READ_SIZE, None)
            for event in events:
                after = event.seq
                yield event
            if len(events) == READ_SIZE:
                continue
            run = await service.get_run(principal, name)
            if run.status.final and run.last_seq <= after:
                return
            while chunks is not None and not chunks.empty():
                pending.append(chunks.get_nowait())
            while pending and pending[0][2] <= after:  # never ahead of the stored events
                text, index, _seq, node_id, attempt = pending.pop(0)
                yield LiveChunk(name, after, node_id, attempt, text, index)
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: cancel-safe on 3.11
                async with asyncio.timeout(WATCH_POLL_S if chunks is None else CHUNK_POLL_S):
                    await changed.wait()
    finally:
        hub.unwatch(name, changed)
        if chunks is not None:
            hub.unsubscribe_chunks(name, chunks)
