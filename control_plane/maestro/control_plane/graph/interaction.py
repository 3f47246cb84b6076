"""InteractRun's session: the approver's console on one run, over one stream.

The session sends a snapshot (the run and its open gates), then follows the run's events
(`follow.follow_run`) while it carries out the commands the client sends: decide one of the run's
gates, or cancel the run. Each command is answered by a result in the same stream, between the
events; a refused command is answered with its error and does not end the session, which ends
after the run's final event and the results of the commands sent until then.

No grpc: the servicer turns request messages into `Command`s and renders the `SessionItem`s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import assert_never

from maestro.control_plane.graph.follow import LiveChunk, follow_run
from maestro.control_plane.graph.gates import Decision
from maestro.control_plane.graph.records import EventRecord, GateRecord, RunRecord
from maestro.control_plane.graph.service import GraphService
from maestro.core.auth import Principal
from maestro.core.errors import FieldViolation, InvalidArgument, MaestroError


@dataclass(frozen=True, slots=True)
class DecideGate:
    request_id: str
    gate: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class CancelRun:
    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A command the session cannot carry out as sent (say, a second `start`): its result is
    `error`."""

    request_id: str
    error: MaestroError


Command = DecideGate | CancelRun | Refused


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the session opens with."""

    run: RunRecord
    open_gates: tuple[GateRecord, ...]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's answer: the gate it decided or the run it cancelled, or why it failed."""

    request_id: str
    gate: GateRecord | None = None
    run: RunRecord | None = None
    error: MaestroError | None = None


SessionItem = Snapshot | EventRecord | LiveChunk | CommandResult


async def run_session(
    service: GraphService,
    principal: Principal,
    name: str,
    after: int,
    include_chunks: bool,
    commands: AsyncIterator[Command],
) -> AsyncGenerator[SessionItem, None]:
    """The session on run `name`: a snapshot, then its events after `after` and the results of
    `commands`, until the run's final event."""
    run = await service.get_run(principal, name)
    gates = [await service.get_gate(principal, gate) for gate in run.open_gates]
    yield Snapshot(run, tuple(gates))
    results: asyncio.Queue[CommandResult] = asyncio.Queue()
    reader = asyncio.create_task(_carry_out(service, principal, name, commands, results))
    try:
        events = follow_run(service, principal, name, after, include_chunks, results)
        async with contextlib.aclosing(events):
            async for item in events:
                yield item
        while not results.empty():  # answers to commands that ended the run
            yield results.get_nowait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _carry_out(
    service: GraphService,
    principal: Principal,
    name: str,
    commands: AsyncIterator[Command],
    results: asyncio.Queue[CommandResult],
) -> None:
    """Carry out the session's commands in order, each answered in `results`."""
    async for command in commands:
        await results.put(await _answer(service, principal, name, command))
        service.hub.changed(name)  # wakes the session's follower to send it


async def _answer(
    service: GraphService, principal: Principal, name: str, command: Command
) -> CommandResult:
    try:
        match command:
            case DecideGate():
                if not command.gate.startswith(f"{name}/gates/"):
                    raise InvalidArgument(
                        [FieldViolation("decide.gate", "must be a gate of this session's run")]
                    )
                gate, _ = await service.decide_gate(principal, command.gate, command.decision)
                return CommandResult(command.request_id, gate=gate)
            case CancelRun():
                run = await service.cancel_run(principal, name, command.reason)
                return CommandResult(command.request_id, run=run)
            case Refused():
                raise command.error
            case _:
                assert_never(command)
    except MaestroError as error:
        return CommandResult(command.request_id, error=error)
