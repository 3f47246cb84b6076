"""WatchEvalRun as a domain loop: snapshots of a run as it changes, with the task results
finished since the previous snapshot and running aggregates of the metrics.

A watcher sleeps on a flag the runner sets after each stored batch (this replica), with a
one-second poll as the fallback for runs another replica drives. At most one snapshot a second,
except the last: the snapshot of a terminal state goes out at once, and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

from maestro.control_plane.evals.records import (
    ENDED,
    METRICS,
    MetricScore,
    RunRecord,
    RunState,
    Scorecard,
    TaskResult,
)
from maestro.control_plane.evals.service import EvalService
from maestro.control_plane.evals.store import EvalStore
from maestro.core.auth import Principal

MAX_RESULTS_PER_MESSAGE = 1000
MIN_INTERVAL_S = 1.0


class EvalHub:
    """Wake-ups inside one replica: "eval run X changed"."""

    def __init__(self) -> None:
        self._flags: dict[str, set[asyncio.Event]] = {}

    def changed(self, name: str) -> None:
        for flag in self._flags.get(name, ()):
            flag.set()

    @contextlib.contextmanager
    def watching(self, name: str) -> Iterator[asyncio.Event]:
        flag = asyncio.Event()
        self._flags.setdefault(name, set()).add(flag)
        try:
            yield flag
        finally:
            flags = self._flags.get(name, set())
            flags.discard(flag)
            if not flags:
                self._flags.pop(name, None)


@dataclass(slots=True)
class WatchUpdate:
    sequence: int
    run: RunRecord
    results: list[TaskResult]
    partial: list[MetricScore]
    scorecard: Scorecard | None


@dataclass(slots=True)
class _Sums:
    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, results: list[TaskResult]) -> None:
        for result in results:
            for metric, score in result.scores.items():
                self.totals[metric] = self.totals.get(metric, 0.0) + score
                self.counts[metric] = self.counts.get(metric, 0) + 1

    def scores(self) -> list[MetricScore]:
        return [
            MetricScore(m, "", "", self.totals[m] / self.counts[m], 0.0, self.counts[m], 0.0, 0.0)
            for m in METRICS
            if self.counts.get(m)
        ]


async def watch_run(
    service: EvalService,
    hub: EvalHub,
    principal: Principal,
    name: str,
    after_sequence: int,
    stopping: asyncio.Event,
) -> AsyncGenerator[WatchUpdate, None]:
    run = await service.get_run(principal, name)  # checks the project first
    store = service.store
    cursor = 0
    sums = _Sums()
    last_sent = 0.0
    with hub.watching(run.name) as flag:
        while not stopping.is_set():
            flag.clear()
            run = await store.aio(store.get_run, run.project, run.run_id)
            ended = run.state in ENDED
            fresh = await store.aio(
                store.results, run.project, run.run_id, cursor, MAX_RESULTS_PER_MESSAGE
            )
            if run.sequence > after_sequence or fresh:
                if fresh:
                    cursor = fresh[-1].seq
                    sums.add(fresh)
                more = len(fresh) == MAX_RESULTS_PER_MESSAGE
                card = None
                if ended and not more and run.state is RunState.SUCCEEDED:
                    card = await store.aio(store.get_scorecard, run.project, run.run_id)
                yield WatchUpdate(run.sequence, run, fresh, sums.scores(), card)
                after_sequence = run.sequence
                last_sent = time.monotonic()
                if more:
                    continue
                if ended:
                    return
            elif ended:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MIN_INTERVAL_S):
                    await flag.wait()
            await _pace(store, run, flag, last_sent + MIN_INTERVAL_S, stopping)


async def _pace(
    store: EvalStore, run: RunRecord, flag: asyncio.Event, until: float, stopping: asyncio.Event
) -> None:
    """Hold the next snapshot until `until` (one a second), unless the run ends first: the
    verdict is never held back."""
    while (left := until - time.monotonic()) > 0 and not stopping.is_set():
        flag.clear()
        current = await store.aio(store.get_run, run.project, run.run_id)
        if current.state in ENDED:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await flag.wait()
