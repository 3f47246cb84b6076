"""The built-in tools recipes may declare, and how a tool call is made.

Each tool receives its arguments and the call's idempotency key, derived from (run, node,
visit): a replayed step after a crash presents the same key. Tools with side effects write
through the store's effect ledger, so a replay returns the first call's result instead of acting
twice; that is what "tools that honour idempotency keys" means here, and the crash test checks
it from the ledger's call counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from maestro.control_plane.graph.store import RunStore

Tool = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]

_KNOWLEDGE = (
    "Maestro routes each step to a model on quality, latency, cost, reliability and sovereignty.",
    "Personal data stays on in-house deployments under the routing policy.",
    "A run resumes at the node that was in flight, so at most one step replays.",
    "Gates pause a run until enough distinct approvers decide.",
    "Budgets cap a run's tokens, cost and wall time before each node.",
)


_READ_ONLY: set[Tool] = set()


def read_only(tool: Tool) -> Tool:
    """Mark an implementation as free of side effects. Any other tool is treated as having
    them (a gate before it below L3), whatever a recipe declares: the registry knows what a
    tool does, a recipe author only says so."""
    _READ_ONLY.add(tool)
    return tool


def has_side_effects(tool: Tool | None) -> bool:
    return tool not in _READ_ONLY


@read_only
async def search(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    """Read-only: the knowledge-base passages sharing the most words with the query."""
    query = str(arguments.get("query") or arguments.get("input") or "")
    words = set(query.lower().split())
    ranked = sorted(_KNOWLEDGE, key=lambda text: -len(words & set(text.lower().split())))
    return {"query": query, "results": list(ranked[:2])}


def ticket_tool(store: RunStore) -> Tool:
    """`create_ticket`: opens a ticket (a side effect), exactly once per idempotency key."""

    async def create_ticket(arguments: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        title = str(arguments.get("title") or arguments.get("input") or "untitled")

        def effect() -> dict[str, Any]:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:8]
            return {"ticket": f"TICKET-{digest}", "title": title}

        result, _ran = await store.aio(
            store.apply_effect, idempotency_key, "create_ticket", arguments, effect
        )
        return result

    return create_ticket


def builtin_tools(store: RunStore) -> Mapping[str, Tool]:
    return {"search": search, "create_ticket": ticket_tool(store)}
