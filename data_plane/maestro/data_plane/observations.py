"""Attempt outcomes -> breakers now, and windowed observations for the control plane.

Each attempt on a deployment ends in one `observe` call (never per token). The deployment's
breaker hears the outcome at once; its settings are the data plane's (`data_plane.breaker_*`)
with the deployment's LiteLLM `allowed_fails`, `allowed_fails_policy` and `cooldown_time` over
them where its config sets them, taken again whenever they change (a config re-applied). The
outcome is also added to the current observation of its (project, deployment, artifact version):
counts, latency and TTFT histograms, tokens and cost. The artifact version is the call's (empty
for a call that named no artifact), so SLO burn can be computed per rollout candidate. `flush`
hands the observations gathered since the last flush to the sink, every `report_interval_s`: in
the embedded default the sink is the in-process RouteService, which folds them into the live
signals routing reads; a separate data plane would send them on RouteService.ReportObservations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import replace

import structlog
from opentelemetry import metrics

from maestro.core.tallies import (
    DEPLOYMENT_SERIES_PER_PROJECT,
    LabelCap,
    Tally,
    deployment_group,
)
from maestro.data_plane.breaker import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Clock,
    Transition,
)
from maestro.data_plane.providers.types import FailureKind
from maestro.routing.signals import Breaker, Observation, error_key
from maestro.routing.spec import CallSettings

log = structlog.get_logger(__name__)

ObservationSink = Callable[[list[Observation]], object]
BreakerListener = Callable[[str, bool], None]
"""Told (deployment id, is_open) on every breaker transition."""
CALL_ARTIFACT_VERSION: ContextVar[str] = ContextVar("maestro_call_artifact_version", default="")
"""The artifact version of the call whose relay is running: the relay observes attempts by
deployment and knows nothing of artifacts, so InferenceService sets this around each step of a
call's relay (set and reset within one step: never leaks into another call) and `observe`
reads it when not told the version."""
_NOT_CHARGED = frozenset(
    {FailureKind.BREAKER_OPEN, FailureKind.DEPLOYMENT_LIMIT, FailureKind.REQUEST_REJECTED}
)
"""Failures that say nothing of the deployment's health: the attempt never reached it (its
breaker was open, or one of its own rpm/tpm/parallel limits was reached), or the provider
refused the request itself (the caller's doing: a tenant could otherwise open a shared breaker
with requests made to fail)."""
_BREAKER_STATES = {
    BreakerState.CLOSED: Breaker.CLOSED,
    BreakerState.OPEN: Breaker.OPEN,
    BreakerState.HALF_OPEN: Breaker.HALF_OPEN,
}


class Observer:
    def __init__(
        self,
        settings: BreakerSettings,
        meter: metrics.Meter,
        *,
        node_id: str,
        sink: ObservationSink,
        on_breaker: BreakerListener,
        clock: Clock = time.monotonic,
    ) -> None:
        """`clock` is the breakers' (monotonic seconds; a fake one in tests)."""
        self._settings = settings
        self._clock = clock
        self._node_id = node_id
        self._sink = sink
        self._on_breaker = on_breaker
        self._breakers: dict[str, CircuitBreaker] = {}
        self.series = LabelCap(DEPLOYMENT_SERIES_PER_PROJECT)
        """The deployments with series of their own (shared with the inference service's)."""
        self._current: dict[tuple[str, str, str], Observation] = {}
        """By (project, deployment id, artifact version)."""
        self._state_keys: dict[tuple[str, str, str], str] = {}
        """The breaker's key of each current observation's deployment."""
        self._attempts = Tally(
            meter,
            "maestro.inference.attempts",
            "Attempts on deployments, by deployment (state key) and outcome.",
        )
        self._transitions = meter.create_counter(
            "maestro.inference.breaker_transitions",
            description="Circuit breaker state changes, by deployment and new state.",
        )
        meter.create_observable_gauge(
            "maestro.inference.breaker_state",
            callbacks=[self._observe_breakers],
            description="Each circuit breaker's state: 1 for its current state (closed, open, "
            "half_open), 0 for the others.",
        )

    def breaker(self, state_key: str, calls: CallSettings | None = None) -> CircuitBreaker:
        """The breaker of a deployment's `state_key` (`DeploymentSpec.state_key`); `calls`:
        the deployment's settings from its config (allowed fails, cooldown): a breaker built
        with others takes them, keeping its state. None: as it is (the defaults if new)."""
        breaker = self._breakers.get(state_key)
        if breaker is None:
            settings = self._settings if calls is None else self._settings_for(calls)
            breaker = CircuitBreaker(state_key, settings, self._on_transition, self._clock)
            self._breakers[state_key] = breaker
        elif calls is not None and self._differ(breaker.settings, calls):
            breaker.reconfigure(self._settings_for(calls))
        return breaker

    def _settings_for(self, calls: CallSettings) -> BreakerSettings:
        """The data plane's breaker settings with the deployment's config over them."""
        return replace(
            self._settings,
            open_s=self._settings.open_s if calls.cooldown_s is None else calls.cooldown_s,
            allowed_fails=calls.allowed_fails,
            allowed_fails_by_class=calls.allowed_fails_by_class,
        )

    def _differ(self, settings: BreakerSettings, calls: CallSettings) -> bool:
        """Whether `calls` would change `settings`: a few comparisons, no allocation, as this
        runs on every attempt."""
        open_s = self._settings.open_s if calls.cooldown_s is None else calls.cooldown_s
        return (
            settings.open_s != open_s
            or settings.allowed_fails != calls.allowed_fails
            or settings.allowed_fails_by_class != calls.allowed_fails_by_class
        )

    def _observe_breakers(self, _: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        """At collection, off the request path: one series per (breaker, state)."""
        return [
            metrics.Observation(
                1 if breaker.state is state else 0,
                {"maestro.deployment_id": state_key, "state": state.value},
            )
            for state_key, breaker in list(self._breakers.items())
            if self.series.admits(deployment_group(state_key), state_key)
            for state in BreakerState
        ]

    def _on_transition(self, transition: Transition) -> None:
        log.warning(
            "inference.breaker_transition",
            deployment_id=transition.deployment_id,
            from_state=transition.from_state.value,
            to_state=transition.to_state.value,
        )
        key = transition.deployment_id  # the breaker's state key
        self._transitions.add(
            1,
            {
                "maestro.deployment_id": self.series(deployment_group(key), key),
                "state": transition.to_state.value,
            },
        )
        self._on_breaker(transition.deployment_id, transition.to_state is BreakerState.OPEN)

    def observe(
        self,
        parent: str,
        deployment_id: str,
        state_key: str,
        failure: FailureKind | None,
        *,
        duration_s: float,
        ttft_s: float | None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
        failure_class: str | None = None,
        calls: CallSettings | None = None,
        artifact_version: str | None = None,
    ) -> None:
        """One attempt's outcome; `failure` None for a success, `failure_class` its LiteLLM
        exception class (`spec.FAILURE_CLASSES`), `calls` the deployment's call settings,
        `artifact_version` the call's (None: `CALL_ARTIFACT_VERSION`). The breaker is
        `state_key`'s (`DeploymentSpec.state_key`), the observation the project's own
        deployment's for that artifact version."""
        if failure not in _NOT_CHARGED:
            # A lane that sheds answered at once: it is up, just full. Counting sheds as
            # failures would open its breaker and turn "full" into "down" (UNAVAILABLE for work
            # that may only run there, instead of RESOURCE_EXHAUSTED once it has room).
            ok = failure is None or failure is FailureKind.SATURATED
            self.breaker(state_key, calls).record(ok, None if ok else failure_class)
        self._attempts.add(
            1,
            (
                # The state key, as breakers, in-flight counts and lanes are labelled: one series
                # per deployment however many projects route to it, and two tenants' deployments
                # of the same id never merge (capped per project: `deployment_series`).
                ("maestro.deployment_id", self.series(deployment_group(state_key), state_key)),
                ("outcome", "ok" if failure is None else failure.value),
            ),
        )
        if artifact_version is None:
            artifact_version = CALL_ARTIFACT_VERSION.get()
        key = (parent, deployment_id, artifact_version)
        observation = self._current.get(key)
        if observation is None:
            observation = self._current[key] = Observation(
                deployment_id,
                parent,
                0.0,
                node_id=self._node_id,
                artifact_version=artifact_version,
            )
            self._state_keys[key] = state_key
        observation.request_count += 1
        if failure is None:
            observation.latency.record(duration_s * 1000)
        else:
            name = error_key(failure.value)
            observation.error_counts[name] = observation.error_counts.get(name, 0) + 1
        if ttft_s is not None:
            observation.time_to_first_token.record(ttft_s * 1000)
        observation.prompt_tokens += prompt_tokens
        observation.completion_tokens += completion_tokens
        observation.cost_usd += cost_usd

    def flush(self) -> list[Observation]:
        """Hand what was observed since the last flush to the sink; returns it."""
        if not self._current:
            return []
        now = time.time()
        current, state_keys = self._current, self._state_keys
        self._current, self._state_keys = {}, {}
        batch = list(current.values())
        for key, observation in current.items():
            observation.end_time = now
            breaker = self._breakers.get(state_keys[key])
            if breaker is not None:
                observation.breaker_state = _BREAKER_STATES[breaker.state]
        self._sink(batch)
        return batch

    async def report_forever(self, interval_s: float) -> None:
        """Flush every `interval_s` until cancelled; a failing sink is logged, not fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.flush()
            except Exception:
                log.exception("inference.observations_flush_failed")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()
        for breaker in self._breakers.values():
            breaker.close_timers()
