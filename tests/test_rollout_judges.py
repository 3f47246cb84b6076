"""The `error-budget-ok` judge: version series, burn rates, the multiwindow rule and the baseline.

The statistics (`fisher_greater_pvalue`, `mann_whitney_binned_greater_pvalue`) are reimplemented
in the control plane so that it does not depend on scipy; here scipy comes back as the reference.
Time is always passed in (`now`); nothing reads the clock.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from maestro.control_plane.rollouts.judges import (
    BurnWindow,
    SloBurnTemplate,
    VersionSeries,
    burn_rate,
    fisher_greater_pvalue,
    format_duration,
    judge_slo_burn,
    mann_whitney_binned_greater_pvalue,
)
from maestro.control_plane.rollouts.records import Measurement
from maestro.routing.signals import LATENCY_BOUNDS_MS, Histogram, Observation

BUCKETS = len(LATENCY_BOUNDS_MS) + 1
T0 = 1_700_000_000.0
HOUR, FIVE_MINUTES = 3600.0, 300.0
FAST_WINDOWS = (BurnWindow(HOUR, FIVE_MINUTES, 14.4),)
ERRORS_999 = SloBurnTemplate("errors", 0.999, FAST_WINDOWS)


def observation(requests: int, errors: int = 0, latency_ms: float | None = 50.0) -> Observation:
    """`requests` requests, `errors` of them failed, each taking `latency_ms`."""
    histogram = Histogram()
    if latency_ms is not None:
        for _ in range(requests):
            histogram.record(latency_ms)
    return Observation(
        deployment_id="d1",
        project="projects/p",
        end_time=0.0,
        request_count=requests,
        latency=histogram,
        error_counts={"http_5xx": errors} if errors else {},
    )


def feed(
    series: VersionSeries,
    version: str,
    start: float,
    end: float,
    *,
    requests: int,
    errors: int = 0,
    latency_ms: float = 50.0,
    every_s: float = 10.0,
) -> None:
    """One observation of `requests` requests (`errors` failed) every `every_s` in [start, end)."""
    now = start
    while now < end:
        series.ingest(version, observation(requests, errors, latency_ms), now)
        now += every_s


def metrics(measurements: tuple[Measurement, ...]) -> dict[str, float]:
    return {m.metric: m.value for m in measurements}


def test_burn_rate_is_bad_fraction_over_the_error_budget() -> None:
    assert burn_rate(1, 100, 0.99) == pytest.approx(1.0)
    assert burn_rate(15, 1000, 0.999) == pytest.approx(15.0)
    assert burn_rate(0, 1000, 0.999) == 0.0
    assert burn_rate(10, 10, 0.5) == pytest.approx(2.0)
    assert burn_rate(0, 0, 0.999) == 0.0  # no requests burns nothing, never NaN
    with pytest.raises(ValueError, match="objective_ratio"):
        burn_rate(1, 10, 1.0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**7),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.5, max_value=0.99999),
)
def test_burn_rate_times_budget_and_total_gives_back_the_bad_count(
    total: int, share: float, objective: float
) -> None:
    bad = math.floor(total * share)
    assert burn_rate(bad, total, objective) * (1 - objective) * total == pytest.approx(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3600, "1h"),
        (300, "5m"),
        (30, "30s"),
        (90, "1m30s"),
        (0, "0s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (3 * 86400 + 60, "3d1m"),
        (1.5, "1.5s"),
        (61.25, "1m1.25s"),
    ],
)
def test_format_duration_writes_units_largest_first(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_only_the_long_window_hot_passes() -> None:
    """A burst 50 minutes ago keeps the 1h window hot; the clean last 5 minutes pass the pair."""
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 600, requests=10, errors=5)  # 50% errors for 10 minutes
    feed(series, "v2", T0 + 600, T0 + HOUR, requests=10)
    feed(series, "v1", T0, T0 + HOUR, requests=10)
    now = T0 + HOUR - 1
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, now)
    values = metrics(verdict.measurements)
    assert values["burn_rate:1h"] > 14.4
    assert values["burn_rate:5m"] == 0.0
    assert verdict.outcome == "passed", verdict.message


def test_long_and_short_windows_hot_fail() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + HOUR, requests=10, errors=2)  # 20% errors throughout
    feed(series, "v1", T0, T0 + HOUR, requests=10)
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + HOUR - 1)
    values = metrics(verdict.measurements)
    assert values["burn_rate:1h"] == pytest.approx(200.0)
    assert values["burn_rate:5m"] == pytest.approx(200.0)
    assert verdict.outcome == "failed", verdict.message
    assert verdict.message.startswith("burn rate 200 > 14.4 over 1h and 5m")


def test_too_few_candidate_requests_is_inconclusive() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 90, requests=10, errors=10)  # 90 requests, every one failing
    feed(series, "v1", T0, T0 + HOUR, requests=10)
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + HOUR - 1)
    assert verdict.outcome == "inconclusive"
    (count,) = verdict.measurements
    assert (count.metric, count.value, count.limit, count.passed) == (
        "request_count",
        90.0,
        100.0,
        False,
    )
    assert verdict.message == "too few candidate requests: 90 < 100 over 1h"


def test_old_buckets_expire_past_the_horizon() -> None:
    series = VersionSeries(horizon_s=60)
    for second in range(1000):
        series.ingest("v2", observation(1), T0 + second)
        series.ingest("v2", observation(1), T0 + second + 0.5)  # same second, same bucket
    assert series.bucket_count("v2") == 60
    assert series.window("v2", 10_000, T0 + 999).requests == 120
    # A version that stops reporting is dropped whole once its last bucket passes the horizon.
    series.ingest("v1", observation(1), T0 + 2000)
    assert series.bucket_count("v2") == 0
    assert series.bucket_count() == 1


def test_a_window_is_the_whole_seconds_ending_with_the_second_of_now() -> None:
    series = VersionSeries()
    series.ingest("v2", observation(1), T0 + 0.9)  # second T0
    series.ingest("v2", observation(2), T0 + 1.2)  # second T0 + 1
    series.ingest("v2", observation(4), T0 + 300.5)  # second T0 + 300
    assert series.window("v2", 300, T0 + 300.99).requests == 6  # T0+1 .. T0+300
    assert series.window("v2", 301, T0 + 300.0).requests == 7
    assert series.window("v2", 1, T0 + 300.0).requests == 4
    assert series.window("v2", 300, T0 + 299).requests == 3
    assert series.window("v2", 300, T0 + 300).since == T0 + 1
    # Out of order: an earlier `now` still lands in its own second.
    series.ingest("v2", observation(8), T0 + 150.0)
    assert series.window("v2", 1, T0 + 150).requests == 8
    assert series.window("v3", 300, T0 + 300).requests == 0


def test_windows_longer_than_the_horizon_are_refused() -> None:
    series = VersionSeries(horizon_s=HOUR)
    template = SloBurnTemplate("errors", 0.999, (BurnWindow(6 * HOUR, 1800, 6),))
    with pytest.raises(ValueError, match="exceeds the series horizon 1h"):
        judge_slo_burn(series, "v2", "v1", template, T0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=25), min_size=BUCKETS, max_size=BUCKETS),
    st.lists(st.integers(min_value=0, max_value=25), min_size=BUCKETS, max_size=BUCKETS),
)
def test_binned_mann_whitney_matches_scipy_on_expanded_samples(
    counts_a: list[int], counts_b: list[int]
) -> None:
    assume(sum(counts_a) > 0 and sum(counts_b) > 0)
    # Every sample tied (one bin in use) has no variance: scipy returns NaN, the judge 1.0.
    assume(sum(1 for a, b in zip(counts_a, counts_b, strict=True) if a + b) > 1)
    values = np.arange(BUCKETS, dtype=np.float64)
    expected = scipy.stats.mannwhitneyu(
        np.repeat(values, counts_a),
        np.repeat(values, counts_b),
        alternative="greater",
        method="asymptotic",
        use_continuity=True,
    ).pvalue
    assert mann_whitney_binned_greater_pvalue(counts_a, counts_b) == pytest.approx(
        float(expected), abs=1e-9
    )


def test_binned_mann_whitney_without_variance_gives_no_evidence() -> None:
    empty = [0] * BUCKETS
    one_bin = [0] * BUCKETS
    one_bin[3] = 7
    assert mann_whitney_binned_greater_pvalue(empty, one_bin) == 1.0
    assert mann_whitney_binned_greater_pvalue(one_bin, one_bin) == 1.0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
)
def test_fisher_greater_matches_scipy(good_a: int, bad_a: int, good_b: int, bad_b: int) -> None:
    assume(good_a + bad_a > 0 and good_b + bad_b > 0)
    expected = scipy.stats.fisher_exact([[bad_a, good_a], [bad_b, good_b]], alternative="greater")
    got = fisher_greater_pvalue(bad_a, bad_a + good_a, bad_b, bad_b + good_b)
    assert got == pytest.approx(float(expected.pvalue), rel=1e-9, abs=1e-12)


def test_stable_burning_just_as_much_makes_the_verdict_inconclusive() -> None:
    """A provider outage: both versions at 5% errors; the candidate is not to blame."""
    series = VersionSeries()
    feed(series, "v1", T0 - HOUR, T0 + HOUR, requests=20, errors=1)  # stable, before and during
    feed(series, "v2", T0 + 1800, T0 + HOUR, requests=20, errors=1)  # canary, last 30 minutes
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + HOUR - 1)
    values = metrics(verdict.measurements)
    assert values["burn_rate:1h"] == pytest.approx(50.0)
    assert values["errors_vs_stable_p"] >= 0.05
    assert verdict.outcome == "inconclusive", verdict.message
    assert verdict.message.startswith("both versions burn: burn rate 50 > 14.4 over 1h and 5m")
    assert verdict.message.endswith("not the candidate's doing)")


def test_stable_from_before_the_canary_started_does_not_dilute_the_baseline() -> None:
    """Stable was clean until the outage that began with the canary: still not the canary's doing.

    Over the whole hour stable's error rate is half the candidate's; over the seconds the
    candidate served, the two match.
    """
    series = VersionSeries()
    feed(series, "v1", T0, T0 + 1800, requests=20)
    feed(series, "v1", T0 + 1800, T0 + HOUR, requests=20, errors=2)
    feed(series, "v2", T0 + 1800, T0 + HOUR, requests=20, errors=2)
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + HOUR - 1)
    assert verdict.outcome == "inconclusive", verdict.message


def test_twenty_percent_errors_against_half_a_percent_over_2000_requests_fails() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 200, requests=100, errors=20, every_s=10)  # 2,000 requests
    feed(series, "v1", T0, T0 + 200, requests=200, errors=1, every_s=10)  # 4,000 requests, 0.5%
    template = SloBurnTemplate("errors", 0.99, (BurnWindow(HOUR, FIVE_MINUTES, 14.4),))
    verdict = judge_slo_burn(series, "v2", "v1", template, T0 + 199)
    values = metrics(verdict.measurements)
    assert values["request_count"] == 2000
    assert values["burn_rate:1h"] == pytest.approx(20.0)
    assert values["errors_vs_stable_p"] < 1e-100
    assert verdict.outcome == "failed", verdict.message
    assert "candidate worse than stable" in verdict.message


def test_a_burning_candidate_without_a_stable_baseline_fails() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 600, requests=10, errors=5)
    feed(series, "v1", T0, T0 + 50, requests=1)
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + 599)
    assert verdict.outcome == "failed"
    assert metrics(verdict.measurements)["stable_request_count"] == 5
    assert "stable has too few requests to compare (5 < 100)" in verdict.message


def test_a_burning_candidate_not_significantly_worse_is_inconclusive() -> None:
    """Two errors in 100 requests burn 20x a 99.9% objective, but stable's one in 100 is no
    evidence that the candidate is worse."""
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 100, requests=10, errors=0)
    series.ingest("v2", observation(0, 0), T0 + 100)
    series.ingest("v2", observation(2, 2), T0 + 101)
    feed(series, "v1", T0, T0 + 100, requests=10, errors=0)
    series.ingest("v1", observation(1, 1), T0 + 101)
    verdict = judge_slo_burn(series, "v2", "v1", ERRORS_999, T0 + 101)
    assert verdict.outcome == "inconclusive", verdict.message
    assert "too little traffic to blame it" in verdict.message


def test_latency_counts_a_bucket_straddling_the_threshold_as_bad() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 100, requests=10, latency_ms=900.0)  # bucket (750, 1000]
    on_bound = SloBurnTemplate("latency", 0.99, FAST_WINDOWS, latency_threshold_ms=1000.0)
    inside = SloBurnTemplate("latency", 0.99, FAST_WINDOWS, latency_threshold_ms=950.0)
    assert judge_slo_burn(series, "v2", "v1", on_bound, T0 + 99).outcome == "passed"
    straddling = judge_slo_burn(series, "v2", "v1", inside, T0 + 99)
    assert metrics(straddling.measurements)["burn_rate:1h"] == pytest.approx(100.0)
    assert straddling.outcome == "failed"  # and no stable baseline


def test_slower_candidate_fails_on_latency_against_stable() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 600, requests=10, latency_ms=2500.0)
    feed(series, "v1", T0, T0 + 600, requests=10, latency_ms=400.0)
    template = SloBurnTemplate("latency", 0.95, FAST_WINDOWS, latency_threshold_ms=1000.0)
    verdict = judge_slo_burn(series, "v2", "v1", template, T0 + 599)
    assert metrics(verdict.measurements)["latency_vs_stable_p"] < 1e-10
    assert verdict.outcome == "failed", verdict.message


def test_no_nan_in_measurements_when_a_window_has_zero_requests() -> None:
    series = VersionSeries()
    feed(series, "v2", T0, T0 + 600, requests=10, errors=5)  # nothing in the last 5 minutes
    for indicator in ("errors", "latency"):
        template = SloBurnTemplate(indicator, 0.999, FAST_WINDOWS, latency_threshold_ms=100.0)
        verdict = judge_slo_burn(series, "v2", "no-such-stable", template, T0 + 1200)
        values = metrics(verdict.measurements)
        assert values["burn_rate:5m"] == 0.0
        assert all(math.isfinite(value) for value in values.values()), values
        assert verdict.outcome == "passed"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["v1", "v2"]),
            st.integers(min_value=0, max_value=3599),
            st.integers(min_value=0, max_value=60),
            st.integers(min_value=0, max_value=60),
            st.sampled_from([None, 20.0, 800.0, 90_000.0]),
        ),
        max_size=40,
    ),
    st.sampled_from(["errors", "latency"]),
    st.integers(min_value=0, max_value=200),
)
def test_no_nan_in_measurements_for_any_traffic(
    reports: list[tuple[str, int, int, int, float | None]], indicator: str, minimum: int
) -> None:
    series = VersionSeries()
    for version, offset, requests, errors, latency_ms in sorted(reports, key=lambda r: r[1]):
        series.ingest(version, observation(requests, errors, latency_ms), T0 + offset)
    template = SloBurnTemplate(
        "errors" if indicator == "errors" else "latency",
        0.999,
        (BurnWindow(HOUR, FIVE_MINUTES, 14.4), BurnWindow(1800, 60, 6.0)),
        latency_threshold_ms=500.0,
        min_request_count=minimum,
    )
    verdict = judge_slo_burn(series, "v2", "v1", template, T0 + 3599)
    assert verdict.outcome in ("passed", "failed", "inconclusive")
    assert "\n" not in verdict.message
    for measurement in verdict.measurements:
        assert math.isfinite(measurement.value), measurement
        assert math.isfinite(measurement.limit), measurement


def test_coarse_buckets_keep_a_long_horizon_in_bounded_memory() -> None:
    series = VersionSeries(horizon_s=86400, bucket_s=60)
    for minute in range(3 * 1440):  # three days, one report a minute
        series.ingest("v2", observation(1), T0 + 60 * minute)
    assert series.bucket_count("v2") == 1440
    now = T0 + 60 * (3 * 1440 - 1)
    assert series.window("v2", HOUR, now).requests == 60
    assert series.window("v2", 86400, now).requests == 1440


def test_the_comparison_uses_the_same_buckets_for_both_versions_with_coarse_buckets() -> None:
    series = VersionSeries(horizon_s=6 * HOUR, bucket_s=60)
    feed(series, "v1", T0, T0 + 2 * HOUR, requests=20)
    feed(series, "v1", T0 + 2 * HOUR, T0 + 3 * HOUR, requests=20, errors=2)
    feed(series, "v2", T0 + 2 * HOUR, T0 + 3 * HOUR, requests=20, errors=2)
    template = SloBurnTemplate("errors", 0.999, (BurnWindow(6 * HOUR, HOUR, 14.4),))
    verdict = judge_slo_burn(series, "v2", "v1", template, T0 + 3 * HOUR - 1)
    assert verdict.outcome == "inconclusive", verdict.message


def test_expiry_touches_only_the_buckets_that_expire() -> None:
    series = VersionSeries(horizon_s=60)
    for version in range(20_000):
        series.ingest(f"v{version}", observation(1), T0)
    assert series.bucket_count() == 20_000
    # A batch of observations in the same second walks no version: expiry runs once a bucket.
    for _ in range(1000):
        series.ingest("v0", observation(1), T0 + 30)
    assert series.bucket_count() == 20_001
    # Past the horizon every version of T0 goes, the one still reporting stays.
    series.ingest("v0", observation(1), T0 + 61)
    assert series.bucket_count() == 2
    assert series.window("v0", 60, T0 + 61).requests == 1001
    assert series.window("v1", 60, T0 + 61).requests == 0
    # An observation from before the horizon is not kept.
    series.ingest("v1", observation(1), T0)
    assert series.bucket_count("v1") == 0


def test_forged_counts_past_int64_are_clamped_not_raised() -> None:
    huge = 2**70
    histogram = Histogram()
    histogram.counts = [huge] * BUCKETS
    forged = Observation(
        deployment_id="d1",
        project="projects/p",
        end_time=0.0,
        request_count=huge,
        latency=histogram,
        error_counts={"http_5xx": huge, "timeout": huge},
    )
    series = VersionSeries(horizon_s=HOUR)
    for second in range(100):
        for _ in range(3):  # the same bucket, summed past 2**63 without the clamp
            series.ingest("v2", forged, T0 + second)
    stats = series.window("v2", HOUR, T0 + 99)
    assert 0 < stats.requests < 2**63
    assert stats.errors <= stats.requests
    assert all(0 < count < 2**63 for count in stats.latency_counts)
    assert series.window("v2", 1, T0 + 99).requests == 2**53
