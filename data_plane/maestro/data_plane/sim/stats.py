"""What the simulated provider has seen: counters, a snapshot type, and a way to await a state.

Counters change per request (never per token). Tests await a condition with `Counters.wait_for`
instead of sleeping: every change wakes the waiters, which re-check their predicate.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the counters (since start or the last reset) and the open-streams gauge."""

    requests_started: int = 0
    """Chat completion requests received."""
    requests_completed: int = 0
    """Responses sent to the end: a non-stream body, or a stream through `data: [DONE]`."""
    failed_by_status: Mapping[int, int] = field(default_factory=dict)
    """Error responses by HTTP status: injected errors and rejected requests."""
    client_disconnects: int = 0
    """Connections the client closed before its response finished."""
    streams_cut: int = 0
    """Connections closed abruptly by an injected cut (non-stream requests included)."""
    streams_stalled: int = 0
    """Responses that stalled by injection (non-stream requests included)."""
    open_streams: int = 0
    """Streamed responses in progress now (a gauge: a reset keeps it)."""

    @property
    def requests_failed(self) -> int:
        return sum(self.failed_by_status.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_started": self.requests_started,
            "requests_completed": self.requests_completed,
            "failed_by_status": {str(code): n for code, n in sorted(self.failed_by_status.items())},
            "client_disconnects": self.client_disconnects,
            "streams_cut": self.streams_cut,
            "streams_stalled": self.streams_stalled,
            "open_streams": self.open_streams,
        }


class Counters:
    """The live, mutable counters behind `SimStats`; single event loop, no locking."""

    __slots__ = (
        "client_disconnects",
        "failed_by_status",
        "open_streams",
        "requests_completed",
        "requests_started",
        "streams_cut",
        "streams_stalled",
        "waiters",
    )

    def __init__(self) -> None:
        self.open_streams = 0
        self.failed_by_status: Counter[int] = Counter()
        self.waiters: list[asyncio.Future[None]] = []
        self.reset()

    def reset(self) -> None:
        self.requests_started = 0
        self.requests_completed = 0
        self.failed_by_status = Counter()
        self.client_disconnects = 0
        self.streams_cut = 0
        self.streams_stalled = 0
        self.changed()

    def changed(self) -> None:
        """Wake everyone waiting in `wait_for`; call after every change."""
        if self.waiters:
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.waiters.clear()

    def snapshot(self) -> SimStats:
        return SimStats(
            requests_started=self.requests_started,
            requests_completed=self.requests_completed,
            failed_by_status=dict(self.failed_by_status),
            client_disconnects=self.client_disconnects,
            streams_cut=self.streams_cut,
            streams_stalled=self.streams_stalled,
            open_streams=self.open_streams,
        )

    async def wait_for(self, predicate: Callable[[SimStats], bool], timeout_s: float) -> SimStats:
        """The first snapshot satisfying `predicate`; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while not predicate(stats := self.snapshot()):
                waiter = asyncio.get_running_loop().create_future()
                self.waiters.append(waiter)
                await waiter
            return stats
