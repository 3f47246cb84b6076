"""What the run store holds: runs, their events and gates, kill switches, recipes.

Plain values with no grpc; `graph.convert` renders them as `maestro.v1` messages. Event and gate
bodies are dicts in the proto's JSON form (original field names), so they are stored as JSON and
rendered with `json_format.ParseDict`, one shape from the runtime to the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RunStatus(enum.IntEnum):
    """`Run.State`, same numbers."""

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
    """`Gate.State`, same numbers."""

    OPEN = 1
    APPROVED = 2
    BLOCKED = 3
    EXPIRED = 4


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
    error: dict[str, Any] | None = None
    """{code, reason, message, node_id}."""
    kill_switch: str = ""
    last_seq: int = 0
    owner: str = ""
    lease_expire: float = 0.0
    request_id: str | None = None
    end_time: float | None = None
    open_gates: tuple[str, ...] = ()
    """Names of the run's open gates, kept in its row by every change that opens or closes one."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    run: str
    seq: int
    event_time: float
    node_id: str
    attempt: int
    body: dict[str, Any]
    """One RunEvent payload field, e.g. {"node_started": {...}}, plus "provenance" if any."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store gives it its sequence number."""

    body: dict[str, Any]
    node_id: str = ""
    attempt: int = 0


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
    decisions: tuple[dict[str, Any], ...]
    etag: str
    create_time: float
    update_time: float
    opened_seq: int = 0
    expire_time: float | None = None
    """When the gate expires if still open (the gate node's `timeout_s`); None: never."""

    @property
    def approvals_counted(self) -> int:
        return sum(1 for decision in self.decisions if decision.get("counted"))

    def body(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "required_approvals": self.required_approvals,
            "autonomy": self.autonomy,
            "state_snapshot": self.state_snapshot,
            "proposed_action": self.proposed_action,
            "decisions": list(self.decisions),
        }


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

    @property
    def name(self) -> str:
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
