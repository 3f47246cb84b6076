"""Client interceptors: auth metadata, a default deadline, and readable errors.

Deadlines: a call without an explicit `timeout` gets the client's default, so nothing waits
forever. Errors: a failed call raises `MaestroRpcError` (a `grpc.RpcError`) carrying the
server's `google.rpc` details, for unary responses and for streams alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from maestro.clients.errors import MaestroRpcError


def _metadata(existing: Any, extra: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [*(existing or ()), *extra]


class _CallDetails:
    """Fields of `grpc.ClientCallDetails` / `grpc.aio.ClientCallDetails`, with ours applied."""

    @staticmethod
    def aio(details: Any, extra: tuple[tuple[str, str], ...], timeout: float) -> Any:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else timeout,
            metadata=grpc.aio.Metadata(*_metadata(details.metadata, extra)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _AioBase:
    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._extra = metadata
        self._timeout = timeout

    def _details(self, details: Any) -> Any:
        return _CallDetails.aio(details, self._extra, self._timeout)


class _AioUnaryUnary(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await _await_unary(await continuation(self._details(details), request))


class _AioStreamUnary(_AioBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await _await_unary(await continuation(self._details(details), request_iterator))


class _AioUnaryStream(_AioBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return _translate_aio_stream(await continuation(self._details(details), request))


class _AioStreamStream(_AioBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return _translate_aio_stream(await continuation(self._details(details), request_iterator))


def aio_interceptors(metadata: tuple[tuple[str, str], ...], timeout: float) -> list[Any]:
    """One interceptor per call shape: a grpc.aio channel files each interceptor under the first
    shape it implements, so one object implementing all four would only see unary calls."""
    return [
        kind(metadata, timeout)
        for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]


async def _await_unary(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise MaestroRpcError.from_rpc_error(error) from None


async def _translate_aio_stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as error:
        raise MaestroRpcError.from_rpc_error(error) from None


class SyncClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._extra = metadata
        self._timeout = timeout

    def _details(self, details: Any) -> Any:
        return _SyncCallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._timeout,
            _metadata(details.metadata, self._extra),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return _raise_if_failed(continuation(self._details(details), request))

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return _raise_if_failed(continuation(self._details(details), request_iterator))

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return _SyncStream(continuation(self._details(details), request))

    def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return _SyncStream(continuation(self._details(details), request_iterator))


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def _raise_if_failed(outcome: Any) -> Any:
    error = outcome.exception()
    if isinstance(error, grpc.RpcError):
        raise MaestroRpcError.from_rpc_error(error) from None
    return outcome


class _SyncStream:
    """A response stream whose failure surfaces as `MaestroRpcError`; other attributes of the
    underlying call (cancel, trailing_metadata, ...) pass through."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            raise MaestroRpcError.from_rpc_error(error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
