"""WatchConfig sessions without gRPC: resume points, pushed changes, NACKs logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from structlog.testing import capture_logs

from maestro.control_plane.route.watch import ConfigWatches, RejectedSnapshot, WatchAck
from maestro.routing.snapshots import Revision, SnapshotRegistry, compile_revision

ROOT = Path(__file__).resolve().parent.parent
SEED_YAML = (ROOT / "deploy/router/litellm.yaml").read_text()
ALPHA = "projects/alpha"


async def _publish(registry: SnapshotRegistry, number: int) -> None:
    revision = Revision(ALPHA, number, SEED_YAML, (), "", "", f"d{number}", datetime.now(UTC))
    await registry.publish(revision, compile_revision(revision, registry.board(ALPHA)))


async def _acks(*items: WatchAck) -> AsyncIterator[WatchAck]:
    for item in items:
        yield item
    await asyncio.Event().wait()  # the data plane keeps its stream open


async def test_an_unknown_version_gets_the_full_state_then_each_change() -> None:
    registry = SnapshotRegistry()
    await _publish(registry, 1)
    session = ConfigWatches(registry, asyncio.Event()).session(
        "dp", frozenset({ALPHA}), "", _acks()
    )
    first = await anext(session)
    await _publish(registry, 2)
    second = await asyncio.wait_for(anext(session), timeout=10)
    await session.aclose()
    assert first.full_state
    assert [p.revision.revision for p in first.snapshots] == [1]
    assert not second.full_state
    assert [p.revision.revision for p in second.snapshots] == [2]


async def test_a_version_from_another_process_gets_the_full_state() -> None:
    registry = SnapshotRegistry()
    await _publish(registry, 1)
    session = ConfigWatches(registry, asyncio.Event()).session(
        "dp", frozenset({ALPHA}), "otherepoch:1", _acks()
    )
    first = await anext(session)
    await session.aclose()
    assert first.full_state


async def test_a_resumed_session_is_sent_nothing_until_something_changes() -> None:
    registry = SnapshotRegistry()
    await _publish(registry, 1)
    watches = ConfigWatches(registry, asyncio.Event())
    first_session = watches.session("dp", frozenset({ALPHA}), "", _acks())
    first = await anext(first_session)
    await first_session.aclose()
    resumed = watches.session("dp", frozenset({ALPHA}), first.version_info, _acks())
    waiting = asyncio.ensure_future(anext(resumed))
    await asyncio.sleep(0)  # let the session look for changes once
    nothing_yet = not waiting.done()
    await _publish(registry, 2)
    update = await asyncio.wait_for(waiting, timeout=10)
    await resumed.aclose()
    assert nothing_yet
    assert [p.revision.revision for p in update.snapshots] == [2]


async def test_a_nack_and_a_rejected_snapshot_are_logged() -> None:
    registry = SnapshotRegistry()
    await _publish(registry, 1)
    nack = WatchAck("e:1", "n1", "cannot apply", (RejectedSnapshot(ALPHA, "1", "bad rego"),))
    with capture_logs() as logs:
        session = ConfigWatches(registry, asyncio.Event()).session(
            "dp", frozenset({ALPHA}), "", _acks(nack)
        )
        await anext(session)
        for _ in range(100):  # bounded: the side task reads the ACK stream
            if any(entry["event"] == "route.snapshot_rejected" for entry in logs):
                break
            await asyncio.sleep(0.01)
        await session.aclose()
    events = {entry["event"]: entry for entry in logs}
    assert events["route.watch_nack"]["error"] == "cannot apply"
    assert events["route.snapshot_rejected"]["error"] == "bad rego"


async def test_a_session_ends_when_the_server_stops() -> None:
    registry = SnapshotRegistry()
    await _publish(registry, 1)
    stopping = asyncio.Event()
    session = ConfigWatches(registry, stopping).session("dp", frozenset({ALPHA}), "", _acks())
    await anext(session)
    stopping.set()
    ended = [update async for update in session]
    assert ended == []


async def test_the_same_revision_published_twice_newer_only_is_one_change() -> None:
    # ApplyConfig and the replica follower its own NOTIFY woke may both compile and publish the
    # revision just stored; a resumed data plane must not be sent it again.
    registry = SnapshotRegistry()
    revision = Revision(ALPHA, 1, SEED_YAML, (), "", "", "d1", datetime.now(UTC))
    first = await registry.publish(
        revision, compile_revision(revision, registry.board(ALPHA)), newer_only=True
    )
    again = await registry.publish(
        revision, compile_revision(revision, registry.board(ALPHA)), newer_only=True
    )
    assert again is first
    assert registry.generation == first.generation
    assert registry.changed_since(first.generation, None) == []
