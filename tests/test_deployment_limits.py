"""A deployment's own LiteLLM limits, unit by unit, on fake clocks: `allowed_fails`,
`allowed_fails_policy` and `cooldown_time` on its circuit breaker (through the Observer, which
maps a deployment's CallSettings onto it), and `rpm`, `tpm` and `max_parallel_requests` in
Admission. Nothing here sleeps: the tests move the clocks by hand."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from opentelemetry import metrics

from maestro.data_plane.admission import SHORT_RETRY_S, WINDOW_S, Admission
from maestro.data_plane.breaker import BreakerSettings, BreakerState
from maestro.data_plane.observations import Observer
from maestro.data_plane.providers.types import FailureKind
from maestro.routing.spec import CallSettings, DeploymentSpec
from tests.clock_support import FakeClock

# The failure ratio never opens these breakers: what opens them is the deployment's own rule.
DEFAULTS = BreakerSettings(window=100, min_calls=100, failure_ratio=1.0, open_s=5.0, probes=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def observer(clock: FakeClock) -> Iterator[Observer]:
    observer = Observer(
        DEFAULTS,
        metrics.NoOpMeterProvider().get_meter("test"),
        node_id="n",
        sink=lambda batch: None,
        on_breaker=lambda deployment_id, is_open: None,
        clock=clock,
    )
    yield observer
    observer.close()


def _fail(
    observer: Observer,
    calls: CallSettings,
    failure_class: str | None = None,
    kind: FailureKind = FailureKind.PROVIDER_ERROR,
) -> None:
    observer.observe(
        "projects/p",
        "d",
        "d",
        kind,
        duration_s=0.1,
        ttft_s=None,
        failure_class=failure_class,
        calls=calls,
    )


# -- allowed_fails, allowed_fails_policy, cooldown_time -------------------------------------------


async def test_allowed_fails_opens_the_breaker_at_the_failure_past_it_within_a_minute(
    observer: Observer, clock: FakeClock
) -> None:
    calls = CallSettings(allowed_fails=2)
    for _ in range(2):
        _fail(observer, calls)
        clock.advance(10)
    assert observer.breaker("d").state is BreakerState.CLOSED
    _fail(observer, calls)
    assert observer.breaker("d").state is BreakerState.OPEN


async def test_allowed_fails_spread_over_more_than_a_minute_do_not_open_the_breaker(
    observer: Observer, clock: FakeClock
) -> None:
    calls = CallSettings(allowed_fails=2)
    for _ in range(6):
        _fail(observer, calls)
        clock.advance(30)  # three failures always span a full minute
    assert observer.breaker("d").state is BreakerState.CLOSED


async def test_allowed_fails_zero_opens_the_breaker_at_the_first_failure(
    observer: Observer,
) -> None:
    _fail(observer, CallSettings(allowed_fails=0))
    assert observer.breaker("d").state is BreakerState.OPEN


async def test_cooldown_time_is_the_open_period(observer: Observer, clock: FakeClock) -> None:
    calls = CallSettings(allowed_fails=0, cooldown_s=30.0)
    _fail(observer, calls)
    breaker = observer.breaker("d", calls)
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


async def test_allowed_fails_policy_counts_a_listed_class_against_its_own_number(
    observer: Observer,
) -> None:
    calls = CallSettings(allowed_fails=0, allowed_fails_by_class={"RateLimitError": 3})
    for _ in range(3):
        _fail(observer, calls, "RateLimitError")
    assert observer.breaker("d").state is BreakerState.CLOSED
    _fail(observer, calls, "RateLimitError")
    assert observer.breaker("d").state is BreakerState.OPEN


async def test_allowed_fails_policy_leaves_other_classes_to_allowed_fails(
    observer: Observer,
) -> None:
    calls = CallSettings(allowed_fails=1, allowed_fails_by_class={"RateLimitError": 10})
    for _ in range(5):
        _fail(observer, calls, "RateLimitError")  # not counted against allowed_fails
    _fail(observer, calls, "InternalServerError")
    assert observer.breaker("d").state is BreakerState.CLOSED
    _fail(observer, calls, None)  # a failure of no known class counts there too
    assert observer.breaker("d").state is BreakerState.OPEN


async def test_failures_that_are_not_the_deployments_fault_do_not_count_against_allowed_fails(
    observer: Observer,
) -> None:
    calls = CallSettings(allowed_fails=0)
    for kind in (
        FailureKind.BREAKER_OPEN,
        FailureKind.REQUEST_REJECTED,
        FailureKind.DEPLOYMENT_LIMIT,
        FailureKind.SATURATED,
    ):
        _fail(observer, calls, "BadRequestError", kind)
    assert observer.breaker("d").state is BreakerState.CLOSED


async def test_reapplied_settings_update_the_existing_breaker_and_keep_its_counts(
    observer: Observer,
) -> None:
    breaker = observer.breaker("d", CallSettings(allowed_fails=5))
    for _ in range(2):
        _fail(observer, CallSettings(allowed_fails=5))
    tighter = CallSettings(allowed_fails=2)
    assert observer.breaker("d", tighter) is breaker
    assert breaker.settings.allowed_fails == 2
    _fail(observer, tighter)  # the third failure in the minute
    assert breaker.state is BreakerState.OPEN


async def test_a_reapplied_cooldown_shortens_an_open_period_counted_from_its_start(
    observer: Observer, clock: FakeClock
) -> None:
    _fail(observer, CallSettings(allowed_fails=0, cooldown_s=600.0))
    clock.advance(10)
    breaker = observer.breaker("d", CallSettings(allowed_fails=0, cooldown_s=10.0))
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow()  # 10 s since it opened: the new open period is over


async def test_a_silent_config_gives_the_data_planes_settings_back(observer: Observer) -> None:
    observer.breaker("d", CallSettings(allowed_fails=0, cooldown_s=60.0))
    assert observer.breaker("d").settings.open_s == 60.0  # no settings given: kept
    assert observer.breaker("d", CallSettings()).settings == DEFAULTS
    _fail(observer, CallSettings())
    assert observer.breaker("d").state is BreakerState.CLOSED  # allowed_fails is gone


async def test_a_shrunk_window_keeps_its_most_recent_outcomes(clock: FakeClock) -> None:
    observer = Observer(
        replace(DEFAULTS, window=4, min_calls=3, failure_ratio=0.5),
        metrics.NoOpMeterProvider().get_meter("test"),
        node_id="n",
        sink=lambda batch: None,
        on_breaker=lambda deployment_id, is_open: None,
        clock=clock,
    )
    breaker = observer.breaker("d")
    for ok in (False, False, True, True):
        breaker.record(ok)
    breaker.reconfigure(replace(breaker.settings, window=3))  # keeps False, True, True
    breaker.record(False)  # True, True, False: 1 of 3 (with the old window, 2 of 4 opens)
    assert breaker.state is BreakerState.CLOSED
    observer.close()


# -- rpm, tpm, max_parallel_requests ---------------------------------------------------------------


def _deployment(
    owner: str = "",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    max_parallel_requests: int | None = None,
) -> DeploymentSpec:
    return DeploymentSpec(
        deployment_id="d",
        model_name="m",
        litellm_model="openai/gpt-4o",
        provider="openai",
        api_base=None,
        api_key=None,
        quality=0.5,
        jurisdiction="us",
        in_house=False,
        input_cost_per_token=None,
        output_cost_per_token=None,
        max_input_tokens=None,
        expected_p95_latency_ms=1000.0,
        calls=CallSettings(rpm=rpm, tpm=tpm, max_parallel_requests=max_parallel_requests),
        owner=owner,
    )


def test_rpm_refuses_the_attempt_past_it_and_admits_again_as_the_minute_moves(
    clock: FakeClock,
) -> None:
    admission, deployment = Admission(clock), _deployment(rpm=2)
    assert admission.enter(deployment, 10) is not None
    clock.advance(10)
    assert admission.enter(deployment, 10) is not None
    clock.advance(10)
    assert admission.enter(deployment, 10) is None
    clock.advance(WINDOW_S - 20)  # the first attempt leaves the window
    assert admission.enter(deployment, 10) is not None
    assert admission.enter(deployment, 10) is None


def test_a_refused_attempt_is_not_counted(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(rpm=1, max_parallel_requests=5)
    ticket = admission.enter(deployment, 10)
    assert ticket is not None
    for _ in range(10):
        assert admission.enter(deployment, 10) is None
    ticket.release(10)
    clock.advance(WINDOW_S)
    assert admission.enter(deployment, 10) is not None


def test_tpm_counts_the_estimate_until_release_corrects_it(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(tpm=100)
    first = admission.enter(deployment, 60)
    assert first is not None
    assert admission.enter(deployment, 50) is None  # 60 + 50 > 100
    first.release(30)
    assert admission.enter(deployment, 50) is not None  # 30 + 50
    assert admission.enter(deployment, 30) is None  # 80 + 30
    assert admission.enter(deployment, 20) is not None  # 80 + 20: exactly the limit
    clock.advance(WINDOW_S)
    assert admission.enter(deployment, 100) is not None


def test_tpm_admits_an_attempt_larger_than_the_whole_limit_only_alone(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(tpm=100)
    assert admission.enter(deployment, 500) is not None
    assert admission.enter(deployment, 1) is None
    clock.advance(WINDOW_S)
    assert admission.enter(deployment, 1) is not None


def test_a_release_after_the_attempt_left_the_window_changes_no_count(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(tpm=100)
    long_attempt = admission.enter(deployment, 90)
    assert long_attempt is not None
    clock.advance(WINDOW_S)
    assert admission.enter(deployment, 90) is not None
    long_attempt.release(10_000)
    assert admission.enter(deployment, 10) is not None  # 90 + 10: the 10,000 went nowhere


def test_max_parallel_refuses_while_full_and_admits_once_a_ticket_is_released() -> None:
    admission, deployment = Admission(FakeClock()), _deployment(max_parallel_requests=2)
    first = admission.enter(deployment, 1)
    assert first is not None
    assert admission.enter(deployment, 1) is not None
    assert admission.enter(deployment, 1) is None
    first.release(1)
    first.release(1)  # a second release frees nothing more
    assert admission.enter(deployment, 1) is not None
    assert admission.enter(deployment, 1) is None


def test_limits_are_read_at_each_enter(clock: FakeClock) -> None:
    admission = Admission(clock)
    assert admission.enter(_deployment(rpm=1), 1) is not None
    assert admission.enter(_deployment(rpm=1), 1) is None
    assert admission.enter(_deployment(rpm=2), 1) is not None  # the config was re-applied


def test_counts_are_shared_by_state_key_not_by_deployment_id(clock: FakeClock) -> None:
    admission = Admission(clock)
    operators, tenants = _deployment(rpm=1), _deployment(owner="t", rpm=1)
    assert admission.enter(operators, 1) is not None
    assert admission.enter(_deployment(rpm=1), 1) is None  # another project's view of it
    assert admission.enter(tenants, 1) is not None  # a tenant's "d" is its own


def test_a_deployment_without_limits_gets_one_shared_ticket() -> None:
    admission, deployment = Admission(FakeClock()), _deployment()
    ticket = admission.enter(deployment, 10**9)
    assert ticket is not None
    assert admission.enter(deployment, 10**9) is ticket  # nothing allocated, nothing counted
    ticket.release(5)
    assert admission.retry_after_s(deployment) == SHORT_RETRY_S


def test_retry_after_is_when_the_oldest_attempt_leaves_a_full_rpm_window(
    clock: FakeClock,
) -> None:
    admission, deployment = Admission(clock), _deployment(rpm=2)
    admission.enter(deployment, 1)
    clock.advance(15)
    admission.enter(deployment, 1)
    clock.advance(5)
    assert admission.retry_after_s(deployment) == pytest.approx(WINDOW_S - 20)


def test_retry_after_is_when_the_oldest_attempt_leaves_a_tpm_window_without_room(
    clock: FakeClock,
) -> None:
    admission, deployment = Admission(clock), _deployment(tpm=100)
    admission.enter(deployment, 70)
    clock.advance(50)
    assert admission.retry_after_s(deployment, estimated_tokens=10) == SHORT_RETRY_S  # it fits
    assert admission.retry_after_s(deployment, estimated_tokens=40) == pytest.approx(10.0)


def test_retry_after_is_short_when_only_parallelism_is_full(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(rpm=10, max_parallel_requests=1)
    admission.enter(deployment, 1)
    assert admission.enter(deployment, 1) is None
    assert admission.retry_after_s(deployment) == SHORT_RETRY_S


def test_retry_after_is_never_less_than_the_short_hint(clock: FakeClock) -> None:
    admission, deployment = Admission(clock), _deployment(rpm=1)
    admission.enter(deployment, 1)
    clock.advance(WINDOW_S - 0.01)
    assert admission.retry_after_s(deployment) == SHORT_RETRY_S
