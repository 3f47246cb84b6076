"""gRPC face of ProjectService: convert messages, delegate to `service.ProjectService`."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from maestro.control_plane.projects.service import ProjectService
from maestro.control_plane.projects.store import ApiKeyRecord, ProjectRecord
from maestro.core.auth import current_principal
from maestro.v1 import project_service_pb2 as pb
from maestro.v1 import project_service_pb2_grpc as pb_grpc


def _timestamp(record: ProjectRecord | ApiKeyRecord) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(record.create_time)
    return stamp


def project_message(record: ProjectRecord) -> pb.Project:
    return pb.Project(
        name=record.name, display_name=record.display_name, create_time=_timestamp(record)
    )


def api_key_message(record: ApiKeyRecord) -> pb.ApiKey:
    return pb.ApiKey(
        name=record.name,
        display_name=record.display_name,
        prefix=record.prefix,
        create_time=_timestamp(record),
        scopes=sorted(record.scopes),
        principal=record.principal or record.name,
    )


class ProjectServicer(pb_grpc.ProjectServiceServicer):
    def __init__(self, service: ProjectService) -> None:
        self._service = service

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetProjectResponse:
        record = await self._service.get_project(current_principal(), request.name)
        return pb.GetProjectResponse(project=project_message(record))

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListProjectsResponse:
        page = await self._service.list_projects(
            current_principal(), request.page_size, request.page_token
        )
        return pb.ListProjectsResponse(
            projects=[project_message(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateApiKeyResponse:
        created = await self._service.create_key(
            current_principal(),
            request.parent,
            request.api_key.display_name,
            request.request_id,
            tuple(request.api_key.scopes),
            request.api_key.principal,
        )
        return pb.CreateApiKeyResponse(
            api_key=api_key_message(created.record), secret=created.secret
        )

    async def GetApiKey(
        self, request: pb.GetApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetApiKeyResponse:
        record = await self._service.get_key(current_principal(), request.name)
        return pb.GetApiKeyResponse(api_key=api_key_message(record))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListApiKeysResponse:
        page = await self._service.list_keys(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_message(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteApiKeyResponse:
        await self._service.delete_key(current_principal(), request.name)
        return pb.DeleteApiKeyResponse()
