"""The eval slice's tables: datasets (with their JSONL), suites, runs, task results and
scorecards. Written once for SQLite and PostgreSQL; times are epoch seconds."""

from __future__ import annotations

from maestro.control_plane.store.migrations import Migration

MIGRATIONS = (
    Migration(
        "evals",
        1,
        """
        CREATE TABLE eval_datasets (
            project       TEXT NOT NULL,
            dataset_id    TEXT NOT NULL,
            display_name  TEXT NOT NULL DEFAULT '',
            description   TEXT NOT NULL DEFAULT '',
            source_uri    TEXT NOT NULL DEFAULT '',
            sha256        TEXT NOT NULL,
            task_count    BIGINT NOT NULL,
            size_bytes    BIGINT NOT NULL,
            provenance_id TEXT NOT NULL,
            content       TEXT NOT NULL,             -- the JSONL, as created (immutable)
            request_id    TEXT,
            create_time   {real} NOT NULL,
            PRIMARY KEY (project, dataset_id)
        );
        CREATE INDEX eval_datasets_by_time ON eval_datasets(project, create_time DESC);
        CREATE UNIQUE INDEX eval_datasets_by_request ON eval_datasets(project, request_id);
        CREATE TABLE eval_suites (
            project       TEXT NOT NULL,
            suite_id      TEXT NOT NULL,
            body          {json} NOT NULL,           -- records.SuiteRecord without the name
            etag          TEXT NOT NULL,
            request_id    TEXT,
            create_time   {real} NOT NULL,
            update_time   {real} NOT NULL,
            PRIMARY KEY (project, suite_id)
        );
        CREATE UNIQUE INDEX eval_suites_by_request ON eval_suites(project, request_id);
        CREATE TABLE eval_runs (
            project       TEXT NOT NULL,
            run_id        TEXT NOT NULL,
            suite         TEXT NOT NULL,             -- the suite's name, for filters
            spec          {json} NOT NULL,           -- records.RunSpec: fixed at creation
            state         INTEGER NOT NULL,          -- EvalRun.State
            state_message TEXT NOT NULL DEFAULT '',
            progress      {json} NOT NULL,
            sequence      BIGINT NOT NULL DEFAULT 1, -- WatchEvalRun's cursor
            owner         TEXT NOT NULL DEFAULT '',  -- the replica running it
            lease_expire  {real} NOT NULL DEFAULT 0,
            request_id    TEXT,
            create_time   {real} NOT NULL,
            start_time    {real},
            end_time      {real},
            PRIMARY KEY (project, run_id)
        );
        CREATE INDEX eval_runs_by_time ON eval_runs(project, create_time DESC, run_id DESC);
        CREATE INDEX eval_runs_claimable ON eval_runs(state, lease_expire);
        CREATE UNIQUE INDEX eval_runs_by_request ON eval_runs(project, request_id);
        CREATE TABLE eval_task_results (
            project       TEXT NOT NULL,
            run_id        TEXT NOT NULL,
            seq           BIGINT NOT NULL,           -- 1, 2, ... per run, in completion order
            dataset       TEXT NOT NULL,
            task_id       TEXT NOT NULL,
            repetition    INTEGER NOT NULL,
            body          {json} NOT NULL,           -- records.TaskResult
            PRIMARY KEY (project, run_id, seq)
        );
        CREATE UNIQUE INDEX eval_task_results_once
            ON eval_task_results(project, run_id, dataset, task_id, repetition);
        CREATE TABLE eval_scorecards (
            project       TEXT NOT NULL,
            run_id        TEXT NOT NULL,
            body          {json} NOT NULL,           -- records.Scorecard
            create_time   {real} NOT NULL,
            PRIMARY KEY (project, run_id)
        );
        """,
    ),
    Migration(
        "evals",
        2,
        """
        CREATE TABLE eval_gate_decisions (
            project          TEXT NOT NULL,
            decision_id      TEXT NOT NULL,
            scorecard        TEXT NOT NULL,
            kind             TEXT NOT NULL,            -- gates.KINDS
            subject          TEXT NOT NULL DEFAULT '',
            subject_revision TEXT NOT NULL DEFAULT '', -- a recipe subject's revision then
            from_level       INTEGER NOT NULL DEFAULT 0,
            to_level         INTEGER NOT NULL DEFAULT 0,
            passed           INTEGER NOT NULL,         -- 1 or 0
            checks           {json} NOT NULL,
            principal        TEXT NOT NULL DEFAULT '',
            request_id       TEXT,
            decide_time      {real} NOT NULL,
            PRIMARY KEY (project, decision_id)
        );
        CREATE INDEX eval_gate_by_subject
            ON eval_gate_decisions(project, subject, subject_revision, kind);
        CREATE UNIQUE INDEX eval_gate_by_request ON eval_gate_decisions(project, request_id);
        """,
    ),
)
