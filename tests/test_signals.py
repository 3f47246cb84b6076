"""Live deployment signals: the data plane's observations, ReportObservations from another node,
Get/ListDeploymentSignals, and routing reacting to them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maestro.clients import AsyncMaestroClient, MaestroRpcError
from maestro.routing.signals import LATENCY_BOUNDS_MS, Histogram
from maestro.v1 import common_pb2
from maestro.v1 import route_service_pb2 as rpb
from tests.inference_support import PARENT, events, profile, stack, stream_request


def _observation(**fields: object) -> rpb.DeploymentObservation:
    values: dict[str, object] = {
        "deployment_id": "primary-a",
        "project": PARENT,
        "request_count": 10,
        **fields,
    }
    observation = rpb.DeploymentObservation(**values)  # type: ignore[arg-type]
    observation.start_time.GetCurrentTime()
    observation.end_time.GetCurrentTime()
    return observation


async def _report(
    client: AsyncMaestroClient, *batches: rpb.ReportObservationsRequest
) -> list[rpb.ReportObservationsResponse]:
    async def requests() -> AsyncIterator[rpb.ReportObservationsRequest]:
        for batch in batches:
            yield batch

    return [answer async for answer in client.routes.ReportObservations(requests())]


async def test_traffic_through_the_data_plane_shows_in_the_projects_signals(
    tmp_path: Path,
) -> None:
    flaky = profile(error_rate=0.5, error_codes={500: 1.0}, seed=3)
    async with stack(tmp_path, primary=flaky) as s:
        for _ in range(12):
            await events(s.client, stream_request())
        assert s.server.plane.data is not None
        s.server.plane.data.observer.flush()
        listed = await s.client.routes.ListDeploymentSignals(
            rpb.ListDeploymentSignalsRequest(parent=PARENT)
        )
        got = await s.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
        )
    by_id = {x.deployment.deployment_id: x for x in listed.deployment_signals}
    assert [x.deployment.model_group for x in listed.deployment_signals] == ["backup", "primary"]
    primary = got.deployment_signals
    assert primary.sample_count == 12
    assert 0 < primary.error_rate < 1
    assert primary.p95_time_to_first_token.ToNanoseconds() > 0
    backup = by_id["backup-b"]
    assert backup.sample_count == round(primary.error_rate * 12)  # each failure fell back
    assert backup.error_rate == 0
    assert backup.p95_latency.ToNanoseconds() >= backup.p50_latency.ToNanoseconds() > 0


async def test_reported_breaker_open_makes_routing_skip_the_deployment(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        [answer] = await _report(
            s.client,
            rpb.ReportObservationsRequest(
                node_id="edge-1",
                batch_id="1",
                observations=[_observation(breaker_state=common_pb2.CIRCUIT_BREAKER_STATE_OPEN)],
            ),
        )
        decision = await s.client.routes.Choose(rpb.ChooseRequest(parent=PARENT, model="primary"))
        signals = await s.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
        )
    assert answer.accepted_count == 1
    assert decision.decision.deployment.deployment_id == "backup-b"
    excluded = {c.deployment.deployment_id: c for c in decision.decision.candidates}["primary-a"]
    assert excluded.exclusion_reason == rpb.ROUTE_EXCLUSION_REASON_BREAKER_OPEN
    assert signals.deployment_signals.breaker_state == common_pb2.CIRCUIT_BREAKER_STATE_OPEN
    assert signals.deployment_signals.reporting_node_count == 1


async def test_a_resent_batch_is_answered_again_but_counted_once(tmp_path: Path) -> None:
    batch = rpb.ReportObservationsRequest(
        node_id="edge-1",
        batch_id="7",
        observations=[_observation(), _observation(deployment_id="no-such-deployment")],
    )
    async with stack(tmp_path) as s:
        answers = await _report(s.client, batch, batch)
        signals = await s.client.routes.GetDeploymentSignals(
            rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/primary-a")
        )
    assert [(a.batch_id, a.accepted_count, a.dropped_count) for a in answers] == [
        ("7", 1, 1),
        ("7", 1, 1),
    ]
    assert signals.deployment_signals.sample_count == 10


async def test_observations_of_another_project_are_permission_denied(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await _report(
                s.client,
                rpb.ReportObservationsRequest(
                    node_id="edge-1",
                    batch_id="1",
                    observations=[_observation(project="projects/beta")],
                ),
            )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_malformed_observations_name_the_fields(tmp_path: Path) -> None:
    bad = _observation(
        latency=rpb.LatencyHistogram(bucket_upper_bounds_ms=[10, 5], bucket_counts=[1])
    )
    bad.ClearField("end_time")
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await _report(s.client, rpb.ReportObservationsRequest(batch_id="", observations=[bad]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in raised.value.field_violations} >= {
        "node_id",
        "batch_id",
        "observations[0].end_time",
        "observations[0].latency.bucket_upper_bounds_ms",
        "observations[0].latency.bucket_counts",
    }


async def test_signals_of_an_unknown_deployment_are_not_found(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        with pytest.raises(MaestroRpcError) as raised:
            await s.client.routes.GetDeploymentSignals(
                rpb.GetDeploymentSignalsRequest(name=f"{PARENT}/deploymentSignals/nope")
            )
        with pytest.raises(MaestroRpcError) as filtered:
            await s.client.routes.ListDeploymentSignals(
                rpb.ListDeploymentSignalsRequest(parent=PARENT, filter="cost > 1")
            )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert filtered.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@given(st.lists(st.floats(min_value=0, max_value=100_000), min_size=1, max_size=200))
def test_histogram_quantiles_are_ordered_and_merging_is_addition(samples: list[float]) -> None:
    whole, left, right = Histogram(), Histogram(), Histogram()
    for index, value in enumerate(samples):
        whole.record(value)
        (left if index % 2 else right).record(value)
    left.add(right)
    assert left.counts == whole.counts
    p50, p95 = whole.quantile_ms(0.5), whole.quantile_ms(0.95)
    assert p50 is not None
    assert p95 is not None
    assert 0 <= p50 <= p95 <= LATENCY_BOUNDS_MS[-1] * 2


async def test_every_candidate_unhealthy_is_unavailable_not_a_precondition(
    tmp_path: Path,
) -> None:
    open_breaker = common_pb2.CIRCUIT_BREAKER_STATE_OPEN
    async with stack(tmp_path) as s:
        await _report(
            s.client,
            rpb.ReportObservationsRequest(
                node_id="edge-1",
                batch_id="1",
                observations=[
                    _observation(breaker_state=open_breaker),
                    _observation(deployment_id="backup-b", breaker_state=open_breaker),
                ],
            ),
        )
        with pytest.raises(MaestroRpcError) as raised:
            await s.client.routes.Choose(rpb.ChooseRequest(parent=PARENT, model="primary"))
        with pytest.raises(MaestroRpcError) as streamed:
            await events(s.client, stream_request())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == "NO_HEALTHY_DEPLOYMENT"
    assert streamed.value.code() == grpc.StatusCode.UNAVAILABLE
