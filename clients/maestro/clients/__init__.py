"""Typed Maestro clients over the generated maestro.v1 stubs.

`AsyncMaestroClient` (grpc.aio) and `MaestroClient` (blocking) share one behaviour: API key in
metadata, a default deadline, retries only for methods the contract marks idempotent, OpenTelemetry
client spans, and `MaestroRpcError` with the server's `google.rpc` details on failure. TLS:
`ca_file` (and `cert_file`/`key_file` for mutual TLS), or `credentials` from `channel_credentials`.
"""

from maestro.clients._channel import channel_credentials
from maestro.clients.aio import AsyncMaestroClient
from maestro.clients.errors import FieldViolation, MaestroRpcError
from maestro.clients.sync import MaestroClient

__all__ = [
    "AsyncMaestroClient",
    "FieldViolation",
    "MaestroClient",
    "MaestroRpcError",
    "channel_credentials",
]
