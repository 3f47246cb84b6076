"""Server reflection that serves the maestro.v1 protos with their comments.

Generated Python modules carry descriptors without source info, so stock reflection would let
`grpcurl describe` print bare signatures. `protos/build.py` also writes a descriptor set with
source info; this servicer swaps those documented file descriptors into reflection answers.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

DESCRIPTOR_SET = "descriptor_set.binpb"


def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with comments, for every maestro.v1 file."""
    raw = (resources.files("maestro.v1") / DESCRIPTOR_SET).read_bytes()
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(raw)
    return {file.name: file.SerializeToString() for file in descriptor_set.file}


class DocumentedReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: list[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = documented

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._with_comments(super()._file_containing_symbol(request, fully_qualified_name))

    def _file_containing_extension(
        self, request: Any, containing_type: str, extension_number: int
    ) -> Any:
        return self._with_comments(
            super()._file_containing_extension(request, containing_type, extension_number)
        )

    def _with_comments(self, response: Any) -> Any:
        if response.HasField("file_descriptor_response"):
            files = response.file_descriptor_response.file_descriptor_proto
            for index, serialized in enumerate(files):
                name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                if name in self._documented:
                    files[index] = self._documented[name]
        return response


def enable_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Register reflection for `service_names` (plus reflection itself) on `server`."""
    servicer = DocumentedReflectionServicer(
        [*service_names, reflection.SERVICE_NAME], documented_files()
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
