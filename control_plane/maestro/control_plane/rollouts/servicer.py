"""gRPC face of RolloutService: convert requests, delegate to `service.RolloutService`, convert
back. WatchRollout renders what `watch.watch_rollout` yields."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc

from maestro.control_plane.rollouts import convert
from maestro.control_plane.rollouts.records import RolloutRecord
from maestro.control_plane.rollouts.service import RolloutService
from maestro.control_plane.rollouts.watch import watch_rollout
from maestro.core.auth import Principal, current_principal, require_project
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.core.names import parse_project_name
from maestro.v1 import rollout_service_pb2 as pb
from maestro.v1 import rollout_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
Verb = Callable[[Principal, str, str, str, str, str], Awaitable[RolloutRecord]]
"""(caller, project, rollout id, etag, reason, request id) -> the rollout after the verb."""
VerbRequest = (
    pb.PauseRolloutRequest
    | pb.ResumeRolloutRequest
    | pb.AbortRolloutRequest
    | pb.RetryRolloutRequest
)


class RolloutServicer(pb_grpc.RolloutServiceServicer):
    def __init__(self, service: RolloutService, stopping: asyncio.Event) -> None:
        self._service = service
        self._stopping = stopping

    async def CreateArtifactVersion(
        self, request: pb.CreateArtifactVersionRequest, context: Context
    ) -> pb.CreateArtifactVersionResponse:
        project, artifact_id = convert.parse_artifact(request.parent, "parent")
        convert.check_id(request.version_id, "version_id")
        which = request.WhichOneof("content")
        content = (
            request.content_bytes
            if which == "content_bytes"
            else request.content_text.encode()
            if which == "content_text"
            else b""
        )
        version = convert.new_version(request.artifact_version)
        if request.version_id:
            version = replace(version, version_id=request.version_id)
        record = await self._service.create_version(
            current_principal(), project, artifact_id, version, content, request.request_id
        )
        view = await self._service.get_version(
            current_principal(), project, artifact_id, record.version_id, False
        )
        return pb.CreateArtifactVersionResponse(artifact_version=convert.version_message(view))

    async def GetArtifactVersion(
        self, request: pb.GetArtifactVersionRequest, context: Context
    ) -> pb.GetArtifactVersionResponse:
        project, artifact_id, version_id = convert.parse_version(request.name, "name")
        view = await self._service.get_version(
            current_principal(), project, artifact_id, version_id, request.include_content
        )
        return pb.GetArtifactVersionResponse(
            artifact_version=convert.version_message(view), content=view.content
        )

    async def ListArtifactVersions(
        self, request: pb.ListArtifactVersionsRequest, context: Context
    ) -> pb.ListArtifactVersionsResponse:
        project, artifact_id = convert.parse_artifact_parent(request.parent, "parent")
        page = await self._service.list_versions(
            current_principal(),
            project,
            artifact_id,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return pb.ListArtifactVersionsResponse(
            artifact_versions=[convert.version_message(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    async def CreateRollout(
        self, request: pb.CreateRolloutRequest, context: Context
    ) -> pb.CreateRolloutResponse:
        project = parse_project_name(request.parent, "parent")
        convert.check_id(request.rollout_id, "rollout_id")
        principal = current_principal()
        require_project(principal, project)  # before the body is read: it names the project
        rollout = await self._service.create_rollout(
            principal,
            project,
            request.rollout_id,
            convert.new_rollout(request.rollout, project),
            request.request_id,
            request.validate_only,
        )
        return pb.CreateRolloutResponse(rollout=convert.rollout_message(rollout))

    async def GetRollout(
        self, request: pb.GetRolloutRequest, context: Context
    ) -> pb.GetRolloutResponse:
        project, rollout_id = convert.parse_rollout(request.name)
        rollout = await self._service.get_rollout(current_principal(), project, rollout_id)
        return pb.GetRolloutResponse(rollout=convert.rollout_message(rollout))

    async def ListRollouts(
        self, request: pb.ListRolloutsRequest, context: Context
    ) -> pb.ListRolloutsResponse:
        project = parse_project_name(request.parent, "parent")
        page = await self._service.list_rollouts(
            current_principal(),
            project,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
        )
        return pb.ListRolloutsResponse(
            rollouts=[convert.rollout_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetRolloutAuditEvent(
        self, request: pb.GetRolloutAuditEventRequest, context: Context
    ) -> pb.GetRolloutAuditEventResponse:
        project, rollout_id, event_id = convert.parse_event(request.name)
        event = await self._service.get_event(current_principal(), project, rollout_id, event_id)
        return pb.GetRolloutAuditEventResponse(rollout_audit_event=convert.event_message(event))

    async def ListRolloutAuditEvents(
        self, request: pb.ListRolloutAuditEventsRequest, context: Context
    ) -> pb.ListRolloutAuditEventsResponse:
        project, rollout_id = convert.parse_rollout_parent(request.parent, "parent")
        page = await self._service.list_events(
            current_principal(),
            project,
            rollout_id,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
        )
        return pb.ListRolloutAuditEventsResponse(
            rollout_audit_events=[convert.event_message(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def _verb(self, verb: Verb, request: VerbRequest) -> RolloutRecord:
        """Pause, resume, abort or retry: the same fields, the same call."""
        project, rollout_id = convert.parse_rollout(request.name)
        return await verb(
            current_principal(),
            project,
            rollout_id,
            request.etag,
            request.reason,
            request.request_id,
        )

    async def PauseRollout(
        self, request: pb.PauseRolloutRequest, context: Context
    ) -> pb.PauseRolloutResponse:
        rollout = await self._verb(self._service.pause, request)
        return pb.PauseRolloutResponse(rollout=convert.rollout_message(rollout))

    async def ResumeRollout(
        self, request: pb.ResumeRolloutRequest, context: Context
    ) -> pb.ResumeRolloutResponse:
        rollout = await self._verb(self._service.resume, request)
        return pb.ResumeRolloutResponse(rollout=convert.rollout_message(rollout))

    async def PromoteRollout(
        self, request: pb.PromoteRolloutRequest, context: Context
    ) -> pb.PromoteRolloutResponse:
        project, rollout_id = convert.parse_rollout(request.name)
        rollout = await self._service.promote(
            current_principal(),
            project,
            rollout_id,
            request.etag,
            request.full,
            request.reason,
            request.request_id,
        )
        return pb.PromoteRolloutResponse(rollout=convert.rollout_message(rollout))

    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: Context
    ) -> pb.AbortRolloutResponse:
        rollout = await self._verb(self._service.abort, request)
        return pb.AbortRolloutResponse(rollout=convert.rollout_message(rollout))

    async def RetryRollout(
        self, request: pb.RetryRolloutRequest, context: Context
    ) -> pb.RetryRolloutResponse:
        rollout = await self._verb(self._service.retry, request)
        return pb.RetryRolloutResponse(rollout=convert.rollout_message(rollout))

    async def ApproveRollout(
        self, request: pb.ApproveRolloutRequest, context: Context
    ) -> pb.ApproveRolloutResponse:
        project, rollout_id = convert.parse_rollout(request.name)
        rollout = await self._service.approve(
            current_principal(), project, rollout_id, request.reason, request.request_id
        )
        return pb.ApproveRolloutResponse(rollout=convert.rollout_message(rollout))

    async def WatchRollout(
        self, request: pb.WatchRolloutRequest, context: Context
    ) -> AsyncIterator[pb.WatchRolloutResponse]:
        project, rollout_id = convert.parse_rollout(request.name)
        if request.after_revision < 0:
            raise InvalidArgument([FieldViolation("after_revision", "must not be negative")])
        updates = watch_rollout(
            self._service,
            current_principal(),
            project,
            rollout_id,
            request.after_revision,
            self._stopping,
        )
        async with contextlib.aclosing(updates) as stream:  # type: ignore[type-var]
            async for update in stream:
                yield pb.WatchRolloutResponse(
                    rollout=convert.rollout_message(update.rollout),
                    events=[convert.event_message(e) for e in update.events],
                )
