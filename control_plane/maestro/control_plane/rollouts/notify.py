"""Announcing rollout decisions and rollbacks: a Slack-compatible webhook and a ticket per rollout.

`Notifier.listen` is a `RolloutService` listener: it is told of each committed change with its
audit events, keeps the ones a person wants to hear of (`decisions`), and only queues them, so a
rollback never waits for a notification. Each destination has its own bounded queue and worker:
a full queue drops its oldest change (counted in `stats`), and a slow or dead webhook delays
neither the rollouts nor the tickets, only its own messages.

- Webhook: `POST {"text": ..., "blocks": [...]}` with httpx, `timeout_s` per attempt, up to
  `max_attempts` attempts with exponential backoff (tenacity). A timeout, a connection error, a
  5xx or a 429 (rate limited) is retried; any other 4xx is not (the request itself is wrong).
- Tickets: through the graph's tool ledger (`tool_effects`, the table behind the `create_ticket`
  tool): the ticket of a rollout is opened with the `create_ticket` tool itself, idempotency key
  the rollout's name, so there is one per rollout however often it is asked for and whichever
  replica asks; each change is then recorded as an `update_ticket` entry keyed
  `<rollout name>/revisions/<revision>`, so a change told twice updates the ticket once.
  `ticket_project` is the tracker project the tickets are filed in (in each entry's arguments
  and result); every project's rollouts get tickets there.

Delivery logs `rollouts.notify_delivered` / `rollouts.notify_failed`; the queues live in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from maestro.control_plane.config import NotificationsConfig
from maestro.control_plane.graph.store import RunStore
from maestro.control_plane.graph.tools import ticket_tool
from maestro.control_plane.rollouts.records import (
    CONTROLLER,
    Action,
    AuditEvent,
    Hold,
    RolloutRecord,
)
from maestro.control_plane.store.sql import Sql

log = structlog.get_logger(__name__)

DEFAULT_MAX_PENDING = 1000
MAX_REASON_CHARS = 1500
"""Of each reason in a message (a Slack section's text holds 3000 characters)."""

ANNOUNCED = frozenset(
    {
        Action.CREATED,
        Action.APPROVED,
        Action.STEP_SKIPPED,  # PromoteRollout of one step
        Action.RETRIED,
        Action.ANALYSIS_FAILED,
        Action.ANALYSIS_INCONCLUSIVE,
        Action.PROMOTED,
        Action.ROLLED_BACK,
        Action.ABORTED,
        Action.FAILED,
    }
)
"""Always announced. PAUSED and RESUMED are when a person must act or did (see `decisions`);
the controller's routine steps (weights, timed pauses, analyses started or passed) are not."""

_HEADLINE = (
    Action.ROLLED_BACK,
    Action.FAILED,
    Action.ABORTED,
    Action.PROMOTED,
    Action.ANALYSIS_FAILED,
    Action.ANALYSIS_INCONCLUSIVE,
    Action.PAUSED,
    Action.APPROVED,
    Action.RETRIED,
    Action.RESUMED,
    Action.STEP_SKIPPED,
    Action.CREATED,
)
_ICON = {
    Action.ROLLED_BACK: ":rotating_light:",
    Action.FAILED: ":x:",
    Action.ABORTED: ":octagonal_sign:",
    Action.PROMOTED: ":white_check_mark:",
    Action.ANALYSIS_FAILED: ":rotating_light:",
    Action.ANALYSIS_INCONCLUSIVE: ":warning:",
    Action.PAUSED: ":double_vertical_bar:",
}


def decisions(record: RolloutRecord, events: Sequence[AuditEvent]) -> tuple[AuditEvent, ...]:
    """The events of one change worth announcing: those of `ANNOUNCED`; a pause that waits for
    a person (PauseRollout, an inconclusive analysis, dual control, a freeze window, a pause
    step without a duration); a resume by a person."""
    inconclusive = any(e.action == Action.ANALYSIS_INCONCLUSIVE for e in events)
    waits_for_a_person = (
        inconclusive
        or record.hold in (Hold.MANUAL, Hold.APPROVALS, Hold.FREEZE)
        or (record.hold == Hold.STEP and record.pause_end is None)
    )
    return tuple(
        e
        for e in events
        if e.action in ANNOUNCED
        or (e.action == Action.PAUSED and (e.actor != CONTROLLER or waits_for_a_person))
        or (e.action == Action.RESUMED and e.actor != CONTROLLER)
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """One committed change of a rollout, as announced: the rollout after it and its events
    worth announcing (at least one)."""

    rollout: RolloutRecord
    events: tuple[AuditEvent, ...]

    @property
    def headline(self) -> AuditEvent:
        actions = [e.action for e in self.events]
        for action in _HEADLINE:
            if action in actions:
                return self.events[actions.index(action)]
        return self.events[0]

    @property
    def reason(self) -> str:
        return self.headline.reason or self.rollout.state_reason

    def summary(self) -> str:
        """One line: the rollout, what happened, why."""
        r, head = self.rollout, self.headline
        line = (
            f"{r.name}: {head.action.name} ({r.state.name}, candidate "
            f"{r.spec.candidate_version} at {r.weight}%)"
        )
        return f"{line}: {self.reason}" if self.reason else line


def _escape(text: str) -> str:
    """Slack mrkdwn's three control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def slack_message(decision: Decision) -> dict[str, Any]:
    """The webhook's JSON: `text` (the fallback and notification line) and Block Kit `blocks`."""
    r, head = decision.rollout, decision.headline
    icon = _ICON.get(head.action, ":information_source:")
    reason = _clip(decision.reason)
    text = f"{icon} {_escape(decision.summary()[: MAX_REASON_CHARS + 500])}"
    lines = [
        f"• *{e.action.name}* by `{_escape(e.actor)}`"
        + (f" ({_escape(e.analysis_template)})" if e.analysis_template else "")
        + (f": {_escape(_clip(e.reason))}" if e.reason else "")
        for e in decision.events
    ]
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{icon} *{head.action.name}* `{r.name}`"
                    + (f"\n>{_escape(reason)}" if reason else ""),
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Artifact*\n`{r.artifact}`"},
                    {"type": "mrkdwn", "text": f"*State*\n{r.state.name}"},
                    {"type": "mrkdwn", "text": f"*Candidate*\n`{r.spec.candidate_version}`"},
                    {"type": "mrkdwn", "text": f"*Stable*\n`{r.spec.stable_version}`"},
                    {"type": "mrkdwn", "text": f"*Candidate weight*\n{r.weight}%"},
                    {"type": "mrkdwn", "text": f"*Revision*\n{r.revision}"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
        ],
    }


class WebhookRejected(Exception):
    """The webhook answered a 4xx other than 429: the same request will not succeed."""


class WebhookUnavailable(Exception):
    """The webhook answered a 5xx or 429: worth another attempt."""


def _retryable(error: BaseException) -> bool:
    return isinstance(error, WebhookUnavailable | httpx.TransportError)


class SlackWebhook:
    """POSTs messages to a Slack-compatible incoming webhook, retried."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.host = urlsplit(url).netloc  # the path of a Slack webhook URL is its secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.attempts = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s, transport=self._transport, follow_redirects=False
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def post(self, message: dict[str, Any], what: str) -> None:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "rollouts.notify_retrying",
                destination="webhook",
                host=self.host,
                rollout=what,
                attempt=state.attempt_number,
                of=self.max_attempts,
                error=f"{type(error).__name__}: {error}",
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
            + wait_random(0, self.backoff_s),
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.attempts += 1
                response = await self._http().post(self.url, json=message)
                if response.status_code >= 500 or response.status_code == 429:
                    raise WebhookUnavailable(f"{response.status_code}: {response.text[:200]}")
                if response.status_code >= 400:
                    raise WebhookRejected(f"{response.status_code}: {response.text[:200]}")


class RolloutTickets:
    """A ticket per rollout in the graph's tool ledger (see the module's docstring)."""

    def __init__(
        self,
        store: RunStore,
        ticket_project: str,
        *,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.store = store
        self.ticket_project = ticket_project
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._create_ticket = ticket_tool(store)

    @staticmethod
    def update_key(rollout_name: str, revision: int) -> str:
        return f"{rollout_name}/revisions/{revision}"

    async def record(self, decision: Decision) -> str:
        """Open the rollout's ticket unless it is open, and record this change on it; the
        ticket's id. Idempotent: a retried or repeated call changes nothing."""
        r = decision.rollout
        opened = await self._create_ticket(
            {
                "title": f"Rollout {r.name}: {r.spec.candidate_version} replacing "
                f"{r.spec.stable_version} of {r.artifact}",
                "project": self.ticket_project,
                "rollout": r.name,
                "artifact": r.artifact,
                "candidate_version": r.version_name(r.spec.candidate_version),
                "stable_version": r.version_name(r.spec.stable_version),
            },
            r.name,
        )
        ticket = str(opened["ticket"])
        update = {
            "ticket": ticket,
            "project": self.ticket_project,
            "rollout": r.name,
            "revision": r.revision,
            "state": r.state.name,
            "weight": r.weight,
            "actions": [e.action.name for e in decision.events],
            "actors": sorted({e.actor for e in decision.events}),
            "comment": decision.summary(),
        }

        def effect() -> dict[str, Any]:
            return {
                "ticket": ticket,
                "project": self.ticket_project,
                "state": r.state.name,
                "comment": update["comment"],
                "update_time": time.time(),
            }

        await self.store.aio(
            self.store.apply_effect,
            self.update_key(r.name, r.revision),
            "update_ticket",
            update,
            effect,
        )
        return ticket


@dataclass(frozen=True, slots=True)
class SinkStats:
    pending: int  # changes queued, not yet taken
    delivered: int
    failed: int  # given up on after the attempts
    dropped: int  # dropped from a full queue (its oldest)


class _Sink:
    """One destination: a bounded queue (full: the oldest goes) and the worker delivering it."""

    def __init__(
        self, name: str, deliver: Callable[[Decision], Awaitable[object]], max_pending: int
    ) -> None:
        self.name = name
        self._deliver = deliver
        self._queue: asyncio.Queue[Decision] = asyncio.Queue(max_pending)
        self._worker: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def stats(self) -> SinkStats:
        return SinkStats(self._queue.qsize(), self.delivered, self.failed, self.dropped)

    def put(self, decision: Decision) -> None:
        while True:
            try:
                self._queue.put_nowait(decision)
                return
            except asyncio.QueueFull:
                oldest = self._queue.get_nowait()
                self._queue.task_done()
                self.dropped += 1
                log.warning(
                    "rollouts.notify_dropped",
                    destination=self.name,
                    rollout=oldest.rollout.name,
                    revision=oldest.rollout.revision,
                    dropped=self.dropped,
                )

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"rollouts-notify-{self.name}")

    async def stop(self, grace_s: float) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace_s)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if self._queue.qsize():
            log.warning("rollouts.notify_stopped", destination=self.name, undelivered=self.stats)

    async def drain(self) -> None:
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            decision = await self._queue.get()
            r = decision.rollout
            try:
                await self._deliver(decision)
            except Exception as exc:  # logged; the next change is delivered regardless
                self.failed += 1
                log.error(
                    "rollouts.notify_failed",
                    destination=self.name,
                    rollout=r.name,
                    revision=r.revision,
                    action=decision.headline.action.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                self.delivered += 1
                log.info(
                    "rollouts.notify_delivered",
                    destination=self.name,
                    rollout=r.name,
                    revision=r.revision,
                    action=decision.headline.action.name,
                )
            finally:
                self._queue.task_done()


class Notifier:
    """The RolloutService listener announcing decisions (see the module's docstring).

    `listen` must be called on the event loop's thread (RolloutService calls its listeners
    there); it returns at once. `start` begins delivering; `stop` lets each queue drain for up
    to `grace_s`, then cancels what is left."""

    def __init__(
        self,
        *,
        webhook: SlackWebhook | None = None,
        tickets: RolloutTickets | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.webhook = webhook
        self.tickets = tickets
        self._sinks: dict[str, _Sink] = {}
        if webhook is not None:
            self._sinks["webhook"] = _Sink("webhook", self._post, max_pending)
        if tickets is not None:
            self._sinks["tickets"] = _Sink("tickets", self._ticket, max_pending)

    @classmethod
    def from_config(cls, config: NotificationsConfig, sql: Sql) -> Notifier | None:
        """What `rollouts.notifications` asks for; None when it names no destination."""
        webhook = (
            SlackWebhook(
                config.slack_webhook_url,
                timeout_s=config.timeout_s,
                max_attempts=config.max_attempts,
            )
            if config.slack_webhook_url
            else None
        )
        tickets = (
            RolloutTickets(RunStore(sql), config.ticket_project, max_attempts=config.max_attempts)
            if config.ticket_project
            else None
        )
        if webhook is None and tickets is None:
            return None
        return cls(webhook=webhook, tickets=tickets)

    @property
    def stats(self) -> dict[str, SinkStats]:
        return {name: sink.stats for name, sink in self._sinks.items()}

    def listen(self, record: RolloutRecord, events: list[AuditEvent]) -> None:
        """A RolloutService listener: queue the change if it is worth announcing; never waits."""
        announced = decisions(record, events)
        if not announced:
            return
        decision = Decision(record, announced)
        for sink in self._sinks.values():
            sink.put(decision)

    async def start(self) -> None:
        for sink in self._sinks.values():
            sink.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        await asyncio.gather(*(sink.stop(grace_s) for sink in self._sinks.values()))
        if self.webhook is not None:
            await self.webhook.close()

    async def drain(self, destination: str | None = None) -> None:
        """Wait until every change queued so far (for `destination`, `webhook` or `tickets`;
        None: for both) was delivered or given up on."""
        await asyncio.gather(
            *(
                sink.drain()
                for name, sink in self._sinks.items()
                if destination is None or name == destination
            )
        )

    async def _post(self, decision: Decision) -> None:
        assert self.webhook is not None
        await self.webhook.post(slack_message(decision), decision.rollout.name)

    async def _ticket(self, decision: Decision) -> None:
        assert self.tickets is not None
        tickets = self.tickets
        retrying = AsyncRetrying(
            stop=stop_after_attempt(tickets.max_attempts),
            wait=wait_exponential(multiplier=tickets.backoff_s, max=tickets.max_backoff_s)
            + wait_random(0, tickets.backoff_s),
            retry=retry_if_exception_type(Exception),
            reraise=True,
        )
        async for attempt in retrying:  # the ledger is idempotent: retrying is safe
            with attempt:
                await tickets.record(decision)


__all__ = [
    "ANNOUNCED",
    "Decision",
    "Notifier",
    "RolloutTickets",
    "SinkStats",
    "SlackWebhook",
    "WebhookRejected",
    "decisions",
    "slack_message",
]
