"""Attempt outcomes -> live routing signals, breakers and metrics.

Each attempt on a deployment ends in one `observe` call (never per token). Latency is a p95
over the last `_WINDOW` attempts, recomputed every `_EVERY` samples; error rate and TTFT are
exponentially weighted. The routing engine reads them on the next decision, so a deployment
that slows down or fails loses traffic before its breaker opens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import structlog
from opentelemetry import metrics

from maestro.control_plane.route.service import RouteService
from maestro.data_plane.breaker import BreakerSettings, BreakerState, CircuitBreaker, Transition
from maestro.data_plane.providers.types import FailureKind

log = structlog.get_logger(__name__)

_WINDOW = 64
_EVERY = 8
_ALPHA = 0.1


@dataclass(slots=True)
class _Stats:
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    error_rate: float = 0.0
    ttft_ms: float = 0.0
    pending: int = 0


class Observer:
    def __init__(
        self, routes: RouteService, settings: BreakerSettings, meter: metrics.Meter
    ) -> None:
        self._routes = routes
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._settings = settings
        self._attempts = meter.create_counter(
            "maestro.inference.attempts",
            description="Attempts on deployments, by deployment and outcome.",
        )
        self._transitions = meter.create_counter(
            "maestro.inference.breaker_transitions",
            description="Circuit breaker state changes, by deployment and new state.",
        )

    def breaker(self, deployment_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(deployment_id)
        if breaker is None:
            breaker = CircuitBreaker(deployment_id, self._settings, self._on_transition)
            self._breakers[deployment_id] = breaker
        return breaker

    def breaker_state(self, deployment_id: str) -> BreakerState:
        breaker = self._breakers.get(deployment_id)
        return breaker.state if breaker else BreakerState.CLOSED

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
        self._routes.set_breaker_open(
            transition.deployment_id, transition.to_state is BreakerState.OPEN
        )

    def observe(
        self,
        parent: str,
        deployment_id: str,
        failure: FailureKind | None,
        *,
        duration_s: float,
        ttft_s: float | None,
    ) -> None:
        """One attempt's outcome; `failure` None for a success."""
        breaker = self.breaker(deployment_id)
        if failure is not FailureKind.BREAKER_OPEN:
            breaker.record(failure is None)
        self._attempts.add(
            1,
            {
                "maestro.deployment_id": deployment_id,
                "outcome": "ok" if failure is None else failure.value,
            },
        )
        key = (parent, deployment_id)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _Stats()
        stats.error_rate += _ALPHA * ((failure is not None) - stats.error_rate)
        if ttft_s is not None:
            ms = ttft_s * 1000
            stats.ttft_ms = (
                ms if not stats.ttft_ms else stats.ttft_ms + _ALPHA * (ms - stats.ttft_ms)
            )
        if failure is None:
            stats.latencies_ms.append(duration_s * 1000)
        stats.pending += 1
        if stats.pending >= _EVERY or failure is not None:
            self._publish(parent, deployment_id, stats)

    def _publish(self, parent: str, deployment_id: str, stats: _Stats) -> None:
        p95 = None
        if stats.latencies_ms:
            ordered = sorted(stats.latencies_ms)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        self._routes.record_signals(
            parent,
            deployment_id,
            p95_ms=p95,
            ttft_ms=stats.ttft_ms or None,
            error_rate=stats.error_rate,
            samples=stats.pending,
        )
        stats.pending = 0

    def close(self) -> None:
        for breaker in self._breakers.values():
            breaker.close_timers()
