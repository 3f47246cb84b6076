"""Settings sections every server process shares: where the gRPC server listens, telemetry, logs.

Each section is a frozen pydantic model that refuses unknown keys, so a misspelt setting stops
the process at start with the field's name instead of being ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TelemetryConfig(Section):
    """OpenTelemetry and Prometheus export."""

    service_name: str = "maestro-control-plane"
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/gRPC collector address such as http://otel-collector:4317; unset "
        "keeps traces in process.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port; unset disables."
    )
    trace_sampling_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (parent-based: a sampled caller's trace is "
        "always continued). Every RPC is still instrumented; unsampled spans cost little.",
    )


class LoggingConfig(Section):
    """Structured logs on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
