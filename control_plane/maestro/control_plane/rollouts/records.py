"""The rollout slice's typed values: artifact versions, rollouts, analyses and audit events.

Plain frozen dataclasses with no transport in them; `convert.py` maps them to and from the API's
messages and `store.py` to and from rows. Weights are whole percents; times are epoch seconds.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

CONTROLLER = "system:rollout-controller"
NO_ROLLOUT = "-"
"""The rollout of an audit event that belongs to none (a version created)."""
"""The actor of the controller's own steps in the audit log."""
MAX_STEPS = 50
MAX_TEMPLATES = 10
DEFAULT_MIN_REQUESTS = 100
DEFAULT_BACKGROUND_INTERVAL_S = 60.0
MIN_BACKGROUND_INTERVAL_S = 10.0


class Kind(enum.IntEnum):
    PROMPT = 1
    AGENT = 2
    RECIPE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class State(enum.IntEnum):
    UNSPECIFIED = 0  # an audit event outside a rollout (a version created)
    PROGRESSING = 1
    PAUSED = 2
    ANALYZING = 3
    PROMOTED = 4
    ROLLED_BACK = 5
    ABORTED = 6
    FAILED = 7


ENDED = frozenset({State.PROMOTED, State.ROLLED_BACK, State.ABORTED, State.FAILED})
RETRYABLE = frozenset({State.ROLLED_BACK, State.ABORTED, State.FAILED})


class Hold(enum.StrEnum):
    """Why a rollout is PAUSED, which says what ResumeRollout does."""

    NONE = ""
    STEP = "step"  # a pause step, or an inconclusive analysis: resuming finishes the step
    MANUAL = "manual"  # PauseRollout: resuming goes on with the same step
    APPROVALS = "approvals"  # dual control: waits for approvals, not for ResumeRollout
    FREEZE = "freeze"  # a freeze window: goes on when it ends


class Outcome(enum.IntEnum):
    RUNNING = 1
    PASSED = 2
    FAILED = 3
    INCONCLUSIVE = 4


class Action(enum.IntEnum):
    CREATED = 1
    WEIGHT_CHANGED = 2
    PAUSED = 3
    RESUMED = 4
    ANALYSIS_STARTED = 5
    ANALYSIS_PASSED = 6
    ANALYSIS_FAILED = 7
    ANALYSIS_INCONCLUSIVE = 8
    STEP_SKIPPED = 9
    PROMOTED = 10
    ROLLED_BACK = 11
    ABORTED = 12
    RETRIED = 13
    FAILED = 14
    APPROVED = 15
    VERSION_CREATED = 16


@dataclass(frozen=True, slots=True)
class Provenance:
    source_repository: str = ""
    source_commit: str = ""
    source_path: str = ""
    builder: str = ""
    creator: str = ""  # the API key that created the version
    provenance_id: str = ""


@dataclass(frozen=True, slots=True)
class VersionRecord:
    project: str  # project id
    artifact_id: str
    version_id: str
    kind: Kind
    description: str
    media_type: str
    digest: str  # 'sha256:<hex>' of the content
    manifest_digest: str
    size_bytes: int
    provenance: Provenance
    create_time: float
    seq: int = 0  # 1, 2, ... per artifact, in creation order

    @property
    def artifact(self) -> str:
        return f"projects/{self.project}/artifacts/{self.artifact_id}"

    @property
    def name(self) -> str:
        return f"{self.artifact}/versions/{self.version_id}"


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """An artifact's serving state: its stable version and the ones before it (newest first)."""

    project: str
    artifact_id: str
    kind: Kind
    stable_version: str = ""  # version id; empty before its first rollout
    earlier_stable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EvalGateSpec:
    suite: str
    model_group: str = ""
    repetitions: int = 0
    max_scorecard_age_s: float = 0.0  # 0: always a new run
    max_cost_usd: float = 0.0
    max_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SloWindow:
    long_s: float
    short_s: float
    max_burn_rate: float


@dataclass(frozen=True, slots=True)
class SloBurnSpec:
    indicator: str  # 'errors' or 'latency'
    objective_ratio: float
    windows: tuple[SloWindow, ...]
    latency_threshold_ms: float = 0.0
    min_request_count: int = DEFAULT_MIN_REQUESTS


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    name: str
    eval_gate: EvalGateSpec | None = None
    slo_burn: SloBurnSpec | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """Exactly one of: a weight, a pause (`pause_s` 0 = until promoted), an analysis."""

    set_weight: int | None = None
    pause_s: float | None = None
    analysis: tuple[TemplateSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Strategy:
    steps: tuple[Step, ...]
    background: tuple[TemplateSpec, ...] = ()
    background_interval_s: float = DEFAULT_BACKGROUND_INTERVAL_S


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What a rollout was created with: fixed for its life."""

    artifact_id: str
    stable_version: str  # version id
    candidate_version: str  # version id
    strategy: Strategy
    description: str = ""
    rollback_revisions: int = 0
    automated: bool = False
    creator: str = ""  # who created it: dual control needs two approvers besides
    required_approvals: int = 0


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    reason: str
    create_time: float


@dataclass(frozen=True, slots=True)
class Measurement:
    metric: str
    value: float
    limit: float
    passed: bool


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    step_index: int
    background: bool
    template: str
    outcome: Outcome
    measurements: tuple[Measurement, ...] = ()
    message: str = ""
    eval_run: str = ""
    scorecard: str = ""
    baseline_scorecard: str = ""
    gate_decision_id: str = ""
    start_time: float = 0.0
    end_time: float | None = None


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    project: str
    rollout_id: str
    spec: RolloutSpec
    state: State
    state_reason: str
    step_index: int
    weight: int
    pause_end: float | None
    analyses: tuple[AnalysisResult, ...]
    snapshot_version: str
    revision: int
    create_time: float
    update_time: float
    approvals: tuple[Approval, ...] = ()
    hold: Hold = Hold.NONE
    analysis_attempt: int = 0
    """The revision at which the step's analysis in flight started (0: none): its result is
    applied only to that attempt, never to a later one of the same step."""

    @property
    def name(self) -> str:
        return f"projects/{self.project}/rollouts/{self.rollout_id}"

    @property
    def artifact(self) -> str:
        return f"projects/{self.project}/artifacts/{self.spec.artifact_id}"

    def version_name(self, version_id: str) -> str:
        return f"{self.artifact}/versions/{version_id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.revision}"'

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of a project's audit chain. `seq` orders the chain; `event_hash` is
    SHA-256(previous_hash, canonical content) (see audit.py)."""

    project: str
    rollout_id: str
    action: Action
    actor: str
    revision: int
    state_before: State
    state_after: State
    step_index: int
    weight_before: int
    weight_after: int
    stable_version: str
    candidate_version: str
    candidate_digest: str
    reason: str = ""
    request_id: str = ""
    analysis_template: str = ""
    eval_run: str = ""
    scorecard: str = ""
    gate_decision_id: str = ""
    measurements: tuple[Measurement, ...] = ()
    snapshot_version: str = ""
    create_time: float = 0.0
    event_id: str = ""
    seq: int = 0
    previous_hash: str = ""
    event_hash: str = ""

    @property
    def name(self) -> str:
        return f"projects/{self.project}/rollouts/{self.rollout_id}/auditEvents/{self.event_id}"


def finite(result: AnalysisResult) -> AnalysisResult:
    """`result` with every measured value finite (NaN as 0, infinities as +-1e308): what is
    stored and hashed must read back as it was written, and JSON has no NaN or Infinity."""

    def clean(x: float) -> float:
        if math.isnan(x):
            return 0.0
        return max(min(x, 1e308), -1e308)

    return replace(
        result,
        measurements=tuple(
            replace(m, value=clean(m.value), limit=clean(m.limit)) for m in result.measurements
        ),
    )
