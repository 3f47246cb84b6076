"""Replica reports summed per lane: what `GET /lane-status` answers.

Each gateway replica reports a few times a second: `running` (requests holding one of its
`max_ongoing_requests` slots), `queued` (admitted, waiting for a slot), its engine's scheduler
counts (`engine_running`, `engine_waiting`), KV-cache use, prefix-cache counters and latency
percentiles. A replica not heard from
for `stale_after_s` (it stopped, or a rolling update replaced it) drops out. Counts add up over
replicas; KV-cache usage and the latency percentiles take the worst replica, since one full
replica already makes requests queue.
"""

from __future__ import annotations

import time
from typing import Any

_SUMMED = (
    "running",
    "queued",
    "engine_running",
    "engine_waiting",
    "prefix_queries",
    "prefix_hits",
    "max_ongoing_requests",
)
_WORST = ("kv_cache_usage", "ttft_p95_ms", "itl_p95_ms")


class LaneReports:
    def __init__(self, stale_after_s: float = 2.0) -> None:
        self._stale_after_s = stale_after_s
        self._reports: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def report(
        self, lane: str, replica: str, figures: dict[str, Any], now: float | None = None
    ) -> None:
        self._reports[(lane, replica)] = (time.monotonic() if now is None else now, figures)

    def lanes(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        horizon = (time.monotonic() if now is None else now) - self._stale_after_s
        for key in [k for k, (seen, _) in self._reports.items() if seen < horizon]:
            del self._reports[key]
        lanes: dict[str, dict[str, Any]] = {}
        for (lane, _), (_, figures) in sorted(self._reports.items()):
            entry = lanes.get(lane)
            if entry is None:
                entry = lanes[lane] = {
                    "route_prefix": figures["route_prefix"],
                    "replicas": 0,
                    "max_queued_requests": 0,
                    "versions": [],
                    **dict.fromkeys(_SUMMED, 0),
                    **dict.fromkeys(_WORST, 0.0),
                }
            entry["replicas"] += 1
            queued = figures["max_queued_requests"]
            if queued < 0 or entry["max_queued_requests"] < 0:
                entry["max_queued_requests"] = -1
            else:
                entry["max_queued_requests"] += queued
            for name in _SUMMED:
                entry[name] += figures[name]
            for name in _WORST:
                entry[name] = max(entry[name], figures[name])
            if figures["version"] not in entry["versions"]:
                entry["versions"].append(figures["version"])
        for entry in lanes.values():
            queries = entry.pop("prefix_queries")
            hits = entry.pop("prefix_hits")
            entry["prefix_cache_hit_ratio"] = hits / queries if queries else 0.0
        return lanes
