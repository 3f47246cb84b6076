"""The graph domain's values: runs, their events and gates, kill switches, recipes.

Plain typed values with no grpc and no storage format: the runtime, the steps, the service and
the store speak these. `stored_json` writes them as JSON in Maestro's own names (what
`run_events.body`, `run_gates.body` and `agent_runs.error` hold) and `convert` renders them as
`maestro.v1` messages, so neither the stored format nor the domain is tied to the API contract.

An event is a `NewEvent` (to append) or an `EventRecord` (stored, numbered) around one payload
dataclass per kind of event (`EventPayload`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RunStatus(enum.IntEnum):
    """A run's lifecycle; stored as its number in `agent_runs.status`, which `Run.State`
    shares."""

    QUEUED = 1
    RUNNING = 2
    PAUSED = 3
    WAITING_FOR_APPROVAL = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLED = 7
    BLOCKED = 8

    @property
    def final(self) -> bool:
        return self >= RunStatus.SUCCEEDED


CLAIMABLE = (RunStatus.QUEUED, RunStatus.RUNNING)
UNFINISHED = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.PAUSED,
    RunStatus.WAITING_FOR_APPROVAL,
)


class GateStatus(enum.IntEnum):
    """A gate's lifecycle; stored as its number in `run_gates.status`, which `Gate.State`
    shares."""

    OPEN = 1
    APPROVED = 2
    BLOCKED = 3
    EXPIRED = 4


class NodeKind(enum.StrEnum):
    """A recipe node's kind, named as recipes name it."""

    MODEL = "model"
    TOOL = "tool"
    GATE = "gate"
    ROUTER = "router"
    SUBGRAPH = "subgraph"


class GateVerdict(enum.StrEnum):
    APPROVE = "approve"
    EDIT = "edit"
    BLOCK = "block"


class Outcome(enum.StrEnum):
    """How a node attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


class ErrorCode(enum.StrEnum):
    """The status a run's error carries: a node, gate, budget or policy stopped it, or the
    runtime failed."""

    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run or a node attempt failed: `reason` is the stable identifier clients branch on
    (NODE_TIMEOUT, GATE_BLOCKED, BUDGET_EXCEEDED, ...)."""

    code: ErrorCode
    reason: str
    message: str
    node_id: str = ""


@dataclass(frozen=True, slots=True)
class Budget:
    """Zero means no limit on that dimension."""

    max_tokens: int = 0
    max_cost_usd: float = 0.0
    max_wall_time_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
            "max_wall_time_s": self.max_wall_time_s,
        }


@dataclass(frozen=True, slots=True)
class InFlight:
    """A node whose start is recorded and whose result is not committed yet."""

    node_id: str
    attempt: int
    visit: int
    replica: str
    idempotency_key: str
    provenance_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "attempt": self.attempt,
            "visit": self.visit,
            "replica": self.replica,
            "idempotency_key": self.idempotency_key,
            "provenance_id": self.provenance_id,
        }


@dataclass(frozen=True, slots=True)
class RunRecord:
    name: str
    project: str
    recipe: str
    recipe_revision_id: str
    recipe_source: str
    input_state: dict[str, Any]
    state: dict[str, Any]
    status: RunStatus
    budget: Budget
    autonomy: int
    trace_id: str
    create_time: float
    update_time: float
    state_reason: str = ""
    next_node: str = ""
    """The node to run next; empty once the run is finished or while it waits at a gate."""
    in_flight: InFlight | None = None
    visits: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: RunError | None = None
    kill_switch: str = ""
    last_seq: int = 0
    owner: str = ""
    lease_expire: float = 0.0
    request_id: str | None = None
    end_time: float | None = None
    open_gates: tuple[str, ...] = ()
    """Names of the run's open gates, kept in its row by every change that opens or closes one."""
    creator: str = ""
    """The identity that started the run (`Principal.who`): it may not approve its gates."""
    artifact_version: str = ""
    """The recipe artifact's version the run serves (`recipe` is then the artifact's name),
    picked from the traffic split when the run was created."""


# -- gates ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateDecision:
    """One approver's verdict on a gate. `counted`: it counts towards the gate's required
    approvals (a repeat approver, a BLOCK, and approvals before an EDIT do not)."""

    approver: str
    verdict: GateVerdict
    reason: str
    counted: bool
    provenance_id: str
    decide_time: float
    state_patch: dict[str, Any] | None = None
    edited_action: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class GateRecord:
    name: str
    run: str
    project: str
    node_id: str
    status: GateStatus
    prompt: str
    required_approvals: int
    autonomy: int
    state_snapshot: dict[str, Any]
    proposed_action: dict[str, Any] | None
    """{"tool": ..., "arguments": {...}}: the side effect awaiting approval, if any."""
    decisions: tuple[GateDecision, ...]
    etag: str
    create_time: float
    update_time: float
    opened_seq: int = 0
    expire_time: float | None = None
    """When the gate expires if still open (the gate node's `timeout_s`); None: never."""

    @property
    def approvals_counted(self) -> int:
        return sum(1 for decision in self.decisions if decision.counted)


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an event's result came from: `id` links a node's start to its finish; `producer` is
    the deployment, tool or child run; `input_digests` name what the step was given."""

    id: str
    producer: str = ""
    input_digests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeStarted:
    kind: NodeKind
    estimated_cost_usd: float = 0.0
    idempotency_key: str = ""
    """A tool node's key (a replay calls the tool with the same one); empty for other kinds."""


@dataclass(frozen=True, slots=True)
class NodeFinished:
    outcome: Outcome
    duration_s: float
    output: dict[str, Any] | None = None
    usage: Usage | None = None
    cost_usd: float = 0.0
    next_node_ids: tuple[str, ...] = ()
    error: RunError | None = None
    will_retry: bool = False


@dataclass(frozen=True, slots=True)
class CostUpdate:
    """The run's usage and cost so far."""

    usage: Usage
    cost_usd: float
    budget_used_ratio: float


@dataclass(frozen=True, slots=True)
class GateOpened:
    gate: GateRecord
    """The gate as it opened."""


@dataclass(frozen=True, slots=True)
class GateDecided:
    gate: str
    decision: GateDecision
    gate_status: GateStatus
    """The gate's status after the decision."""


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    rule: str
    reason: str
    budget: Budget
    """The budget that would be exceeded: the node's own or the run's."""
    estimated_cost_usd: float
    spent_cost_usd: float


@dataclass(frozen=True, slots=True)
class PolicyBlocked:
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class StepReplayed:
    previous_replica: str
    replica: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RunStateChanged:
    previous: RunStatus
    status: RunStatus
    reason: str


@dataclass(frozen=True, slots=True)
class RunErrored:
    """An error not tied to a node attempt (a gate that expired)."""

    error: RunError


EventPayload = (
    NodeStarted
    | NodeFinished
    | CostUpdate
    | GateOpened
    | GateDecided
    | BudgetExceeded
    | PolicyBlocked
    | StepReplayed
    | RunStateChanged
    | RunErrored
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store gives it its sequence number."""

    payload: EventPayload
    node_id: str = ""
    attempt: int = 0
    provenance: Provenance | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    run: str
    seq: int
    event_time: float
    node_id: str
    attempt: int
    payload: EventPayload
    provenance: Provenance | None = None


# -- the rest -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KillSwitchRecord:
    name: str
    engaged: bool = False
    reason: str = ""
    updated_by: str = ""
    update_time: float | None = None
    etag: str = ""


@dataclass(frozen=True, slots=True)
class RecipeRecord:
    project: str
    recipe_id: str
    revision_id: str
    display_name: str
    source_yaml: str
    create_time: float
    update_time: float
    artifact_version: str = ""
    """Set for a recipe artifact's version (RolloutService): `recipe_id` is then the artifact's
    id, and the revision id is derived from the version's content digest."""

    @property
    def name(self) -> str:
        if self.artifact_version:
            return self.artifact_version.partition("/versions/")[0]
        return f"projects/{self.project}/recipes/{self.recipe_id}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunChange:
    """What one transaction on a run writes: column updates, events, gates to upsert, audit
    records."""

    updates: dict[str, Any] = field(default_factory=dict)
    events: tuple[NewEvent, ...] = ()
    gates: tuple[GateRecord, ...] = ()
    notify: bool = True
    audit: tuple[AuditEntry, ...] = ()
