"""The fault profile: which models the simulated provider serves and how it misbehaves.

A profile is plain validated data (pydantic, `extra="forbid"`, frozen); turning it into per-request
decisions lives in `faults.py`. `default` is a complete `Faults`; the sections under `per_model` and
`brownouts[].faults` are patches: only the fields they name override the layer below, so a
brownout of `{"error_rate": 0.5}` keeps the model's latency and token rate. The optional `answers`
section (simulated quality, decided in `answers.py`) works the same way: `answers.default` is a
complete `Quality`, `answers.per_model` holds patches over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ERROR_STATUSES = (429, 500, 503)
"""The statuses an injected error may carry."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Patchable(_Model):
    """A section that is complete at the bottom layer and a patch in the layers above it."""

    def patched(self, patch: Self) -> Self:
        """These values with the fields `patch` was given explicitly taken from it."""
        if not patch.model_fields_set:
            return self
        return self.model_copy(
            update={name: getattr(patch, name) for name in patch.model_fields_set}
        )

    def patch_json(self) -> dict[str, Any]:
        """Only the fields given explicitly, as JSON: how a patch is shown and stored."""
        full = self.model_dump(mode="json")
        return {name: full[name] for name in self.model_fields_set}


class FixedLatency(_Model):
    """Always the same delay."""

    kind: Literal["fixed"] = "fixed"
    ms: float = Field(0.0, ge=0, description="The delay in milliseconds.")


class UniformLatency(_Model):
    """A delay drawn uniformly from [lo_ms, hi_ms]."""

    kind: Literal["uniform"] = "uniform"
    lo_ms: float = Field(ge=0)
    hi_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformLatency:
        if self.hi_ms < self.lo_ms:
            raise ValueError("hi_ms must be at least lo_ms")
        return self


class LognormalLatency(_Model):
    """A long-tailed delay: lognormal with the given median and log-space sigma."""

    kind: Literal["lognormal"] = "lognormal"
    median_ms: float = Field(gt=0)
    sigma: float = Field(ge=0, le=5, description="Standard deviation of the log; 0 is fixed.")


Latency = Annotated[FixedLatency | UniformLatency | LognormalLatency, Field(discriminator="kind")]


class TokenRange(_Model):
    """How many tokens are sent before a cut or stall: uniform over [lo, hi].

    `hi` null means one less than the completion's length, so some output is always missing.
    Both ends are clamped to the completion's length.
    """

    lo: int = Field(1, ge=0)
    hi: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> TokenRange:
        if self.hi is not None and self.hi < self.lo:
            raise ValueError("hi must be at least lo")
        return self


class Faults(_Patchable):
    """How one model behaves: latency, pace and the faults injected into its responses."""

    ttft: Latency = Field(
        default_factory=FixedLatency,
        description="Time to first token; for non-streaming requests, added to the generation "
        "time. Errors are answered at once, before it.",
    )
    tokens_per_s: float = Field(
        0.0, ge=0, description="Streaming pace after the first token; 0 sends as fast as possible."
    )
    jitter_ms: float = Field(
        0.0, ge=0, description="Each inter-token gap gets an extra delay uniform in [0, jitter_ms]."
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered an error.")
    error_codes: dict[int, float] = Field(
        default_factory=lambda: dict.fromkeys(ERROR_STATUSES, 1.0),
        description="Relative weights of the injected statuses; keys among 429, 500, 503.",
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Sent on 429 as `retry-after` (whole seconds, rounded up)."
    )
    cut_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of responses whose connection is closed abruptly: a stream after "
        "`cut_after` tokens, without finish_reason or [DONE]; a non-stream before its body.",
    )
    cut_after: TokenRange = Field(default_factory=TokenRange)
    stall_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of responses that stop sending after `stall_after` tokens for "
        "`stall_ms` and then go on (a non-stream response is delayed by `stall_ms`).",
    )
    stall_after: TokenRange = Field(default_factory=TokenRange)
    stall_ms: float | None = Field(
        None, ge=0, description="How long a stall lasts; null: until the client disconnects."
    )
    slow_first_token_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of served responses whose first token comes after "
        "`slow_first_token_ms` instead of `ttft`: a slow minority that a distribution of "
        "`ttft` alone cannot express.",
    )
    slow_first_token_ms: float = Field(
        5000.0, ge=0, description="The time to first token of a slow-first-token response."
    )

    @field_validator("error_codes")
    @classmethod
    def _known_statuses(cls, codes: dict[int, float]) -> dict[int, float]:
        unknown = sorted(set(codes) - set(ERROR_STATUSES))
        if unknown:
            raise ValueError(f"statuses {unknown} are not injectable; use 429, 500 or 503")
        if any(weight < 0 for weight in codes.values()):
            raise ValueError("weights must not be negative")
        if not any(weight > 0 for weight in codes.values()):
            raise ValueError("at least one status needs a positive weight")
        return codes


class Brownout(_Model):
    """A window of time during which `faults` is patched over the affected models' faults."""

    start_s: float = Field(ge=0, description="Window start, seconds after the clock origin.")
    end_s: float = Field(description="Window end (exclusive), seconds after the clock origin.")
    models: tuple[str, ...] | None = Field(None, description="Affected models; null: all.")
    faults: Faults = Field(description="A patch: only the fields given apply.")

    @model_validator(mode="after")
    def _ordered(self) -> Brownout:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class Quality(_Patchable):
    """How well one model answers the tasks of the answer key (see `answers.py`).

    Each probability is checked against a draw hashed from (model, task id), so the same model
    answers the same task the same way on every request unless `sampling_noise` says otherwise.
    """

    accuracy: float = Field(
        1.0, ge=0, le=1, description="Probability of answering a task with its `expected` answer."
    )
    tool_accuracy: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Probability of calling a task's `expected_tool_calls` exactly (when the "
        "request offers tools).",
    )
    hallucination_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of appending an invented claim (a made-up source and year) "
        "to a text answer, right or wrong.",
    )
    sampling_noise: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability that each of a request's draws is replaced by a fresh one "
        "(from the request's `seed` when it has one, else from the request's sequence number), "
        "so repeated runs vary; 0 answers every task the same way every time.",
    )


class PromptQuality(_Model):
    """A prompt version's effect: deltas applied to the model's quality (clamped to [0, 1]) for
    requests whose system message contains `system_contains`."""

    system_contains: str = Field(
        min_length=1, description="Matched as a substring of the request's system messages."
    )
    accuracy_delta: float = Field(0.0, ge=-1, le=1)
    tool_accuracy_delta: float = Field(0.0, ge=-1, le=1)
    hallucination_rate_delta: float = Field(0.0, ge=-1, le=1)


class AnswerProfile(_Model):
    """Simulated quality: tasks of the answer key are answered right, wrong or with a
    hallucination, at per-model (and per-prompt-version) rates. Requests matching no task keep
    the deterministic random words."""

    key_files: tuple[str, ...] = Field(
        (),
        description="Eval task files (JSONL) forming the answer key; relative paths count from "
        "the process's working directory. A missing file is logged and skipped.",
    )
    default: Quality = Field(default_factory=Quality, description="Every model's quality.")
    per_model: dict[str, Quality] = Field(
        default_factory=dict,
        description="Patches over `default`, by the model name the request carries. Models "
        "named here are not served for that alone (see `models`).",
    )
    prompts: tuple[PromptQuality, ...] = Field(
        (),
        description="Prompt versions, matched against the request's system messages; the first "
        "matching entry applies (they do not add up).",
    )

    def to_json(self) -> dict[str, Any]:
        """JSON that `model_validate` reads back to an equal section; patches stay patches."""
        data = self.model_dump(mode="json")
        data["per_model"] = {name: quality.patch_json() for name, quality in self.per_model.items()}
        return data


class FaultProfile(_Model):
    """Everything the simulated provider can be told: served models, behaviour and faults."""

    seed: int = Field(0, description="Seeds the fault draws, so chaos runs are reproducible.")
    models: tuple[str, ...] = Field(
        ("sim-1",), description="Models served; the keys of `per_model` are served too."
    )
    strict_models: bool = Field(
        True, description="Answer 404 for models not served; false serves any model name."
    )
    default_max_tokens: int = Field(
        64, ge=1, description="Completion length when the request sets no max_tokens."
    )
    default: Faults = Field(default_factory=Faults, description="Every model's faults.")
    per_model: dict[str, Faults] = Field(
        default_factory=dict, description="Patches over `default`, by model name."
    )
    brownouts: tuple[Brownout, ...] = Field(
        (), description="Windows patched over the model's faults while active, in list order."
    )
    brownout_clock: Literal["profile", "server"] = Field(
        "profile",
        description="Brownout windows count from when this profile was applied (`profile`) "
        "or from when the server started (`server`).",
    )
    answers: AnswerProfile | None = Field(
        None, description="Simulated quality over an answer key; null: random words only."
    )

    @property
    def served_models(self) -> tuple[str, ...]:
        """`models` then the `per_model` keys not already listed."""
        return tuple(dict.fromkeys((*self.models, *self.per_model)))

    def to_json(self) -> dict[str, Any]:
        """JSON that `model_validate` reads back to an equal profile; patches stay patches."""
        data = self.model_dump(mode="json")
        data["per_model"] = {name: faults.patch_json() for name, faults in self.per_model.items()}
        for shown, brownout in zip(data["brownouts"], self.brownouts, strict=True):
            shown["faults"] = brownout.faults.patch_json()
        if self.answers is not None:
            data["answers"] = self.answers.to_json()
        return data


class ProfileError(ValueError):
    """A fault profile that does not validate; `fields` pairs each bad field with what is wrong."""

    def __init__(self, source: str, fields: tuple[tuple[str, str], ...]) -> None:
        self.fields = fields
        lines = "\n".join(f"  {field}: {problem}" for field, problem in fields)
        super().__init__(f"invalid fault profile ({source}):\n{lines}")


def field_errors(error: ValidationError) -> tuple[tuple[str, str], ...]:
    """(dotted field path, message) for each problem, e.g. ("brownouts[0].end_s", "...")."""
    out = []
    for problem in error.errors(include_url=False):
        path = ""
        for part in problem["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = problem["msg"].removeprefix("Value error, ")
        out.append((path or "(body)", message))
    return tuple(out)


def parse_profile(data: bytes | str, source: str = "request body") -> FaultProfile:
    """A profile from JSON text; raises `ProfileError` naming every bad field."""
    try:
        return FaultProfile.model_validate_json(data)
    except ValidationError as error:
        raise ProfileError(source, field_errors(error)) from None


def load_profile(path: str | Path) -> FaultProfile:
    """A profile from a YAML or JSON file; raises `ProfileError` naming every bad field."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        return FaultProfile.model_validate({} if raw is None else raw)
    except ValidationError as error:
        raise ProfileError(str(path), field_errors(error)) from None
