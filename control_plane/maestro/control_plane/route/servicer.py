"""gRPC face of RouteService: validate, convert, delegate to `service.RouteService`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from maestro.control_plane.route import convert
from maestro.control_plane.route.reports import receive_reports
from maestro.control_plane.route.service import RouteService
from maestro.control_plane.route.watch import ConfigWatches, watched_projects
from maestro.core import names
from maestro.core.auth import Principal, current_principal
from maestro.core.errors import (
    FieldViolation,
    InvalidArgument,
    MaestroError,
)
from maestro.core.rpc.metadata import objectives_header
from maestro.core.rpc.request_checks import check_request, checks_each_request
from maestro.routing.spec import MAX_CONFIG_BYTES
from maestro.v1 import route_service_pb2 as pb
from maestro.v1 import route_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class RouteServicer(pb_grpc.RouteServiceServicer):
    def __init__(self, service: RouteService, watches: ConfigWatches) -> None:
        self._service = service
        self._watches = watches

    async def Choose(self, request: pb.ChooseRequest, context: Context) -> pb.ChooseResponse:
        # A large request's content tags are detected off the event loop, then `choose` (sync).
        choose = await self._service.detect_off_loop(
            convert.choose_input(request, objectives_header(context))
        )
        choice = self._service.choose(current_principal(), choose)
        return pb.ChooseResponse(
            decision=convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)
        )

    @checks_each_request
    async def StreamChoose(
        self, request_iterator: AsyncIterator[pb.StreamChooseRequest], context: Context
    ) -> AsyncIterator[pb.StreamChooseResponse]:
        """One answer per request, in order; a bad request gets its error in its answer and
        the stream goes on."""
        principal = current_principal()
        header = objectives_header(context)
        async for item in request_iterator:
            yield await self._choose_one(principal, header, item)

    async def _choose_one(
        self, principal: Principal, header: str, item: pb.StreamChooseRequest
    ) -> pb.StreamChooseResponse:
        try:
            check_request(item)
            choose = await self._service.detect_off_loop(
                convert.choose_input(item.request, header, prefix="request.")
            )
            choice = self._service.choose(principal, choose)
        except MaestroError as error:
            return pb.StreamChooseResponse(error=error.to_status())
        return pb.StreamChooseResponse(
            response=pb.ChooseResponse(
                decision=convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)
            )
        )

    async def ExplainRoute(
        self, request: pb.ExplainRouteRequest, context: Context
    ) -> pb.ExplainRouteResponse:
        choose = await self._service.detect_off_loop(
            convert.choose_input(request.request, objectives_header(context), prefix="request.")
        )
        choice = await self._service.explain(current_principal(), choose, request.config_revision)
        return pb.ExplainRouteResponse(decision=convert.decision_message(choice, cap=None))

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: Context
    ) -> pb.GetConfigResponse:
        view = await self._service.get_config(current_principal(), request.name)
        return pb.GetConfigResponse(
            route_config=convert.route_config_message(
                view.name, view.revision, view.published, view.traffic
            )
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
        page = await self._service.list_revisions(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListConfigRevisionsResponse(
            revisions=[convert.revision_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def WatchConfig(
        self, request_iterator: AsyncIterator[pb.WatchConfigRequest], context: Context
    ) -> AsyncIterator[pb.WatchConfigResponse]:
        """A session of `watch.ConfigWatches` over the stream: its first request names the
        configs and the version the data plane has; the rest are ACKs and NACKs."""
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        projects = watched_projects(current_principal(), first.node_id, first.route_configs)
        acks = (convert.watch_ack(request) async for request in request_iterator)
        session = self._watches.session(first.node_id, projects, first.version_info, acks)
        async with contextlib.aclosing(session) as updates:
            async for update in updates:
                yield convert.watch_response(update)

    async def ReportObservations(
        self, request_iterator: AsyncIterator[pb.ReportObservationsRequest], context: Context
    ) -> AsyncIterator[pb.ReportObservationsResponse]:
        batches = (convert.observation_batch(request) async for request in request_iterator)
        receipts = receive_reports(self._service, current_principal(), batches)
        async with contextlib.aclosing(receipts) as answered:
            async for receipt in answered:
                yield convert.receipt_message(receipt)

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
        page = self._service.list_deployment_signals(
            current_principal(), request.parent, request.filter, request.page_size,
            request.page_token,
        )  # fmt: skip
        return pb.ListDeploymentSignalsResponse(
            deployment_signals=[
                convert.signals_message(request.parent, d, v) for d, v in page.items
            ],
            next_page_token=page.next_page_token,
        )


def _warnings(snapshot: Any) -> list[str]:
    return [
        f"deployment {d.deployment_id} ({d.model_name}): no price in config or LiteLLM's map; "
        "its cost objective is neutral and it is excluded from budgeted steps"
        for d in snapshot.deployments
        if d.input_cost_per_token is None or d.output_cost_per_token is None
    ]
