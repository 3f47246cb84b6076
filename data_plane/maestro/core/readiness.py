"""Whether this process may take traffic yet: one flag that the gRPC health service and the HTTP
ingress both read.

A process is live as soon as it answers, and ready once its first routing snapshot is applied
(the routing files of `maestro up`, or the first WatchConfig snapshot of a `maestro data-plane`).
Until then the ingress answers 503 with `Retry-After` and health says NOT_SERVING, so a load
balancer or a client that starts on the first answer never gets a 400 `NO_ROUTE_CONFIG` from a
process that is still starting. Draining makes it not ready again, for good.
"""

from __future__ import annotations


class Readiness:
    __slots__ = ("_draining", "_ready")

    def __init__(self, ready: bool = False) -> None:
        self._ready = ready
        self._draining = False

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    def mark_ready(self) -> None:
        self._ready = True

    def mark_draining(self) -> None:
        self._draining = True


ALWAYS_READY = Readiness(ready=True)
"""For a component built without a process around it (tests, benchmarks in process)."""
