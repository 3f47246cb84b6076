"""Helpers for GraphService tests: create runs, wait for states, read their events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

from google.protobuf import json_format, struct_pb2

from maestro.clients import AsyncMaestroClient
from maestro.v1 import graph_service_pb2 as gpb

PARENT = "projects/alpha"
FINAL: frozenset[int] = frozenset(
    {
        gpb.Run.STATE_SUCCEEDED,
        gpb.Run.STATE_FAILED,
        gpb.Run.STATE_CANCELLED,
        gpb.Run.STATE_BLOCKED,
    }
)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


async def create_run(
    client: AsyncMaestroClient, recipe: str, state: dict[str, Any] | None = None, **run: Any
) -> gpb.Run:
    response = await client.graphs.CreateRun(
        gpb.CreateRunRequest(
            parent=PARENT, run=gpb.Run(recipe=recipe, input_state=struct(state or {}), **run)
        )
    )
    return response.run


async def wait_for(
    client: AsyncMaestroClient, name: str, states: Collection[int], timeout_s: float = 30
) -> gpb.Run:
    """Poll GetRun until the run is in one of `states` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = (await client.graphs.GetRun(gpb.GetRunRequest(name=name))).run
        if run.state in states:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {name} stayed {gpb.Run.State.Name(run.state)}")
        await asyncio.sleep(0.02)


async def all_events(client: AsyncMaestroClient, name: str) -> list[gpb.RunEvent]:
    out: list[gpb.RunEvent] = []
    token = ""
    while True:
        page = await client.graphs.ListRunEvents(
            gpb.ListRunEventsRequest(parent=name, page_size=1000, page_token=token)
        )
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


def finished_nodes(events: list[gpb.RunEvent]) -> list[str]:
    return [
        e.node_id
        for e in events
        if e.WhichOneof("payload") == "node_finished"
        and e.node_finished.outcome == gpb.RunEvent.NodeFinished.OUTCOME_SUCCEEDED
    ]


def state_of(run: gpb.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run.graph_state)
