"""The rollout controller: one task per live rollout walks its steps.

Each pass reads the rollout and makes at most one transition (transitions.py) through the
service, guarded by the step and state it read, so a verb that changed the rollout meanwhile
(an abort, a promotion) wins and the pass starts over. Between passes the task sleeps until its
timer (a timed pause, a freeze window's end) or until a verb wakes it. A step's analysis runs as
its own task; background analyses run on their interval while the candidate has traffic. A
failed analysis, a freeze breach or an abort sets the candidate to 0% in one transaction whose
traffic splits are published before anything else happens.

At start, every live rollout of the store is taken up again, so a restart resumes rollouts
where they stood (an analysis in flight is run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable

import structlog

from maestro.control_plane.rollouts import transitions as t
from maestro.control_plane.rollouts.analysis import Analyst
from maestro.control_plane.rollouts.records import (
    CONTROLLER,
    Action,
    AnalysisResult,
    ArtifactRecord,
    Hold,
    Outcome,
    RolloutRecord,
    State,
    finite,
)
from maestro.control_plane.rollouts.service import RolloutService
from maestro.core.errors import MaestroError

log = structlog.get_logger(__name__)
Key = tuple[str, str]
FOREVER = math.inf
RETRY_PAUSE_S = 0.05


class RolloutController:
    def __init__(self, service: RolloutService, analyst: Analyst, pause_scale: float = 1.0) -> None:
        """`pause_scale` multiplies timed pauses (`rollouts.pause_scale`: demos and tests)."""
        self.service = service
        self.analyst = analyst
        self.pause_scale = pause_scale
        self._clock = service.clock
        self._drivers: dict[Key, asyncio.Task[None]] = {}
        self._wakes: dict[Key, asyncio.Event] = {}
        self._analyses: dict[Key, asyncio.Task[None]] = {}
        self._background: dict[Key, asyncio.Task[None]] = {}
        self._stopping = False
        service.controller = self

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take up every live rollout (after a restart, where it stood)."""
        store = self.service.store
        for rollout in await store.aio(store.live_rollouts):
            self.wake(rollout.project, rollout.rollout_id)

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._drivers.values(), *self._analyses.values(), *self._background.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self, project: str, rollout_id: str) -> None:
        if self._stopping:
            return
        key = (project, rollout_id)
        self._wakes.setdefault(key, asyncio.Event()).set()
        driver = self._drivers.get(key)
        if driver is None or driver.done():
            self._drivers[key] = asyncio.create_task(self._drive(key), name=f"rollout:{rollout_id}")

    def cancel_analysis(self, project: str, rollout_id: str) -> None:
        task = self._analyses.pop((project, rollout_id), None)
        if task is not None:
            task.cancel()

    # -- the driver -----------------------------------------------------------------------------

    async def _drive(self, key: Key) -> None:
        project, rollout_id = key
        wake = self._wakes.setdefault(key, asyncio.Event())
        store = self.service.store
        try:
            while True:
                wake.clear()
                rollout = await store.aio(store.get_rollout, project, rollout_id)
                if rollout.ended:
                    break
                self._keep_background(rollout)
                try:
                    wait_s = await self._step(rollout)
                except MaestroError as e:  # a verb won a race; read again, after a breath
                    log.info("rollouts.step_lost_race", rollout=rollout.name, reason=e.reason)
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                if wait_s <= 0:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), None if wait_s == FOREVER else wait_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "rollouts.driver_failed", rollout=f"projects/{project}/rollouts/{rollout_id}"
            )
            await self._fail(key, "the controller failed; see the server log")
        finally:
            self._stop_background(key)
            if self._drivers.get(key) is asyncio.current_task():
                self._drivers.pop(key, None)
                self._wakes.pop(key, None)
                if wake.is_set():  # woken while ending (a retry): the rollout may be live again
                    self.wake(project, rollout_id)

    async def _step(self, r: RolloutRecord) -> float:
        """Make the rollout's next transition; how long to wait before the next pass (0: at
        once, FOREVER: until woken)."""
        now = self._clock()
        freeze = self.service.freeze.active(r.project, now)
        if freeze is not None:
            if r.weight > 0:
                await self._guarded(
                    r,
                    lambda c, d: t.to_zero(
                        c,
                        self._clock(),
                        CONTROLLER,
                        d,
                        state=State.ROLLED_BACK,
                        action=Action.ROLLED_BACK,
                        reason=f"freeze breach: the candidate served traffic inside the "
                        f"{freeze.describe()}",
                    ),
                )
                return 0
            if not (r.state == State.PAUSED and r.hold == Hold.FREEZE):
                await self._guarded(
                    r,
                    lambda c, d: t.pause(
                        c,
                        self._clock(),
                        CONTROLLER,
                        d,
                        hold=Hold.FREEZE,
                        until=freeze.end,
                        reason=f"held by the {freeze.describe()}",
                    ),
                )
                return 0
            return max(freeze.end - now, 0.01)
        next_freeze = self.service.freeze.next_start(r.project, now)
        until_freeze = FOREVER if next_freeze is None else max(next_freeze - now, 0.01)
        if r.state == State.PAUSED:
            return min(await self._paused(r, now), until_freeze)
        if r.state == State.ANALYZING:
            if (r.project, r.rollout_id) not in self._analyses:
                self._start_analysis(r)
            return until_freeze
        steps = r.spec.strategy.steps
        if r.step_index >= len(steps):
            return await self._finish(r)
        step = steps[r.step_index]
        if step.set_weight is not None:
            weight = step.set_weight
            if weight >= 100 and len(r.approvals) < r.spec.required_approvals:
                await self._hold_for_approvals(r)
                return 0
            await self._guarded(
                r,
                lambda c, d: t.set_weight(
                    c,
                    weight,
                    self._clock(),
                    CONTROLLER,
                    d,
                    f"step {c.step_index}: setWeight {weight}",
                ),
            )
            return 0
        if step.pause_s is not None:
            until = now + step.pause_s * self.pause_scale if step.pause_s > 0 else None
            reason = (
                f"step {r.step_index}: pause {step.pause_s:g}s"
                if until is not None
                else f"step {r.step_index}: pause until promoted or resumed"
            )
            await self._guarded(
                r,
                lambda c, d: t.pause(
                    c, self._clock(), CONTROLLER, d, hold=Hold.STEP, until=until, reason=reason
                ),
            )
            return 0
        names = [template.name for template in step.analysis]
        started = await self._guarded(r, lambda c, d: t.start_analysis(c, self._clock(), d, names))
        if started is not None:
            self._start_analysis(started)
        return until_freeze

    async def _paused(self, r: RolloutRecord, now: float) -> float:
        if r.hold == Hold.FREEZE or (r.hold == Hold.STEP and r.pause_end is not None):
            if r.pause_end is not None and now < r.pause_end:
                return r.pause_end - now
            reason = "the freeze window ended" if r.hold == Hold.FREEZE else "the pause ended"
            await self._guarded(
                r, lambda c, d: t.resume(c, self._clock(), CONTROLLER, d, reason=reason)
            )
            return 0
        if r.hold == Hold.APPROVALS and len(r.approvals) >= r.spec.required_approvals:
            await self._guarded(
                r,
                lambda c, d: t.resume(
                    c, self._clock(), CONTROLLER, d, reason="dual control: approved"
                ),
            )
            return 0
        return FOREVER

    async def _finish(self, r: RolloutRecord) -> float:
        if len(r.approvals) < r.spec.required_approvals:
            await self._hold_for_approvals(r)
            return 0
        await self._guarded(
            r,
            lambda c, d: t.promote(
                c, self._clock(), CONTROLLER, d, reason=c.state_reason or "every step passed"
            ),
        )
        return 0

    async def _hold_for_approvals(self, r: RolloutRecord) -> None:
        need = r.spec.required_approvals
        await self._guarded(
            r,
            lambda c, d: t.pause(
                c,
                self._clock(),
                CONTROLLER,
                d,
                hold=Hold.APPROVALS,
                until=None,
                reason=f"dual control: the candidate needs {need} approvals before it takes "
                f"all traffic; it has {len(c.approvals)}",
            ),
        )

    async def _guarded(
        self,
        r: RolloutRecord,
        make: Callable[[RolloutRecord, str], t.Change],
    ) -> RolloutRecord | None:
        """Apply `make` unless the rollout moved since `r` was read (another replica, a verb):
        then nothing happens and the next pass reads it again."""

        def change(current: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            if current.revision != r.revision:
                return None
            return make(current, digest)

        after = await self.service.apply(r.project, r.rollout_id, change)
        return after if after.revision != r.revision else None

    # -- analyses -------------------------------------------------------------------------------

    def _start_analysis(self, r: RolloutRecord) -> None:
        key = (r.project, r.rollout_id)
        self.cancel_analysis(*key)  # one attempt in flight per rollout
        self._analyses[key] = asyncio.create_task(
            self._analyse(r), name=f"rollout-analysis:{r.rollout_id}"
        )

    async def _analyse(self, r: RolloutRecord) -> None:
        key = (r.project, r.rollout_id)
        step = r.spec.strategy.steps[r.step_index]
        try:
            results = tuple(
                finite(result)
                for result in await asyncio.gather(
                    *(self.analyst.run(r, tpl, r.step_index, False) for tpl in step.analysis)
                )
            )

            def change(current: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
                if (
                    current.analysis_attempt != r.analysis_attempt
                    or current.step_index != r.step_index
                    or current.state not in (State.ANALYZING, State.PAUSED)
                ):
                    return None  # another attempt, or skipped, aborted, rolled back meanwhile
                return t.analysed(current, self._clock(), digest, results)

            after = await self.service.apply(r.project, r.rollout_id, change)
            log.info(
                "rollouts.analysis_done",
                rollout=r.name,
                step=r.step_index,
                outcomes=[res.outcome.name for res in results],
                state=after.state.name,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rollouts.analysis_failed", rollout=r.name)
            await self._fail(key, "an analysis could not run; see the server log")
        finally:
            if self._analyses.get(key) is asyncio.current_task():
                self._analyses.pop(key, None)
            self.wake(*key)

    def _keep_background(self, r: RolloutRecord) -> None:
        key = (r.project, r.rollout_id)
        running = self._background.get(key)
        if r.spec.strategy.background and (running is None or running.done()):
            self._background[key] = asyncio.create_task(
                self._background_loop(key), name=f"rollout-background:{r.rollout_id}"
            )

    def _stop_background(self, key: Key) -> None:
        task = self._background.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _background_loop(self, key: Key) -> None:
        project, rollout_id = key
        store = self.service.store
        while True:
            rollout = await store.aio(store.get_rollout, project, rollout_id)
            await asyncio.sleep(rollout.spec.strategy.background_interval_s)
            rollout = await store.aio(store.get_rollout, project, rollout_id)
            if rollout.ended:
                return
            if rollout.weight <= 0:
                continue
            try:
                results = tuple(
                    finite(result)
                    for result in await asyncio.gather(
                        *(
                            self.analyst.run(rollout, tpl, rollout.step_index, True)
                            for tpl in rollout.spec.strategy.background
                        )
                    )
                )
            except Exception:  # this round measured nothing; the next one tries again
                log.exception("rollouts.background_analysis_failed", rollout=rollout.name)
                continue
            failed = tuple(res for res in results if res.outcome == Outcome.FAILED)
            if failed:
                await self._roll_back(rollout, failed)
                return

    async def _roll_back(self, r: RolloutRecord, failed: tuple[AnalysisResult, ...]) -> None:
        reason = "; ".join(f"background analysis {a.template} failed: {a.message}" for a in failed)

        def change(current: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            if current.ended:
                return None
            return t.to_zero(
                current,
                self._clock(),
                CONTROLLER,
                digest,
                state=State.ROLLED_BACK,
                action=Action.ROLLED_BACK,
                reason=reason,
                results=failed,
            )

        await self.service.apply(r.project, r.rollout_id, change)
        self.wake(r.project, r.rollout_id)

    async def _fail(self, key: Key, reason: str) -> None:
        project, rollout_id = key

        def change(current: RolloutRecord, _: ArtifactRecord, digest: str) -> t.Change | None:
            if current.ended:
                return None
            return t.to_zero(
                current,
                self._clock(),
                CONTROLLER,
                digest,
                state=State.FAILED,
                action=Action.FAILED,
                reason=reason,
            )

        with contextlib.suppress(Exception):
            await self.service.apply(project, rollout_id, change)
