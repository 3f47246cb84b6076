"""Server configuration: a YAML file, then environment overrides, validated once at start.

Environment overrides use `MAESTRO_<SECTION>__<FIELD>` (for example `MAESTRO_SERVER__PORT=7000`)
and are passed in as a mapping, so tests never touch `os.environ`. A bad value stops the server
with one line per problem naming the field and what to do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "MAESTRO_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
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


class AuthConfig(_Section):
    """How callers prove which project they act for."""

    mode: Literal["api_key", "insecure"] = Field(
        "api_key",
        description="api_key: every call needs a project API key. insecure: calls without a key "
        "act for `insecure_project`; allowed only when the server binds a loopback address.",
    )
    insecure_project: str = Field("dev", pattern=r"^[a-z][a-z0-9-]{0,62}$")
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a verified key is trusted without a store look-up; bounds how "
        "long a key revoked on another replica keeps working.",
    )


class StoreConfig(_Section):
    """Where state lives. The embedded default is one SQLite file."""

    sqlite_path: Path = Field(Path(".maestro/maestro.db"), description="SQLite database file.")
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a commit survives a crash of the process, and the last commits may "
        "be lost on power loss (SQLite's recommendation for WAL). full: every commit is fsynced.",
    )


class TelemetryConfig(_Section):
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


class LoggingConfig(_Section):
    """Structured logs on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class RoutingConfig(_Section):
    """Where RouteService's config comes from besides ApplyConfig: files, hot-reloaded."""

    project: str = Field(
        "demo", pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Project the files configure."
    )
    config_file: Path | None = Field(
        None, description="LiteLLM-format YAML (e.g. deploy/router/litellm.yaml); unset: none."
    )
    policy_files: tuple[Path, ...] = Field((), description="Rego modules applied with it.")
    watch: bool = Field(True, description="Apply a new revision whenever the files change.")


class DataPlaneConfig(_Section):
    """The data plane: InferenceService on the gRPC server, the OpenAI-compatible HTTP ingress,
    and how calls fail over. Per-request fields override the defaults marked so."""

    enabled: bool = Field(True, description="Serve InferenceService and the HTTP ingress.")
    http_host: str = Field("127.0.0.1", description="Address of the OpenAI-compatible ingress.")
    http_port: int | None = Field(
        8080, ge=0, le=65535, description="Port of the ingress; 0 picks one; null disables it."
    )
    max_inflight_calls: int = Field(
        1024,
        ge=1,
        description="Calls in progress at once; beyond it new calls get RESOURCE_EXHAUSTED "
        "(HTTP 429) at once rather than queueing into latency collapse.",
    )
    first_token_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Default wait for a deployment's first token."
    )
    stall_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest gap between tokens before the stream counts "
        "as stalled and the call moves on.",
    )
    post_first_token_failure_policy: Literal["fail", "continue_on_fallback"] = Field(
        "fail", description="Default for a failure after output reached the caller."
    )
    max_chunk_tokens: int = Field(16, ge=1, le=1024, description="Default coalescing size.")
    max_chunk_delay_ms: float = Field(
        20.0, ge=0, le=1000, description="Default longest wait of a token in an unsent chunk."
    )
    breaker_window: int = Field(20, ge=1, le=10_000, description="Calls the breaker looks at.")
    breaker_min_calls: int = Field(10, ge=1, description="Calls needed before it may open.")
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1, description="Failure share that opens.")
    breaker_open_s: float = Field(5.0, gt=0, le=3600, description="Time open before probing.")
    breaker_probes: int = Field(2, ge=1, description="Probe calls at once while half-open.")
    breaker_close_after: int = Field(3, ge=1, description="Probe successes that close it.")
    retry_budget_ratio: float = Field(
        0.2, ge=0, le=10, description="Fallback attempts in flight allowed per call in flight."
    )
    retry_budget_min: int = Field(
        10, ge=0, description="Fallback attempts in flight always allowed, whatever the ratio."
    )
    report_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often observations are folded into live signals."
    )
    lane_poll_interval_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="How often the load of each serving lane (provider `maestro_lane`) is read "
        "from its cluster's `/lane-status`, off the request path.",
    )
    lane_shed_hold_s: float = Field(
        1.0,
        ge=0,
        le=600,
        description="After a lane sheds a request (HTTP 503), how long routing treats it as "
        "saturated: other deployments take its traffic, and work that may only run in house "
        "gets RESOURCE_EXHAUSTED.",
    )
    lane_kv_cache_saturation: float = Field(
        0.98,
        gt=0,
        le=1,
        description="KV-cache usage at which a lane counts as saturated (vLLM would preempt).",
    )
    idempotency_cache_size: int = Field(
        10_000, ge=0, description="Completed calls remembered for idempotency_key replays."
    )
    control_plane_target: str | None = Field(
        None,
        description="`maestro data-plane` only: the control plane to follow (host:port), for "
        "config snapshots (WatchConfig), observations (ReportObservations) and key checks.",
    )
    control_plane_api_key: str | None = Field(
        None,
        description="`maestro data-plane` only: the API key it uses there; it serves that key's "
        "project. Prefer the env var MAESTRO_DATA_PLANE__CONTROL_PLANE_API_KEY.",
        repr=False,
    )
    node_id: str = Field("", description="Names this data plane in WatchConfig and reports.")
    simulated_provider: bool = Field(
        False,
        description="Start the simulated OpenAI-compatible provider in process and send every "
        "deployment without an api_base to it: the embedded default, no keys, no network.",
    )
    simulated_profile: Path | None = Field(
        None,
        description="Fault profile (YAML) of the simulated provider; unset: the packaged demo "
        "profile (lognormal time to first token around 120 ms, 80 tokens/s, no faults).",
    )


class GraphConfig(_Section):
    """GraphService: where runs are stored and how replicas share them."""

    enabled: bool = Field(True, description="Serve GraphService and run agent graphs.")
    store: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="sqlite: runs live in store.sqlite_path (one host). postgres: runs live in "
        "`postgres_dsn`, shared by every replica, which claim runs with leases.",
    )
    postgres_dsn: str = Field("", description="libpq connection string, for store=postgres.")
    replica_id: str = Field(
        "", description="Names this replica in leases and events; empty: host name and pid."
    )
    lease_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How long a replica holds a run without renewing; a dead replica's runs are "
        "taken over after this.",
    )
    poll_s: float = Field(
        0.5, gt=0, le=60, description="How often a replica looks for claimable runs unwoken."
    )
    max_runs: int = Field(64, ge=1, description="Runs one replica drives at once.")
    max_active_runs_per_project: int = Field(
        10_000,
        ge=1,
        description="Unfinished runs a project may have; CreateRun answers RESOURCE_EXHAUSTED "
        "beyond it.",
    )
    operator_projects: list[str] = Field(
        default_factory=list,
        description="Projects whose keys may engage the global kill switch.",
    )
    blob_dir: Path | None = Field(
        None,
        description="Content-addressed store of what each model and tool step was given (its "
        "digest is in the step's provenance); unset: a `blobs` folder beside store.sqlite_path.",
    )


class MaestroConfig(_Section):
    """The whole server configuration."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    store: StoreConfig = StoreConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()
    routing: RoutingConfig = RoutingConfig()
    data_plane: DataPlaneConfig = DataPlaneConfig()
    graph: GraphConfig = GraphConfig()

    @model_validator(mode="after")
    def _insecure_only_on_loopback(self) -> MaestroConfig:
        if self.auth.mode == "insecure" and not is_loopback(self.server.host):
            raise ValueError(
                "auth.mode=insecure is allowed only when server.host is a loopback address "
                f"(got {self.server.host!r}); bind 127.0.0.1 or use auth.mode=api_key"
            )
        return self


class ConfigError(Exception):
    """The configuration cannot be used; `problems` has one readable line per issue."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid configuration ({source}):\n  " + "\n  ".join(problems))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> MaestroConfig:
    """Read `path` (YAML), apply `env` overrides, then `overrides` (dotted keys), and validate."""
    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(source, ["the top level must be a mapping of sections"])
        data = loaded
    for key, value in (env or {}).items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, _, field = key[len(ENV_PREFIX) :].lower().partition("__")
            _set_dotted(data, f"{section}.{field}", value)
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    try:
        return MaestroConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in exc.errors()]) from exc


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, field = dotted.partition(".")
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError("overrides", [f"{section}: must be a mapping to set {dotted}"])
    target[field] = value


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown setting; check the spelling against the README's reference"
    return f"{location}: {error['msg']}"
