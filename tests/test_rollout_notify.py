"""Rollout notifications: a real HTTP webhook receiver on a loopback port (aiohttp), tickets in
the graph's real tool ledger, and a real server's RolloutService telling the notifier."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from maestro.control_plane.graph.store import RunStore
from maestro.control_plane.rollouts import transitions as t
from maestro.control_plane.rollouts.notify import (
    Notifier,
    RolloutTickets,
    SlackWebhook,
    decisions,
    slack_message,
)
from maestro.control_plane.rollouts.records import (
    CONTROLLER,
    Action,
    AnalysisResult,
    AuditEvent,
    Hold,
    Outcome,
    RolloutRecord,
    RolloutSpec,
    State,
    Step,
    Strategy,
)
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.v1 import rollout_service_pb2 as rpb
from tests.conftest import RunningServer
from tests.rollout_support import pause, push_prompt, rollout, wait_for_state, weight

DIGEST = "sha256:" + "ab" * 32
HOOK_PATH = "/services/T0000/B0000/not-a-real-secret"
REASON = "analysis error-budget-ok failed: burn rate 14.2 over 5"


# -- a webhook receiver -------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def webhook_receiver(
    answers: list[int] | None = None, hang: bool = False
) -> AsyncIterator[Receiver]:
    """An incoming-webhook endpoint answering `answers` in turn, then 200; with `hang`, it never
    answers (until the test ends)."""
    pending = list(answers or [])
    release = asyncio.Event()
    receiver = Receiver("")

    async def handle(request: web.Request) -> web.Response:
        receiver.bodies.append(await request.json())
        receiver.arrived.set()
        if hang:
            await release.wait()
        status = pending.pop(0) if pending else 200
        return web.Response(status=status, text="ok" if status == 200 else "no")

    app = web.Application()
    app.router.add_post(HOOK_PATH, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}{HOOK_PATH}"
    try:
        yield receiver
    finally:
        release.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.stop(grace_s=0)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[RunStore]:
    sql = SqliteSql(tmp_path / "maestro.db", MIGRATIONS)
    yield RunStore(sql)
    sql.close()


def fast_webhook(url: str, timeout_s: float = 5.0) -> SlackWebhook:
    return SlackWebhook(
        url, timeout_s=timeout_s, max_attempts=5, backoff_s=0.01, max_backoff_s=0.05
    )


# -- rollouts and their changes, made by the real transitions -------------------------------------


def a_rollout(rollout_id: str = "r1", **changes: Any) -> RolloutRecord:
    spec = RolloutSpec(
        "support-answer",
        "v1",
        "v2",
        Strategy((Step(set_weight=10), Step(pause_s=0.0), Step(set_weight=50))),
        creator="alice",
    )
    record = RolloutRecord(
        "alpha", rollout_id, spec, State.PROGRESSING, "", 0, 0, None, (), "", 1, 1.0, 1.0
    )
    return replace(record, **changes)


def created(r: RolloutRecord) -> t.Change:
    return r, [t.event(r, r, Action.CREATED, "alice", DIGEST, reason="try the shorter prompt")]


def weight_step(r: RolloutRecord) -> t.Change:
    return t.set_weight(r, 10, 2.0, CONTROLLER, DIGEST, "step 0: setWeight 10")


def failed_analysis(r: RolloutRecord) -> t.Change:
    analysis = AnalysisResult(0, False, "error-budget-ok", Outcome.FAILED, message="burn 14.2 > 5")
    return t.to_zero(
        r,
        3.0,
        CONTROLLER,
        DIGEST,
        state=State.ROLLED_BACK,
        action=Action.ROLLED_BACK,
        reason=REASON,
        results=(analysis,),
    )


def inconclusive(r: RolloutRecord) -> t.Change:
    analysis = AnalysisResult(0, False, "error-budget-ok", Outcome.INCONCLUSIVE, message="12 < 50")
    return t.analysed(r, 3.0, DIGEST, (analysis,))


def tell(notifier: Notifier, change: t.Change) -> None:
    notifier.listen(*change)


# -- which changes are announced -----------------------------------------------------------------


def test_decisions_and_rollbacks_are_announced_routine_steps_are_not() -> None:
    r = a_rollout(weight=10)
    assert [e.action for e in decisions(*created(r))] == [Action.CREATED]
    assert decisions(*weight_step(r)) == ()
    started = t.start_analysis(r, 2.0, DIGEST, ["error-budget-ok"])
    assert decisions(*started) == ()
    timed = t.pause(r, 2.0, CONTROLLER, DIGEST, hold=Hold.STEP, until=9.0, reason="pause 7s")
    assert decisions(*timed) == ()
    assert decisions(*t.resume(timed[0], 9.0, CONTROLLER, DIGEST, reason="the pause ended")) == ()

    assert [e.action for e in decisions(*failed_analysis(r))] == [
        Action.ANALYSIS_FAILED,
        Action.ROLLED_BACK,
    ]  # not its WEIGHT_CHANGED
    assert [e.action for e in decisions(*inconclusive(r))] == [
        Action.ANALYSIS_INCONCLUSIVE,
        Action.PAUSED,
    ]
    manual = t.pause(r, 2.0, "bob", DIGEST, hold=Hold.MANUAL, until=None, reason="looking")
    assert [e.action for e in decisions(*manual)] == [Action.PAUSED]
    held = t.pause(r, 2.0, CONTROLLER, DIGEST, hold=Hold.APPROVALS, until=None, reason="2 needed")
    assert [e.action for e in decisions(*held)] == [Action.PAUSED]
    until_promoted = t.pause(r, 2.0, CONTROLLER, DIGEST, hold=Hold.STEP, until=None, reason="x")
    assert [e.action for e in decisions(*until_promoted)] == [Action.PAUSED]
    resumed = t.resume(manual[0], 4.0, "bob", DIGEST, reason="looks fine")
    assert [e.action for e in decisions(*resumed)] == [Action.RESUMED]
    aborted = t.to_zero(
        r, 5.0, "bob", DIGEST, state=State.ABORTED, action=Action.ABORTED, reason="bad answers"
    )
    assert [e.action for e in decisions(*aborted)] == [Action.ABORTED]
    promoted = t.promote(r, 5.0, CONTROLLER, DIGEST, reason="every step passed")
    assert [e.action for e in decisions(*promoted)] == [Action.PROMOTED]


def test_the_message_names_the_rollout_action_and_reason_and_escapes_mrkdwn() -> None:
    r = a_rollout(weight=10)
    after, events = failed_analysis(r)
    notifier = Notifier()
    notifier.listen(after, events)  # no destination: nothing queued, nothing raised
    message = slack_message(_decision(after, events))
    assert r.name in message["text"]
    assert "ROLLED_BACK" in message["text"]
    assert "burn rate 14.2 over 5" in message["text"]
    assert message["blocks"][0]["type"] == "section"
    evil = t.to_zero(
        r,
        5.0,
        "bob",
        DIGEST,
        state=State.ABORTED,
        action=Action.ABORTED,
        reason="p99 > 2s & <!here>",
    )
    text = slack_message(_decision(*evil))["text"]
    assert "p99 &gt; 2s &amp; &lt;!here&gt;" in text
    assert "<!here>" not in text


def _decision(record: RolloutRecord, events: list[AuditEvent]) -> Any:
    from maestro.control_plane.rollouts.notify import Decision

    return Decision(record, decisions(record, events))


# -- the webhook -----------------------------------------------------------------------------------


async def test_a_webhook_failing_twice_with_500_gets_the_message_on_the_third_attempt() -> None:
    async with webhook_receiver(answers=[500, 500]) as hook:
        webhook = fast_webhook(hook.url)
        async with running(Notifier(webhook=webhook)) as notifier:
            r = a_rollout(weight=10)
            with capture_logs() as logs:
                tell(notifier, failed_analysis(r))
                await asyncio.wait_for(notifier.drain(), 30)
    assert webhook.attempts == 3
    assert len(hook.bodies) == 3
    assert hook.bodies[0] == hook.bodies[2]  # the same message, retried
    body = hook.bodies[-1]
    assert set(body) == {"text", "blocks"}
    assert "projects/alpha/rollouts/r1" in body["text"]
    assert "ROLLED_BACK" in body["text"]
    assert REASON in body["text"]
    assert any("ANALYSIS_FAILED" in str(block) for block in body["blocks"])
    stats = notifier.stats["webhook"]
    assert (stats.delivered, stats.failed, stats.dropped) == (1, 0, 0)
    events = [entry["event"] for entry in logs]
    assert events.count("rollouts.notify_retrying") == 2
    assert events.count("rollouts.notify_delivered") == 1
    assert all("not-a-real-secret" not in str(entry) for entry in logs)  # the URL is a secret


async def test_a_4xx_is_not_retried_and_a_429_is() -> None:
    async with webhook_receiver(answers=[404]) as hook:
        webhook = fast_webhook(hook.url)
        async with running(Notifier(webhook=webhook)) as notifier:
            with capture_logs() as logs:
                tell(notifier, failed_analysis(a_rollout(weight=10)))
                await asyncio.wait_for(notifier.drain(), 30)
    assert len(hook.bodies) == 1
    assert notifier.stats["webhook"].failed == 1
    (failed,) = [entry for entry in logs if entry["event"] == "rollouts.notify_failed"]
    assert "WebhookRejected: 404" in failed["error"]

    async with (
        webhook_receiver(answers=[429]) as hook,
        running(Notifier(webhook=fast_webhook(hook.url))) as notifier,
    ):
        tell(notifier, failed_analysis(a_rollout(weight=10)))
        await asyncio.wait_for(notifier.drain(), 30)
    assert len(hook.bodies) == 2
    assert notifier.stats["webhook"].delivered == 1


async def test_a_hanging_webhook_delays_neither_the_listener_nor_the_tickets(
    ledger: RunStore,
) -> None:
    async with webhook_receiver(hang=True) as hook:
        notifier = Notifier(
            webhook=fast_webhook(hook.url, timeout_s=60),  # longer than the test
            tickets=RolloutTickets(ledger, "OPS", backoff_s=0.01),
            max_pending=2,
        )
        async with running(notifier):
            tell(notifier, created(a_rollout("r1")))
            await asyncio.wait_for(hook.arrived.wait(), 30)  # the worker now waits on the hook
            assert notifier.stats["webhook"].pending == 0

            # Each call returns with its change queued, while the webhook still has not answered.
            tell(notifier, created(a_rollout("r2")))
            assert notifier.stats["webhook"].pending == 1
            tell(notifier, created(a_rollout("r3")))
            assert notifier.stats["webhook"].pending == 2
            tell(notifier, created(a_rollout("r4")))  # full: the oldest queued (r2) is dropped
            webhook_stats = notifier.stats["webhook"]
            assert (webhook_stats.pending, webhook_stats.dropped) == (2, 1)
            assert len(hook.bodies) == 1

            await asyncio.wait_for(notifier.drain("tickets"), 30)
            assert notifier.stats["tickets"].delivered + notifier.stats["tickets"].dropped == 4
            assert notifier.stats["webhook"].delivered == 0
    opened = [
        row for row in ledger.effects("projects/alpha/rollouts/") if row["tool"] == "create_ticket"
    ]
    assert len(opened) == 4 - notifier.stats["tickets"].dropped


# -- tickets ---------------------------------------------------------------------------------------


def _ledger_rows(ledger: RunStore, prefix: str) -> dict[str, dict[str, Any]]:
    with ledger.sql.read() as tx:
        rows = tx.all(
            "SELECT idempotency_key, tool, arguments, result, calls FROM tool_effects "
            "WHERE idempotency_key LIKE ? ORDER BY idempotency_key",
            (prefix + "%",),
        )
    return {
        str(row["idempotency_key"]): {
            "tool": row["tool"],
            "calls": row["calls"],
            "arguments": ledger.sql.json_out(row["arguments"]),
            "result": ledger.sql.json_out(row["result"]),
        }
        for row in rows
    }


async def test_one_ticket_per_rollout_in_the_tool_ledger_updated_on_each_decision(
    ledger: RunStore,
) -> None:
    tickets = RolloutTickets(ledger, "OPS", backoff_s=0.01)
    async with running(Notifier(tickets=tickets)) as notifier:
        r = a_rollout("r1")
        tell(notifier, created(r))  # revision 1
        stepped, events = weight_step(r)  # revision 2: routine, not announced
        tell(notifier, (stepped, events))
        paused = inconclusive(stepped)  # revision 3
        tell(notifier, paused)
        tell(notifier, paused)  # the same change told twice
        resumed = t.resume(paused[0], 4.0, "bob", DIGEST, reason="the metrics were late")
        tell(notifier, resumed)  # revision 4
        tell(notifier, failed_analysis(resumed[0]))  # revision 5
        tell(notifier, created(a_rollout("r2")))
        await asyncio.wait_for(notifier.drain(), 30)
    assert notifier.stats["tickets"].failed == 0

    name = "projects/alpha/rollouts/r1"
    rows = _ledger_rows(ledger, name)
    ticket = "TICKET-" + hashlib.sha256(name.encode()).hexdigest()[:8]  # the graph tool's id
    opened = rows.pop(name)
    assert opened["tool"] == "create_ticket"
    assert opened["result"]["ticket"] == ticket
    assert opened["arguments"]["project"] == "OPS"
    assert opened["arguments"]["rollout"] == name
    assert opened["calls"] == 5  # asked for at each change: opened once
    assert sorted(rows) == [f"{name}/revisions/{n}" for n in (1, 3, 4, 5)]
    assert {row["tool"] for row in rows.values()} == {"update_ticket"}
    assert {row["result"]["ticket"] for row in rows.values()} == {ticket}
    assert rows[f"{name}/revisions/3"]["calls"] == 2  # told twice, updated once
    assert rows[f"{name}/revisions/3"]["arguments"]["actions"] == [
        "ANALYSIS_INCONCLUSIVE",
        "PAUSED",
    ]
    last = rows[f"{name}/revisions/5"]
    assert last["arguments"]["state"] == "ROLLED_BACK"
    assert last["arguments"]["actions"] == ["ANALYSIS_FAILED", "ROLLED_BACK"]
    assert REASON in last["arguments"]["comment"]

    other = _ledger_rows(ledger, "projects/alpha/rollouts/r2")
    assert other["projects/alpha/rollouts/r2"]["result"]["ticket"] != ticket
    assert len(other) == 2


# -- through a real server -------------------------------------------------------------------------


async def test_a_real_rollout_service_tells_the_notifier_of_its_decisions(
    server: RunningServer,
) -> None:
    plane = server.plane.rollouts
    assert plane is not None
    ledger = RunStore(plane.store.sql)
    async with webhook_receiver(answers=[503]) as hook:
        notifier = Notifier(
            webhook=fast_webhook(hook.url), tickets=RolloutTickets(ledger, "OPS", backoff_s=0.01)
        )
        plane.service.listeners.append(notifier.listen)
        async with running(notifier), server.client(server.alpha_key) as alpha:
            v1 = await push_prompt(alpha, "v1")
            v2 = await push_prompt(alpha, "v2")
            made = await alpha.rollouts.CreateRollout(
                rpb.CreateRolloutRequest(
                    parent="projects/alpha",
                    rollout=rollout(v1.name, v2.name, [weight(30), pause()]),
                )
            )
            name = made.rollout.name
            await wait_for_state(alpha, name, rpb.Rollout.STATE_PAUSED)
            await alpha.rollouts.AbortRollout(
                rpb.AbortRolloutRequest(name=name, reason="bad answers in canary")
            )
            await asyncio.wait_for(notifier.drain(), 30)
    texts = [body["text"] for body in hook.bodies[1:]]  # the first answered 503, then retried
    assert hook.bodies[0] == hook.bodies[1]
    assert [next(a for a in ("CREATED", "PAUSED", "ABORTED") if a in text) for text in texts] == [
        "CREATED",
        "PAUSED",
        "ABORTED",
    ]
    assert all(name in text for text in texts)
    assert "bad answers in canary" in texts[-1]
    rows = _ledger_rows(ledger, name)
    assert rows[name]["tool"] == "create_ticket"
    updates = [rows[key]["arguments"]["actions"] for key in sorted(rows) if key != name]
    assert updates == [["CREATED"], ["PAUSED"], ["ABORTED"]]
