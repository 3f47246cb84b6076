"""Counters that cost a dict increment on the request path.

OpenTelemetry's synchronous `Counter.add` cleans and hashes its attribute dict on every call,
about 15-20 µs here; several per call showed up as a tenth of the data plane's CPU per request.
A Tally keeps plain sums keyed by attribute tuples, and an observable counter reports them when
metrics are collected, off the request path. The sums are cumulative, as OpenTelemetry expects
of an observable counter.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics

Labels = tuple[tuple[str, str], ...]


class Tally:
    __slots__ = ("_sums",)

    def __init__(self, meter: metrics.Meter, name: str, description: str, unit: str = "1") -> None:
        self._sums: dict[Labels, float] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: float, labels: Labels) -> None:
        self._sums[labels] = self._sums.get(labels, 0) + amount

    def value(self, labels: Labels) -> float:
        return self._sums.get(labels, 0)

    def _observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        # Collection runs in the exporter's thread while the event loop may add a key: iterate
        # a copy (list() of a dict holds the GIL throughout) so the dict never changes under us.
        sums = list(self._sums.items())
        return [metrics.Observation(total, dict(labels)) for labels, total in sums]


OTHER = "other"


class LabelCap:
    """At most `limit` distinct values of one label per group (a project); later ones read
    `other`. Tenants name their own deployments and recipes, and every name would otherwise be a
    set of series that never ends, in the process and in Prometheus. Values seen first keep
    their own series; a dict lookup and a set lookup per use."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, set[str]] = {}

    def __call__(self, group: str, value: str) -> str:
        seen = self._seen.get(group)
        if seen is None:
            seen = self._seen[group] = set()
        if value in seen:
            return value
        if len(seen) < self._limit:
            seen.add(value)
            return value
        return OTHER

    def admits(self, group: str, value: str) -> bool:
        """Whether `value` has (or may take) a series of its own: gauges report only those."""
        return self(group, value) != OTHER or value == OTHER


DEPLOYMENT_SERIES_PER_PROJECT = 200
"""Deployments of one project (or the operator's) with series of their own."""


def deployment_group(state_key: str) -> str:
    """The project a deployment's state key belongs to (`projects/{p}/deployments/{id}`), or ""
    for an operator's deployment (a bare id)."""
    owner, found, _ = state_key.partition("/deployments/")
    return owner if found else ""
