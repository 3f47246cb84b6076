"""Server-side TLS from `TlsConfig`: gRPC credentials, an `ssl.SSLContext` for aiohttp, and
the one place a port is bound with or without TLS.

Certificates are read once, when the server starts; rotating them (cert-manager renews the
Secret in place) takes a rolling restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import structlog

from maestro.core.settings import TlsConfig, is_loopback

log = structlog.get_logger(__name__)


def _pair(tls: TlsConfig) -> tuple[Path, Path]:
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("TLS needs cert_file and key_file")
    return tls.cert_file, tls.key_file


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """gRPC credentials serving `tls.cert_file`; with `client_ca_file`, clients must present
    a certificate that CA signed (`require_client_auth`)."""
    cert_file, key_file = _pair(tls)
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """An `ssl.SSLContext` for an HTTP server: TLS 1.2 or newer, the same certificate and the
    same client-certificate rule as the gRPC port. Only `client_ca_file` vouches for clients:
    the system's CAs are not loaded (`create_default_context` would trust them)."""
    cert_file, key_file = _pair(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=str(tls.client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def bind(server: grpc.aio.Server, host: str, port: int, tls: TlsConfig) -> int:
    """Bind `host:port` with TLS when `tls` is set, else plaintext; the bound port, 0 if the
    address could not be bound. A TLS port accepts no plaintext connection."""
    address = f"{host}:{port}"
    if tls.enabled:
        return server.add_secure_port(address, server_credentials(tls))
    if not is_loopback(host):
        log.warning(
            "server.plaintext",
            address=address,
            hint="set server.tls (cert_file, key_file) so keys and prompts are not sent in clear",
        )
    return server.add_insecure_port(address)
