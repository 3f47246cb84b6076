"""Server interceptors: authentication and the single exception-to-status mapping.

Every Maestro method runs inside `_guard`: the caller's API key is resolved to a principal
(UNAUTHENTICATED otherwise) and must hold one of the scopes the method accepts
(PERMISSION_DENIED otherwise, `scopes.py`), then the handler runs; a `MaestroError` becomes its
`google.rpc.Status`, and anything unexpected becomes INTERNAL through `errors.internal_error`
(the HTTP ingress's path too): a fixed message and a correlation id, its traceback logged and
never sent. Health and reflection are exempt from auth so probes and grpcurl work without a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from opentelemetry import metrics, trace

from maestro.core.auth import Principal, set_principal
from maestro.core.errors import MaestroError, Unauthenticated, internal_error
from maestro.core.quotas import UNLIMITED, Limiter, peer_host
from maestro.core.rpc.handlers import Around, wrap_handler
from maestro.core.rpc.request_checks import check_for_handler
from maestro.core.rpc.scopes import check_scope, scopes_for

EXEMPT_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
API_KEY_HEADER = "x-api-key"
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}

Authenticate = Callable[[str], Awaitable[Principal | None]]


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates each call and maps its exceptions to `google.rpc.Status`."""

    def __init__(
        self,
        authenticate: Authenticate,
        insecure_project: str | None,
        meter: metrics.Meter,
        limiter: Limiter = UNLIMITED,
    ) -> None:
        """`insecure_project`: if set (dev mode), calls without a key act for this project.
        `limiter`: per-project rate and concurrency, and failed-key attempts per peer."""
        self._authenticate = authenticate
        self._insecure_project = insecure_project
        self._limiter = limiter
        # OpenTelemetry's RPC semantic conventions; the gRPC instrumentation emits traces only.
        self._guarded: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}
        self._duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Time to serve a Maestro RPC."
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        # grpc asks interceptors for a handler on every call; the guarded handler of a method
        # is built once and reused while the registered handler stays the same.
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None or method.lstrip("/").split("/")[0] in EXEMPT_SERVICES:
            return handler
        guarded = wrap_handler(handler, self._guard_for(method), check_for_handler(method, handler))
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard_for(self, method: str) -> Around:
        service, _, method_name = method.lstrip("/").partition("/")
        accepted = scopes_for(method)

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            started = time.perf_counter()
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method_name}
            code = grpc.StatusCode.OK
            admitted = ""
            try:
                principal = await self._principal(
                    context.invocation_metadata() or (), peer_host(context.peer() or "")
                )
                # Each RPC runs in its own task, so the principal is scoped to this call.
                set_principal(principal)
                attributes["maestro.project"] = principal.project_id
                span = trace.get_current_span()
                if span.is_recording():
                    span.set_attribute("maestro.project", principal.project_id)
                check_scope(principal, accepted)
                self._limiter.enter(principal.project_id)
                admitted = principal.project_id
                yield
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except GeneratorExit:  # the caller went away mid-stream
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except MaestroError as error:
                code = _STATUS_CODES[error.code]
                await _abort(context, error.to_status())
            except Exception:
                code = grpc.StatusCode.INTERNAL
                internal = internal_error("rpc.unhandled_error", method=method)
                await _abort(context, internal.to_status())
            finally:
                if admitted:
                    self._limiter.leave(admitted)
                attributes["rpc.grpc.status_code"] = code.value[0]
                self._duration.record((time.perf_counter() - started) * 1000, attributes)

        return guard

    async def _principal(self, metadata: Any, peer: str) -> Principal:
        secret = _credential(metadata)
        if secret is None:
            if self._insecure_project is not None:
                return Principal(self._insecure_project, None)  # dev mode: every scope
            raise Unauthenticated(
                f"missing API key: send it in the `{API_KEY_HEADER}` metadata key or as "
                "`authorization: Bearer <key>`",
                reason="API_KEY_MISSING",
            )
        self._limiter.check_peer(peer)
        principal = await self._authenticate(secret)
        if principal is None:
            raise self._limiter.failed(
                peer, Unauthenticated("API key is invalid or revoked", reason="API_KEY_INVALID")
            )
        return principal


def _credential(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == API_KEY_HEADER and value:
            return str(value)
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip() or None
    return None


async def _abort(context: Any, status: status_pb2.Status) -> None:
    """Abort the call with a `google.rpc.Status`; always raises.

    Uses `abort(code, details, trailing_metadata)` rather than `abort_with_status`, so wrappers
    of the context (OpenTelemetry's records the status code on the span) see the code.
    """
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
