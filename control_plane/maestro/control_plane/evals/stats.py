"""The statistics behind eval gates: intervals, paired tests, multiplicity, and the verdicts.

What lives here: pure functions over numbers (Python floats and numpy arrays) that turn a
scorecard into an interval or a p-value, and an interval into PASS, FAIL or INCONCLUSIVE. No I/O,
no clock, no global random state (every resampling function takes a seed), and no scipy or
statsmodels: those are test-only dependencies that the tests cross-check every function against.

Choices, and why:

- **One-sided bounds.** A gate threshold is one-directional ("error rate at most 0.5%", "cost per
  task at most 10% above the baseline"), so the question it asks is one-sided. A two-sided
  interval at confidence ``2c - 1`` has ``1 - c`` in each tail, so its ends are one-sided
  ``c``-bounds (`one_sided_bound_confidence`). PASS needs the upper one-sided bound under the
  limit and FAIL needs the lower one-sided bound over it, so each verdict is wrong with
  probability at most ``1 - c``; when neither bound is decisive the gate says INCONCLUSIVE rather
  than rounding noise into a verdict (`decide_upper_limit`).
- **Wilson, not the normal (Wald) interval**, for rates: Wald collapses to a zero-width interval
  at 0 or n successes, which is exactly where rare-failure gates live ("0 errors in 200 tasks"
  would certify a 0% error rate). Wilson stays inside [0, 1] and keeps a useful width there.
- **The unit of resampling is the task, never the task execution.** Repeats of the same task are
  correlated: a task the model cannot do fails on every repeat. Treating ``tasks x repeats``
  executions as independent inflates the sample size by up to the repeat count and shrinks the
  intervals by up to its square root. This is the error in lm-evaluation-harness's ``*_stderr``
  (the standard deviation of per-document scores over ``sqrt(n)``, as if every scored document
  were independent); Miller (2024, "Adding Error Bars to Evals") measured clustered standard
  errors up to about three times the naive ones. So callers first reduce repeats to one value per
  task (a per-task mean rate, cost or latency); `wilson_interval` then takes fractional successes
  (the sum of per-task rates) over ``n`` = tasks. That is conservative: a per-task mean in [0, 1]
  has variance at most ``p (1 - p)``, the Bernoulli variance Wilson assumes.
- **Paired comparison against the baseline.** The candidate and the baseline scorecard ran the
  same tasks, and task difficulty dominates the variance, so differences are taken per task and
  the pair is resampled together: exact McNemar for pass/fail (only discordant tasks carry
  information), a paired percentile bootstrap for continuous deltas (mean difference, relative
  cost), and a sign-flip permutation test for a p-value on a continuous mean difference.
- **Holm across variants.** An A/B/C comparison tests each variant against the baseline; with
  several tests one of them passes by chance more often than ``alpha``. Holm's step-down
  adjustment controls the family-wise error rate under any dependence between the tests and is
  uniformly more powerful than Bonferroni.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Outcome = Literal["PASS", "FAIL", "INCONCLUSIVE"]

FloatArray = npt.NDArray[np.float64]

# Per-task values as callers hold them: a list, or a numpy array of any numeric dtype (converted
# to float64 once, on entry).
Scores = Sequence[float] | npt.NDArray[Any]

# Resampled values held at once (resamples x tasks): bounds memory to ~16 MB of indices plus the
# gathered values, whatever the task count, so a 100k-task scorecard still fits.
_CHUNK_ELEMENTS = 1_000_000

# Exact sign-flip enumeration up to this many tasks (2**16 = 65,536 sign vectors); above it the
# enumeration grows past what a gate should spend, and Monte Carlo is as good at 10k resamples.
_EXACT_PERMUTATION_MAX_N = 16

# Relative tolerance for "at least as extreme as observed" comparisons: the same sum reached by
# another summation order may differ in its last bits, and such a tie must count as extreme (the
# tolerance scipy.stats.permutation_test uses).
_TIE_RTOL = 100 * float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Interval:
    """A point estimate with the ends of its confidence interval (``low <= high``).

    Wilson intervals always contain their estimate; a percentile bootstrap of a skewed statistic
    can, rarely, leave the observed estimate just outside, so verdicts read only the ends.
    """

    estimate: float
    low: float
    high: float


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _two_sided_z(confidence: float) -> float:
    """The standard normal quantile that leaves ``(1 - confidence) / 2`` in each tail."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Interval:
    """Two-sided Wilson score interval for a rate of ``successes`` out of ``n``.

    ``successes`` may be fractional: the sum of per-task mean rates when tasks were repeated, so
    that ``n`` counts tasks rather than correlated executions (see the module docstring). With no
    tasks nothing is known, so ``n == 0`` gives the vacuous ``Interval(0, 0, 1)``. The ends are
    clamped to [0, 1] and to the estimate, which the interval contains mathematically but floating
    point can nudge past by an ulp.
    """
    _check_confidence(confidence)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not (math.isfinite(successes) and 0.0 <= successes <= n):
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    if n == 0:
        return Interval(estimate=0.0, low=0.0, high=1.0)
    p = successes / n
    z = _two_sided_z(confidence)
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    low = 0.0 if successes == 0 else min(max(center - half, 0.0), p)
    high = 1.0 if successes == n else max(min(center + half, 1.0), p)
    return Interval(estimate=p, low=low, high=high)


def one_sided_bound_confidence(confidence: float) -> float:
    """The two-sided confidence whose interval ends are one-sided ``confidence`` bounds.

    A two-sided interval at ``2c - 1`` leaves ``1 - c`` in each tail, so its upper end is an upper
    bound that holds with probability ``c`` (and likewise its lower end). Gates are one-sided, so
    they build intervals at this level instead of spending half the error on the side that cannot
    change the verdict. ``confidence`` must exceed 0.5: below it a "bound" would be weaker than a
    coin flip.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"a one-sided confidence must lie in (0.5, 1), got {confidence}")
    return 2.0 * confidence - 1.0


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirling_error(m: int) -> float:
    """``log(m!) - ((m + 1/2) log m - m + log sqrt(2 pi))``, accurate to a few ulps.

    The error term of Stirling's formula is small (about ``1 / 12m``) where ``log(m!)`` is huge, so
    computing it directly avoids the cancellation of ``lgamma(n + 1) - lgamma(k + 1) - ...``,
    which loses ten digits at n = 100k (Loader, "Fast and accurate computation of binomial
    probabilities", 2000; R's ``dbinom``).
    """
    if m <= 15:
        # log(m!) is at most 28 here, so lgamma's rounding stays near 1e-15 absolute.
        return math.lgamma(m + 1.0) - (m + 0.5) * math.log(m) + m - _LOG_SQRT_2PI
    m2 = float(m) * m
    series = 1.0 / 1260 - (1.0 / 1680 - 1.0 / 1188 / m2) / m2
    return (1.0 / 12 - (1.0 / 360 - series / m2) / m2) / m


def _deviance_term(x: int, mean: float) -> float:
    """``x log(x / mean) + mean - x`` without cancellation when ``x`` is near ``mean``.

    Near the mean both halves are large and nearly equal, so the series in
    ``v = (x - mean) / (x + mean)`` is summed instead (Loader's ``bd0``).
    """
    if abs(x - mean) < 0.1 * (x + mean):
        v = (x - mean) / (x + mean)
        total = (x - mean) * v
        term = 2.0 * x * v
        v2 = v * v
        j = 1
        while True:
            term *= v2
            updated = total + term / (2 * j + 1)
            if updated == total:
                return total
            total = updated
            j += 1
    return x * math.log(x / mean) + mean - x


def _log_binomial_half_pmf(k: int, n: int) -> float:
    """``log P(X = k)`` for ``X ~ Binomial(n, 1/2)``, to about 1e-14 relative for any ``n``."""
    if k == 0:
        return -n * math.log(2.0)
    half = n / 2.0
    return (
        _stirling_error(n)
        - _stirling_error(k)
        - _stirling_error(n - k)
        - _deviance_term(k, half)
        - _deviance_term(n - k, half)
        + 0.5 * math.log(n / (2.0 * math.pi * k * (n - k)))
    )


def _binomial_half_cdf(k: int, n: int) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, 1/2)`` and ``k <= n / 2``, stable for large ``n``.

    ``2**-n`` underflows and ``comb(n, k)`` overflows long before ``n`` = 100k, so the tail is
    summed relative to its largest term, ``pmf(k)`` (the tail lies below the mode): the ratios
    ``pmf(i - 1) / pmf(i) = i / (n - i + 1)`` are all below one, so their running products only
    shrink (underflow to 0 is harmless) and the sum is well conditioned. ``pmf(k)`` comes from
    Loader's saddle-point form (`_log_binomial_half_pmf`). O(k) time and memory: 100k discordant
    pairs take a few milliseconds.
    """
    i = np.arange(k, 0, -1, dtype=np.float64)
    relative_tail = float(np.cumprod(i / (n - i + 1.0)).sum()) + 1.0
    return math.exp(_log_binomial_half_pmf(k, n) + math.log(relative_tail))


def mcnemar_exact(base_only: int, candidate_only: int) -> float:
    """Two-sided exact McNemar p-value for a paired pass/fail comparison.

    ``base_only`` counts tasks the baseline passed and the candidate failed, ``candidate_only`` the
    reverse. Tasks both passed or both failed say nothing about which is better, so only the
    discordant ones enter: under the null hypothesis each discordant task is equally likely to go
    either way, and the p-value is the two-sided binomial test at 1/2,
    ``min(1, 2 P(X <= min(b, c)))`` (the distribution is symmetric). Exact rather than the
    chi-square approximation because gates often see a handful of discordant tasks.
    """
    if base_only < 0 or candidate_only < 0:
        raise ValueError(
            f"discordant counts must be non-negative, got {base_only} and {candidate_only}"
        )
    n = base_only + candidate_only
    k = min(base_only, candidate_only)
    if 2 * k >= n:
        return 1.0
    return min(1.0, 2.0 * _binomial_half_cdf(k, n))


def _as_vector(values: Scores, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold only finite values")
    return array


def _paired(base: Scores, candidate: Scores) -> tuple[FloatArray, FloatArray]:
    """Both scorecards as float vectors over the same tasks, in the same order."""
    base_array = _as_vector(base, "base")
    candidate_array = _as_vector(candidate, "candidate")
    if base_array.shape != candidate_array.shape:
        raise ValueError(
            "base and candidate must score the same tasks: got "
            f"{base_array.size} and {candidate_array.size} values"
        )
    if base_array.size == 0:
        raise ValueError("a paired comparison needs at least one task")
    return base_array, candidate_array


def _chunk_rows(n: int) -> int:
    """Resamples drawn per chunk. Depends only on ``n`` so a seed reproduces on any machine."""
    return max(1, _CHUNK_ELEMENTS // n)


def _bootstrap_indices(n: int, resamples: int, seed: int) -> list[npt.NDArray[np.intp]]:
    """Task indices for each resample, in chunks of bounded size (rows are resamples)."""
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    rows = _chunk_rows(n)
    chunks = []
    for start in range(0, resamples, rows):
        chunks.append(rng.integers(0, n, size=(min(rows, resamples - start), n)))
    return chunks


def _quantile_sorted(values: FloatArray, q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default), safe with infinities.

    numpy interpolates ``inf`` with ``inf`` into ``nan``; a ratio bootstrap can produce infinite
    resamples (a baseline mean of 0 in a resample), and its bound should then be ``inf``.
    """
    position = q * (values.size - 1)
    lower = math.floor(position)
    upper = min(lower + 1, values.size - 1)
    fraction = position - lower
    a, b = float(values[lower]), float(values[upper])
    if fraction == 0.0 or a == b:
        return a
    return a + (b - a) * fraction


def _percentile_interval(estimate: float, resampled: FloatArray, confidence: float) -> Interval:
    """The percentile bootstrap interval: the ``alpha / 2`` and ``1 - alpha / 2`` quantiles.

    Percentile rather than BCa: BCa adds a jackknife (n more statistics per call) and degenerates
    to NaN when the resampled statistics are all equal, which the near-constant per-task scores of
    pass/fail suites produce; for means of per-task values the percentile interval is adequate,
    and it is the method the tests cross-check against scipy.
    """
    ordered = np.sort(resampled)
    alpha = 1.0 - confidence
    low = _quantile_sorted(ordered, alpha / 2.0)
    high = _quantile_sorted(ordered, 1.0 - alpha / 2.0)
    return Interval(estimate=estimate, low=low, high=high)


def paired_bootstrap_mean_diff(
    base: Scores,
    candidate: Scores,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``mean(candidate - base)`` resampling paired tasks.

    Each resample draws tasks with replacement and keeps each task's pair together, so the
    between-task variance that both scorecards share cancels in the difference (the reason for
    pairing). ``estimate`` is the observed mean difference, not a bootstrap average.
    """
    _check_confidence(confidence)
    base_array, candidate_array = _paired(base, candidate)
    diff = candidate_array - base_array
    means = np.concatenate(
        [diff[idx].mean(axis=1) for idx in _bootstrap_indices(diff.size, resamples, seed)]
    )
    return _percentile_interval(float(diff.mean()), means, confidence)


def _ratio_delta(candidate_mean: FloatArray, base_mean: FloatArray) -> FloatArray:
    """``candidate_mean / base_mean - 1`` with a zero baseline mapped to +inf (or 0 if both 0).

    A resample may draw only tasks the baseline ran for free; the relative change is then
    unbounded if the candidate spent anything, and no change if it did not either.
    """
    safe_base = np.where(base_mean == 0.0, 1.0, base_mean)
    ratio = candidate_mean / safe_base - 1.0
    zero_base = np.where(candidate_mean == 0.0, 0.0, np.inf)
    return np.where(base_mean == 0.0, zero_base, ratio)


def paired_bootstrap_ratio_delta(
    base: Scores,
    candidate: Scores,
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``mean(candidate) / mean(base) - 1`` over paired tasks.

    The relative change of a per-task mean (``cost_per_task_delta``: +0.10 is 10% dearer). It is
    a ratio of means, not a mean of per-task ratios, so cheap tasks do not dominate, and both
    means come from the same resampled tasks. A baseline mean of 0 has no relative change, so it
    raises ``ValueError``; a resample whose baseline mean is 0 counts as +inf (see
    `_ratio_delta`).
    """
    _check_confidence(confidence)
    base_array, candidate_array = _paired(base, candidate)
    base_mean = float(base_array.mean())
    if base_mean == 0.0:
        raise ValueError("the baseline mean is 0, so a relative change is undefined")
    deltas = [
        _ratio_delta(candidate_array[idx].mean(axis=1), base_array[idx].mean(axis=1))
        for idx in _bootstrap_indices(base_array.size, resamples, seed)
    ]
    estimate = float(candidate_array.mean()) / base_mean - 1.0
    return _percentile_interval(estimate, np.concatenate(deltas), confidence)


def _sign_matrices(n: int, resamples: int, seed: int) -> tuple[bool, list[FloatArray]]:
    """Sign vectors (rows) for the sign-flip test: all ``2**n`` of them, or random ones."""
    if n <= _EXACT_PERMUTATION_MAX_N:
        codes = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)
        return True, [(1 - 2 * (codes & 1)).astype(np.float64)]
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    rows = _chunk_rows(n)
    chunks = []
    for start in range(0, resamples, rows):
        bits = rng.integers(0, 2, size=(min(rows, resamples - start), n))
        chunks.append((1 - 2 * bits).astype(np.float64))
    return False, chunks


def paired_permutation_pvalue(
    base: Scores,
    candidate: Scores,
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided sign-flip permutation p-value of the mean paired difference.

    Under the null hypothesis that candidate and baseline are exchangeable within each task, each
    per-task difference is as likely to have either sign. The p-value is the share of sign
    assignments whose mean difference is at least as far from 0 as the observed one. With at most
    16 tasks every assignment is enumerated (exact); beyond, ``resamples`` random assignments give
    ``(k + 1) / (R + 1)``, which counts the observed assignment so the p-value is never 0 and the
    test keeps its level (Phipson and Smyth, 2010). No distributional assumption, unlike a paired
    t-test, which small skewed task sets (latencies, costs) would violate.
    """
    base_array, candidate_array = _paired(base, candidate)
    diff = candidate_array - base_array
    n = diff.size
    # The observed statistic goes through the same matrix product as the null ones, so the
    # all-plus assignment reproduces it; _TIE_RTOL covers equal sums reached in another order.
    observed = abs(float((np.ones((1, n)) @ diff)[0]) / n)
    threshold = observed - _TIE_RTOL * observed
    exact, chunks = _sign_matrices(n, resamples, seed)
    extreme = sum(int(np.count_nonzero(np.abs(signs @ diff) / n >= threshold)) for signs in chunks)
    if exact:
        return extreme / (1 << n)
    return (extreme + 1) / (resamples + 1)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order.

    Sorted ascending, the i-th smallest (from 0) is multiplied by ``m - i``, a running maximum
    keeps the adjusted values monotone in that order (a larger raw p-value never gets a smaller
    adjusted one), and values cap at 1. Rejecting where the adjusted value is at most ``alpha``
    controls the family-wise error rate at ``alpha`` across the A/B/C variants.
    """
    raw = [float(p) for p in pvalues]
    for p in raw:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(raw)
    order = sorted(range(m), key=raw.__getitem__)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[index]))
        adjusted[index] = running
    return adjusted


def decide_upper_limit(interval: Interval, limit: float) -> Outcome:
    """The verdict of an "at most ``limit``" threshold from its interval.

    PASS when even the upper bound is within the limit, FAIL when even the lower bound exceeds it,
    and INCONCLUSIVE when the interval straddles the limit: the data cannot tell, and more tasks
    (not a coin flip) would settle it. Built at `one_sided_bound_confidence`, each decisive
    verdict errs with probability at most ``1 - c``.
    """
    if interval.high <= limit:
        return "PASS"
    if interval.low > limit:
        return "FAIL"
    return "INCONCLUSIVE"


def _zero_event_upper_bound(n: int, confidence: float) -> float:
    return wilson_interval(0, n, one_sided_bound_confidence(confidence)).high


def tasks_needed_for_zero_events(limit: float, confidence: float = 0.95) -> int:
    """The fewest tasks whose 0 failures certify a rate of at most ``limit`` at ``confidence``.

    What an INCONCLUSIVE message quotes ("539 tasks are needed to certify 0.5%"). With 0 events
    the one-sided Wilson upper bound is ``z**2 / (n + z**2)``, so ``n = ceil(z**2 (1 - limit) /
    limit)``; the closed form is then checked against `wilson_interval` itself, so the message and
    the gate can never disagree by a rounding step. Wilson is less conservative than the exact
    Clopper-Pearson bound here (the "rule of three" would ask about 600 tasks for 0.5%); the gate
    uses Wilson, so the count does too.
    """
    if not 0.0 < limit < 1.0:
        raise ValueError(f"limit must lie in (0, 1), got {limit}")
    z = NormalDist().inv_cdf(one_sided_bound_confidence(confidence) / 2.0 + 0.5)
    n = max(1, math.ceil(z * z * (1.0 - limit) / limit))
    while _zero_event_upper_bound(n, confidence) > limit:
        n += 1
    while n > 1 and _zero_event_upper_bound(n - 1, confidence) <= limit:
        n -= 1
    return n


def coefficient_of_variation(values: Scores) -> float:
    """Sample standard deviation (``ddof=1``) over the absolute mean.

    The variance acceptance compares repeated runs of the same suite: a relative spread is what
    stays comparable across metrics of different scales. Identical values give 0, even at mean 0;
    a spread around a mean of 0 has no relative size, so it is ``inf`` (and fails any acceptance).
    Fewer than two values have no sample spread at all, so they raise.
    """
    array = _as_vector(values, "values")
    if array.size < 2:
        raise ValueError(f"a coefficient of variation needs at least 2 values, got {array.size}")
    # Compared directly: the float mean of identical values can miss them by an ulp, which
    # would turn "no spread" into a spurious 1e-17.
    if np.all(array == array[0]):
        return 0.0
    spread = float(array.std(ddof=1))
    mean = abs(float(array.mean()))
    if mean == 0.0:
        return math.inf
    return spread / mean
