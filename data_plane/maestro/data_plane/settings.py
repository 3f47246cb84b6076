"""Settings of the data plane (`data_plane:` in the server's YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from maestro.core.settings import ClientTlsConfig, Section


class DataPlaneConfig(Section):
    """The data plane: InferenceService on the gRPC server, the OpenAI-compatible HTTP ingress,
    and how calls fail over. Per-request fields override the defaults marked so."""

    enabled: bool = Field(True, description="Serve InferenceService and the HTTP ingress.")
    http_host: str = Field("127.0.0.1", description="Address of the OpenAI-compatible ingress.")
    http_port: int | None = Field(
        8080, ge=0, le=65535, description="Port of the ingress; 0 picks one; null disables it."
    )
    http_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Largest request body the ingress reads (HTTP 413 beyond): a 4 MiB prompt "
        "plus its JSON and content-part overhead fits the default.",
    )
    max_inflight_calls: int = Field(
        1024,
        ge=1,
        description="Calls in progress at once; beyond it new calls get RESOURCE_EXHAUSTED "
        "(HTTP 429) at once rather than queueing into latency collapse.",
    )
    first_token_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Default wait for a deployment's first token; a deployment's LiteLLM "
        "`stream_timeout` (else `timeout`) and a request's own first_token_timeout override it.",
    )
    stall_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest gap between tokens before the stream counts as stalled and the "
        "call moves on; a deployment's LiteLLM `stream_timeout` (else `timeout`) overrides it.",
    )
    num_retries: int = Field(
        0,
        ge=0,
        le=10,
        description="Default retries of a failed attempt on the same deployment, before any "
        "output, before the call moves on; a deployment's LiteLLM `num_retries` and "
        "`retry_policy` override it. Never for a shed, an open breaker, a reached rpm/tpm/"
        "parallel limit, or a 4xx unless `retry_policy` names its class.",
    )
    post_first_token_failure_policy: Literal["fail", "continue_on_fallback"] = Field(
        "continue_on_fallback",
        description="Default for a failure after output reached the caller: the next "
        "deployment continues from the output so far (flagged `continued_after_failure`), or "
        "`fail` with the partial output. A deployment's `model_info`, the project's `router:` "
        "and the request override it.",
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
    control_plane_tls: ClientTlsConfig = Field(
        ClientTlsConfig(),
        description="`maestro data-plane` only: TLS to the control plane (the CA its "
        "certificate chains to, and this data plane's client certificate for mutual TLS); "
        "unset: plaintext.",
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
