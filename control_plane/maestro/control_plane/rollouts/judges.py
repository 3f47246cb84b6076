"""The `error-budget-ok` judge: SLO burn rates of a canary version, against its stable baseline.

A rollout gives a candidate artifact version a share of live traffic; this module decides, from
the data plane's observations, whether the candidate is burning the error budget and whether that
is its own doing. Pure: no I/O, no clock (every call takes `now`), no gRPC, and no scipy or
statsmodels (test-only dependencies; the tests cross-check the statistics against them).

**The series.** `VersionSeries` keeps, per artifact version, one bucket per wall-clock second
(`bucket_s`, 1 by default): requests, bad-by-errors requests and latency-histogram counts on
`signals.LATENCY_BOUNDS_MS` (plus +Inf), so buckets merge by addition. An observation covers a
short window (a few seconds) ending at its report; the whole of it is attributed to the bucket of
the `now` given to `VersionSeries.ingest` (its arrival), not spread over the seconds it covers: a
window edge is then off by at most one report interval, far below the minutes-to-hours windows
judged. Buckets older than `horizon_s` are dropped as time moves on (at most once per bucket
period, and only the buckets that expire are touched, through a heap of bucket indexes: ingest
stays cheap with thousands of versions; a version with no bucket left is forgotten), so memory is
bounded by versions x buckets with traffic in the horizon. Counts are clamped to [0, 2**53] per
observation and per bucket (window sums saturate at 2**62), so a forged observation cannot
overflow the int64 rows. A window of `s` seconds at `now` is the `ceil(s / bucket_s)` buckets
ending with the bucket of `now`. A long window longer than `horizon_s` is refused (ValueError),
never silently cut short: size the horizon from the longest window the templates may name.

**Burn rate** over a window is the fraction of bad requests over the error budget,
``(bad / total) / (1 - objective_ratio)``; a window without requests burns 0 (never NaN). For
ERRORS, bad is the errored requests (every error kind the data plane counts: errors, timeouts,
first-token timeouts, rejections; capped at the request count) out of all requests. For LATENCY,
the denominator is the requests that carry a latency sample, and only the buckets whose upper
bound is at most the threshold count as good: a bucket straddling the threshold counts as bad, so
the burn is overstated by at most one bucket, never understated (a threshold on a bucket bound,
such as 1000 ms, is exact). The same denominator is the request count held to
`min_request_count`.

**The rule** (multi-window, multi-burn-rate, as in the SRE workbook, chapter 5): a window pair
fails when the burn rate over both its long and its short window exceeds its `max_burn_rate`;
the long window keeps a blip from failing, the short one lets a recovered version pass.

**Blaming the candidate** (as Kayenta does, against a baseline over the same time). A failing
pair alone does not fail the canary: a provider outage burns every version's budget. The
candidate is compared with the stable version over the same seconds: the long window of the
failing pair (the shortest such window when several fail: the most recent evidence), cut to
start at the candidate's first bucket in it, so that stable traffic from before the canary
started cannot dilute the baseline. ERRORS: one-sided Fisher exact test that the candidate's
error rate is greater (`errors_vs_stable_p`). LATENCY: one-sided Mann-Whitney U test that the
candidate's latencies are greater, on the binned latencies (every sample in a bucket is a tie),
normal approximation with tie and continuity correction (`latency_vs_stable_p`). Then:

- fewer than `min_request_count` candidate requests in the longest long window: INCONCLUSIVE;
- no pair fails: PASSED (the comparison is not run, so every measurement of a PASSED verdict is
  within its limit);
- a pair fails and the candidate is significantly worse than stable (p < alpha, 0.05): FAILED;
- a pair fails and stable has fewer than `min_request_count` requests in the compared seconds:
  FAILED (no baseline to blame);
- a pair fails but the candidate is not significantly worse: INCONCLUSIVE ("both versions
  burn ... (not the candidate's doing)" when stable's burn over those seconds exceeds the limit
  too, otherwise too little traffic to tell), so the rollout pauses rather than rolls back.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from maestro.control_plane.rollouts.records import Measurement
from maestro.routing.signals import LATENCY_BOUNDS_MS, Observation

Indicator = Literal["errors", "latency"]
Outcome = Literal["passed", "failed", "inconclusive"]

DEFAULT_HORIZON_S = 3 * 3600.0
DEFAULT_MIN_REQUEST_COUNT = 100
DEFAULT_ALPHA = 0.05

_BUCKETS = len(LATENCY_BOUNDS_MS) + 1
# A bucket row: [requests, errors, latency count per bucket...].
_REQUESTS, _ERRORS, _LATENCY = 0, 1, 2
_ROW = _LATENCY + _BUCKETS

IntArray = npt.NDArray[np.int64]

MAX_COUNT = 2**53
"""The largest count an observation or a bucket holds; larger ones are clamped to it."""
_MAX_TOTAL = 2**62
"""Window sums saturate here: adding a bucket (at most MAX_COUNT) stays under 2**63."""


def _clamp(count: int) -> int:
    return min(max(int(count), 0), MAX_COUNT)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One version's traffic summed over a window."""

    requests: int = 0
    errors: int = 0
    latency_counts: tuple[int, ...] = (0,) * _BUCKETS
    """Per `LATENCY_BOUNDS_MS` bucket, then +Inf."""
    since: float | None = None
    """Start of the earliest bucket in the window with traffic; None when there is none."""

    @property
    def latency_samples(self) -> int:
        return sum(self.latency_counts)


@dataclass(slots=True)
class _Buckets:
    indexes: deque[int] = field(default_factory=deque)
    """Bucket index: floor(time / bucket_s), ascending."""
    rows: deque[IntArray] = field(default_factory=deque)


class VersionSeries:
    """Per-artifact-version request outcomes in `bucket_s` buckets over the last `horizon_s`.

    One-second buckets by default; a series kept for days can take coarser ones (such as 60 s),
    which only coarsens window edges.
    """

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S, bucket_s: float = 1.0) -> None:
        if not (horizon_s > 0 and bucket_s > 0 and math.isfinite(horizon_s + bucket_s)):
            raise ValueError(f"need positive horizon_s and bucket_s, got {horizon_s}, {bucket_s}")
        self.horizon_s = horizon_s
        self.bucket_s = bucket_s
        self._horizon_buckets = math.ceil(horizon_s / bucket_s)
        self._versions: dict[str, _Buckets] = {}
        # One (bucket index, version) entry per bucket held, oldest first: expiry pops exactly
        # the buckets that expire, never walking the versions that keep theirs.
        self._heap: list[tuple[int, str]] = []
        self._oldest: int | None = None
        """The oldest bucket index kept, as of the latest expiry; None before the first."""

    def ingest(self, version: str, observation: Observation, now: float) -> None:
        """Adds one observation of `version`'s traffic, all of it to the bucket of `now`."""
        counts = observation.latency.counts
        if len(counts) != _BUCKETS:
            raise ValueError(f"latency histogram has {len(counts)} buckets, expected {_BUCKETS}")
        index = self._index(now)
        self._expire(index)
        if self._oldest is not None and index < self._oldest:
            return  # already past the horizon: it would be expired at once
        requests = _clamp(observation.request_count)
        row = np.zeros(_ROW, dtype=np.int64)
        row[_REQUESTS] = requests
        row[_ERRORS] = min(_clamp(observation.error_count), requests)
        row[_LATENCY:] = [_clamp(count) for count in counts]
        buckets = self._versions.get(version)
        if buckets is None:
            buckets = self._versions[version] = _Buckets()
        indexes, rows = buckets.indexes, buckets.rows
        if not indexes or index > indexes[-1]:
            indexes.append(index)
            rows.append(row)
            heapq.heappush(self._heap, (index, version))
        elif index == indexes[-1]:
            rows[-1] = _saturating_add(rows[-1], row, MAX_COUNT)
        elif index > indexes[-1] - self._horizon_buckets:
            # Arrived out of order (an earlier `now` than the last one), within the horizon.
            at = bisect.bisect_left(indexes, index)
            if indexes[at] == index:
                rows[at] = _saturating_add(rows[at], row, MAX_COUNT)
            else:
                indexes.insert(at, index)
                rows.insert(at, row)
                heapq.heappush(self._heap, (index, version))

    def window(self, version: str, seconds: float, now: float) -> WindowStats:
        """`version`'s traffic in the `ceil(seconds / bucket_s)` buckets ending with `now`'s."""
        last = self._index(now)
        return self._sum(version, last - math.ceil(seconds / self.bucket_s) + 1, last)

    def bucket_count(self, version: str | None = None) -> int:
        """Buckets held, for one version or all: what bounds this series' memory."""
        if version is not None:
            buckets = self._versions.get(version)
            return len(buckets.indexes) if buckets else 0
        return sum(len(buckets.indexes) for buckets in self._versions.values())

    def _index(self, time_s: float) -> int:
        return math.floor(time_s / self.bucket_s)

    def _sum(self, version: str, first: int, last: int) -> WindowStats:
        buckets = self._versions.get(version)
        if buckets is None or first > last:
            return WindowStats()
        total = np.zeros(_ROW, dtype=np.int64)
        since: int | None = None
        for index, row in zip(reversed(buckets.indexes), reversed(buckets.rows), strict=True):
            if index > last:
                continue
            if index < first:
                break
            total = _saturating_add(total, row, _MAX_TOTAL)
            since = index
        return WindowStats(
            requests=int(total[_REQUESTS]),
            errors=int(total[_ERRORS]),
            latency_counts=tuple(int(count) for count in total[_LATENCY:]),
            since=None if since is None else since * self.bucket_s,
        )

    def _expire(self, index: int) -> None:
        """Drops the buckets older than the horizon ending with bucket `index`: at most once per
        bucket period (the oldest index kept only moves forward), O(expired buckets x log)."""
        oldest = index - self._horizon_buckets + 1
        if self._oldest is not None and oldest <= self._oldest:
            return
        self._oldest = oldest
        heap = self._heap
        while heap and heap[0][0] < oldest:
            _, version = heapq.heappop(heap)
            buckets = self._versions.get(version)
            if buckets is None:
                continue
            while buckets.indexes and buckets.indexes[0] < oldest:
                buckets.indexes.popleft()
                buckets.rows.popleft()
            if not buckets.indexes:
                del self._versions[version]


def _saturating_add(a: IntArray, b: IntArray, limit: int) -> IntArray:
    """`a + b`, each element capped at `limit` (both hold at most 2**62: no int64 overflow)."""
    total: IntArray = np.minimum(a + b, limit)
    return total


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """A pair of windows, in seconds, and the burn rate both must exceed to fail."""

    long_s: float
    short_s: float
    max_burn_rate: float

    def __post_init__(self) -> None:
        if not 0 < self.short_s < self.long_s:
            raise ValueError(
                f"need 0 < short window < long window, got {self.short_s}s and {self.long_s}s"
            )
        if not self.max_burn_rate > 0:
            raise ValueError(f"max_burn_rate must be positive, got {self.max_burn_rate}")


@dataclass(frozen=True, slots=True)
class SloBurnTemplate:
    """`RolloutAnalysisTemplate.SloBurn`, in plain values.

    `min_request_count` 0 means the default (100), as in the API.
    """

    indicator: Indicator
    objective_ratio: float
    windows: tuple[BurnWindow, ...]
    latency_threshold_ms: float = 0.0
    """For the latency indicator (required there, above 0); 0 means unset, as in the API."""
    min_request_count: int = DEFAULT_MIN_REQUEST_COUNT

    def __post_init__(self) -> None:
        if self.indicator not in ("errors", "latency"):
            raise ValueError(f"unknown indicator {self.indicator!r}")
        if not 0 < self.objective_ratio < 1:
            raise ValueError(f"objective_ratio must be in (0, 1), got {self.objective_ratio}")
        if not 1 <= len(self.windows) <= 4:
            raise ValueError(f"need 1 to 4 window pairs, got {len(self.windows)}")
        if self.indicator == "latency" and not (
            math.isfinite(self.latency_threshold_ms) and self.latency_threshold_ms > 0
        ):
            raise ValueError("the latency indicator needs a positive latency_threshold_ms")
        if self.min_request_count < 0:
            raise ValueError(f"min_request_count must be >= 0, got {self.min_request_count}")

    @property
    def required_requests(self) -> int:
        return self.min_request_count or DEFAULT_MIN_REQUEST_COUNT


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    measurements: tuple[Measurement, ...]
    message: str
    """One line."""


def burn_rate(bad: int, total: int, objective_ratio: float) -> float:
    """``(bad / total) / (1 - objective_ratio)``; 0 when there were no requests."""
    if not 0 < objective_ratio < 1:
        raise ValueError(f"objective_ratio must be in (0, 1), got {objective_ratio}")
    if bad < 0 or total < 0:
        raise ValueError(f"counts must be >= 0, got {bad} bad of {total}")
    if total == 0:
        return 0.0
    return (min(bad, total) / total) / (1.0 - objective_ratio)


def format_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``300`` -> ``5m``, ``90`` -> ``1m30s``, ``86400`` -> ``1d``."""
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"duration must be finite and >= 0, got {seconds}")
    whole = math.floor(seconds)
    fraction = round(seconds - whole, 3)
    if fraction >= 1:
        whole, fraction = whole + 1, 0.0
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if fraction:
        parts.append(f"{whole + fraction:.3f}".rstrip("0") + "s")
    elif whole or not parts:
        parts.append(f"{whole}s")
    return "".join(parts)


FISHER_EXACT_MAX_BAD = 10**6
"""Past this many bad requests the exact sum (about sqrt(bad) terms) gives way to the normal
approximation, which is then within a hair of it, and a forged count cannot stall the judge."""


def _two_proportion_greater(bad_a: int, total_a: int, bad_b: int, total_b: int) -> float:
    """One-sided pooled two-proportion z-test that A's bad rate is greater than B's."""
    pooled = (bad_a + bad_b) / (total_a + total_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if spread == 0:
        return 1.0
    z = (bad_a / total_a - bad_b / total_b) / spread
    return 0.5 * math.erfc(z / math.sqrt(2))


def fisher_greater_pvalue(bad_a: int, total_a: int, bad_b: int, total_b: int) -> float:
    """One-sided Fisher exact p-value that A's bad rate is greater than B's.

    P(X >= bad_a) for X hypergeometric: `total_a` draws from all requests, `bad_a + bad_b` of
    them bad. Summed from the log-pmf at one end by the pmf's term ratio, stopping once terms no
    longer matter, so the cost grows with the spread of X (about the square root of the bad
    count), not with the request counts. 1.0 without requests on either side. The starting
    log-pmf comes from `math.lgamma`, so with millions of requests the p-value carries a relative
    error near 1e-8 (far below what moves a decision at alpha 0.05).
    """
    bad_a, bad_b = min(bad_a, total_a), min(bad_b, total_b)
    if min(bad_a, bad_b, total_a, total_b) < 0:
        raise ValueError("counts must be >= 0")
    population, bad, draws = total_a + total_b, bad_a + bad_b, total_a
    if bad > FISHER_EXACT_MAX_BAD and total_a and total_b:
        return _two_proportion_greater(bad_a, total_a, bad_b, total_b)
    good = population - bad
    low, high = max(0, draws - good), min(draws, bad)
    if bad_a <= low or total_b == 0:
        return 1.0

    def log_pmf(x: int) -> float:
        return _log_comb(bad, x) + _log_comb(good, draws - x) - _log_comb(population, draws)

    mode = (draws + 1) * (bad + 1) // (population + 2)
    if bad_a > mode:  # upper tail, decreasing terms
        term = math.exp(log_pmf(bad_a))
        total = term
        x = bad_a
        while x < high and term > total * 1e-17:
            term *= (bad - x) * (draws - x) / ((x + 1) * (good - draws + x + 1))
            total += term
            x += 1
        return min(1.0, total)
    # Lower tail P(X <= bad_a - 1), decreasing terms going down; the p-value is its complement.
    x = bad_a - 1
    term = math.exp(log_pmf(x))
    total = term
    while x > low and term > total * 1e-17:
        term *= x * (good - draws + x) / ((bad - x + 1) * (draws - x + 1))
        total += term
        x -= 1
    return min(1.0, max(0.0, 1.0 - total))


def mann_whitney_binned_greater_pvalue(
    counts_a: tuple[int, ...] | list[int], counts_b: tuple[int, ...] | list[int]
) -> float:
    """One-sided Mann-Whitney U p-value that A's values are greater than B's, from bin counts.

    Both count lists bin the same ordered values (bin i below bin i+1); every sample in a bin is a
    tie. U of A counts, for each A sample, the B samples below it plus half of those tied with it.
    Normal approximation with tie correction and continuity correction, as
    `scipy.stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic")` computes it on the
    expanded samples. Exact integers (Python ints) up to the final division, since the tie term
    grows with the cube of the sample count. 1.0 when either side is empty or every sample ties.
    """
    if len(counts_a) != len(counts_b):
        raise ValueError("both sides need the same bins")
    if any(count < 0 for count in (*counts_a, *counts_b)):
        raise ValueError("counts must be >= 0")
    a = [int(count) for count in counts_a]
    b = [int(count) for count in counts_b]
    n_a, n_b = sum(a), sum(b)
    n = n_a + n_b
    if n_a == 0 or n_b == 0:
        return 1.0
    twice_u = 0  # 2 U, an integer
    below = 0
    ties = 0
    for count_a, count_b in zip(a, b, strict=True):
        twice_u += count_a * (2 * below + count_b)
        below += count_b
        tied = count_a + count_b
        ties += tied**3 - tied
    # Var U = n_a n_b / 12 * ((n + 1) - ties / (n (n - 1))), over one integer denominator.
    variance_numerator = n_a * n_b * ((n + 1) * n * (n - 1) - ties)
    if variance_numerator <= 0:
        return 1.0
    sigma = math.sqrt(variance_numerator / (12 * n * (n - 1)))
    # U - mu - 1/2 = (2U - n_a n_b - 1) / 2
    z = (twice_u - n_a * n_b - 1) / 2 / sigma
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def judge_slo_burn(
    series: VersionSeries,
    candidate: str,
    stable: str,
    template: SloBurnTemplate,
    now: float,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> Verdict:
    """Judges `candidate`'s error-budget burn at `now`, blaming it only when worse than `stable`.

    Raises ValueError when a long window is longer than the series keeps (`horizon_s`).
    """
    longest = max(pair.long_s for pair in template.windows)
    if longest > series.horizon_s:
        raise ValueError(
            f"long window {format_duration(longest)} exceeds the series horizon "
            f"{format_duration(series.horizon_s)}"
        )
    required = template.required_requests
    seen = _judged(template, series.window(candidate, longest, now))
    count = Measurement("request_count", float(seen), float(required), seen >= required)
    if seen < required:
        return Verdict(
            "inconclusive",
            (count,),
            f"too few candidate requests: {seen} < {required} over {format_duration(longest)}",
        )

    measurements = [count]
    failing: list[tuple[BurnWindow, float]] = []
    closest: tuple[float, BurnWindow, float] | None = None
    for pair in template.windows:
        burns = []
        for window_s in (pair.long_s, pair.short_s):
            burn = _burn(template, series.window(candidate, window_s, now))
            burns.append(burn)
            measurements.append(
                Measurement(
                    f"burn_rate:{format_duration(window_s)}",
                    burn,
                    pair.max_burn_rate,
                    burn <= pair.max_burn_rate,
                )
            )
        deciding = min(burns)  # the pair fails when both exceed, i.e. when the smaller does
        if deciding > pair.max_burn_rate:
            failing.append((pair, deciding))
        if closest is None or deciding / pair.max_burn_rate > closest[0]:
            closest = (deciding / pair.max_burn_rate, pair, deciding)

    if not failing:
        assert closest is not None  # at least one pair
        _, pair, deciding = closest
        return Verdict(
            "passed",
            tuple(measurements),
            f"burn rate {_number(deciding)} <= {_number(pair.max_burn_rate)} over "
            f"{_pair_text(pair)}",
        )

    pair, deciding = min(failing, key=lambda item: item[0].long_s)
    burning = (
        f"burn rate {_number(deciding)} > {_number(pair.max_burn_rate)} over {_pair_text(pair)}"
    )

    # The same seconds for both versions: the pair's long window, from the candidate's first
    # bucket in it.
    candidate_stats = series.window(candidate, pair.long_s, now)
    assert candidate_stats.since is not None  # it burns, so it has traffic there
    first = round(candidate_stats.since / series.bucket_s)
    stable_stats = series._sum(stable, first, series._index(now))
    stable_seen = _judged(template, stable_stats)
    if stable_seen < required:
        measurements.append(
            Measurement("stable_request_count", float(stable_seen), float(required), False)
        )
        return Verdict(
            "failed",
            tuple(measurements),
            f"{burning}; stable has too few requests to compare ({stable_seen} < {required})",
        )

    if template.indicator == "errors":
        metric = "errors_vs_stable_p"
        p = fisher_greater_pvalue(
            candidate_stats.errors,
            candidate_stats.requests,
            stable_stats.errors,
            stable_stats.requests,
        )
    else:
        metric = "latency_vs_stable_p"
        p = mann_whitney_binned_greater_pvalue(
            candidate_stats.latency_counts, stable_stats.latency_counts
        )
    worse = p < alpha
    measurements.append(Measurement(metric, p, alpha, not worse))
    if worse:
        return Verdict(
            "failed",
            tuple(measurements),
            f"{burning}; candidate worse than stable (p={_number(p)})",
        )
    stable_burn = _burn(template, stable_stats)
    if stable_burn > pair.max_burn_rate:
        message = (
            f"both versions burn: {burning}, stable {_number(stable_burn)} "
            f"(p={_number(p)}; not the candidate's doing)"
        )
    else:
        message = (
            f"{burning} but not significantly worse than stable, which burns "
            f"{_number(stable_burn)} (p={_number(p)}); too little traffic to blame it"
        )
    return Verdict("inconclusive", tuple(measurements), message)


def _judged(template: SloBurnTemplate, stats: WindowStats) -> int:
    """The requests the indicator judges: all of them, or those with a latency sample."""
    return stats.requests if template.indicator == "errors" else stats.latency_samples


def _burn(template: SloBurnTemplate, stats: WindowStats) -> float:
    if template.indicator == "errors":
        return burn_rate(stats.errors, stats.requests, template.objective_ratio)
    good = _good_buckets(template.latency_threshold_ms)
    total = stats.latency_samples
    bad = total - sum(stats.latency_counts[:good])
    return burn_rate(bad, total, template.objective_ratio)


def _good_buckets(threshold_ms: float) -> int:
    """How many leading buckets lie wholly at or under the threshold (upper bound <= it)."""
    return bisect.bisect_right(LATENCY_BOUNDS_MS, threshold_ms)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _pair_text(pair: BurnWindow) -> str:
    return f"{format_duration(pair.long_s)} and {format_duration(pair.short_s)}"


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
