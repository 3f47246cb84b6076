"""Wrap a gRPC method handler's behaviour in an async context, whatever its streaming shape.

grpc.aio server interceptors receive a `RpcMethodHandler` and may return another; this module
rebuilds one whose behaviour runs inside `around(context)`, so cross-cutting concerns (auth,
error mapping) are written once as an async context manager.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Around = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], around: Around
) -> grpc.RpcMethodHandler[Any, Any]:
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(handler.unary_unary, around), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(handler.stream_unary, around), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(handler.unary_stream, around), deserializer, serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream_response(handler.stream_stream, around), deserializer, serializer
    )


def _wrap_unary_response(behavior: Any, around: Around) -> Any:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with around(context):
            return await behavior(request, context)

    return run


def _wrap_stream_response(behavior: Any, around: Around) -> Any:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes with `context.write` and returns None (e.g. health Watch).
        return _wrap_unary_response(behavior, around)

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with around(context):
            async for response in behavior(request, context):
                yield response

    return run
