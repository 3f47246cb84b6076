"""The baseline of the Choose RPC benchmark: a raw grpc.aio server that echoes request bytes.

It serves the same method paths as RouteService (`/maestro.v1.RouteService/Choose`, unary, and
`/maestro.v1.RouteService/StreamChoose`, bidirectional) through one generic handler with no
(de)serializers and no interceptors, on uvloop when it is installed, so the difference from
Maestro is exactly what Maestro does per call. Started by `route_bench.py` as a subprocess:

    python bench/_echo_server.py [--port N] [--wrapping-interceptors K] [--max-concurrent-rpcs M]

prints one JSON line `{"event": "echo.ready", "address": "127.0.0.1:PORT"}` on stdout and serves
until SIGTERM or SIGINT.

The two options add what `maestro up` configures around its handlers, with no work inside:
K interceptors that each wrap the handler per call, as OpenTelemetry's and Maestro's guard do,
and grpc's concurrency limit. They measure what the framework set-up costs by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

SERVICE = "maestro.v1.RouteService"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _echo_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Returns a new handler per call whose behaviour awaits the original's; nothing else."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior: Any = handler.unary_unary  # an async behaviour on a grpc.aio server

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, handler.request_deserializer, handler.response_serializer
        )


async def serve(port: int, interceptors: int = 0, max_concurrent_rpcs: int | None = None) -> None:
    server = grpc.aio.server(
        interceptors=[WrappingInterceptor() for _ in range(interceptors)],
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    handlers: dict[str, Any] = {
        "Choose": grpc.unary_unary_rpc_method_handler(_echo),
        "StreamChoose": grpc.stream_stream_rpc_method_handler(_echo_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"event": "echo.ready", "address": f"127.0.0.1:{bound}"}), flush=True)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--wrapping-interceptors", type=int, default=0)
    parser.add_argument("--max-concurrent-rpcs", type=int, default=None)
    args = parser.parse_args(argv)
    serving = serve(args.port, args.wrapping_interceptors, args.max_concurrent_rpcs)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a Maestro dependency
        asyncio.run(serving)
    else:
        uvloop.run(serving)
    return 0


if __name__ == "__main__":
    sys.exit(main())
