"""From a fault profile to one request's plan: every random decision is made when it starts.

`CompiledProfile` resolves the faults that apply to a model at an instant (default, then the
model's patch, then the active brownouts) and caches the result per distinct combination, so a
request pays a dictionary look-up, not a pydantic copy. `CompiledFaults.plan` draws the request's
fate from the request's own `random.Random`, seeded from the profile seed and the request's
sequence number, so the same profile and the same request order give the same faults.
Nothing here does I/O or knows about HTTP.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from maestro.data_plane.sim.profile import (
    FaultProfile,
    Faults,
    FixedLatency,
    Latency,
    TokenRange,
    UniformLatency,
)


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What happens to one request, decided before anything is sent."""

    error_status: int | None
    """An injected HTTP status, or None to serve the completion."""
    retry_after_s: float
    ttft_s: float
    interval_s: float
    """Seconds between tokens; 0 sends as fast as possible."""
    jitter_s: float
    cut_at: int | None
    """Tokens sent before the connection is closed, or None for no cut."""
    stall_at: int | None
    """Tokens sent before the stall, or None for no stall."""
    stall_s: float | None
    """How long the stall lasts; None: until the client goes away."""
    rng: random.Random
    """The request's own generator, for draws made while it runs (jitter)."""


def _sampler(latency: Latency) -> Callable[[random.Random], float]:
    """A function drawing the delay in seconds."""
    if isinstance(latency, FixedLatency):
        fixed = latency.ms / 1000
        return lambda _rng: fixed
    if isinstance(latency, UniformLatency):
        lo, hi = latency.lo_ms / 1000, latency.hi_ms / 1000
        return lambda rng: rng.uniform(lo, hi)
    mu, sigma = math.log(latency.median_ms / 1000), latency.sigma
    return lambda rng: rng.lognormvariate(mu, sigma)


def _position(rng: random.Random, span: TokenRange, n_tokens: int) -> int:
    hi = n_tokens - 1 if span.hi is None else span.hi
    hi = max(0, min(hi, n_tokens))
    return rng.randint(min(span.lo, hi), hi)


class CompiledFaults:
    """One resolved `Faults` with what every request needs precomputed."""

    __slots__ = ("_codes", "_cum_weights", "_ttft", "faults", "interval_s", "jitter_s")

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        weighted = [(code, weight) for code, weight in sorted(faults.error_codes.items()) if weight]
        self._codes = [code for code, _ in weighted]
        self._cum_weights: list[float] = []
        total = 0.0
        for _, weight in weighted:
            total += weight
            self._cum_weights.append(total)
        self._ttft = _sampler(faults.ttft)
        self.interval_s = 1 / faults.tokens_per_s if faults.tokens_per_s else 0.0
        self.jitter_s = faults.jitter_ms / 1000

    def plan(self, rng: random.Random, n_tokens: int) -> RequestPlan:
        """Draw one request's fate: error or not, first-token delay, cut and stall."""
        f = self.faults
        error_status = None
        if f.error_rate and rng.random() < f.error_rate:
            error_status = rng.choices(self._codes, cum_weights=self._cum_weights)[0]
        cut_at = stall_at = None
        ttft_s = 0.0
        if error_status is None:
            ttft_s = self._ttft(rng)
            if f.cut_rate and rng.random() < f.cut_rate:
                cut_at = _position(rng, f.cut_after, n_tokens)
            if f.stall_rate and rng.random() < f.stall_rate:
                stall_at = _position(rng, f.stall_after, n_tokens)
            # Drawn last, and only when asked for, so profiles without it draw as before.
            if f.slow_first_token_rate and rng.random() < f.slow_first_token_rate:
                ttft_s = f.slow_first_token_ms / 1000
        return RequestPlan(
            error_status=error_status,
            retry_after_s=f.retry_after_s,
            ttft_s=ttft_s,
            interval_s=self.interval_s,
            jitter_s=self.jitter_s,
            cut_at=cut_at,
            stall_at=stall_at,
            stall_s=None if f.stall_ms is None else f.stall_ms / 1000,
            rng=rng,
        )


class CompiledProfile:
    """A profile ready to answer "which faults apply to this model now?" cheaply.

    `origin` is the clock reading brownout windows count from.
    """

    __slots__ = ("_cache", "_default", "_per_model", "origin", "profile", "served")

    def __init__(self, profile: FaultProfile, origin: float) -> None:
        self.profile = profile
        self.origin = origin
        self.served = frozenset(profile.served_models)
        self._default = profile.default
        self._per_model = {
            name: profile.default.patched(patch) for name, patch in profile.per_model.items()
        }
        # Keyed by (model if it has its own patch else None, active brownout indices): bounded by
        # the profile's size whatever model names requests carry.
        self._cache: dict[tuple[str | None, tuple[int, ...]], CompiledFaults] = {}

    def serves(self, model: str) -> bool:
        return not self.profile.strict_models or model in self.served

    def active_brownouts(self, model: str, now: float) -> tuple[int, ...]:
        """Indices of the brownout windows covering `now` that apply to `model`."""
        t = now - self.origin
        return tuple(
            index
            for index, window in enumerate(self.profile.brownouts)
            if window.start_s <= t < window.end_s
            and (window.models is None or model in window.models)
        )

    def faults_for(self, model: str, now: float) -> CompiledFaults:
        active = self.active_brownouts(model, now) if self.profile.brownouts else ()
        key = (model if model in self._per_model else None, active)
        compiled = self._cache.get(key)
        if compiled is None:
            faults = self._per_model.get(model, self._default)
            for index in active:
                faults = faults.patched(self.profile.brownouts[index].faults)
            compiled = self._cache[key] = CompiledFaults(faults)
        return compiled

    def request_rng(self, sequence: int) -> random.Random:
        """The generator for the `sequence`-th request under this profile."""
        return random.Random(f"{self.profile.seed}/{sequence}")
