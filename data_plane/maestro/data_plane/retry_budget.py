"""A retry budget in Envoy's sense: fallback attempts in flight may not exceed `ratio` times
the calls in flight, plus `minimum`. It keeps a brownout from doubling the load on what is left
(every call retrying at once), while still letting a quiet process fail over freely.
"""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("_minimum", "_ratio", "calls", "retries")

    def __init__(self, ratio: float, minimum: int) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self.calls = 0
        self.retries = 0

    def try_acquire(self) -> bool:
        """Take a slot for one fallback attempt; give it back with `release`."""
        if self.retries >= self._minimum + self._ratio * self.calls:
            return False
        self.retries += 1
        return True

    def release(self) -> None:
        self.retries -= 1
