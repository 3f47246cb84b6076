"""The graph slice's tables (recipes, runs, events, gates, kill switches, audit, tool effects),
written once for SQLite and PostgreSQL."""

from __future__ import annotations

from maestro.control_plane.store.migrations import Migration

# The graph schema, once: `{json}` becomes TEXT on SQLite and JSONB on PostgreSQL (the seed's
# `agent_runs` with JSONB state), `{real}` a double. Times are epoch seconds (REAL) so lease
# arithmetic is plain comparison on both.
GRAPH_SCHEMA = """
CREATE TABLE graph_recipes (
    project       TEXT NOT NULL,
    recipe_id     TEXT NOT NULL,
    revision_id   TEXT NOT NULL,
    display_name  TEXT NOT NULL DEFAULT '',
    source_yaml   TEXT NOT NULL,
    create_time   {real} NOT NULL,
    update_time   {real} NOT NULL,
    PRIMARY KEY (project, recipe_id)
);
CREATE TABLE graph_recipe_revisions (
    project       TEXT NOT NULL,
    recipe_id     TEXT NOT NULL,
    revision_id   TEXT NOT NULL,
    source_yaml   TEXT NOT NULL,
    create_time   {real} NOT NULL,
    PRIMARY KEY (project, recipe_id, revision_id)
);
CREATE TABLE agent_runs (
    name              TEXT PRIMARY KEY,        -- 'projects/{project}/runs/{run}'
    project           TEXT NOT NULL,
    recipe            TEXT NOT NULL,
    recipe_revision_id TEXT NOT NULL,
    recipe_source     TEXT NOT NULL,           -- the pinned revision's YAML
    input_state       {json} NOT NULL,
    state             {json} NOT NULL,         -- the checkpoint: state as of the last commit
    status            INTEGER NOT NULL,        -- Run.State
    state_reason      TEXT NOT NULL DEFAULT '',
    next_node         TEXT NOT NULL DEFAULT '',
    in_flight         {json},                  -- the node started and not committed, or NULL
    visits            {json} NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd          {real} NOT NULL DEFAULT 0,
    budget            {json} NOT NULL,
    autonomy          INTEGER NOT NULL,
    error             {json},
    kill_switch       TEXT NOT NULL DEFAULT '',
    open_gates        {json} NOT NULL,         -- names of the open gates, kept with each change
    last_seq          BIGINT NOT NULL DEFAULT 0,
    owner             TEXT NOT NULL DEFAULT '',
    lease_expire      {real} NOT NULL DEFAULT 0,
    trace_id          TEXT NOT NULL,
    request_id        TEXT,
    create_time       {real} NOT NULL,
    update_time       {real} NOT NULL,
    end_time          {real}
);
CREATE INDEX agent_runs_by_project ON agent_runs(project, create_time DESC, name DESC);
CREATE INDEX agent_runs_claimable ON agent_runs(status, lease_expire);
CREATE INDEX agent_runs_by_status ON agent_runs(project, status);
CREATE UNIQUE INDEX agent_runs_by_request ON agent_runs(project, request_id);
CREATE TABLE run_events (
    run         TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    event_time  {real} NOT NULL,
    node_id     TEXT NOT NULL DEFAULT '',
    attempt     INTEGER NOT NULL DEFAULT 0,
    body        {json} NOT NULL,               -- the RunEvent payload, proto JSON field names
    PRIMARY KEY (run, seq)
);
CREATE TABLE run_gates (
    name        TEXT PRIMARY KEY,              -- '{run}/gates/{gate}'
    run         TEXT NOT NULL,
    project     TEXT NOT NULL,
    opened_seq  BIGINT NOT NULL,
    status      INTEGER NOT NULL,              -- Gate.State
    node_id     TEXT NOT NULL,
    body        {json} NOT NULL,               -- prompt, proposal, snapshot, decisions
    etag        TEXT NOT NULL,
    create_time {real} NOT NULL,
    update_time {real} NOT NULL,
    expire_time {real}                         -- an open gate expires then (node timeout)
);
CREATE INDEX run_gates_by_run ON run_gates(run, opened_seq);
CREATE INDEX run_gates_expiring ON run_gates(status, expire_time);
CREATE INDEX run_gates_by_project ON run_gates(project, create_time, name);
CREATE TABLE kill_switches (
    name        TEXT PRIMARY KEY,
    engaged     INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    update_time {real} NOT NULL,
    etag        TEXT NOT NULL
);
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    event_time  {real} NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      {json} NOT NULL
);
CREATE TABLE tool_effects (
    idempotency_key TEXT PRIMARY KEY,          -- '{run}/{node}/{visit}'
    tool        TEXT NOT NULL,
    arguments   {json} NOT NULL,
    result      {json} NOT NULL,
    calls       INTEGER NOT NULL,              -- calls seen, replays included
    create_time {real} NOT NULL
);
"""


MIGRATIONS = (Migration("graph", 1, GRAPH_SCHEMA),)
