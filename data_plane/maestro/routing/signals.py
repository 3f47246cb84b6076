"""Live deployment signals from data-plane observations, over a sliding window.

Data planes report what they saw of each (project, deployment) in short windows: request and
error counts, latency and time-to-first-token histograms, tokens, cost, their breaker state.
The control plane keeps the observations of the last `window_s` per (project, deployment),
merges them across nodes, and derives the routing signals: p95 latency and TTFT from the merged
histograms, error rate from the counts, breaker OPEN when any node that reported recently says
so. Histogram buckets are fixed (`LATENCY_BOUNDS_MS`) so merging is addition.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LATENCY_BOUNDS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000,
    7_500, 10_000, 15_000, 20_000, 30_000, 60_000,
)  # fmt: skip
"""Upper bounds of the finite buckets; one more bucket (+Inf) follows."""
DEFAULT_WINDOW_S = 60.0


class Breaker:
    """Breaker states as observations carry them (CircuitBreakerState values)."""

    UNSPECIFIED, CLOSED, OPEN, HALF_OPEN = 0, 1, 2, 3


@dataclass(slots=True)
class Histogram:
    """Counts per LATENCY_BOUNDS_MS bucket, plus +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    sum_ms: float = 0.0

    def record(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
        self.sum_ms += ms

    def add(self, other: Histogram) -> None:
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.sum_ms += other.sum_ms

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile_ms(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding the q-th sample; None when empty."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            if count and seen + count >= rank:
                low = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
                high = (
                    LATENCY_BOUNDS_MS[index]
                    if index < len(LATENCY_BOUNDS_MS)
                    else LATENCY_BOUNDS_MS[-1] * 2
                )
                return low + (high - low) * (rank - seen) / count
            seen += count
        return LATENCY_BOUNDS_MS[-1]  # pragma: no cover - rank never exceeds total


@dataclass(slots=True)
class Observation:
    """One node's traffic to one deployment for one project over a short window."""

    deployment_id: str
    project: str
    """`projects/{project}`."""
    end_time: float
    """Wall-clock seconds (time.time()) at the end of the window."""
    request_count: int = 0
    latency: Histogram = field(default_factory=Histogram)
    time_to_first_token: Histogram = field(default_factory=Histogram)
    error_counts: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    breaker_state: int = Breaker.UNSPECIFIED
    node_id: str = ""
    artifact_version: str = ""
    """`projects/{p}/artifacts/{a}/versions/{v}` the window's calls ran; empty for calls that
    named no artifact (a node reports one observation per deployment and artifact version)."""

    @property
    def error_count(self) -> int:
        return sum(self.error_counts.values())


@dataclass(frozen=True, slots=True)
class SignalsView:
    """What GetDeploymentSignals shows of one (project, deployment)."""

    window_s: float
    sample_count: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p95_ttft_ms: float | None
    error_rate: float
    requests_per_second: float
    cost_per_1k_tokens_usd: float
    breaker_state: int
    reporting_node_count: int
    update_time: float | None


@dataclass(slots=True)
class _Series:
    observations: deque[Observation] = field(default_factory=deque)
    breaker_by_node: dict[str, tuple[int, float]] = field(default_factory=dict)
    update_time: float | None = None


class SignalWindow:
    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self._series: dict[tuple[str, str], _Series] = {}

    def add(self, observation: Observation, received_at: float | None = None) -> None:
        key = (observation.project, observation.deployment_id)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.observations.append(observation)
        now = time.time() if received_at is None else received_at
        series.update_time = now
        if observation.breaker_state != Breaker.UNSPECIFIED:
            series.breaker_by_node[observation.node_id] = (observation.breaker_state, now)
        self._expire(series, now)

    def _expire(self, series: _Series, now: float) -> None:
        horizon = now - self.window_s
        observations = series.observations
        while observations and observations[0].end_time < horizon:
            observations.popleft()
        for node, (_, seen) in list(series.breaker_by_node.items()):
            if seen < horizon:
                del series.breaker_by_node[node]

    def view(self, project: str, deployment_id: str, now: float | None = None) -> SignalsView:
        now = time.time() if now is None else now
        series = self._series.get((project, deployment_id))
        if series is None:
            return _empty(self.window_s)
        self._expire(series, now)
        return _summarise(series, self.window_s)

    def projects_of(self, deployment_id: str) -> Iterable[str]:
        return (project for project, d in self._series if d == deployment_id)


def _empty(window_s: float) -> SignalsView:
    return SignalsView(window_s, 0, None, None, None, 0.0, 0.0, 0.0, Breaker.UNSPECIFIED, 0, None)


def _summarise(series: _Series, window_s: float) -> SignalsView:
    latency, ttft = Histogram(), Histogram()
    requests = errors = tokens = 0
    cost = 0.0
    nodes: set[str] = set()
    for observation in series.observations:
        latency.add(observation.latency)
        ttft.add(observation.time_to_first_token)
        requests += observation.request_count
        errors += observation.error_count
        tokens += observation.prompt_tokens + observation.completion_tokens
        cost += observation.cost_usd
        nodes.add(observation.node_id)
    states = [state for state, _ in series.breaker_by_node.values()]
    breaker = Breaker.UNSPECIFIED
    for candidate in (Breaker.OPEN, Breaker.HALF_OPEN, Breaker.CLOSED):
        if candidate in states:
            breaker = candidate
            break
    return SignalsView(
        window_s=window_s,
        sample_count=requests,
        p50_latency_ms=latency.quantile_ms(0.5),
        p95_latency_ms=latency.quantile_ms(0.95),
        p95_ttft_ms=ttft.quantile_ms(0.95),
        error_rate=errors / requests if requests else 0.0,
        requests_per_second=requests / window_s,
        cost_per_1k_tokens_usd=cost / tokens * 1000 if tokens else 0.0,
        breaker_state=breaker,
        reporting_node_count=len(nodes),
        update_time=series.update_time,
    )


def histogram_from_buckets(
    bounds: Iterable[float], counts: Iterable[int], sum_ms: float
) -> Histogram:
    """A histogram on LATENCY_BOUNDS_MS from another bucketing (each count goes to the bucket
    of its upper bound), so reports with their own bounds still merge."""
    histogram = Histogram(sum_ms=sum_ms)
    bounds = list(bounds)
    for index, count in enumerate(counts):
        if count:
            upper = bounds[index] if index < len(bounds) else float("inf")
            histogram.counts[bisect.bisect_left(LATENCY_BOUNDS_MS, upper)] += count
    return histogram


def error_key(kind: str) -> str:
    """Error-count keys as the contract names them."""
    return _ERROR_KEYS.get(kind, kind)


_ERROR_KEYS: Mapping[str, str] = {
    "rate_limited": "http_429",
    "provider_error": "http_5xx",
    "first_token_timeout": "first_token_timeout",
    "stream_stalled": "stream_stalled",
    "saturated": "saturated",
    "request_rejected": "http_4xx",
    "attempt_timeout": "attempt_timeout",
    "deployment_limit": "deployment_limit",
}
