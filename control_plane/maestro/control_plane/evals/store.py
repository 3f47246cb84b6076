"""The eval store: datasets, suites, runs, task results and scorecards over `store.sql.Sql`.

Written once for SQLite and PostgreSQL. Datasets and scorecards are immutable; a run's spec is
fixed when it is created, and only its state, progress and lease change afterwards. Task
results are appended in batches with a per-run sequence number, which WatchEvalRun follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from maestro.control_plane.evals.records import (
    DatasetRecord,
    GateDecision,
    MetricScore,
    Progress,
    RunRecord,
    RunSpec,
    RunState,
    Scorecard,
    SuiteRecord,
    Target,
    TaskRef,
    TaskResult,
    ThresholdResult,
    Thresholds,
)
from maestro.control_plane.graph.store import call_store
from maestro.control_plane.store.errors import RowConflict, once_more_on_conflict
from maestro.control_plane.store.sql import Row, Sql, Tx
from maestro.core.errors import Aborted, AlreadyExists, NotFound

T = TypeVar("T")
UNFINISHED = (int(RunState.QUEUED), int(RunState.RUNNING))


# -- JSON forms of the records ------------------------------------------------------------------


def suite_to_json(suite: SuiteRecord) -> dict[str, Any]:
    body = asdict(suite)
    for key in ("project", "suite_id", "create_time", "update_time", "etag"):
        body.pop(key)
    return body


def suite_from_json(
    project: str, suite_id: str, body: Mapping[str, Any], create: float, update: float, etag: str
) -> SuiteRecord:
    return SuiteRecord(
        project,
        suite_id,
        body["display_name"],
        body["description"],
        tuple(body["datasets"]),
        tuple(body["metrics"]),
        Thresholds(**body["thresholds"]),
        int(body["default_repetitions"]),
        float(body["semantic_pass_min"]),
        create,
        update,
        etag,
    )


def _suite_snapshot(body: Mapping[str, Any]) -> SuiteRecord:
    return SuiteRecord(
        body["project"],
        body["suite_id"],
        body["display_name"],
        body["description"],
        tuple(body["datasets"]),
        tuple(body["metrics"]),
        Thresholds(**body["thresholds"]),
        int(body["default_repetitions"]),
        float(body["semantic_pass_min"]),
        float(body["create_time"]),
        float(body["update_time"]),
        body["etag"],
    )


def spec_from_json(body: Mapping[str, Any]) -> RunSpec:
    return RunSpec(
        body["suite"],
        Target(**body["target"]),
        body["baseline"],
        int(body["repetitions"]),
        int(body["seed"]),
        float(body["max_cost_usd"]),
        int(body["max_tokens"]),
        int(body["max_concurrent"]),
        dict(body["labels"]),
        _suite_snapshot(body["suite_snapshot"]),
        tuple(DatasetRecord(**d) for d in body["datasets"]),
    )


def result_from_json(body: Mapping[str, Any], seq: int) -> TaskResult:
    return TaskResult(**{**body, "seq": seq})


def scorecard_from_json(body: Mapping[str, Any]) -> Scorecard:
    return Scorecard(
        **{
            **body,
            "target": Target(**body["target"]),
            "metrics": tuple(MetricScore(**m) for m in body["metrics"]),
            "thresholds": tuple(ThresholdResult(**t) for t in body["thresholds"]),
            "regressed_tasks": tuple(TaskRef(**t) for t in body["regressed_tasks"]),
            "input_digests": tuple(body["input_digests"]),
        }
    )


def _earlier(tx: Tx, table: str, project: str, request_id: str) -> Row | None:
    """The row a retried request (same `request_id`) created, if any."""
    if not request_id:
        return None
    return tx.one(
        f"SELECT * FROM {table} WHERE project = ? AND request_id = ?", (project, request_id)
    )


def _taken(tx: Tx, table: str, id_column: str, project: str, resource_id: str) -> bool:
    found = tx.one(
        f"SELECT 1 AS x FROM {table} WHERE project = ? AND {id_column} = ?", (project, resource_id)
    )
    return found is not None


_DATASET_COLUMNS = (
    "project, dataset_id, display_name, description, source_uri, sha256, task_count, "
    "size_bytes, provenance_id, create_time"
)
"""A dataset's metadata: every column but its content."""


class EvalStore:
    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    async def aio(self, call: Callable[..., T], *args: Any) -> T:
        return await call_store(self.sql, call, *args)

    def _found(self, sql: str, key: tuple[str, str], what: str, reason: str) -> Row:
        """The one row `sql` reads, or NOT_FOUND naming `what`."""
        with self.sql.read() as tx:
            row = tx.one(sql, key)
        if row is None:
            raise NotFound(f"{what} not found", reason=reason)
        return row

    # -- datasets -------------------------------------------------------------------------------

    def _dataset(self, row: Row) -> DatasetRecord:
        return DatasetRecord(
            row["project"],
            row["dataset_id"],
            row["display_name"],
            row["description"],
            row["source_uri"],
            row["sha256"],
            int(row["task_count"]),
            int(row["size_bytes"]),
            row["provenance_id"],
            float(row["create_time"]),
        )

    @once_more_on_conflict
    def create_dataset(self, record: DatasetRecord, content: str, request_id: str) -> DatasetRecord:
        """Insert a dataset; a retried request (same `request_id`) gets the one it created."""
        with self.sql.write() as tx:
            if (done := _earlier(tx, "eval_datasets", record.project, request_id)) is not None:
                return self._dataset(done)
            if _taken(tx, "eval_datasets", "dataset_id", record.project, record.dataset_id):
                raise AlreadyExists(
                    f"dataset {record.name} exists already; datasets are immutable, so a new "
                    "version of a task set is a new dataset",
                    reason="DATASET_EXISTS",
                )
            tx.run(
                "INSERT INTO eval_datasets (project, dataset_id, display_name, description, "
                "source_uri, sha256, task_count, size_bytes, provenance_id, content, request_id, "
                "create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.project,
                    record.dataset_id,
                    record.display_name,
                    record.description,
                    record.source_uri,
                    record.sha256,
                    record.task_count,
                    record.size_bytes,
                    record.provenance_id,
                    content,
                    request_id or None,
                    record.create_time,
                ),
            )
        return record

    def get_dataset(self, project: str, dataset_id: str) -> DatasetRecord:
        row = self._found(
            f"SELECT {_DATASET_COLUMNS} FROM eval_datasets WHERE project = ? AND dataset_id = ?",
            (project, dataset_id),
            f"dataset projects/{project}/datasets/{dataset_id}",
            "DATASET_NOT_FOUND",
        )
        return self._dataset(row)

    def dataset_content(self, project: str, dataset_id: str) -> str:
        row = self._found(
            "SELECT content FROM eval_datasets WHERE project = ? AND dataset_id = ?",
            (project, dataset_id),
            f"dataset projects/{project}/datasets/{dataset_id}",
            "DATASET_NOT_FOUND",
        )
        return str(row["content"])

    def list_datasets(
        self, project: str, after: list[Any] | None, limit: int, where: Mapping[str, str]
    ) -> list[DatasetRecord]:
        sql = f"SELECT {_DATASET_COLUMNS} FROM eval_datasets WHERE project = ?"
        params: list[Any] = [project]
        for column, value in where.items():
            sql += f" AND {column} = ?"
            params.append(value)
        if after is not None:
            sql += " AND (create_time < ? OR (create_time = ? AND dataset_id < ?))"
            params += [after[0], after[0], after[1]]
        with self.sql.read() as tx:
            rows = tx.all(
                sql + " ORDER BY create_time DESC, dataset_id DESC LIMIT ?", [*params, limit]
            )
        return [self._dataset(row) for row in rows]

    # -- suites ---------------------------------------------------------------------------------

    def _suite(self, row: Row) -> SuiteRecord:
        return suite_from_json(
            row["project"],
            row["suite_id"],
            self.sql.json_out(row["body"]),
            float(row["create_time"]),
            float(row["update_time"]),
            row["etag"],
        )

    @once_more_on_conflict
    def create_suite(self, suite: SuiteRecord, request_id: str) -> SuiteRecord:
        with self.sql.write() as tx:
            if (done := _earlier(tx, "eval_suites", suite.project, request_id)) is not None:
                return self._suite(done)
            if _taken(tx, "eval_suites", "suite_id", suite.project, suite.suite_id):
                raise AlreadyExists(f"suite {suite.name} exists already", reason="SUITE_EXISTS")
            tx.run(
                "INSERT INTO eval_suites (project, suite_id, body, etag, request_id, create_time, "
                "update_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    suite.project,
                    suite.suite_id,
                    self.sql.json_in(suite_to_json(suite)),
                    suite.etag,
                    request_id or None,
                    suite.create_time,
                    suite.update_time,
                ),
            )
        return suite

    def get_suite(self, project: str, suite_id: str) -> SuiteRecord:
        row = self._found(
            "SELECT * FROM eval_suites WHERE project = ? AND suite_id = ?",
            (project, suite_id),
            f"suite projects/{project}/evalSuites/{suite_id}",
            "SUITE_NOT_FOUND",
        )
        return self._suite(row)

    def list_suites(self, project: str, after: str | None, limit: int) -> list[SuiteRecord]:
        sql, params = "SELECT * FROM eval_suites WHERE project = ?", [project]
        if after is not None:
            sql += " AND suite_id > ?"
            params.append(after)
        with self.sql.read() as tx:
            rows = tx.all(sql + " ORDER BY suite_id LIMIT ?", [*params, limit])
        return [self._suite(row) for row in rows]

    def replace_suite(
        self, suite: SuiteRecord, expect_etag: str, change: Callable[[SuiteRecord], SuiteRecord]
    ) -> SuiteRecord:
        """Apply `change` to the stored suite under its row lock; ABORTED on a stale etag."""
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT * FROM eval_suites WHERE project = ? AND suite_id = ?" + self.sql.lock_row,
                (suite.project, suite.suite_id),
            )
            if row is None:
                raise NotFound(f"suite {suite.name} not found", reason="SUITE_NOT_FOUND")
            current = self._suite(row)
            if expect_etag and expect_etag != current.etag:
                raise Aborted("the suite changed since it was read", reason="ETAG_MISMATCH")
            updated = change(current)
            tx.run(
                "UPDATE eval_suites SET body = ?, etag = ?, update_time = ? "
                "WHERE project = ? AND suite_id = ?",
                (
                    self.sql.json_in(suite_to_json(updated)),
                    updated.etag,
                    updated.update_time,
                    suite.project,
                    suite.suite_id,
                ),
            )
        return updated

    def delete_suite(self, project: str, suite_id: str, etag: str) -> None:
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT etag FROM eval_suites WHERE project = ? AND suite_id = ?"
                + self.sql.lock_row,
                (project, suite_id),
            )
            if row is None:
                raise NotFound(
                    f"suite projects/{project}/evalSuites/{suite_id} not found",
                    reason="SUITE_NOT_FOUND",
                )
            if etag and etag != row["etag"]:
                raise Aborted("the suite changed since it was read", reason="ETAG_MISMATCH")
            tx.run(
                "DELETE FROM eval_suites WHERE project = ? AND suite_id = ?", (project, suite_id)
            )

    # -- runs -----------------------------------------------------------------------------------

    def _run(self, row: Row, scorecard: Any = None) -> RunRecord:
        load = self.sql.json_out
        return RunRecord(
            row["project"],
            row["run_id"],
            spec_from_json(load(row["spec"])),
            RunState(int(row["state"])),
            row["state_message"],
            Progress(**load(row["progress"])),
            int(row["sequence"]),
            float(row["create_time"]),
            float(row["start_time"]) if row["start_time"] is not None else None,
            float(row["end_time"]) if row["end_time"] is not None else None,
            scorecard,
        )

    @once_more_on_conflict
    def create_run(self, run: RunRecord, request_id: str) -> RunRecord:
        with self.sql.write() as tx:
            if (done := _earlier(tx, "eval_runs", run.project, request_id)) is not None:
                return self._run(done)
            if _taken(tx, "eval_runs", "run_id", run.project, run.run_id):
                raise AlreadyExists(f"eval run {run.name} exists already", reason="EVAL_RUN_EXISTS")
            tx.run(
                "INSERT INTO eval_runs (project, run_id, suite, spec, state, state_message, "
                "progress, sequence, request_id, create_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.project,
                    run.run_id,
                    run.spec.suite,
                    self.sql.json_in(asdict(run.spec)),
                    int(run.state),
                    run.state_message,
                    self.sql.json_in(asdict(run.progress)),
                    run.sequence,
                    request_id or None,
                    run.create_time,
                ),
            )
        return run

    def get_run(self, project: str, run_id: str) -> RunRecord:
        row = self._found(
            "SELECT * FROM eval_runs WHERE project = ? AND run_id = ?",
            (project, run_id),
            f"eval run projects/{project}/evalRuns/{run_id}",
            "EVAL_RUN_NOT_FOUND",
        )
        return self._run(row)

    def count_unfinished(self, project: str) -> int:
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT COUNT(*) AS n FROM eval_runs WHERE project = ? AND state IN (?, ?)",
                (project, *UNFINISHED),
            )
        return int(row["n"]) if row else 0

    def runs_targeting(
        self, project: str, artifact_version: str, limit: int = 50, scan: int = 2000
    ) -> tuple[str, ...]:
        """Names of the newest runs (of the newest `scan`) whose target is `artifact_version`,
        at most `limit`: an artifact version's provenance."""
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT run_id, spec FROM eval_runs WHERE project = ? "
                "ORDER BY create_time DESC, run_id DESC LIMIT ?",
                (project, scan),
            )
        found = [
            f"projects/{project}/evalRuns/{row['run_id']}"
            for row in rows
            if self.sql.json_out(row["spec"])["target"].get("artifact_version") == artifact_version
        ]
        return tuple(found[:limit])

    def list_runs(
        self,
        project: str,
        after: list[Any] | None,
        limit: int,
        where: Mapping[str, Any],
        ascending: bool,
    ) -> list[RunRecord]:
        sql = "SELECT * FROM eval_runs WHERE project = ?"
        params: list[Any] = [project]
        if "state" in where:
            sql += " AND state = ?"
            params.append(int(where["state"]))
        if "suite" in where:
            sql += " AND suite = ?"
            params.append(str(where["suite"]))
        if after is not None:
            op = ">" if ascending else "<"
            sql += f" AND (create_time {op} ? OR (create_time = ? AND run_id {op} ?))"
            params += [after[0], after[0], after[1]]
        order = "ASC" if ascending else "DESC"
        with self.sql.read() as tx:
            rows = tx.all(
                sql + f" ORDER BY create_time {order}, run_id {order} LIMIT ?", [*params, limit]
            )
        return [self._run(row) for row in rows]

    def claim(self, project: str, run_id: str, owner: str, lease_s: float) -> RunRecord | None:
        """Take (or keep) the run for `owner` while it is unfinished and nobody else holds a
        live lease; the run moves to RUNNING. None when it cannot be taken."""
        now = time.time()
        with self.sql.write() as tx:
            changed = tx.run(
                "UPDATE eval_runs SET owner = ?, lease_expire = ?, state = ?, "
                "start_time = COALESCE(start_time, ?), sequence = sequence + 1 "
                "WHERE project = ? AND run_id = ? AND state IN (?, ?) "
                "AND (owner = '' OR owner = ? OR lease_expire < ?)",
                (
                    owner,
                    now + lease_s,
                    int(RunState.RUNNING),
                    now,
                    project,
                    run_id,
                    *UNFINISHED,
                    owner,
                    now,
                ),
            )
            if not changed:
                return None
            row = tx.one(
                "SELECT * FROM eval_runs WHERE project = ? AND run_id = ?", (project, run_id)
            )
        return self._run(row) if row else None

    def orphaned(self, limit: int = 50) -> list[tuple[str, str]]:
        """Unfinished runs nobody holds a live lease on: (project, run id)."""
        with self.sql.read() as tx:
            rows = tx.all(
                "SELECT project, run_id FROM eval_runs WHERE state IN (?, ?) AND "
                "lease_expire < ? ORDER BY create_time LIMIT ?",
                (*UNFINISHED, time.time(), limit),
            )
        return [(row["project"], row["run_id"]) for row in rows]

    def record_progress(
        self,
        project: str,
        run_id: str,
        owner: str,
        lease_s: float,
        progress: Progress,
        results: Sequence[TaskResult],
    ) -> RunState:
        """Append results, store progress and renew the lease, in one transaction. Returns the
        run's state: CANCELLED (or anything but RUNNING) tells the runner to stop."""
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT state, owner FROM eval_runs WHERE project = ? AND run_id = ?"
                + self.sql.lock_row,
                (project, run_id),
            )
            if row is None:
                return RunState.CANCELLED
            state = RunState(int(row["state"]))
            if state is not RunState.RUNNING or row["owner"] != owner:
                return state if state is not RunState.RUNNING else RunState.CANCELLED
            last = tx.one(
                "SELECT COALESCE(MAX(seq), 0) AS seq FROM eval_task_results "
                "WHERE project = ? AND run_id = ?",
                (project, run_id),
            )
            seq = int(last["seq"]) if last else 0
            if results:
                body = []
                for offset, result in enumerate(results, start=1):
                    data = asdict(result)
                    data.pop("seq")
                    body.append(
                        (
                            project,
                            run_id,
                            seq + offset,
                            result.dataset,
                            result.task_id,
                            result.repetition,
                            self.sql.json_in(data),
                        )
                    )
                try:
                    tx.many(
                        "INSERT INTO eval_task_results (project, run_id, seq, dataset, task_id, "
                        "repetition, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        body,
                    )
                except RowConflict:
                    return RunState.CANCELLED  # another replica took the run over
            tx.run(
                "UPDATE eval_runs SET progress = ?, sequence = sequence + 1, lease_expire = ? "
                "WHERE project = ? AND run_id = ?",
                (self.sql.json_in(asdict(progress)), time.time() + lease_s, project, run_id),
            )
        return RunState.RUNNING

    def finish(
        self,
        project: str,
        run_id: str,
        state: RunState,
        message: str,
        scorecard: Scorecard | None,
        only_owner: str = "",
    ) -> RunRecord | None:
        """End the run (and store its scorecard) unless it has ended already; None then."""
        now = time.time()
        with self.sql.write() as tx:
            row = tx.one(
                "SELECT state, owner FROM eval_runs WHERE project = ? AND run_id = ?"
                + self.sql.lock_row,
                (project, run_id),
            )
            if row is None or int(row["state"]) not in UNFINISHED:
                return None
            if only_owner and row["owner"] != only_owner:
                return None
            if scorecard is not None:
                tx.run(
                    "INSERT INTO eval_scorecards (project, run_id, body, create_time) "
                    "VALUES (?, ?, ?, ?)",
                    (project, run_id, self.sql.json_in(asdict(scorecard)), now),
                )
            tx.run(
                "UPDATE eval_runs SET state = ?, state_message = ?, end_time = ?, "
                "sequence = sequence + 1, owner = '', lease_expire = 0 "
                "WHERE project = ? AND run_id = ?",
                (int(state), message, now, project, run_id),
            )
            updated = tx.one(
                "SELECT * FROM eval_runs WHERE project = ? AND run_id = ?", (project, run_id)
            )
        return self._run(updated) if updated else None

    # -- results and scorecards -----------------------------------------------------------------

    def results(
        self, project: str, run_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[TaskResult]:
        sql = (
            "SELECT seq, body FROM eval_task_results WHERE project = ? AND run_id = ? "
            "AND seq > ? ORDER BY seq"
        )
        params: list[Any] = [project, run_id, after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.sql.read() as tx:
            rows = tx.all(sql, params)
        load = self.sql.json_out
        return [result_from_json(load(row["body"]), int(row["seq"])) for row in rows]

    def get_scorecard(self, project: str, run_id: str) -> Scorecard:
        row = self._found(
            "SELECT body FROM eval_scorecards WHERE project = ? AND run_id = ?",
            (project, run_id),
            f"scorecard projects/{project}/evalRuns/{run_id}/scorecard (the run has not succeeded)",
            "SCORECARD_NOT_FOUND",
        )
        return scorecard_from_json(self.sql.json_out(row["body"]))

    # -- gate decisions -------------------------------------------------------------------------

    def _decision(self, row: Row) -> GateDecision:
        return GateDecision(
            row["project"],
            row["decision_id"],
            row["scorecard"],
            row["kind"],
            row["subject"],
            row["subject_revision"],
            int(row["from_level"]),
            int(row["to_level"]),
            bool(row["passed"]),
            tuple(self.sql.json_out(row["checks"])),
            row["principal"],
            float(row["decide_time"]),
        )

    @once_more_on_conflict
    def record_decision(self, decision: GateDecision, request_id: str) -> GateDecision:
        """Store a decision; a retried request gets the one it recorded."""
        with self.sql.write() as tx:
            done = _earlier(tx, "eval_gate_decisions", decision.project, request_id)
            if done is not None:
                return self._decision(done)
            tx.run(
                "INSERT INTO eval_gate_decisions (project, decision_id, scorecard, kind, subject, "
                "subject_revision, from_level, to_level, passed, checks, principal, request_id, "
                "decide_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.project,
                    decision.decision_id,
                    decision.scorecard,
                    decision.kind,
                    decision.subject,
                    decision.subject_revision,
                    decision.from_level,
                    decision.to_level,
                    int(decision.passed),
                    self.sql.json_in(list(decision.checks)),
                    decision.principal,
                    request_id or None,
                    decision.decide_time,
                ),
            )
        return decision

    def passing_promotion(
        self, project: str, subject: str, revision: str, level: int
    ) -> GateDecision | None:
        """The latest passing autonomy promotion of `subject` at `revision` to `level` or
        higher, if any."""
        with self.sql.read() as tx:
            row = tx.one(
                "SELECT * FROM eval_gate_decisions WHERE project = ? AND subject = ? AND "
                "subject_revision = ? AND kind = ? AND passed = 1 AND to_level >= ? "
                "ORDER BY decide_time DESC LIMIT 1",
                (project, subject, revision, "AUTONOMY_PROMOTION", level),
            )
        return self._decision(row) if row is not None else None
