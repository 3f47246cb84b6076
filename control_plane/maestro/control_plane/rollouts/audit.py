"""The rollout audit trail as a hash chain, and its verification.

Each project's events form one chain ordered by `seq`: an event's hash is SHA-256 of the previous
event's hash and the event's canonical content (sorted-key JSON of every field but its hash), so
editing an event changes its hash, deleting one leaves a gap in `seq` and a `previous_hash` that
no longer matches, and reordering breaks both. Verification recomputes the chain from the rows;
it needs no key. (Rewriting the whole tail after an edit would go unseen; publishing the head
hash elsewhere, such as the notification channel, closes that.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from maestro.control_plane.rollouts.records import AuditEvent

GENESIS = "0" * 64


def canonical(event: AuditEvent) -> bytes:
    """The event's content as hashed: every field but `event_hash`, enums as numbers."""
    body: dict[str, Any] = asdict(event)
    body.pop("event_hash")
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(previous_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical(event)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    event: str  # the event's name
    problem: str


def verify_chain(
    events: Iterable[AuditEvent], head: tuple[int, str] | None = None
) -> list[ChainProblem]:
    """Every break in one project's chain, given its events in `seq` order (empty: intact).
    `head`: the (seq, hash) the project's traffic row holds for its last event, so deleting
    the newest events (or all of them) shows too."""
    problems: list[ChainProblem] = []
    previous_hash = GENESIS
    expected_seq = 1
    for event in events:
        if event.seq != expected_seq:
            problems.append(
                ChainProblem(
                    event.seq,
                    event.name,
                    f"events {expected_seq}..{event.seq - 1} are missing (deleted)"
                    if event.seq > expected_seq
                    else f"sequence number {event.seq} is out of order",
                )
            )
        if event.previous_hash != previous_hash:
            problems.append(
                ChainProblem(
                    event.seq,
                    event.name,
                    "previous_hash does not match the event before it "
                    "(an event before it was edited, deleted or reordered)",
                )
            )
        if chain_hash(event.previous_hash, event) != event.event_hash:
            problems.append(
                ChainProblem(
                    event.seq, event.name, "content does not match its hash (the event was edited)"
                )
            )
        previous_hash = event.event_hash
        expected_seq = event.seq + 1
    if head is not None and (expected_seq - 1, previous_hash) != (head[0], head[1] or GENESIS):
        problems.append(
            ChainProblem(
                head[0],
                f"the chain's head (seq {head[0]})",
                f"the stored events end at seq {expected_seq - 1}, the head says seq {head[0]}: "
                "the newest events were deleted or edited",
            )
        )
    return problems
