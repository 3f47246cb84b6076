"""Helpers shared by the benchmarks: per-call samples, nearest-rank percentiles, machine facts."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

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


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """What ran the benchmark: CPU, Python, package versions, the commit and any modified files
    (so figures from an uncommitted tree say so), and the load at the start."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    commit, modified = "", []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        modified = [line[3:] for line in status.splitlines()]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        "modified_files": modified,
        # Other work on a shared machine shows up as tail latency; recorded, not controlled.
        "loadavg_1m_at_start": os.getloadavg()[0],
    }
