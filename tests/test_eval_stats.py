"""The eval-gate statistics, each cross-checked against scipy or statsmodels.

`maestro.control_plane.evals.stats` reimplements what scipy and statsmodels compute so that the
control plane does not depend on them; these tests are where they come back, as the reference.
Resampling comparisons use fixed seeds on both sides and a Monte Carlo tolerance relative to the
scale of the data; exact procedures (Wilson, McNemar, exact sign-flip enumeration, Holm) must
agree to floating-point precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from maestro.control_plane.evals import stats
from maestro.control_plane.evals.stats import (
    Interval,
    coefficient_of_variation,
    decide_upper_limit,
    holm_adjust,
    mcnemar_exact,
    one_sided_bound_confidence,
    paired_bootstrap_mean_diff,
    paired_bootstrap_ratio_delta,
    paired_permutation_pvalue,
    tasks_needed_for_zero_events,
    wilson_interval,
)

FloatArray = npt.NDArray[np.float64]

CONFIDENCES = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def _paired_scores(seed: int, n: int, kind: str) -> tuple[FloatArray, FloatArray]:
    """A baseline and a candidate scorecard over the same ``n`` tasks, of a given shape."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        base = rng.normal(10.0, 3.0, size=n)
        return base, base + rng.normal(0.4, 1.0, size=n)
    if kind == "skewed":
        # Costs: heavy right tail, the candidate some 10% dearer on average.
        base = rng.lognormal(0.0, 1.0, size=n)
        return base, base * rng.lognormal(0.1, 0.3, size=n)
    # Per-task pass rates over 5 repeats, the candidate slightly better.
    ability = rng.uniform(0.0, 1.0, size=n)
    base = rng.binomial(5, ability) / 5.0
    candidate = rng.binomial(5, np.clip(ability + 0.1, 0.0, 1.0)) / 5.0
    return base.astype(np.float64), candidate.astype(np.float64)


# --- Wilson -------------------------------------------------------------------------------------


def test_wilson_interval_matches_statsmodels_for_integer_successes() -> None:
    for n in (1, 2, 3, 5, 10, 37, 100, 1000, 100_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for confidence in CONFIDENCES:
                got = wilson_interval(k, n, confidence)
                low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
                assert got.estimate == k / n
                assert got.low == pytest.approx(low, rel=1e-12, abs=1e-15), (k, n, confidence)
                assert got.high == pytest.approx(high, rel=1e-12, abs=1e-15), (k, n, confidence)


def test_wilson_interval_matches_statsmodels_for_fractional_successes() -> None:
    # 40 tasks repeated 3 times: successes is the sum of per-task mean rates, n counts tasks.
    rates = np.random.default_rng(7).integers(0, 4, size=40) / 3.0
    successes = float(rates.sum())
    got = wilson_interval(successes, 40, 0.9)
    low, high = proportion_confint(successes, 40, alpha=0.1, method="wilson")
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)


def test_wilson_interval_with_one_sided_confidence_matches_statsmodels_one_sided_bounds() -> None:
    for n, k in ((20, 0), (20, 3), (200, 1), (539, 0), (50, 50)):
        for confidence in (0.9, 0.95, 0.99):
            got = wilson_interval(k, n, one_sided_bound_confidence(confidence))
            _, upper = proportion_confint(
                k, n, alpha=1 - confidence, method="wilson", alternative="larger"
            )
            lower, _ = proportion_confint(
                k, n, alpha=1 - confidence, method="wilson", alternative="smaller"
            )
            assert got.high == pytest.approx(upper, rel=1e-12), (k, n, confidence)
            assert got.low == pytest.approx(lower, rel=1e-12, abs=1e-15), (k, n, confidence)


def test_wilson_interval_of_no_tasks_is_vacuous() -> None:
    assert wilson_interval(0, 0) == Interval(estimate=0.0, low=0.0, high=1.0)


def test_wilson_interval_of_all_or_no_successes_touches_the_boundary_exactly() -> None:
    assert wilson_interval(0, 50).low == 0.0
    assert wilson_interval(50, 50).high == 1.0


@pytest.mark.parametrize(
    ("successes", "n", "confidence"),
    [(-1, 10, 0.95), (11, 10, 0.95), (math.nan, 10, 0.95), (1, -1, 0.95), (1, 10, 1.0)],
)
def test_wilson_interval_rejects_impossible_inputs(
    successes: float, n: int, confidence: float
) -> None:
    with pytest.raises(ValueError, match=r"must lie|non-negative"):
        wilson_interval(successes, n, confidence)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10**6),
    share=st.floats(min_value=0.0, max_value=1.0),
    confidence=st.floats(min_value=0.01, max_value=0.9999),
)
def test_wilson_interval_contains_the_estimate_and_lies_in_the_unit_interval(
    n: int, share: float, confidence: float
) -> None:
    interval = wilson_interval(share * n, n, confidence)
    assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=10_000),
    share=st.floats(min_value=0.0, max_value=1.0),
    lower=st.floats(min_value=0.05, max_value=0.95),
)
def test_wilson_interval_at_a_higher_confidence_contains_the_lower_confidence_one(
    n: int, share: float, lower: float
) -> None:
    narrow = wilson_interval(share * n, n, lower)
    wide = wilson_interval(share * n, n, lower + 0.04)
    assert wide.low <= narrow.low + 1e-15
    assert wide.high >= narrow.high - 1e-15


# --- one-sided confidence ------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.975, 0.99])
def test_one_sided_bound_confidence_puts_one_minus_c_in_each_tail(confidence: float) -> None:
    two_sided = one_sided_bound_confidence(confidence)
    assert two_sided == pytest.approx(2 * confidence - 1)
    # The upper end of the two-sided interval sits at the one-sided c quantile.
    z_upper = scipy.stats.norm.ppf(0.5 + two_sided / 2)
    assert z_upper == pytest.approx(scipy.stats.norm.ppf(confidence), rel=1e-12)


@pytest.mark.parametrize("confidence", [0.5, 0.3, 1.0])
def test_one_sided_bound_confidence_rejects_levels_no_better_than_a_coin(
    confidence: float,
) -> None:
    with pytest.raises(ValueError, match="one-sided"):
        one_sided_bound_confidence(confidence)


# --- McNemar -------------------------------------------------------------------------------------

MCNEMAR_CASES = [
    (0, 0),
    (0, 1),
    (1, 0),
    (5, 5),
    (0, 5),
    (3, 11),
    (12, 30),
    (40, 25),
    (100, 130),
    (3000, 3100),
    (3100, 3000),
    (12_000, 13_000),
    (49_000, 51_000),
    (0, 2000),
]


@pytest.mark.parametrize(("base_only", "candidate_only"), MCNEMAR_CASES)
def test_mcnemar_exact_matches_statsmodels_and_scipy_binomtest(
    base_only: int, candidate_only: int
) -> None:
    got = mcnemar_exact(base_only, candidate_only)
    table = [[7, base_only], [candidate_only, 9]]
    expected = mcnemar(table, exact=True).pvalue
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)
    n = base_only + candidate_only
    if n:
        binom = scipy.stats.binomtest(candidate_only, n, 0.5, alternative="two-sided").pvalue
        assert got == pytest.approx(binom, rel=1e-12, abs=1e-300)


def _exact_mcnemar(base_only: int, candidate_only: int) -> float:
    """The McNemar p-value in rational arithmetic: the reference without rounding."""
    n = base_only + candidate_only
    tail, term = 0, 1
    for i in range(min(base_only, candidate_only) + 1):
        tail += term
        term = term * (n - i) // (i + 1)  # comb(n, i + 1), exactly
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@pytest.mark.parametrize(
    ("base_only", "candidate_only"), [(7, 30), (300, 400), (3000, 3100), (9000, 9400)]
)
def test_mcnemar_exact_agrees_with_rational_arithmetic_to_the_last_digits(
    base_only: int, candidate_only: int
) -> None:
    expected = _exact_mcnemar(base_only, candidate_only)
    assert mcnemar_exact(base_only, candidate_only) == pytest.approx(expected, rel=1e-13)


def test_mcnemar_exact_handles_100k_discordant_pairs_quickly() -> None:
    started = time.perf_counter()
    got = mcnemar_exact(49_800, 50_200)
    elapsed = time.perf_counter() - started
    assert got == pytest.approx(scipy.stats.binomtest(49_800, 100_000).pvalue, rel=1e-11)
    assert elapsed < 0.5


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=0, max_value=5000))
def test_mcnemar_exact_is_symmetric_and_a_probability(a: int, b: int) -> None:
    p = mcnemar_exact(a, b)
    assert p == mcnemar_exact(b, a)
    assert 0.0 <= p <= 1.0


def test_mcnemar_exact_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)


# --- paired bootstrap ----------------------------------------------------------------------------


def _scipy_percentile(
    data: tuple[FloatArray, ...],
    statistic: Callable[..., FloatArray],
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    result = scipy.stats.bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        n_resamples=10_000,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@pytest.mark.parametrize("kind", ["normal", "skewed", "rates"])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_paired_bootstrap_mean_diff_matches_scipy_percentile_bootstrap(
    kind: str, confidence: float
) -> None:
    base, candidate = _paired_scores(11, 60, kind)
    diff = candidate - base
    got = paired_bootstrap_mean_diff(base, candidate, confidence=confidence, seed=5)

    def mean(x: FloatArray, axis: int) -> FloatArray:
        return np.asarray(np.mean(x, axis=axis), dtype=np.float64)

    low, high = _scipy_percentile((diff,), mean, confidence, seed=123)
    tolerance = 2e-2 * float(np.std(diff))
    assert got.estimate == pytest.approx(float(diff.mean()), rel=1e-12)
    assert got.low == pytest.approx(low, abs=tolerance)
    assert got.high == pytest.approx(high, abs=tolerance)


@pytest.mark.parametrize("kind", ["normal", "skewed"])
def test_paired_bootstrap_ratio_delta_matches_scipy_paired_bootstrap(kind: str) -> None:
    base, candidate = _paired_scores(12, 80, kind)
    got = paired_bootstrap_ratio_delta(base, candidate, seed=9)

    def ratio(b: FloatArray, c: FloatArray, axis: int) -> FloatArray:
        return np.asarray(np.mean(c, axis=axis) / np.mean(b, axis=axis) - 1.0, dtype=np.float64)

    low, high = _scipy_percentile((base, candidate), ratio, 0.95, seed=321)
    assert got.estimate == pytest.approx(float(candidate.mean() / base.mean() - 1.0), rel=1e-12)
    # The scale of a relative change is the spread of the per-task ratios.
    tolerance = 2e-2 * float(np.std(candidate / base))
    assert got.low == pytest.approx(low, abs=tolerance)
    assert got.high == pytest.approx(high, abs=tolerance)


def test_paired_bootstrap_keeps_pairs_together_so_a_constant_shift_has_no_spread() -> None:
    # Tasks vary wildly in difficulty; the candidate is uniformly 0.25 better. Resampling pairs
    # cancels the difficulty; resampling the two scorecards apart would not.
    base = np.random.default_rng(2).uniform(0.0, 100.0, size=50)
    got = paired_bootstrap_mean_diff(base, base + 0.25)
    assert got.low == pytest.approx(0.25, abs=1e-9)
    assert got.high == pytest.approx(0.25, abs=1e-9)


def test_paired_bootstrap_is_reproducible_from_its_seed() -> None:
    base, candidate = _paired_scores(3, 30, "normal")
    first = paired_bootstrap_mean_diff(base, candidate, resamples=2000, seed=4)
    assert paired_bootstrap_mean_diff(base, candidate, resamples=2000, seed=4) == first
    assert paired_bootstrap_mean_diff(base, candidate, resamples=2000, seed=5) != first


def test_bootstrap_chunk_size_bounds_memory_without_changing_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, candidate = _paired_scores(4, 37, "skewed")
    whole = paired_bootstrap_mean_diff(base, candidate, resamples=1000)
    ratio_whole = paired_bootstrap_ratio_delta(base, candidate, resamples=1000)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 100)
    assert paired_bootstrap_mean_diff(base, candidate, resamples=1000) == whole
    assert paired_bootstrap_ratio_delta(base, candidate, resamples=1000) == ratio_whole


def test_paired_bootstrap_ratio_delta_rejects_a_zero_baseline_mean() -> None:
    with pytest.raises(ValueError, match="baseline mean is 0"):
        paired_bootstrap_ratio_delta([0.0, 0.0], [1.0, 2.0])


def test_paired_bootstrap_ratio_delta_counts_a_free_baseline_resample_as_unbounded() -> None:
    # Two of three tasks cost the baseline nothing: about 30% of resamples miss the third, so
    # the relative change is unbounded there and the upper bound must say so.
    got = paired_bootstrap_ratio_delta([0.0, 0.0, 3.0], [1.0, 1.0, 1.0], resamples=2000)
    assert got.estimate == pytest.approx(0.0)
    assert got.high == math.inf
    assert math.isfinite(got.low)
    assert decide_upper_limit(got, 0.1) == "INCONCLUSIVE"


@pytest.mark.parametrize(
    ("base", "candidate", "message"),
    [
        ([1.0, 2.0], [1.0], "same tasks"),
        ([], [], "at least one task"),
        ([1.0, math.nan], [1.0, 2.0], "finite"),
        ([[1.0]], [[1.0]], "one-dimensional"),
    ],
)
def test_paired_functions_reject_scorecards_that_do_not_pair(
    base: list[float], candidate: list[float], message: str
) -> None:
    for function in (
        paired_bootstrap_mean_diff,
        paired_bootstrap_ratio_delta,
        paired_permutation_pvalue,
    ):
        with pytest.raises(ValueError, match=message):
            function(base, candidate)


# --- paired permutation --------------------------------------------------------------------------


def _scipy_permutation(base: FloatArray, candidate: FloatArray, resamples: float) -> float:
    def mean_diff(b: FloatArray, c: FloatArray, axis: int) -> FloatArray:
        return np.asarray(np.mean(c - b, axis=axis), dtype=np.float64)

    result = scipy.stats.permutation_test(
        (base, candidate),
        mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(77),
    )
    return float(result.pvalue)


@pytest.mark.parametrize("n", range(2, 11))
@pytest.mark.parametrize("kind", ["normal", "rates"])
def test_paired_permutation_exact_enumeration_equals_scipy_exactly(n: int, kind: str) -> None:
    # "rates" differences take few distinct values, so ties with the observed mean abound.
    base, candidate = _paired_scores(100 + n, n, kind)
    assert paired_permutation_pvalue(base, candidate) == _scipy_permutation(
        base, candidate, math.inf
    )


def test_paired_permutation_of_a_single_task_cannot_reject() -> None:
    # scipy needs two observations; with one, both sign assignments are equally extreme.
    assert paired_permutation_pvalue([1.0], [5.0]) == 1.0


def test_paired_permutation_monte_carlo_agrees_with_scipy() -> None:
    rng = np.random.default_rng(8)
    for shift in (0.0, 0.15, 0.3):
        base = rng.normal(size=40)
        candidate = base + rng.normal(shift, 1.0, size=40)
        got = paired_permutation_pvalue(base, candidate, resamples=10_000, seed=1)
        expected = _scipy_permutation(base, candidate, 10_000)
        assert got == pytest.approx(expected, abs=0.03), shift


def test_paired_permutation_monte_carlo_p_value_is_never_zero() -> None:
    base = np.zeros(30)
    candidate = np.linspace(1.0, 2.0, 30)
    assert paired_permutation_pvalue(base, candidate, resamples=999) == pytest.approx(1 / 1000)


def test_paired_permutation_enumerates_every_sign_up_to_16_tasks() -> None:
    base, candidate = _paired_scores(21, 16, "normal")
    p = paired_permutation_pvalue(base, candidate, seed=1)
    assert paired_permutation_pvalue(base, candidate, seed=2) == p
    assert (p * 2**16).is_integer()


def test_paired_permutation_p_value_is_one_without_any_difference() -> None:
    scores = [0.2, 0.4, 0.9]
    assert paired_permutation_pvalue(scores, scores) == 1.0
    assert paired_permutation_pvalue(scores * 10, scores * 10) == 1.0


# --- Holm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pvalues",
    [
        [0.01],
        [0.01, 0.04, 0.03],
        [0.04, 0.04, 0.04],
        [0.0, 1.0, 0.5, 0.2],
        [0.001, 0.011, 0.02, 0.5, 0.0125],
        [0.6, 0.7, 0.3],
    ],
)
def test_holm_adjust_matches_statsmodels_multipletests(pvalues: list[float]) -> None:
    expected = multipletests(pvalues, method="holm")[1]
    assert holm_adjust(pvalues) == pytest.approx(list(expected), rel=1e-15)


# statsmodels spends ~15 ms a call here, so fewer examples than the pure properties below.
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_adjust_matches_statsmodels_on_any_family(pvalues: list[float]) -> None:
    expected = multipletests(pvalues, method="holm")[1]
    assert holm_adjust(pvalues) == pytest.approx(list(expected), rel=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=12))
def test_holm_adjusted_values_are_at_least_raw_capped_and_monotone(pvalues: list[float]) -> None:
    adjusted = holm_adjust(pvalues)
    assert len(adjusted) == len(pvalues)
    for raw, adj in zip(pvalues, adjusted, strict=True):
        assert raw <= adj <= 1.0
    in_raw_order = [adj for _, adj in sorted(zip(pvalues, adjusted, strict=True))]
    assert in_raw_order == sorted(in_raw_order)


def test_holm_adjust_rejects_values_that_are_not_probabilities() -> None:
    with pytest.raises(ValueError, match="must lie"):
        holm_adjust([0.2, 1.5])


# --- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "outcome"),
    [
        (0.001, 0.004, "PASS"),
        (0.001, 0.005, "PASS"),
        (0.004, 0.006, "INCONCLUSIVE"),
        (0.005, 0.008, "INCONCLUSIVE"),
        (0.0051, 0.008, "FAIL"),
    ],
)
def test_decide_upper_limit_passes_only_below_and_fails_only_above_the_limit(
    low: float, high: float, outcome: str
) -> None:
    interval = Interval(estimate=(low + high) / 2, low=low, high=high)
    assert decide_upper_limit(interval, 0.005) == outcome


@pytest.mark.parametrize("limit", [0.5, 0.1, 0.05, 0.01, 0.005, 0.001])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_tasks_needed_for_zero_events_is_the_first_count_whose_bound_certifies(
    limit: float, confidence: float
) -> None:
    n = tasks_needed_for_zero_events(limit, confidence)

    def upper(tasks: int) -> float:
        return float(
            proportion_confint(
                0, tasks, alpha=1 - confidence, method="wilson", alternative="larger"
            )[1]
        )

    assert upper(n) <= limit
    assert n == 1 or upper(n - 1) > limit
    two_sided = one_sided_bound_confidence(confidence)
    assert decide_upper_limit(wilson_interval(0, n, two_sided), limit) == "PASS"
    if n > 1:
        assert decide_upper_limit(wilson_interval(0, n - 1, two_sided), limit) == "INCONCLUSIVE"


def test_tasks_needed_to_certify_half_a_percent_at_95_percent_is_539() -> None:
    assert tasks_needed_for_zero_events(0.005) == 539


@pytest.mark.parametrize("limit", [0.0, 1.0, -0.1])
def test_tasks_needed_for_zero_events_rejects_limits_that_no_count_certifies(
    limit: float,
) -> None:
    with pytest.raises(ValueError, match="limit"):
        tasks_needed_for_zero_events(limit)


# --- coefficient of variation --------------------------------------------------------------------


def test_coefficient_of_variation_matches_scipy_variation() -> None:
    rng = np.random.default_rng(6)
    for size in (2, 5, 50):
        values = rng.lognormal(1.0, 0.5, size=size)
        expected = scipy.stats.variation(values, ddof=1)
        assert coefficient_of_variation(list(values)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("values", [[0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [-3.0, -3.0]])
def test_coefficient_of_variation_of_identical_values_is_zero(values: list[float]) -> None:
    assert coefficient_of_variation(values) == 0.0


def test_coefficient_of_variation_of_a_spread_around_zero_is_unbounded() -> None:
    assert coefficient_of_variation([-1.0, 1.0]) == math.inf


def test_coefficient_of_variation_is_scale_free_and_sign_free() -> None:
    values = [2.0, 3.0, 7.0]
    cv = coefficient_of_variation(values)
    assert coefficient_of_variation([10 * v for v in values]) == pytest.approx(cv)
    assert coefficient_of_variation([-v for v in values]) == pytest.approx(cv)


def test_coefficient_of_variation_needs_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        coefficient_of_variation([1.0])
