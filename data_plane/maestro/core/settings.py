"""Settings sections every server process shares: where the gRPC server listens, telemetry, logs.

Each section is a frozen pydantic model that refuses unknown keys, so a misspelt setting stops
the process at start with the field's name instead of being ignored.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unreadable_files(files: dict[str, Path | None]) -> list[str]:
    """One problem line per set path in `files` (setting name -> path) that cannot be read."""
    problems = []
    for setting, path in files.items():
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"{setting}: {path} does not exist or is not a file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{setting}: {path} is not readable by this process")
    return problems


class TlsConfig(Section):
    """TLS on a listening socket, from PEM files (a cert-manager Secret mounted as files fits).

    With `cert_file` and `key_file` set the socket serves TLS only: plaintext connections fail
    their handshake. `client_ca_file` adds mutual TLS: a client must present a certificate that
    this CA signed, or the handshake fails.
    """

    cert_file: Path | None = Field(
        None, description="PEM certificate chain of this server; set with key_file."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS).",
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file are set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (mutual TLS is TLS)")
        return self

    def unreadable(self, prefix: str) -> list[str]:
        return unreadable_files(
            {
                f"{prefix}.cert_file": self.cert_file,
                f"{prefix}.key_file": self.key_file,
                f"{prefix}.client_ca_file": self.client_ca_file,
            }
        )


class ClientTlsConfig(Section):
    """TLS on an outgoing connection, from PEM files. Any field set turns TLS on."""

    ca_file: Path | None = Field(
        None, description="PEM CA bundle the server's certificate must chain to."
    )
    cert_file: Path | None = Field(
        None, description="PEM client certificate for mutual TLS; set with key_file."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file are set together")
        return self

    def unreadable(self, prefix: str) -> list[str]:
        return unreadable_files(
            {
                f"{prefix}.ca_file": self.ca_file,
                f"{prefix}.cert_file": self.cert_file,
                f"{prefix}.key_file": self.key_file,
            }
        )


class ProjectLimitsConfig(Section):
    """One project's share of a server (`maestro.core.quotas`); 0 means unlimited."""

    requests_per_s: float = Field(
        0.0, ge=0, description="Sustained calls a second, gRPC and HTTP together; 0: no limit."
    )
    burst: int = Field(100, ge=1, description="Calls allowed at once above the sustained rate.")
    max_concurrent_calls: int = Field(
        256, ge=0, description="Calls (open streams included) in progress at once; 0: no limit."
    )


class LimitsConfig(Section):
    """Per-project limits on every call, and the brake on failed key attempts."""

    default: ProjectLimitsConfig = Field(
        ProjectLimitsConfig(), description="Limits of a project not listed in `projects`."
    )
    projects: dict[str, ProjectLimitsConfig] = Field(
        default_factory=dict, description="Limits of named projects (by project id)."
    )
    failed_auth_per_minute: int = Field(
        30,
        ge=0,
        description="Invalid API keys one client address may present a minute before it is "
        "answered RESOURCE_EXHAUSTED; 0: no limit.",
    )


class ServerConfig(Section):
    """Where and how the gRPC server listens."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 for all interfaces.")
    port: int = Field(50051, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    grace_period_s: float = Field(
        10.0, gt=0, le=600, description="On SIGTERM, how long in-flight calls may take to finish."
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request or response message accepted."
    )
    max_concurrent_rpcs: int | None = Field(
        1000,
        ge=1,
        description="Calls (open streams included) served at once; beyond it new calls get "
        "RESOURCE_EXHAUSTED at once instead of queueing into latency collapse. null: no limit.",
    )
    tls: TlsConfig = Field(
        TlsConfig(),
        description="TLS of the gRPC port and of the OpenAI-compatible HTTP ingress; unset: "
        "plaintext (loopback and development only).",
    )
    limits: LimitsConfig = Field(
        LimitsConfig(),
        description="Per-project rate and concurrency on gRPC and the HTTP ingress together.",
    )


class TelemetryConfig(Section):
    """OpenTelemetry and Prometheus export."""

    service_name: str = "maestro-control-plane"
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC collector address such as http://otel-collector:4317. Unset: "
        "the routing file's `telemetry.otel_exporter` if it names one, else traces stay in "
        "process; empty: OTLP off whatever the routing file says.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port; unset disables."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address of the Prometheus endpoint. Anything but loopback needs "
        "metrics_tls with a client_ca_file: metrics are never served unauthenticated.",
    )
    metrics_tls: TlsConfig = Field(
        TlsConfig(),
        description="TLS of the Prometheus endpoint; with client_ca_file the scraper must "
        "present a certificate that CA signed.",
    )
    trace_sampling_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (parent-based: a sampled caller's trace is "
        "always continued). Every RPC is still instrumented; unsampled spans cost little.",
    )
    jurisdiction: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Where this process runs, e.g. `eu`: the `jurisdiction` resource attribute "
        "of its traces, metrics and logs (a serving lane takes it from MAESTRO_JURISDICTION). "
        "Unset: no such attribute.",
    )
    otlp_logs: bool = Field(
        False,
        description="Also export every log line over OTLP/gRPC to `otlp_endpoint` (redacted as "
        "on stderr, with the trace and span it was written in); stderr keeps them either way. "
        "Off, or with no endpoint: no OTLP log work at all.",
    )
    otlp_metrics: bool = Field(
        False,
        description="Also push metrics over OTLP/gRPC to `otlp_endpoint` every "
        "`otlp_metrics_interval_s` (the collector's metrics pipeline), histograms with exemplars "
        "naming the trace of a sampled call; the Prometheus endpoint serves them either way.",
    )
    otlp_metrics_interval_s: float = Field(
        15.0, ge=1, le=3600, description="How often metrics are pushed with `otlp_metrics`."
    )

    @model_validator(mode="after")
    def _metrics_protected(self) -> TelemetryConfig:
        if self.metrics_port is None or is_loopback(self.metrics_host):
            return self
        if self.metrics_tls.client_ca_file is None:
            raise ValueError(
                f"metrics_host={self.metrics_host!r} is not a loopback address: set "
                "metrics_tls (cert_file, key_file and client_ca_file) so only a scraper with a "
                "client certificate reads the metrics, or bind 127.0.0.1"
            )
        return self


class LoggingConfig(Section):
    """Structured logs on stderr (and over OTLP with `telemetry.otlp_logs`). A line written
    inside a span carries its `trace_id` and `span_id` (W3C hex)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
