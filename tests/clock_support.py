"""A clock tests move by hand, for the breakers and admission that take one."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that move only when the test says. The event loop's timer may still
    wake a breaker, but the breaker goes by this clock, so nothing waits."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
