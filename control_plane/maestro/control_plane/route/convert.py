"""RouteService messages <-> domain values: validation of requests, and the rationale of decisions
(built in `maestro.routing.rationale`, where the data plane's `POST /route/choose` builds it too;
re-exported here for the servicer and the benchmarks)."""

from __future__ import annotations

import itertools
import math
import re

from maestro.control_plane.route.reports import BatchReceipt, ObservationBatch
from maestro.control_plane.route.watch import RejectedSnapshot, WatchAck, WatchUpdate
from maestro.core import names
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.routing.decider import ChooseInput
from maestro.routing.policy import PolicyModule
from maestro.routing.rationale import CHOOSE_CANDIDATE_CAP as CHOOSE_CANDIDATE_CAP
from maestro.routing.rationale import decision_message as decision_message
from maestro.routing.rationale import duration_ms
from maestro.routing.signals import (
    Breaker,
    Histogram,
    Observation,
    SignalsView,
    histogram_from_buckets,
)
from maestro.routing.snapshots import Published, Revision
from maestro.routing.spec import DeploymentSpec
from maestro.routing.texts import chat_message_texts
from maestro.routing.traffic import ProjectTraffic, snapshot_version
from maestro.routing.wire import route_request
from maestro.v1 import common_pb2, route_service_pb2

_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)


def choose_input(
    request: route_service_pb2.ChooseRequest, objectives_header: str, prefix: str = ""
) -> ChooseInput:
    """Validate a ChooseRequest; every bad field is reported at once."""
    violations: list[FieldViolation] = []
    if request.messages and request.content_digest:
        violations.append(
            FieldViolation(f"{prefix}content_digest", "give either messages or content_digest")
        )
    for field in ("estimated_prompt_tokens", "estimated_completion_tokens"):
        if getattr(request, field) < 0:
            violations.append(FieldViolation(f"{prefix}{field}", "must not be negative"))
    route = route_request(
        request,
        violations,
        prefix,
        prompt_tokens=max(0, request.estimated_prompt_tokens),
        completion_tokens=max(0, request.estimated_completion_tokens),
        excluded_ids=frozenset(request.excluded_deployment_ids),
    )
    if violations:
        raise InvalidArgument(violations)
    return ChooseInput(
        parent=request.parent,
        route=route,
        texts=chat_message_texts(request.messages),
        supplied_tags=tuple(request.step_tags),
        objectives_header=objectives_header,
    )


def policy_modules(
    modules: list[route_service_pb2.RoutePolicyModule],
) -> tuple[PolicyModule, ...]:
    return tuple(PolicyModule(m.name, m.source) for m in modules)


def route_config_message(
    name: str,
    revision: Revision | None,
    published: Published | None = None,
    traffic: ProjectTraffic | None = None,
) -> route_service_pb2.RouteConfig:
    """`traffic`: the project's artifact traffic splits, whose revision the snapshot version
    carries (`traffic.snapshot_version`)."""
    config_version = ""
    message = route_service_pb2.RouteConfig(name=name, revision_id="0")
    if published is not None:
        config_version = published.snapshot_version
        if published.global_revision is not None:
            message.global_revision_id = str(published.global_revision.revision)
    elif revision is not None:
        config_version = str(revision.revision)
    message.snapshot_version = snapshot_version(config_version, traffic) or "0"
    if revision is None:
        return message
    message.revision_id = str(revision.revision)
    message.config_yaml = revision.config_yaml
    message.policy_modules.extend(module_message(m) for m in revision.policy_modules)
    message.etag = revision.digest
    message.update_time.FromDatetime(revision.create_time)
    return message


def module_message(module: PolicyModule) -> route_service_pb2.RoutePolicyModule:
    match = _PACKAGE.search(module.source)
    return route_service_pb2.RoutePolicyModule(
        name=module.name, source=module.source, rego_package=match.group(1) if match else ""
    )


def revision_message(revision: Revision) -> route_service_pb2.RouteConfigRevision:
    name = f"{revision.project}/routeConfig"
    message = route_service_pb2.RouteConfigRevision(
        name=f"{name}/revisions/{revision.revision}",
        revision_id=str(revision.revision),
        route_config=route_config_message(name, revision),
        description=revision.description,
        creator=revision.creator,
        digest=revision.digest,
    )
    message.create_time.FromDatetime(revision.create_time)
    return message


def snapshot_message(
    published: Published, traffic: ProjectTraffic | None = None
) -> route_service_pb2.RouteConfigSnapshot:
    """A project's snapshot for WatchConfig: its merged config and its traffic splits."""
    revision = published.revision
    message = route_service_pb2.RouteConfigSnapshot(
        route_config=f"{revision.project}/routeConfig",
        snapshot_version=snapshot_version(published.snapshot_version, traffic),
        revision_id=str(revision.revision),
        config_yaml=published.merged_yaml,
        policy_modules=[module_message(m) for m in revision.policy_modules],
        traffic_splits=traffic_split_messages(traffic),
    )
    if published.global_revision is not None:
        message.global_revision_id = str(published.global_revision.revision)
        message.global_policy_modules.extend(
            module_message(m) for m in published.global_revision.policy_modules
        )
    return message


def splits_only_message(traffic: ProjectTraffic) -> route_service_pb2.RouteConfigSnapshot:
    """The snapshot of a project with traffic splits and no config of its own: no config_yaml,
    which a data plane reads as "splits only" (the project routes with the global config)."""
    return route_service_pb2.RouteConfigSnapshot(
        route_config=f"{traffic.project}/routeConfig",
        snapshot_version=snapshot_version("", traffic),
        traffic_splits=traffic_split_messages(traffic),
    )


def traffic_split_messages(
    traffic: ProjectTraffic | None,
) -> list[route_service_pb2.ArtifactTrafficSplit]:
    if traffic is None:
        return []
    return [
        route_service_pb2.ArtifactTrafficSplit(
            artifact=split.artifact,
            version_weights=[
                route_service_pb2.ArtifactTrafficSplit.VersionWeight(
                    artifact_version=share.version,
                    weight_percent=share.weight_percent,
                    digest=share.digest,
                    media_type=share.media_type,
                    content=share.content,
                )
                for share in split.shares
            ],
        )
        for split in traffic.splits.values()
    ]


MAX_OBSERVATIONS_PER_BATCH = 1000
MAX_OBSERVATION_WINDOW_S = 300
MAX_HISTOGRAM_BOUNDS = 64
_BREAKER_STATES = {
    common_pb2.CIRCUIT_BREAKER_STATE_UNSPECIFIED: Breaker.UNSPECIFIED,
    common_pb2.CIRCUIT_BREAKER_STATE_CLOSED: Breaker.CLOSED,
    common_pb2.CIRCUIT_BREAKER_STATE_OPEN: Breaker.OPEN,
    common_pb2.CIRCUIT_BREAKER_STATE_HALF_OPEN: Breaker.HALF_OPEN,
}


def _histogram(
    message: route_service_pb2.LatencyHistogram, field: str, violations: list[FieldViolation]
) -> Histogram:
    bounds, counts = list(message.bucket_upper_bounds_ms), list(message.bucket_counts)
    if not bounds and not counts:
        return Histogram()
    if len(bounds) > MAX_HISTOGRAM_BOUNDS:
        violations.append(FieldViolation(f"{field}.bucket_upper_bounds_ms", "at most 64 bounds"))
    if any(b <= a for a, b in itertools.pairwise(bounds)) or any(
        not math.isfinite(b) or b < 0 for b in bounds
    ):
        violations.append(
            FieldViolation(f"{field}.bucket_upper_bounds_ms", "must be finite, >= 0, increasing")
        )
    if len(counts) != len(bounds) + 1:
        violations.append(
            FieldViolation(f"{field}.bucket_counts", "needs one more entry than the bounds")
        )
    if any(c < 0 for c in counts):
        violations.append(FieldViolation(f"{field}.bucket_counts", "must not be negative"))
    return histogram_from_buckets(bounds, counts, message.sum_ms)


def observations(request: route_service_pb2.ReportObservationsRequest) -> list[Observation]:
    """Validate one ReportObservations batch; every bad field is reported at once."""
    violations: list[FieldViolation] = []
    if not request.node_id:
        violations.append(FieldViolation("node_id", "required"))
    if not request.batch_id or len(request.batch_id) > 64:
        violations.append(FieldViolation("batch_id", "required, at most 64 characters"))
    if len(request.observations) > MAX_OBSERVATIONS_PER_BATCH:
        violations.append(FieldViolation("observations", "at most 1,000 per batch"))
    out = []
    for index, item in enumerate(request.observations):
        where = f"observations[{index}]"
        if not item.deployment_id:
            violations.append(FieldViolation(f"{where}.deployment_id", "required"))
        try:
            names.parse_project_name(item.project, f"{where}.project")
        except InvalidArgument as error:
            violations.extend(error.violations)
        start, end = item.start_time.ToNanoseconds() / 1e9, item.end_time.ToNanoseconds() / 1e9
        if not item.HasField("end_time") or end < start or end - start > MAX_OBSERVATION_WINDOW_S:
            violations.append(
                FieldViolation(f"{where}.end_time", "required, after start_time, within 5 minutes")
            )
        counts = [item.request_count, item.prompt_tokens, item.completion_tokens]
        if any(c < 0 for c in counts) or any(v < 0 for v in item.error_counts.values()):
            violations.append(FieldViolation(where, "counts must not be negative"))
        if not math.isfinite(item.cost_usd) or item.cost_usd < 0:
            violations.append(FieldViolation(f"{where}.cost_usd", "must be a finite number >= 0"))
        if item.artifact_version and not _is_version_of(item.artifact_version, item.project):
            violations.append(
                FieldViolation(
                    f"{where}.artifact_version",
                    "must be {project}/artifacts/{artifact}/versions/{version}",
                )
            )
        out.append(
            Observation(
                deployment_id=item.deployment_id,
                project=item.project,
                end_time=end,
                request_count=item.request_count,
                latency=_histogram(item.latency, f"{where}.latency", violations),
                time_to_first_token=_histogram(
                    item.time_to_first_token, f"{where}.time_to_first_token", violations
                ),
                error_counts=dict(item.error_counts),
                prompt_tokens=item.prompt_tokens,
                completion_tokens=item.completion_tokens,
                cost_usd=item.cost_usd,
                breaker_state=_BREAKER_STATES.get(item.breaker_state, Breaker.UNSPECIFIED),
                node_id=request.node_id,
                artifact_version=item.artifact_version,
            )
        )
    if violations:
        raise InvalidArgument(violations)
    return out


def _is_version_of(version: str, project: str) -> bool:
    """Whether `version` names a version of one of `project`'s artifacts: an observation
    counts toward its own project's rollouts only."""
    parts = version.split("/")
    return (
        len(version) <= 512
        and len(parts) == 6
        and "/".join(parts[:2]) == project
        and parts[2] == "artifacts"
        and parts[4] == "versions"
        and all(parts[3:6:2])
    )


_STATE_MESSAGES = {v: k for k, v in _BREAKER_STATES.items()}


def signals_message(
    parent: str, deployment: DeploymentSpec, view: SignalsView
) -> route_service_pb2.DeploymentSignals:
    message = route_service_pb2.DeploymentSignals(
        name=f"{parent}/deploymentSignals/{deployment.deployment_id}",
        deployment=common_pb2.DeploymentRef(
            model_group=deployment.model_name,
            deployment_id=deployment.deployment_id,
            provider=deployment.provider,
            provider_model=deployment.litellm_model,
        ),
        window=duration_ms(view.window_s * 1000),
        sample_count=view.sample_count,
        error_rate=view.error_rate,
        requests_per_second=view.requests_per_second,
        cost_per_1k_tokens_usd=view.cost_per_1k_tokens_usd,
        breaker_state=_STATE_MESSAGES[view.breaker_state],
        reporting_node_count=view.reporting_node_count,
    )
    for field, value in (
        ("p50_latency", view.p50_latency_ms),
        ("p95_latency", view.p95_latency_ms),
        ("p95_time_to_first_token", view.p95_ttft_ms),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(duration_ms(value))
    if view.update_time is not None:
        message.update_time.FromNanoseconds(round(view.update_time * 1e9))
    return message


def observation_batch(request: route_service_pb2.ReportObservationsRequest) -> ObservationBatch:
    return ObservationBatch(request.node_id, request.batch_id, observations(request))


def receipt_message(receipt: BatchReceipt) -> route_service_pb2.ReportObservationsResponse:
    return route_service_pb2.ReportObservationsResponse(
        batch_id=receipt.batch_id, accepted_count=receipt.accepted, dropped_count=receipt.dropped
    )


def watch_ack(request: route_service_pb2.WatchConfigRequest) -> WatchAck:
    return WatchAck(
        version_info=request.version_info,
        nonce=request.response_nonce,
        error=request.error_detail.message if request.HasField("error_detail") else None,
        rejected=tuple(
            RejectedSnapshot(r.route_config, r.snapshot_version, r.error.message)
            for r in request.rejected_route_configs
        ),
    )


def watch_response(update: WatchUpdate) -> route_service_pb2.WatchConfigResponse:
    return route_service_pb2.WatchConfigResponse(
        version_info=update.version_info,
        nonce=update.nonce,
        snapshots=[
            *(snapshot_message(p, update.traffic.get(p.project)) for p in update.snapshots),
            *(splits_only_message(t) for t in update.splits_only),
        ],
        full_state=update.full_state,
    )
