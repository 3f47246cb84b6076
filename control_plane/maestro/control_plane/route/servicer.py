"""gRPC face of RouteService: validate, convert, delegate to `service.RouteService`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from maestro.control_plane.route import convert
from maestro.control_plane.route.service import RouteService, config_project
from maestro.core import names, paging
from maestro.core.auth import current_principal, require_project
from maestro.core.errors import (
    FieldViolation,
    InvalidArgument,
    MaestroError,
)
from maestro.core.filters import STRING, Kind, parse_filter
from maestro.core.rpc.metadata import objectives_header
from maestro.routing.signals import Breaker, SignalsView
from maestro.routing.snapshots import Published, SnapshotRegistry
from maestro.routing.spec import MAX_CONFIG_BYTES, DeploymentSpec
from maestro.v1 import route_service_pb2 as pb
from maestro.v1 import route_service_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)
MAX_REMEMBERED_BATCHES = 1024
"""Batch ids remembered per ReportObservations stream, to ignore re-sent batches."""
Context = grpc.aio.ServicerContext[Any, Any]


class RouteServicer(pb_grpc.RouteServiceServicer):
    def __init__(
        self, service: RouteService, registry: SnapshotRegistry, stopping: asyncio.Event
    ) -> None:
        self._service = service
        self._registry = registry
        self._stopping = stopping
        # A new epoch per process: a version_info from before a restart means "resend all".
        self._epoch = secrets.token_hex(4)

    async def Choose(self, request: pb.ChooseRequest, context: Context) -> pb.ChooseResponse:
        choice = self._service.choose(
            current_principal(), convert.choose_input(request, objectives_header(context))
        )
        return pb.ChooseResponse(
            decision=convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)
        )

    async def StreamChoose(
        self, request_iterator: AsyncIterator[pb.StreamChooseRequest], context: Context
    ) -> AsyncIterator[pb.StreamChooseResponse]:
        principal = current_principal()
        header = objectives_header(context)
        async for item in request_iterator:
            try:
                choice = self._service.choose(
                    principal, convert.choose_input(item.request, header, prefix="request.")
                )
            except MaestroError as error:
                yield pb.StreamChooseResponse(error=error.to_status())
                continue
            yield pb.StreamChooseResponse(
                response=pb.ChooseResponse(
                    decision=convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)
                )
            )

    async def ExplainRoute(
        self, request: pb.ExplainRouteRequest, context: Context
    ) -> pb.ExplainRouteResponse:
        choice = await self._service.explain(
            current_principal(),
            convert.choose_input(request.request, objectives_header(context), prefix="request."),
            request.config_revision,
        )
        return pb.ExplainRouteResponse(decision=convert.decision_message(choice, cap=None))

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: Context
    ) -> pb.GetConfigResponse:
        view = await self._service.get_config(current_principal(), request.name)
        return pb.GetConfigResponse(
            route_config=convert.route_config_message(view.name, view.revision, view.published)
        )

    async def ApplyConfig(
        self, request: pb.ApplyConfigRequest, context: Context
    ) -> pb.ApplyConfigResponse:
        config = request.route_config
        if len(config.config_yaml.encode()) > MAX_CONFIG_BYTES:
            raise InvalidArgument(
                [FieldViolation("route_config.config_yaml", "larger than 1 MiB; use a config file")]
            )
        applied = await self._service.apply_config(
            current_principal(),
            config.name,
            config.config_yaml,
            convert.policy_modules(list(config.policy_modules)),
            mask=tuple(request.update_mask.paths),
            validate_only=request.validate_only,
            etag=request.etag,
            request_id=request.request_id,
            description=request.description,
        )
        response = pb.ApplyConfigResponse(
            route_config=convert.route_config_message(
                applied.view.name, applied.view.revision, applied.view.published
            ),
            validation=pb.RouteConfigValidation(
                model_group_count=len(applied.snapshot.group_names),
                deployment_count=len(applied.snapshot.deployments),
                decision_table_rows=applied.snapshot.policy.row_count,
                warnings=_warnings(applied.snapshot),
            ),
        )
        if applied.view.revision is not None and not request.validate_only:
            response.revision.CopyFrom(convert.revision_message(applied.view.revision))
        return response

    async def ListConfigRevisions(
        self, request: pb.ListConfigRevisionsRequest, context: Context
    ) -> pb.ListConfigRevisionsResponse:
        revisions, token = await self._service.list_revisions(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListConfigRevisionsResponse(
            revisions=[convert.revision_message(r) for r in revisions], next_page_token=token
        )

    async def WatchConfig(
        self, request_iterator: AsyncIterator[pb.WatchConfigRequest], context: Context
    ) -> AsyncIterator[pb.WatchConfigResponse]:
        """xDS-style: answer the first request with what changed since its version, then push
        each change; ACKs and NACKs are read (and logged) by a side task."""
        principal = current_principal()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.node_id:
            raise InvalidArgument([FieldViolation("node_id", "required")])
        projects = frozenset(
            config_project(name, f"route_configs[{i}]")
            for i, name in enumerate(first.route_configs)
        ) or frozenset({f"projects/{principal.project_id}"})
        for project in projects:
            require_project(principal, project.removeprefix("projects/"))
        generation = self._resume_point(first.version_info)
        acks = asyncio.create_task(self._read_acks(first.node_id, request_iterator))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            full_state = generation < 0
            while not self._stopping.is_set():
                changed = (
                    self._registry.all(projects)
                    if full_state
                    else self._registry.changed_since(generation, projects)
                )
                current = self._registry.generation
                if changed or full_state:
                    yield self._response(changed, current, full_state)
                generation, full_state = current, False
                change = asyncio.create_task(self._registry.wait_for_change(generation))
                await asyncio.wait({change, stopping}, return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
        finally:
            acks.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks

    def _resume_point(self, version_info: str) -> int:
        epoch, _, number = version_info.partition(":")
        if epoch == self._epoch and number.isdigit() and int(number) <= self._registry.generation:
            return int(number)
        return -1  # unknown, stale or from another process: send the full state

    def _response(
        self, changed: list[Published], generation: int, full_state: bool
    ) -> pb.WatchConfigResponse:
        return pb.WatchConfigResponse(
            version_info=f"{self._epoch}:{generation}",
            nonce=secrets.token_hex(8),
            snapshots=[convert.snapshot_message(p) for p in changed],
            full_state=full_state,
        )

    async def _read_acks(
        self, node_id: str, request_iterator: AsyncIterator[pb.WatchConfigRequest]
    ) -> None:
        async for ack in request_iterator:
            if ack.HasField("error_detail"):
                log.warning(
                    "route.watch_nack", node=node_id, nonce=ack.response_nonce,
                    error=ack.error_detail.message,
                )  # fmt: skip
            for rejected in ack.rejected_route_configs:
                log.warning(
                    "route.snapshot_rejected", node=node_id, config=rejected.route_config,
                    version=rejected.snapshot_version, error=rejected.error.message,
                )  # fmt: skip
            if not ack.HasField("error_detail"):
                log.debug("route.watch_ack", node=node_id, version=ack.version_info)

    async def ReportObservations(
        self, request_iterator: AsyncIterator[pb.ReportObservationsRequest], context: Context
    ) -> AsyncIterator[pb.ReportObservationsResponse]:
        principal = current_principal()
        answered: dict[str, pb.ReportObservationsResponse] = {}
        node_id = ""
        async for request in request_iterator:
            if request.batch_id in answered:
                yield answered[request.batch_id]  # a re-sent batch counts once
                continue
            batch = convert.observations(request)
            if node_id and request.node_id != node_id:
                raise InvalidArgument(
                    [FieldViolation("node_id", "must be the same in every message of the stream")]
                )
            node_id = request.node_id
            # Until credentials carry roles, a key reports only its own project's traffic.
            for observation in batch:
                require_project(principal, names.parse_project_name(observation.project, "project"))
            accepted, dropped = self._service.ingest_observations(batch)
            response = pb.ReportObservationsResponse(
                batch_id=request.batch_id, accepted_count=accepted, dropped_count=dropped
            )
            if len(answered) >= MAX_REMEMBERED_BATCHES:
                answered.pop(next(iter(answered)))
            answered[request.batch_id] = response
            yield response

    async def GetDeploymentSignals(
        self, request: pb.GetDeploymentSignalsRequest, context: Context
    ) -> pb.GetDeploymentSignalsResponse:
        parent, _, deployment_id = request.name.partition("/deploymentSignals/")
        if not deployment_id or "/" in deployment_id:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "name", "must be projects/{project}/deploymentSignals/{deployment}"
                    )
                ]
            )
        names.parse_project_name(parent, "name")
        [(deployment, view)] = self._service.deployment_signals(
            current_principal(), parent, deployment_id
        )
        return pb.GetDeploymentSignalsResponse(
            deployment_signals=convert.signals_message(parent, deployment, view)
        )

    async def ListDeploymentSignals(
        self, request: pb.ListDeploymentSignalsRequest, context: Context
    ) -> pb.ListDeploymentSignalsResponse:
        checks = _signal_filter(request.filter)
        size = paging.page_size(request.page_size)
        scope = f"signals:{request.parent}"
        after = paging.decode_token(request.page_token, scope)
        rows = sorted(
            (
                (d, v)
                for d, v in self._service.deployment_signals(current_principal(), request.parent)
                if all(check(d, v) for check in checks)
            ),
            key=lambda row: (row[0].model_name, row[0].deployment_id),
        )
        if after:
            rows = [r for r in rows if [r[0].model_name, r[0].deployment_id] > after]
        page = rows[:size]
        return pb.ListDeploymentSignalsResponse(
            deployment_signals=[convert.signals_message(request.parent, d, v) for d, v in page],
            next_page_token=(
                paging.encode_token(scope, [page[-1][0].model_name, page[-1][0].deployment_id])
                if len(rows) > size
                else ""
            ),
        )


_STATE_NAMES = {"OPEN": Breaker.OPEN, "CLOSED": Breaker.CLOSED, "HALF_OPEN": Breaker.HALF_OPEN}
_SIGNAL_FIELDS: dict[str, Kind] = {
    "model_group": STRING,
    "provider": STRING,
    "breaker_state": frozenset(_STATE_NAMES),
}
SignalCheck = Callable[[DeploymentSpec, SignalsView], bool]


def _signal_filter(text: str) -> list[SignalCheck]:
    """`model_group = "gpt-4o" AND provider = "vllm" AND breaker_state = OPEN`, any subset."""
    return [_signal_check(field, value) for field, value in parse_filter(text, _SIGNAL_FIELDS)]


def _signal_check(field: str, value: str | bool) -> SignalCheck:
    def check(deployment: DeploymentSpec, view: SignalsView) -> bool:
        if field == "breaker_state":
            return view.breaker_state == _STATE_NAMES[str(value)]
        if field == "model_group":
            return deployment.model_name == value
        return deployment.provider == value

    return check


def _warnings(snapshot: Any) -> list[str]:
    return [
        f"deployment {d.deployment_id} ({d.model_name}): no price in config or LiteLLM's map; "
        "its cost objective is neutral and it is excluded from budgeted steps"
        for d in snapshot.deployments
        if d.input_cost_per_token is None or d.output_cost_per_token is None
    ]
