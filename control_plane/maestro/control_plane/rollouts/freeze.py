"""Freeze windows: times when no candidate may gain traffic (a holiday, a launch).

Operators set them in the server config (`rollouts.freeze_windows`). Inside a window, starting,
resuming, retrying and promoting a rollout is refused (FAILED_PRECONDITION, FREEZE_WINDOW), and
a candidate still serving traffic when a window begins is a freeze breach: the controller rolls
it back to 0%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from maestro.core.errors import FailedPrecondition


@dataclass(frozen=True, slots=True)
class FreezeWindow:
    start: float  # epoch seconds
    end: float
    reason: str = ""
    projects: tuple[str, ...] = ("*",)  # project ids; '*' is every project

    def covers(self, project: str, now: float) -> bool:
        return self.start <= now < self.end and ("*" in self.projects or project in self.projects)

    def describe(self) -> str:
        def at(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

        why = f" ({self.reason})" if self.reason else ""
        return f"freeze window {at(self.start)} to {at(self.end)}{why}"


class FreezeCalendar:
    def __init__(self, windows: Sequence[FreezeWindow] = ()) -> None:
        self.windows = tuple(windows)

    def active(self, project: str, now: float) -> FreezeWindow | None:
        return next((w for w in self.windows if w.covers(project, now)), None)

    def refuse_inside(self, project: str, now: float, what: str) -> None:
        window = self.active(project, now)
        if window is not None:
            raise FailedPrecondition(
                f"cannot {what} inside the {window.describe()}",
                reason="FREEZE_WINDOW",
                metadata={"freeze_end": str(window.end)},
            )

    def next_start(self, project: str, now: float) -> float | None:
        """When the next window covering `project` begins (None: no window ahead)."""
        starts = [
            w.start
            for w in self.windows
            if w.start > now and ("*" in w.projects or project in w.projects)
        ]
        return min(starts, default=None)
