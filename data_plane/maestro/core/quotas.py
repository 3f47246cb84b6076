"""Per-project request rate and concurrency, and a brake on failed key attempts.

One `Limiter` per process serves gRPC (the guard interceptor) and the HTTP ingress alike, so a
project's limits hold whichever door its calls use. A tenant that floods the server is answered
RESOURCE_EXHAUSTED with a retry delay while other projects are served; a peer guessing keys is
slowed down before any key look-up reaches the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from maestro.core.errors import ResourceExhausted, Unauthenticated
from maestro.core.settings import LimitsConfig, ProjectLimitsConfig

MAX_TRACKED_PEERS = 10_000


@dataclass(frozen=True, slots=True)
class ProjectLimits:
    """`requests_per_s` 0 and `max_concurrent_calls` 0 mean unlimited."""

    requests_per_s: float = 0.0
    burst: int = 0
    max_concurrent_calls: int = 0


class Limiter:
    def __init__(
        self,
        default: ProjectLimits,
        per_project: dict[str, ProjectLimits] | None = None,
        *,
        failed_auth_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = default
        self._per_project = dict(per_project or {})
        self._failed_auth_per_minute = failed_auth_per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # project -> (tokens, at)
        self._inflight: dict[str, int] = {}
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # peer -> (n, since)

    def limits(self, project: str) -> ProjectLimits:
        return self._per_project.get(project, self._default)

    # -- per project ----------------------------------------------------------------------------

    def enter(self, project: str) -> None:
        """Admit one call of `project`, or raise RESOURCE_EXHAUSTED; pair with `leave`."""
        limits = self.limits(project)
        if limits.requests_per_s > 0:
            self._take_token(project, limits)
        inflight = self._inflight.get(project, 0)
        if limits.max_concurrent_calls and inflight >= limits.max_concurrent_calls:
            raise ResourceExhausted(
                f"projects/{project} has {inflight} calls in progress, its limit; retry when "
                "some finish",
                reason="CONCURRENCY_QUOTA_EXCEEDED",
                metadata={"limit": str(limits.max_concurrent_calls)},
                retry_delay_s=1.0,
            )
        self._inflight[project] = inflight + 1

    def leave(self, project: str) -> None:
        left = self._inflight.get(project, 1) - 1
        if left > 0:
            self._inflight[project] = left
        else:
            self._inflight.pop(project, None)

    def _take_token(self, project: str, limits: ProjectLimits) -> None:
        now = self._clock()
        capacity = float(max(limits.burst, 1))
        tokens, at = self._buckets.get(project, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * limits.requests_per_s)
        if tokens < 1.0:
            self._buckets[project] = (tokens, now)
            raise ResourceExhausted(
                f"projects/{project} is over its rate of {limits.requests_per_s:g} requests a "
                "second; retry after the delay given",
                reason="RATE_LIMITED",
                metadata={"limit": f"{limits.requests_per_s:g}"},
                retry_delay_s=(1.0 - tokens) / limits.requests_per_s,
            )
        self._buckets[project] = (tokens - 1.0, now)

    # -- failed authentication ------------------------------------------------------------------

    def check_peer(self, peer: str) -> None:
        """RESOURCE_EXHAUSTED while `peer` is over its failed-key attempts for the minute."""
        if not self._failed_auth_per_minute:
            return
        count, since = self._failures.get(peer, (0, 0.0))
        if count >= self._failed_auth_per_minute and self._clock() - since < 60.0:
            raise ResourceExhausted(
                "too many failed API key attempts from this address; retry in a minute",
                reason="AUTH_ATTEMPTS_EXCEEDED",
                retry_delay_s=60.0 - (self._clock() - since),
            )

    def failed(self, peer: str, error: Unauthenticated) -> Unauthenticated:
        """Count a failed key attempt from `peer`; returns `error` to raise."""
        if self._failed_auth_per_minute:
            now = self._clock()
            count, since = self._failures.pop(peer, (0, now))
            if now - since >= 60.0:
                count, since = 0, now
            self._failures[peer] = (count + 1, since)
            if len(self._failures) > MAX_TRACKED_PEERS:
                self._failures.popitem(last=False)
        return error


UNLIMITED = Limiter(ProjectLimits())
"""No limits: for embedders and tests that do not configure any."""


def limiter_from(config: LimitsConfig) -> Limiter:
    def limits(section: ProjectLimitsConfig) -> ProjectLimits:
        return ProjectLimits(section.requests_per_s, section.burst, section.max_concurrent_calls)

    return Limiter(
        limits(config.default),
        {project: limits(section) for project, section in config.projects.items()},
        failed_auth_per_minute=config.failed_auth_per_minute,
    )


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` / `ipv6:[::1]:5555` / `1.2.3.4:80` -> the address without port."""
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    if address.startswith("["):
        return address[1 : address.find("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address
