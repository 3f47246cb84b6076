"""Wrap a gRPC method handler's behaviour in an async context, whatever its streaming shape.

grpc.aio server interceptors receive a `RpcMethodHandler` and may return another; this module
rebuilds one whose behaviour runs inside `around(context)`, so cross-cutting concerns (auth,
error mapping) are written once as an async context manager.

Requests are admitted inside `around` too, so their errors get the same mapping (and only an
authenticated caller learns what is wrong with its request): bytes that do not decode become
INVALID_ARGUMENT instead of grpc's UNKNOWN, and an optional per-method `RequestCheck` runs on
the unary request or on every message of a request stream, as the behaviour reads it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

from maestro.core.rpc.request_checks import RequestCheck, UndecodableRequest, tolerant_deserializer

Around = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]
Prepare = Callable[[Any], Any]
"""Admits what the behaviour receives (a request, or a request iterator) and returns it."""


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], around: Around, check: RequestCheck | None = None
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behaviour inside `around`, each request admitted by `check` first."""
    deserializer = handler.request_deserializer
    if deserializer is not None:
        deserializer = tolerant_deserializer(deserializer)
    serializer = handler.response_serializer
    admit = _admission(check)

    def one(request: Any) -> Any:
        admit(request)
        return request

    def each(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return _admitted(requests, admit)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary_response(handler.unary_unary, around, one), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary_response(handler.stream_unary, around, each), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream_response(handler.unary_stream, around, one), deserializer, serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _wrap_stream_response(handler.stream_stream, around, each), deserializer, serializer
    )


def _admission(check: RequestCheck | None) -> RequestCheck:
    if check is None:
        return _decoded

    def admit(request: Any) -> None:
        _decoded(request)
        check(request)

    return admit


def _decoded(request: Any) -> None:
    if type(request) is UndecodableRequest:
        raise request.error()


async def _admitted(requests: AsyncIterator[Any], admit: RequestCheck) -> AsyncIterator[Any]:
    async for request in requests:
        admit(request)
        yield request


def _wrap_unary_response(behavior: Any, around: Around, prepare: Prepare) -> Any:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with around(context):
            return await behavior(prepare(request), context)

    return run


def _wrap_stream_response(behavior: Any, around: Around, prepare: Prepare) -> Any:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes with `context.write` and returns None (e.g. health Watch).
        return _wrap_unary_response(behavior, around, prepare)

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with around(context):
            async for response in behavior(prepare(request), context):
                yield response

    return run
