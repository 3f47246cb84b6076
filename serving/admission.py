"""Per-replica admission: at most `max_ongoing` requests generate at once, at most `max_queued`
more wait for a slot (first come, first served), and the rest are refused at once.

Ray Serve bounds its own queue too, but its count is racy under bursts (a burst can pass the
check before any of it is counted), so a lane could take twice its queue and never shed. Here
`admit` decides and counts in one synchronous step, so a burst of N against capacity C admits
exactly C. Ray Serve's own limits are set above these (see `serve_config`), so requests reach
this check rather than wait unseen in Ray's queue.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    def __init__(self, max_ongoing: int, max_queued: int) -> None:
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        """-1: unlimited."""
        self.admitted = 0
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def configure(self, max_ongoing: int, max_queued: int) -> None:
        """New limits (a light config update); requests already admitted keep their place."""
        self.max_ongoing, self.max_queued = max_ongoing, max_queued
        self._wake()

    def admit(self) -> Ticket | None:
        """A ticket for a request, or None when the replica is full (the caller sheds it)."""
        if self.max_queued >= 0 and self.admitted >= self.max_ongoing + self.max_queued:
            return None
        self.admitted += 1
        return Ticket(self)

    async def _acquire(self) -> None:
        if self.running < self.max_ongoing and not self._waiters:
            self.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # woken and cancelled at once: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.running < self.max_ongoing:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)


class Ticket:
    """One admitted request: wait for a slot with `slot()`, end with `release()` (idempotent,
    whether or not a slot was held)."""

    __slots__ = ("_admission", "_holds_slot", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._holds_slot = False
        self._released = False

    async def slot(self) -> None:
        await self._admission._acquire()
        self._holds_slot = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admission.admitted -= 1
        if self._holds_slot:
            self._admission._release_slot()
