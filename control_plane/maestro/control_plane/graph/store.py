"""The run store: runs, events, gates, kill switches, the audit log and the tools' effect ledger
(recipes: `recipe_store`).

Written once over `store.sql.Sql`, so SQLite (embedded default) and PostgreSQL run the same code
and the same test suite. Every change to a run goes through `change_run`: the run's row is read
(and locked, on PostgreSQL) and the caller's function decides the change from it, then the column
updates, the new events (numbered densely from the run's `last_seq`) and the gates are written in
that one transaction. That is how a node's output, the new state and its `node_finished` event
commit together, and how a replica that lost its lease is stopped from writing (the function
checks the owner and raises).

Rows hold the domain's values in the stored JSON form of `stored_json` (Maestro's names, never
the API's). Calls are synchronous; the async layers run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from maestro.control_plane.graph.records import (
    CLAIMABLE,
    UNFINISHED,
    Budget,
    EventRecord,
    GateRecord,
    GateStatus,
    InFlight,
    KillSwitchRecord,
    NewEvent,
    RunChange,
    RunError,
    RunRecord,
    RunStatus,
)
from maestro.control_plane.graph.stored_json import (
    error_from_json,
    error_json,
    event_body,
    event_from_body,
    gate_body,
    gate_from_row,
)
from maestro.control_plane.store.errors import once_more_on_conflict
from maestro.control_plane.store.sql import Row, Sql, Tx
from maestro.core.errors import Aborted, AlreadyExists, NotFound

EVENTS_CHANNEL = "maestro_run_events"
"""PostgreSQL NOTIFY channel: payload is the run name, sent with every committed change."""

_JSON_COLUMNS = frozenset(
    {"input_state", "state", "in_flight", "visits", "budget", "error", "open_gates"}
)
_RUN_COLUMNS = (
    "name, project, recipe, recipe_revision_id, recipe_source, input_state, state, status, "
    "state_reason, next_node, in_flight, visits, prompt_tokens, completion_tokens, cost_usd, "
    "budget, autonomy, error, kill_switch, open_gates, last_seq, owner, lease_expire, trace_id, "
    "request_id, create_time, update_time, end_time, creator, artifact_version"
)

T = TypeVar("T")
ChangeFn = Callable[[RunRecord, dict[str, GateRecord]], RunChange]


def etag_of(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


async def call_store(sql: Sql, call: Callable[..., T], *args: Any) -> T:
    """Run a store call from async code: inline where the database is that quick (SQLite
    without per-commit fsync), else in a worker thread so the event loop never waits on the
    network or the disk."""
    if sql.inline:
        return call(*args)
    return await asyncio.to_thread(call, *args)


class RunStore:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    async def aio(self, call: Callable[..., T], *args: Any) -> T:
        return await call_store(self.sql, call, *args)

    # -- runs -----------------------------------------------------------------------------------

    def _run(self, row: Row) -> RunRecord:
        load = self.sql.json_out
        in_flight = load(row["in_flight"]) if row["in_flight"] is not None else None
        budget = load(row["budget"])
        return RunRecord(
            name=row["name"],
            project=row["project"],
            recipe=row["recipe"],
            recipe_revision_id=row["recipe_revision_id"],
            recipe_source=row["recipe_source"],
            input_state=load(row["input_state"]),
            state=load(row["state"]),
            status=RunStatus(row["status"]),
            state_reason=row["state_reason"],
            next_node=row["next_node"],
            in_flight=InFlight(**in_flight) if in_flight else None,
            visits=load(row["visits"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cost_usd=float(row["cost_usd"]),
            budget=Budget(**budget),
            autonomy=int(row["autonomy"]),
            error=error_from_json(load(row["error"])) if row["error"] is not None else None,
            kill_switch=row["kill_switch"],
            open_gates=tuple(load(row["open_gates"])),
            last_seq=int(row["last_seq"]),
            owner=row["owner"],
            lease_expire=float(row["lease_expire"]),
            trace_id=row["trace_id"],
            request_id=row["request_id"],
            create_time=float(row["create_time"]),
            update_time=float(row["update_time"]),
            end_time=float(row["end_time"]) if row["end_time"] is not None else None,
            creator=row["creator"],
            artifact_version=row["artifact_version"],
        )

    def _value(self, column: str, value: Any) -> Any:
        if column in _JSON_COLUMNS and value is not None:
            if isinstance(value, InFlight | Budget):
                value = value.as_dict()
            elif isinstance(value, RunError):
                value = error_json(value)
            return self.sql.json_in(value)
        if isinstance(value, RunStatus):
            return int(value)
        return value

    @once_more_on_conflict
    def insert_run(
        self, run: RunRecord, events: Sequence[NewEvent], gates: Sequence[GateRecord] = ()
    ) -> tuple[RunRecord, bool]:
        """Store a new run with its first events (and a gate it opened at once); the run, and
        whether this call created it. ALREADY_EXISTS if the name is taken; a retried request id
        returns the run it created (also when the two calls race)."""
        run = replace(run, last_seq=run.last_seq + len(events))
        columns = [c.strip() for c in _RUN_COLUMNS.split(",")]
        values = [self._value(c, getattr(run, c)) for c in columns]
        with self.sql.write() as tx:
            if run.request_id:
                previous = tx.one(
                    f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE project = ? AND request_id = ?",
                    (run.project, run.request_id),
                )
                if previous is not None:
                    return self._run(previous), False
            if tx.one("SELECT 1 AS x FROM agent_runs WHERE name = ?", (run.name,)):
                raise AlreadyExists(f"run {run.name!r} exists already", reason="RUN_EXISTS")
            tx.run(
                f"INSERT INTO agent_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            with tx.pipeline():
                self._append_records(tx, run.name, 0, events, run.create_time)
                for gate in gates:
                    self._put_gate(tx, gate)
                self.sql.notify(tx, EVENTS_CHANNEL, run.name)
        return run, True

    @classmethod
    def applied(cls, run: RunRecord, change: RunChange) -> RunRecord:
        """The run as `change` leaves it (for a change written with the run's creation)."""
        updates = dict(change.updates)
        if change.gates:
            updates["open_gates"] = tuple(
                g.name for g in change.gates if g.status is GateStatus.OPEN
            )
        return cls._with(run, updates)

    def get_run(self, name: str) -> RunRecord:
        with self.sql.read() as tx:
            row = tx.one(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE name = ?", (name,))
            if row is None:
                raise NotFound(f"run {name!r} not found", reason="RUN_NOT_FOUND")
        return self._run(row)

    def list_runs(
        self,
        project: str,
        after: tuple[float, str] | None,
        limit: int,
        *,
        where: Mapping[str, Any] | None = None,
        oldest_first: bool = False,
    ) -> list[RunRecord]:
        """Newest first (or oldest first); `after` is the (create_time, name) of the last run of
        the previous page; `where` is equality on `status` and `recipe`."""
        sql = f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE project = ?"
        params: list[Any] = [project]
        for column, value in (where or {}).items():
            if column not in ("status", "recipe"):
                raise ValueError(column)
            sql += f" AND {column} = ?"
            params.append(int(value) if column == "status" else value)
        beyond, direction = (">", "") if oldest_first else ("<", " DESC")
        if after is not None:
            sql += f" AND (create_time {beyond} ? OR (create_time = ? AND name {beyond} ?))"
            params += [after[0], after[0], after[1]]
        sql += f" ORDER BY create_time{direction}, name{direction} LIMIT ?"
        with self.sql.read() as tx:
            rows = tx.all(sql, [*params, limit])
        return [self._run(row) for row in rows]

    def active_run_count(self, project: str) -> int:
        marks = ", ".join("?" * len(UNFINISHED))
        with self.sql.read() as tx:
            row = tx.one(
                f"SELECT COUNT(*) AS n FROM agent_runs WHERE project = ? AND status IN ({marks})",
                [project, *(int(s) for s in UNFINISHED)],
            )
        return int(row["n"]) if row else 0

    def unfinished_runs(self, project: str | None) -> list[str]:
        marks = ", ".join("?" * len(UNFINISHED))
        sql = f"SELECT name FROM agent_runs WHERE status IN ({marks})"
        params: list[Any] = [int(s) for s in UNFINISHED]
        if project is not None:
            sql += " AND project = ?"
            params.append(project)
        with self.sql.read() as tx:
            return [row["name"] for row in tx.all(sql, params)]

    def change_run(
        self, name: str, decide: ChangeFn, owned: RunRecord | None = None
    ) -> tuple[RunRecord, list[EventRecord]]:
        """Read the run and its gates, let `decide` say what changes, write it all in one
        transaction. `decide` may raise to change nothing.

        `owned`: the run as the replica driving it last wrote it. Only the columns others may
        change while a replica holds a run (owner, status, reason, sequence, kill switch) are
        read back, and `decide` gets no gates: the runtime's steps skip decoding the state they
        wrote themselves.
        """
        with self.sql.write() as tx:
            if owned is None:
                row = tx.one(
                    f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE name = ?" + self.sql.lock_row,
                    (name,),
                )
            else:
                row = tx.one(
                    "SELECT owner, status, state_reason, last_seq, kill_switch, lease_expire "
                    "FROM agent_runs WHERE name = ?" + self.sql.lock_row,
                    (name,),
                )
            if row is None:
                raise NotFound(f"run {name!r} not found", reason="RUN_NOT_FOUND")
            if owned is None:
                run = self._run(row)
                gates = {gate.name: gate for gate in self._gates(tx, "run = ?", (name,))}
            else:
                run = replace(
                    owned,
                    owner=row["owner"],
                    status=RunStatus(row["status"]),
                    state_reason=row["state_reason"],
                    last_seq=int(row["last_seq"]),
                    kill_switch=row["kill_switch"],
                    lease_expire=float(row["lease_expire"]),
                )
                gates = {}
            change = decide(run, gates)
            now = time.time()
            updates = dict(change.updates)
            if change.gates:
                # The runtime (`owned`) opens a gate only on a run with none open.
                gates.update({gate.name: gate for gate in change.gates})
                updates["open_gates"] = tuple(
                    g.name
                    for g in sorted(gates.values(), key=lambda g: g.opened_seq)
                    if g.status is GateStatus.OPEN
                )
            updates["last_seq"] = run.last_seq + len(change.events)
            updates["update_time"] = now
            assignments = ", ".join(f"{column} = ?" for column in updates)
            with tx.pipeline():  # nothing below needs an answer: one round trip on PostgreSQL
                events = self._append_records(tx, name, run.last_seq, change.events, now)
                tx.run(
                    f"UPDATE agent_runs SET {assignments} WHERE name = ?",
                    [*(self._value(c, v) for c, v in updates.items()), name],
                )
                for gate in change.gates:
                    self._put_gate(tx, gate)
                for entry in change.audit:
                    self.audit(
                        tx, entry.actor, entry.action, entry.target, entry.reason, entry.detail
                    )
                if change.notify:
                    self.sql.notify(tx, EVENTS_CHANNEL, name)
        return self._with(run, updates), events

    @staticmethod
    def _with(run: RunRecord, updates: dict[str, Any]) -> RunRecord:
        values = dict(updates)
        if isinstance(values.get("in_flight"), dict):
            values["in_flight"] = InFlight(**values["in_flight"])
        if "status" in values:
            values["status"] = RunStatus(values["status"])
        return replace(run, **values)

    # -- leases ---------------------------------------------------------------------------------

    def claim(
        self, replica: str, lease_s: float, limit: int, now: float | None = None
    ) -> list[tuple[RunRecord, str]]:
        """Take up to `limit` runs that are queued or running with no live lease; each comes with
        the replica that held it before ("" if none)."""
        now = time.time() if now is None else now
        marks = ", ".join("?" * len(CLAIMABLE))
        with self.sql.write() as tx:
            rows = tx.all(
                f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE status IN ({marks}) "
                "AND (owner = '' OR lease_expire < ?) ORDER BY update_time LIMIT ?"
                + self.sql.lock_rows,
                [*(int(s) for s in CLAIMABLE), now, limit],
            )
            for row in rows:
                tx.run(
                    "UPDATE agent_runs SET owner = ?, lease_expire = ? WHERE name = ?",
                    (replica, now + lease_s, row["name"]),
                )
        return [
            (
                self._with(self._run(row), {"owner": replica, "lease_expire": now + lease_s}),
                row["owner"],
            )
            for row in rows
        ]

    def renew(self, replica: str, names: Sequence[str], lease_s: float) -> set[str]:
        """Extend this replica's leases; returns the runs it should keep driving: still its own,
        not finished, and not halted by a kill switch."""
        if not names:
            return set()
        now = time.time()
        marks = ", ".join("?" * len(names))
        with self.sql.write() as tx:
            tx.run(
                f"UPDATE agent_runs SET lease_expire = ? WHERE owner = ? AND name IN ({marks})",
                [now + lease_s, replica, *names],
            )
            rows = tx.all(
                f"SELECT name, status, kill_switch FROM agent_runs WHERE owner = ? "
                f"AND name IN ({marks})",
                [replica, *names],
            )
        return {
            row["name"]
            for row in rows
            if not RunStatus(row["status"]).final and not row["kill_switch"]
        }

    # -- events ---------------------------------------------------------------------------------

    def _append_records(
        self, tx: Tx, run: str, last_seq: int, events: Sequence[NewEvent], now: float
    ) -> list[EventRecord]:
        records = [
            EventRecord(
                run,
                last_seq + offset,
                now,
                event.node_id,
                event.attempt,
                event.payload,
                event.provenance,
            )
            for offset, event in enumerate(events, start=1)
        ]
        if records:
            tx.many(
                "INSERT INTO run_events (run, seq, event_time, node_id, attempt, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        run,
                        r.seq,
                        now,
                        r.node_id,
                        r.attempt,
                        self.sql.json_in(event_body(r.payload, r.provenance)),
                    )
                    for r in records
                ],
            )
        return records

    def list_events(
        self, run: str, after_seq: int, limit: int, node_id: str | None = None
    ) -> list[EventRecord]:
        sql = (
            "SELECT run, seq, event_time, node_id, attempt, body FROM run_events "
            "WHERE run = ? AND seq > ?"
        )
        params: list[Any] = [run, after_seq]
        if node_id is not None:
            sql += " AND node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq LIMIT ?"
        with self.sql.read() as tx:
            rows = tx.all(sql, [*params, limit])
        return [
            EventRecord(
                r["run"],
                int(r["seq"]),
                float(r["event_time"]),
                r["node_id"],
                int(r["attempt"]),
                *event_from_body(self.sql.json_out(r["body"])),
            )
            for r in rows
        ]

    # -- gates ----------------------------------------------------------------------------------

    def _gates(self, tx: Tx, where: str, params: Sequence[Any]) -> list[GateRecord]:
        rows = tx.all(
            "SELECT name, run, project, opened_seq, status, node_id, body, etag, create_time, "
            f"update_time, expire_time FROM run_gates WHERE {where}",
            params,
        )
        return [
            gate_from_row(
                self.sql.json_out(row["body"]),
                name=row["name"],
                run=row["run"],
                project=row["project"],
                node_id=row["node_id"],
                status=GateStatus(row["status"]),
                etag=row["etag"],
                create_time=float(row["create_time"]),
                update_time=float(row["update_time"]),
                opened_seq=int(row["opened_seq"]),
                expire_time=float(row["expire_time"]) if row["expire_time"] is not None else None,
            )
            for row in rows
        ]

    def _put_gate(self, tx: Tx, gate: GateRecord) -> None:
        tx.run(
            "INSERT INTO run_gates (name, run, project, opened_seq, status, node_id, body, etag, "
            "create_time, update_time, expire_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET status = excluded.status, body = excluded.body, "
            "etag = excluded.etag, update_time = excluded.update_time",
            (
                gate.name,
                gate.run,
                gate.project,
                gate.opened_seq,
                int(gate.status),
                gate.node_id,
                self.sql.json_in(gate_body(gate)),
                gate.etag,
                gate.create_time,
                gate.update_time,
                gate.expire_time,
            ),
        )

    def expired_gates(self, now: float, limit: int) -> list[tuple[str, str]]:
        """(gate, run) of open gates past their expiry."""
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT name, run FROM run_gates WHERE status = ? AND expire_time IS NOT NULL "
                "AND expire_time < ? ORDER BY expire_time LIMIT ?",
                (int(GateStatus.OPEN), now, limit),
            )
        return [(row["name"], row["run"]) for row in rows]

    def get_gate(self, name: str) -> GateRecord:
        with self.sql.read() as tx:
            gates = self._gates(tx, "name = ?", (name,))
        if not gates:
            raise NotFound(f"gate {name!r} not found", reason="GATE_NOT_FOUND")
        return gates[0]

    def list_gates(
        self,
        run: str | None,
        project: str,
        after: tuple[float, str] | None,
        limit: int,
        *,
        where: Mapping[str, Any] | None = None,
    ) -> list[GateRecord]:
        """Oldest first; `where` is equality on `status` and `node_id`."""
        clause = "run = ?" if run is not None else "project = ?"
        params: list[Any] = [run if run is not None else project]
        for column, value in (where or {}).items():
            if column not in ("status", "node_id"):
                raise ValueError(column)
            clause += f" AND {column} = ?"
            params.append(int(value) if column == "status" else value)
        if after is not None:
            clause += " AND (create_time > ? OR (create_time = ? AND name > ?))"
            params += [after[0], after[0], after[1]]
        with self.sql.read() as tx:
            return self._gates(tx, f"{clause} ORDER BY create_time, name LIMIT ?", [*params, limit])

    # -- kill switches and audit ----------------------------------------------------------------

    def get_switch(self, name: str) -> KillSwitchRecord:
        with self.sql.read() as tx:
            row = tx.one("SELECT * FROM kill_switches WHERE name = ?", (name,))
        return self._switch(name, row)

    @staticmethod
    def _switch(name: str, row: Row | None) -> KillSwitchRecord:
        if row is None:
            return KillSwitchRecord(name, etag=etag_of(name, False, ""))
        return KillSwitchRecord(
            name,
            bool(row["engaged"]),
            row["reason"],
            row["updated_by"],
            float(row["update_time"]),
            row["etag"],
        )

    @once_more_on_conflict
    def set_switch(
        self, name: str, engaged: bool, reason: str, actor: str, etag: str
    ) -> tuple[KillSwitchRecord, bool]:
        """Engage or release; (the switch after, whether it changed). Audited."""
        now = time.time()
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT * FROM kill_switches WHERE name = ?" + self.sql.lock_row,
                (name,),
            )
            current = self._switch(name, row)
            if etag and etag != current.etag:
                raise Aborted(
                    "the kill switch changed since it was read; read it again",
                    reason="ETAG_MISMATCH",
                )
            changed = current.engaged != engaged
            record = KillSwitchRecord(
                name, engaged, reason, actor, now, etag_of(name, engaged, reason, now)
            )
            values = (int(engaged), reason, actor, now, record.etag, name)
            if row is not None:  # locked above: changed in place, concurrent sets queue on it
                tx.run(
                    "UPDATE kill_switches SET engaged = ?, reason = ?, updated_by = ?, "
                    "update_time = ?, etag = ? WHERE name = ?",
                    values,
                )
            else:  # a concurrent first set wins the key: RowConflict, and the retry updates
                tx.run(
                    "INSERT INTO kill_switches (engaged, reason, updated_by, update_time, etag, "
                    "name) VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
            self.audit(tx, actor, "engage" if engaged else "release", name, reason, {})
        return record, changed

    def audit(
        self, tx: Tx, actor: str, action: str, target: str, reason: str, detail: dict[str, Any]
    ) -> str:
        audit_id = uuid.uuid4().hex
        tx.run(
            "INSERT INTO audit_log (id, event_time, actor, action, target, reason, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (audit_id, time.time(), actor, action, target, reason, self.sql.json_in(detail)),
        )
        return audit_id

    def record_audit(
        self, actor: str, action: str, target: str, reason: str, detail: dict[str, Any]
    ) -> str:
        """An audit entry of its own (not part of another change)."""
        with self.sql.write() as tx:
            return self.audit(tx, actor, action, target, reason, detail)

    def audit_entries(self, target_prefix: str) -> list[Row]:
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT actor, action, target, reason, detail FROM audit_log "
                "WHERE target LIKE ? ORDER BY event_time",
                (target_prefix + "%",),
            )
        return [{**row, "detail": self.sql.json_out(row["detail"])} for row in rows]

    # -- the tools' effect ledger ---------------------------------------------------------------

    def apply_effect(
        self, key: str, tool: str, arguments: dict[str, Any], effect: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Run a side effect at most once per idempotency key: (its result, whether it ran
        now). A replayed call gets the first call's result."""
        with self.sql.write() as tx:
            row = tx.one("SELECT result FROM tool_effects WHERE idempotency_key = ?", (key,))
            if row is not None:
                tx.run(
                    "UPDATE tool_effects SET calls = calls + 1 WHERE idempotency_key = ?", (key,)
                )
                return self.sql.json_out(row["result"]), False
            result = effect()
            tx.run(
                "INSERT INTO tool_effects (idempotency_key, tool, arguments, result, calls, "
                "create_time) VALUES (?, ?, ?, ?, 1, ?)",
                (key, tool, self.sql.json_in(arguments), self.sql.json_in(result), time.time()),
            )
        return result, True

    def effects(self, key_prefix: str) -> list[Row]:
        with self.sql.read() as tx:
            return tx.all(
                "SELECT idempotency_key, tool, calls FROM tool_effects "
                "WHERE idempotency_key LIKE ? ORDER BY idempotency_key",
                (key_prefix + "%",),
            )
