"""Attempt outcomes -> breakers now, and windowed observations for the control plane.

Each attempt on a deployment ends in one `observe` call (never per token). The deployment's
breaker hears the outcome at once. The outcome is also added to the current observation of its
(project, deployment): counts, latency and TTFT histograms, tokens and cost. `flush` hands the
observations gathered since the last flush to the sink, every `report_interval_s`: in the
embedded default the sink is the in-process RouteService, which folds them into the live signals
routing reads; a separate data plane would send them on RouteService.ReportObservations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from opentelemetry import metrics

from maestro.core.tallies import Tally
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
        self._current: dict[tuple[str, str], Observation] = {}
        self._attempts = Tally(
            meter,
            "maestro.inference.attempts",
            "Attempts on deployments, by deployment and outcome.",
        )
        self._transitions = meter.create_counter(
            "maestro.inference.breaker_transitions",
            description="Circuit breaker state changes, by deployment and new state.",
        )

    def breaker(self, state_key: str, calls: CallSettings | None = None) -> CircuitBreaker:
        """The breaker of a deployment's `state_key` (`DeploymentSpec.state_key`); `calls`:
        the deployment's settings from its config (allowed fails, cooldown)."""
        breaker = self._breakers.get(state_key)
        if breaker is None:
            breaker = CircuitBreaker(state_key, self._settings, self._on_transition, self._clock)
            self._breakers[state_key] = breaker
        return breaker

    def _on_transition(self, transition: Transition) -> None:
        log.warning(
            "inference.breaker_transition",
            deployment_id=transition.deployment_id,
            from_state=transition.from_state.value,
            to_state=transition.to_state.value,
        )
        self._transitions.add(
            1,
            {"maestro.deployment_id": transition.deployment_id, "state": transition.to_state.value},
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
    ) -> None:
        """One attempt's outcome; `failure` None for a success, `failure_class` its LiteLLM
        exception class (`spec.FAILURE_CLASSES`), `calls` the deployment's call settings. The
        breaker is `state_key`'s (`DeploymentSpec.state_key`), the observation the project's
        own deployment's."""
        if failure not in (FailureKind.BREAKER_OPEN, FailureKind.REQUEST_REJECTED):
            # A lane that sheds answered at once: it is up, just full. Counting sheds as
            # failures would open its breaker and turn "full" into "down" (UNAVAILABLE for work
            # that may only run there, instead of RESOURCE_EXHAUSTED once it has room).
            self.breaker(state_key).record(failure is None or failure is FailureKind.SATURATED)
        self._attempts.add(
            1,
            (
                ("maestro.deployment_id", deployment_id),
                ("outcome", "ok" if failure is None else failure.value),
            ),
        )
        key = (parent, deployment_id)
        observation = self._current.get(key)
        if observation is None:
            observation = self._current[key] = Observation(
                deployment_id, parent, 0.0, node_id=self._node_id
            )
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
        batch = list(self._current.values())
        self._current = {}
        for observation in batch:
            observation.end_time = now
            breaker = self._breakers.get(observation.deployment_id)
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
