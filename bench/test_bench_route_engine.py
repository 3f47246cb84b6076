"""pytest-benchmark: `RoutingSnapshot.decide` at 100 and 10,000 deployments.

Not collected by the test suite (testpaths = tests); run it by path:

    .venv/bin/pytest bench/test_bench_route_engine.py --benchmark-only -p no:cacheprovider

The snapshot is the one `route_bench.py` measures (see `_route_fixtures`): one gpt-4o group of N
deployments plus 4 in-house ones, the seed Rego policy, `policies.content_tags.pii`, live signals
on every deployment with some breakers open. The goals (issue 3): p99 <= 25 us at 100
deployments and <= 100 us at 10,000; pytest-benchmark reports min/mean/median/max, and
`route_bench.py` reports the percentiles.
"""

from __future__ import annotations

from functools import cache

import _route_fixtures as fx
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from maestro.routing.engine import Decision, RouteRequest, RoutingSnapshot


@cache
def _snapshot(deployments: int) -> RoutingSnapshot:
    return fx.bench_snapshot(deployments)


@pytest.mark.benchmark(warmup=True, warmup_iterations=2_000)  # as route_bench.py warms up
@pytest.mark.parametrize("deployments", [100, 10_000], ids=["100", "10000"])
@pytest.mark.parametrize(
    ("request_kind", "request_value", "expected_group"),
    [
        pytest.param("plain", fx.PLAIN_REQUEST, fx.MAIN_GROUP, id="plain"),
        pytest.param("pii", fx.PII_REQUEST, fx.LOCAL_GROUP, id="pii"),
    ],
)
def test_decide(
    benchmark: BenchmarkFixture,
    deployments: int,
    request_kind: str,
    request_value: RouteRequest,
    expected_group: str,
) -> None:
    snapshot = _snapshot(deployments)
    benchmark.group = f"decide, {deployments:,} deployments"
    benchmark.extra_info["request"] = request_kind
    decision: Decision = benchmark(snapshot.decide, request_value)
    assert decision.winner >= 0
    winner = snapshot.deployments[decision.winner]
    assert winner.model_name == expected_group
    assert not snapshot.breaker_open[decision.winner]
