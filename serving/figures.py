"""What a replica knows of its engine's load, fed by vLLM's stat-logger interface.

vLLM calls `record` after each engine step with the scheduler's figures (running and waiting
requests, KV-cache usage, prefix-cache queries and hits) and the step's per-request timings
(time to first token, inter-token latencies). The logger keeps the latest figures and a short
window of timings; the replica sends `snapshot()` to the lane-status application a few times a
second. Nothing here runs per token on the request path.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

_WINDOW = 512
"""Timings kept for the percentiles (the most recent ones)."""
_IDLE_AFTER_S = 1.0
"""No engine step for this long: the engine is idle, whatever its last step counted."""


def _p95(values: deque[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass
class EngineFigures:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    itl_s: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    updated_at: float = 0.0

    def logger_factory(self, vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        """A vLLM `StatLoggerFactory` whose loggers write into this object."""
        return _FiguresLogger(self)

    def snapshot(self) -> dict[str, float | int]:
        # vLLM records figures after engine steps only: once idle, the last step's counts stay.
        idle = time.monotonic() - self.updated_at > _IDLE_AFTER_S
        return {
            "engine_running": 0 if idle else self.running,
            "engine_waiting": 0 if idle else self.waiting,
            "kv_cache_usage": self.kv_cache_usage,
            "prefix_queries": self.prefix_queries,
            "prefix_hits": self.prefix_hits,
            "ttft_p95_ms": _p95(self.ttft_s) * 1000,
            "itl_p95_ms": _p95(self.itl_s) * 1000,
        }


class _FiguresLogger(StatLoggerBase):
    def __init__(self, figures: EngineFigures) -> None:
        self._figures = figures

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        figures = self._figures
        if scheduler_stats is not None:
            figures.running = scheduler_stats.num_running_reqs
            figures.waiting = scheduler_stats.num_waiting_reqs
            figures.kv_cache_usage = scheduler_stats.kv_cache_usage
            prefix = scheduler_stats.prefix_cache_stats
            figures.prefix_queries += prefix.queries
            figures.prefix_hits += prefix.hits
        if iteration_stats is not None:
            figures.ttft_s.extend(iteration_stats.time_to_first_tokens_iter)
            figures.itl_s.extend(iteration_stats.inter_token_latencies_iter)
        figures.updated_at = time.monotonic()

    def log_engine_initialized(self) -> None:
        return None
