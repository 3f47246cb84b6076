"""Timing helpers shared by the benchmarks: per-call samples and nearest-rank percentiles."""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Latency:
    """Nearest-rank percentiles of per-call times, in microseconds."""

    n: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float


def summarise(samples_ns: Sequence[int]) -> Latency:
    if not samples_ns:
        return Latency(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    ordered = sorted(samples_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * n) - 1)] / 1000

    mean = sum(ordered) / n / 1000
    return Latency(n, rank(0.50), rank(0.90), rank(0.99), ordered[-1] / 1000, mean)


def time_calls(
    fn: Callable[[T], object], arg: T, calls: int, warmup: int, max_s: float
) -> list[int]:
    """perf_counter_ns around each `fn(arg)`, after `warmup` untimed calls; at most `calls`
    calls or `max_s` seconds."""
    for _ in range(warmup):
        fn(arg)
    gc.collect()
    clock = time.perf_counter_ns
    deadline = clock() + int(max_s * 1e9)
    samples: list[int] = []
    append = samples.append
    for _ in range(calls):
        started = clock()
        fn(arg)
        ended = clock()
        append(ended - started)
        if ended > deadline:
            break
    return samples


async def time_awaits(
    fn: Callable[[], Awaitable[object]], calls: int, warmup: int, max_s: float
) -> list[int]:
    """The async twin of `time_calls`; warm-up is bounded by `max_s` / 4 as well."""
    clock = time.perf_counter_ns
    warm_deadline = clock() + int(max_s / 4 * 1e9)
    for _ in range(warmup):
        await fn()
        if clock() > warm_deadline:
            break
    gc.collect()
    deadline = clock() + int(max_s * 1e9)
    samples: list[int] = []
    for _ in range(calls):
        started = clock()
        await fn()
        ended = clock()
        samples.append(ended - started)
        if ended > deadline:
            break
    return samples


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
