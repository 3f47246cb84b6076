"""Serve a service of the contract whose capability is not built yet.

Every method answers UNIMPLEMENTED naming the missing capability, through the same interceptors
as real methods (so auth and tracing apply), while reflection still documents the contract.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

from maestro.core.errors import Unimplemented


def unimplemented_handler(
    service: descriptor.ServiceDescriptor, capability: str
) -> grpc.GenericRpcHandler[Any, Any]:
    """A generic handler for `service` whose every method reports `capability` as missing."""
    handlers = {
        method.name: _method_handler(service, method, capability) for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _method_handler(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, capability: str
) -> grpc.RpcMethodHandler[Any, Any]:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    error = Unimplemented(
        f"{service.full_name}/{method.name} is part of the API but not available in this "
        f"release: {capability} is not built yet",
        reason="CAPABILITY_NOT_AVAILABLE",
        metadata={"service": service.full_name, "method": method.name, "capability": capability},
    )

    async def fail(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise error

    async def fail_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise error
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    deserialize = request_class.FromString
    serialize = response_class.SerializeToString
    if method.server_streaming:
        factory = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(fail_stream, deserialize, serialize)
    factory = (
        grpc.stream_unary_rpc_method_handler
        if method.client_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(fail, deserialize, serialize)
