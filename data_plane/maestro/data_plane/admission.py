"""Per-deployment admission: the LiteLLM config's `rpm`, `tpm` and `max_parallel_requests`.

Before an attempt on a deployment, `Admission.enter` takes a ticket, or None when one of the
deployment's limits is reached (then nothing is recorded, and the caller moves on to another
deployment or answers with `retry_after_s`):
- `rpm`: the attempts started in the last minute (`WINDOW_S`) number fewer than `rpm`;
- `tpm`: the tokens of the attempts started in the last minute leave room for this one's
  estimate (`estimated_tokens` at enter; `Ticket.release` corrects it to what the attempt used,
  while the attempt is still in the window). An attempt estimated at more than the whole `tpm`
  is admitted only while the window is empty, so it runs alone rather than never;
- `max_parallel_requests`: the attempts in flight (tickets not yet released) number fewer.

The window slides: each admitted attempt is one event (start time, tokens) in a deque, and events
a minute old are dropped lazily at the next look, so an attempt costs O(1) amortized. The limits
are read from `deployment.calls` at every enter, so a re-applied config takes effect at once.
A deployment with no limit costs three attribute reads and no allocation.

Counts are per state key (`DeploymentSpec.state_key`: an operator's deployment is counted once
for every project) and per process: like LiteLLM without Redis, each data-plane replica counts
only its own attempts, so N replicas together admit up to N times the limit.
"""

from __future__ import annotations

import time
from collections import deque

from maestro.data_plane.breaker import Clock
from maestro.routing.spec import DeploymentSpec

WINDOW_S = 60.0
"""LiteLLM's `rpm` and `tpm` are per minute."""
SHORT_RETRY_S = 0.1
"""The retry hint when only parallelism is full, and the least hint ever given. A slot frees the
moment any attempt in flight ends, which nothing here can foresee (LLM attempts last from a tenth
of a second to minutes): a retry that comes too early costs one more refused `enter`, one that
waits too long leaves the deployment idle."""


class _Event:
    """One admitted attempt in a deployment's window."""

    __slots__ = ("at", "tokens", "windowed")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.windowed = True
        """Still in its window's deque (and its tokens in the window's total)."""


class _Usage:
    """One state key's attempts: the last minute's, and those in flight."""

    __slots__ = ("events", "in_flight", "tokens")

    def __init__(self) -> None:
        self.events: deque[_Event] = deque()
        self.tokens = 0
        """The sum of `events`' tokens."""
        self.in_flight = 0

    def no_room(self, tpm: int, tokens: int) -> bool:
        """Whether `tokens` more would pass `tpm` (an empty window takes any number)."""
        return bool(self.events) and self.tokens + tokens > tpm

    def trim(self, now: float) -> None:
        events, horizon = self.events, now - WINDOW_S
        while events and events[0].at <= horizon:
            event = events.popleft()
            event.windowed = False
            self.tokens -= event.tokens


class Ticket:
    """An admitted attempt; `release` once it ends, with the tokens it used."""

    __slots__ = ("_event", "_usage")

    def __init__(self, usage: _Usage | None = None, event: _Event | None = None) -> None:
        self._usage = usage
        self._event = event

    def release(self, tokens: int) -> None:
        """The attempt ended having used `tokens` (prompt and completion). Once only: a second
        call does nothing."""
        usage, event = self._usage, self._event
        if usage is None:
            return
        self._usage = self._event = None
        usage.in_flight -= 1
        if event is not None and event.windowed:
            usage.tokens += tokens - event.tokens
            event.tokens = tokens


_FREE = Ticket()
"""The ticket of a deployment with no limit: nothing to count, nothing to release."""


class Admission:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        """`clock`: monotonic seconds (a fake one in tests)."""
        self._clock = clock
        self._usage: dict[str, _Usage] = {}

    def enter(self, deployment: DeploymentSpec, estimated_tokens: int) -> Ticket | None:
        """A ticket if the deployment takes one more attempt now (of about `estimated_tokens`
        tokens), None if one of its limits is reached."""
        calls = deployment.calls
        rpm = calls.rpm
        tpm = calls.tpm
        parallel = calls.max_parallel_requests
        if rpm is None and tpm is None and parallel is None:
            return _FREE
        usage = self._usage.get(deployment.state_key)
        if usage is None:
            usage = self._usage[deployment.state_key] = _Usage()
        if parallel is not None and usage.in_flight >= parallel:
            return None
        event = None
        if rpm is not None or tpm is not None:
            now = self._clock()
            usage.trim(now)
            if rpm is not None and len(usage.events) >= rpm:
                return None
            if tpm is not None and usage.no_room(tpm, estimated_tokens):
                return None
            event = _Event(now, estimated_tokens)
            usage.events.append(event)
            usage.tokens += estimated_tokens
        usage.in_flight += 1
        return Ticket(usage, event)

    def retry_after_s(self, deployment: DeploymentSpec, *, estimated_tokens: int = 0) -> float:
        """When the deployment is likely to take an attempt (of `estimated_tokens`) again, in
        seconds: with the minute's window full (`rpm`, or `tpm` with no room for the attempt,
        at least one token), when its oldest attempt leaves it; else (only parallelism full,
        or nothing) `SHORT_RETRY_S`. Never less than `SHORT_RETRY_S`."""
        calls = deployment.calls
        usage = self._usage.get(deployment.state_key)
        if usage is None or (calls.rpm is None and calls.tpm is None):
            return SHORT_RETRY_S
        now = self._clock()
        usage.trim(now)
        rpm_full = calls.rpm is not None and len(usage.events) >= calls.rpm
        tpm_full = calls.tpm is not None and usage.no_room(calls.tpm, max(1, estimated_tokens))
        if not usage.events or not (rpm_full or tpm_full):
            return SHORT_RETRY_S
        return max(SHORT_RETRY_S, usage.events[0].at + WINDOW_S - now)
