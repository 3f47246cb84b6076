"""Per-deployment circuit breakers: closed, open, half-open with probes.

Closed opens on either of two rules:
- the failure ratio: outcomes are counted in a rolling window of the last `window` calls, and
  it opens when failures reach `failure_ratio` of at least `min_calls` calls;
- LiteLLM's cooldown rule, when the deployment's config sets it: more than `allowed_fails`
  failures within a minute (`FAIL_WINDOW_S`). With `allowed_fails_by_class` (LiteLLM's
  `allowed_fails_policy`) a failure of a listed class counts against its class's own number
  instead; failures of other classes, or of no known class, count against `allowed_fails`.
  Only the last `allowed_fails + 1` failure times are kept: the rule holds when the oldest of
  them is less than a minute old, so a failure costs O(1) time and the memory is bounded.
Open refuses every call for `open_s` (LiteLLM's `cooldown_time` when the config sets it), then
becomes half-open. A timer makes it so (not only a lazy check in `allow`), because routing stops
sending calls to an open deployment and a lazy check would never run. Half-open lets `probes`
calls through at a time; `close_after` successes close it, one failure opens it again. Every
transition starts the counts afresh: failures from before an open period do not count after it.

A deployment's settings change when its config is re-applied: `reconfigure` takes the new ones
and keeps the state (an open breaker stays open, for the new `open_s` from when it opened).

Time is the breaker's clock, passed in (time.monotonic in service): it stamps transitions and
failures and decides when the open period is over. The event loop's timer only wakes the breaker
to look at that clock, so tests move a fake clock instead of sleeping.

Every transition is kept (bounded) with its time, and passed to the listener, which publishes
the breaker state to routing signals and metrics.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

FAIL_WINDOW_S = 60.0
"""LiteLLM's `allowed_fails` counts failures per minute."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    window: int = 20
    min_calls: int = 10
    failure_ratio: float = 0.5
    open_s: float = 5.0
    probes: int = 2
    close_after: int = 3
    allowed_fails: int | None = None
    """Failures within `FAIL_WINDOW_S` beyond which it opens; None: no such rule."""
    allowed_fails_by_class: Mapping[str, int] = field(default_factory=dict)
    """The same per failure class (`spec.FAILURE_CLASSES`), for that class's failures."""


@dataclass(frozen=True, slots=True)
class Transition:
    deployment_id: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    """The breaker's clock at the transition."""


Listener = Callable[[Transition], None]
Clock = Callable[[], float]
"""Monotonic seconds: time.monotonic in service, a fake that a test moves by hand."""


class CircuitBreaker:
    __slots__ = (
        "_class_fails",
        "_clock",
        "_failures",
        "_listener",
        "_outcomes",
        "_probes_in_flight",
        "_recent_fails",
        "_settings",
        "_successes",
        "_timer",
        "deployment_id",
        "opened_at",
        "state",
        "transitions",
    )

    def __init__(
        self,
        deployment_id: str,
        settings: BreakerSettings,
        listener: Listener,
        clock: Clock = time.monotonic,
    ) -> None:
        self.deployment_id = deployment_id
        self._settings = settings
        self._listener = listener
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=settings.window)
        self._failures = 0
        self._recent_fails: deque[float] | None = None
        self._class_fails: dict[str, deque[float]] = {}
        self._set_fail_windows()
        self._probes_in_flight = 0
        self._successes = 0
        self._timer: asyncio.TimerHandle | None = None
        self.opened_at = 0.0
        self.transitions: deque[Transition] = deque(maxlen=256)

    def allow(self) -> bool:
        """Whether a call may go to the deployment now; a True in half-open takes a probe
        slot, which the call's `record` gives back."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._open_remaining() <= 0:
            self._move(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN and self._probes_in_flight < self._settings.probes:
            self._probes_in_flight += 1
            return True
        return False

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    def reconfigure(self, settings: BreakerSettings) -> None:
        """Take new settings (the deployment's config was re-applied), keeping the state: the
        counts so far (the most recent ones, where a window shrank) and, when open, the time it
        opened, so the new `open_s` counts from then."""
        old, self._settings = self._settings, settings
        if settings.window != old.window:
            self._outcomes = deque(self._outcomes, maxlen=settings.window)
            self._failures = self._outcomes.count(False)
        self._set_fail_windows()
        if (
            self.state is BreakerState.OPEN
            and settings.open_s != old.open_s
            and self._timer is not None
        ):
            self._timer.cancel()
            self._wake_in(max(0.0, self._open_remaining()))

    def record(self, ok: bool, failure_class: str | None = None) -> None:
        """The outcome of a call `allow` let through; `failure_class`, for a failure, its
        LiteLLM exception class (`spec.FAILURE_CLASSES`), for `allowed_fails_by_class`."""
        if self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if not ok:
                self._move(BreakerState.OPEN)
            else:
                self._successes += 1
                if self._successes >= self._settings.close_after:
                    self._move(BreakerState.CLOSED)
            return
        if self.state is BreakerState.OPEN:
            return  # a call let through before the breaker opened
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen and not outcomes[0]:
            self._failures -= 1
        outcomes.append(ok)
        if not ok:
            self._failures += 1
            settings = self._settings
            if self._too_many_recent_fails(failure_class) or (
                len(outcomes) >= settings.min_calls
                and self._failures >= settings.failure_ratio * len(outcomes)
            ):
                self._move(BreakerState.OPEN)

    def _too_many_recent_fails(self, failure_class: str | None) -> bool:
        """Note a failure; whether it makes more than its allowed number within a minute."""
        times = self._recent_fails
        if failure_class is not None:
            times = self._class_fails.get(failure_class, times)
        if times is None:
            return False
        now = self._clock()
        times.append(now)
        return len(times) == times.maxlen and now - times[0] < FAIL_WINDOW_S

    def _set_fail_windows(self) -> None:
        """Room for `allowed + 1` failure times per rule, keeping the most recent ones."""
        settings = self._settings
        allowed = settings.allowed_fails
        self._recent_fails = None if allowed is None else _fail_window(allowed, self._recent_fails)
        self._class_fails = {
            name: _fail_window(count, self._class_fails.get(name))
            for name, count in settings.allowed_fails_by_class.items()
        }

    def release(self) -> None:
        """A call `allow` let through ended without an outcome (the caller cancelled)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _move(self, to_state: BreakerState) -> None:
        transition = Transition(self.deployment_id, self.state, to_state, self._clock())
        self.state = to_state
        self._outcomes.clear()
        self._failures = 0
        if self._recent_fails is not None:
            self._recent_fails.clear()
        for times in self._class_fails.values():
            times.clear()
        self._successes = 0
        self._probes_in_flight = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if to_state is BreakerState.OPEN:
            self.opened_at = transition.at
            self._wake_in(self._settings.open_s)
        self.transitions.append(transition)
        self._listener(transition)

    def _open_remaining(self) -> float:
        return self.opened_at + self._settings.open_s - self._clock()

    def _wake_in(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        remaining = self._open_remaining()
        if remaining > 0:
            # The timer fired before the breaker's clock reached the end of the open period:
            # uvloop's clock is read once per loop iteration, in whole milliseconds, and a
            # test's fake clock moves only by hand.
            self._wake_in(remaining)
        else:
            self._move(BreakerState.HALF_OPEN)

    def close_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _fail_window(allowed: int, kept: deque[float] | None) -> deque[float]:
    return deque(kept or (), maxlen=allowed + 1)
