"""Lane configuration: which models the lane serves, with their engine, Ray Serve and streaming
knobs. One YAML file holds every lane of a Ray cluster; each lane is one Ray Serve application.

Which knobs apply how (Ray Serve's rules): `serve.max_ongoing_requests`, `max_queued_requests`,
`num_replicas` / `autoscaling`, the health-check and shutdown times, and everything under
`stream` are light updates: re-applying the config changes them on the running replicas. A change
to `model`, `version` or anything under `engine` changes the replica's constructor arguments, so
Ray Serve replaces the replicas one by one (a rolling update; old replicas finish their streams
before they stop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.placement import parse_cpus

QuantizationPreset = Literal["awq", "gptq", "fp8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineKnobs(_Strict):
    """vLLM engine arguments (`AsyncEngineArgs`) the lane exposes."""

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    max_num_seqs: int = Field(default=256, gt=0)
    """Most sequences in one batch (continuous batching width)."""
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    """Most tokens the scheduler puts in one step (prefill chunking)."""
    quantization: QuantizationPreset | None = None
    """GPU presets; the model must be saved in that format (AWQ/GPTQ) or is quantized on load
    (FP8)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_kv_cache_gib: int = Field(default=1, gt=0)
    """KV cache size on CPU-only hosts (vLLM's VLLM_CPU_KVCACHE_SPACE, whole GiB)."""
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    stream_interval: int = Field(default=1, ge=1)
    """Tokens the engine buffers per request before it emits output."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    seed: int = 0


class Autoscaling(_Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=16, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must not exceed max_replicas")
        return self


class ServeKnobs(_Strict):
    """Ray Serve deployment options of the lane's gateway."""

    num_replicas: int = Field(default=1, ge=1)
    """Used when `autoscaling` is not set."""
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = Field(default=64, gt=0)
    """Requests one replica runs at once; more wait in Ray Serve's queue."""
    max_queued_requests: int = Field(default=-1, ge=-1)
    """Requests Ray Serve queues before it sheds with HTTP 503; -1: unlimited."""
    max_surge_percent: float | None = Field(default=None, ge=0, le=100)
    """During a rolling update, extra replicas started before old ones stop (Ray Serve)."""
    health_check_period_s: float = Field(default=10, gt=0)
    health_check_timeout_s: float = Field(default=30, gt=0)
    graceful_shutdown_timeout_s: float = Field(default=300, ge=0)
    """How long a replica being replaced may finish its open streams."""
    num_cpus: float = Field(default=1, ge=0)
    num_gpus: float = Field(default=0, ge=0)


class StreamKnobs(_Strict):
    max_chunk_delay_ms: float = Field(default=0, ge=0)
    """Extra wait for more tokens before a chunk is sent; 0: send what has accumulated as soon
    as the previous chunk is written (coalescing by backpressure only)."""


class LaneSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Ray Serve application name and route prefix (`/{name}`)."""
    model: str
    """A model directory or a Hugging Face id."""
    served_model_name: str = ""
    """The name callers use in `model`; defaults to `name`."""
    version: str = "1"
    """Bumping it replaces the replicas (a rolling update) even when nothing else changed."""
    engine: EngineKnobs = EngineKnobs()
    serve: ServeKnobs = ServeKnobs()
    stream: StreamKnobs = StreamKnobs()

    @property
    def route_prefix(self) -> str:
        return f"/{self.name}"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.name


class CpuPlacement(_Strict):
    """CPU-only nodes: the CPUs the engines' compute threads have to themselves; Ray, the
    ingress, the replicas and the engines' schedulers run on the node's other CPUs
    (`placement.py`). Leave it out on GPU nodes."""

    engine_cpus: str
    """vLLM's CPU list syntax (`VLLM_CPU_OMP_THREADS_BIND`): `0-3`, or `0-3|4-7` with one list
    per tensor-parallel rank."""

    @field_validator("engine_cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        parse_cpus(value)
        return value


class HttpOptions(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class LaneConfig(_Strict):
    http: HttpOptions = HttpOptions()
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """`haproxy`: Ray Serve's HAProxy ingress, which forwards HTTP to the replicas' own servers
    (measured here: about 3x the throughput of `proxy` at 32 streams); `proxy`: Ray Serve's
    Python HTTP proxy, which relays every streamed message through Ray's object transport."""
    lanes: tuple[LaneSpec, ...] = Field(min_length=1)
    status_report_interval_s: float = Field(default=0.25, gt=0)
    """How often each replica reports its engine figures to the lane-status application."""
    cpu_placement: CpuPlacement | None = None

    @model_validator(mode="after")
    def _unique(self) -> LaneConfig:
        names = [lane.name for lane in self.lanes]
        if len(set(names)) != len(names):
            raise ValueError("lane names must be unique")
        if "lane-status" in names:
            raise ValueError("'lane-status' is the status application's name")
        return self

    def lane(self, name: str | None = None) -> LaneSpec:
        if name is None:
            return self.lanes[0]
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(f"no lane {name!r}; lanes: {', '.join(lane.name for lane in self.lanes)}")


def load_config(path: str | Path) -> LaneConfig:
    raw: Any = yaml.safe_load(Path(path).read_text())
    return LaneConfig.model_validate(raw)
