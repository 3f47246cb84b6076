"""Settings of the control plane's own services: auth, the store, routing files, agent graphs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from maestro.core.names import RESERVED_PROJECT_IDS
from maestro.core.settings import Section


class AuthConfig(Section):
    """How callers prove which project they act for."""

    mode: Literal["api_key", "insecure"] = Field(
        "api_key",
        description="api_key: every call needs a project API key. insecure: calls without a key "
        "act for `insecure_project`; allowed only when the server binds a loopback address.",
    )
    insecure_project: str = Field(
        "dev",
        pattern=r"^[a-z][a-z0-9-]{0,62}$",
        description="The project keyless calls act for in insecure mode; created at start if "
        "missing (`maestro up --insecure`: the demo project).",
    )
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a verified key is trusted without a store look-up; bounds how "
        "long a key revoked on another replica keeps working.",
    )

    @field_validator("insecure_project")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_PROJECT_IDS:
            raise ValueError(f"{value!r} is reserved for Maestro itself")
        return value


class StoreConfig(Section):
    """Where state lives: projects and keys, routing configs, runs, and every slice to come.

    The embedded default is one SQLite file, for one process. `postgres` puts all of it in one
    PostgreSQL database that several control-plane replicas share.
    """

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: one file, one process. postgres: `postgres_dsn`, shared."
    )
    postgres_dsn: str = Field(
        "", description="libpq connection string, for backend=postgres (keep it in a secret)."
    )
    postgres_pool_size: int = Field(
        8, ge=1, le=256, description="Connections each replica keeps, for writes and for reads."
    )
    sqlite_path: Path = Field(Path(".maestro/maestro.db"), description="SQLite database file.")
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a commit survives a crash of the process, and the last commits may "
        "be lost on power loss (SQLite's recommendation for WAL). full: every commit is fsynced.",
    )

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreConfig:
        if self.backend == "postgres" and not self.postgres_dsn:
            raise ValueError("store.backend=postgres needs store.postgres_dsn")
        return self


class TenantEndpoint(Section):
    """An endpoint prefix tenants may name as a deployment's `api_base` (`routing.tenancy`)."""

    api_base: str = Field(
        pattern=r"^https?://[^/@\s]+(/\S*)?$",
        description="URL prefix: scheme, host, optional port and path (a path matches at a "
        "segment boundary; no port: any port).",
    )
    api_key: str | None = Field(
        None,
        pattern=r"^os\.environ/[A-Za-z_][A-Za-z0-9_]*$",
        description="The one secret tenants may send there, as os.environ/NAME.",
    )
    trust_tenant_facts: bool = Field(
        False,
        description="Accept tenants' in_house / jurisdiction claims (and in-house providers) "
        "for deployments here: the endpoint is theirs or vetted.",
    )


class RoutingConfig(Section):
    """Where RouteService's config comes from besides ApplyConfig: files, hot-reloaded; and
    which endpoints tenants' own configs may use."""

    project: str = Field(
        "demo", pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Project the files configure."
    )
    config_file: Path | None = Field(
        None, description="LiteLLM-format YAML (e.g. deploy/router/litellm.yaml); unset: none."
    )
    policy_files: tuple[Path, ...] = Field((), description="Rego modules applied with it.")
    watch: bool = Field(True, description="Apply a new revision whenever the files change.")
    allow_start_without_config: bool = Field(
        False,
        description="Start even when config_file does not load (every call then answers "
        "NO_ROUTE_CONFIG until a good edit); false: the process exits with the problems.",
    )
    tenant_endpoints: dict[str, list[TenantEndpoint]] = Field(
        default_factory=dict,
        description="Endpoints a project's own config may name besides the global layer's, by "
        "project id (`*`: every project). Empty: only the global layer's endpoints.",
    )


class GraphConfig(Section):
    """GraphService: how replicas share runs (they live in the store; on PostgreSQL every
    replica claims runs with leases)."""

    enabled: bool = Field(True, description="Serve GraphService and run agent graphs.")
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
    autonomy_gate: bool = Field(
        True,
        description="Runs at L3 and above need a passing autonomy gate (EvalService.EvaluateGate, "
        "kind AUTONOMY_PROMOTION) recorded for their recipe revision; the built-in recipes are "
        "exempt. Turn off only where recipes are promoted by other means.",
    )
    max_active_runs_per_project: int = Field(
        10_000,
        ge=1,
        description="Unfinished runs a project may have; CreateRun answers RESOURCE_EXHAUSTED "
        "beyond it.",
    )
    blob_dir: Path | None = Field(
        None,
        description="Content-addressed store of what each model and tool step was given (its "
        "digest is in the step's provenance); unset: a `blobs` folder beside store.sqlite_path.",
    )


class FreezeWindowConfig(Section):
    """A time when no candidate may gain traffic."""

    start: datetime = Field(description="When the freeze begins (RFC 3339, with a zone).")
    end: datetime = Field(description="When it ends; after `start`.")
    reason: str = Field("", max_length=500, description="Shown in refusals and the audit log.")
    projects: list[str] = Field(
        default_factory=lambda: ["*"], description="Project ids it covers; `*`: every project."
    )

    @model_validator(mode="after")
    def _ordered(self) -> FreezeWindowConfig:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a time zone, such as 2026-12-24T00:00:00Z")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class RegistryConfig(Section):
    """An OCI registry (Distribution, Harbor, ECR, GHCR, ...) mirroring artifact versions."""

    address: str = Field("", description="`host:port` of the registry; empty: no mirroring.")
    insecure: bool = Field(False, description="Plain HTTP (a loopback test registry).")
    username: str = Field("", description="Basic-auth user, if the registry needs one.")
    password_env: str = Field(
        "",
        description="Name of the environment variable holding the password (never the "
        "password itself in the config).",
    )


class NotificationsConfig(Section):
    """Rollout decisions and rollbacks, announced off the hot path and retried."""

    slack_webhook_url: str = Field(
        "", description="A Slack-compatible incoming webhook; empty: none."
    )
    ticket_project: str = Field(
        "",
        description="Project whose `create_ticket` tool ledger records a ticket per rollout "
        "(updated on each decision); empty: no tickets.",
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="Per delivery attempt.")
    max_attempts: int = Field(5, ge=1, le=20, description="Deliveries tried before giving up.")


class RolloutsConfig(Section):
    """RolloutService: artifact versions and progressive delivery."""

    enabled: bool = Field(True, description="Serve RolloutService and drive rollouts.")
    drive: bool = Field(
        True,
        description="Run the rollout controller here. With several replicas on one "
        "PostgreSQL, let one replica drive (the others serve the API and publish the splits): "
        "a controller judges SLO burn from the observations that reach its own replica.",
    )
    oci_dir: Path | None = Field(
        None,
        description="The OCI image layout holding every artifact version; unset: an `oci` "
        "folder beside store.sqlite_path.",
    )
    freeze_windows: list[FreezeWindowConfig] = Field(
        default_factory=list,
        description="Operator freeze windows: inside one, rollouts cannot start, resume or "
        "promote, and a candidate with traffic is rolled back to 0%.",
    )
    pause_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Multiplies every timed pause step (0.01 turns the seed's 10-minute pause "
        "into 6 s): for demos, end-to-end tests and benchmarks, never production.",
    )
    measure_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often a step's SLO analysis measures while it waits "
        "for enough candidate requests.",
    )
    max_analysis_wait_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="Longest a step's SLO analysis waits for enough candidate requests before "
        "it is INCONCLUSIVE (the rollout pauses).",
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        description="An OCI registry every new artifact version is pushed to (off the request "
        "path, retried); unset address: versions stay in the local OCI layout.",
    )
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig,
        description="Where rollout decisions and rollbacks are announced.",
    )
