"""The graph slice's tables (recipes, runs, events, gates, kill switches, audit, tool effects),
written once for SQLite and PostgreSQL, and their migrations.

1. the tables;
2. event bodies, gate bodies and run errors rewritten from the API's JSON form (`"kind":
   "GRAPH_NODE_KIND_MODEL"`, `"verdict": "GATE_VERDICT_APPROVE"`, RFC 3339 times, `"0.5s"`
   durations, errors as `google.rpc.Status`) to Maestro's own (`stored_json`), in SQL on each
   backend: SQLite's JSON functions on TEXT, PostgreSQL's on JSONB.
"""

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
    body        {json} NOT NULL,               -- the event payload (graph/stored_json.py)
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


# -- 2: Maestro's names in stored JSON ------------------------------------------------------------
# Migrations are append-only: the statements below are migration 2 as shipped. Each rewrites the
# rows still in the old form (its WHERE recognises an API enum name or a `google.rpc.Status`) and
# leaves the rest of a body as it is. The helpers only spell out repeated expressions.


def _sqlite_epoch(text: str) -> str:
    """RFC 3339 text as the old code wrote it (`2026-12-05T07:18:58.312246Z`: UTC, a fraction
    only when non-zero) as epoch seconds, to the microsecond; NULL stays NULL."""
    return (
        f"(CAST(strftime('%s', substr({text}, 1, 19)) AS REAL)"
        f" + CAST('0' || substr({text}, 20, length({text}) - 20) AS REAL))"
    )


def _sqlite_error(source: str, path: str) -> str:
    """The `google.rpc.Status` (with its ErrorInfo) at `path` of `source` as a RunError."""
    return (
        f"json_object('code', CASE json_extract({source}, '{path}.code')"
        " WHEN 13 THEN 'internal' ELSE 'failed_precondition' END,"
        f" 'reason', coalesce(json_extract({source}, '{path}.details[0].reason'), ''),"
        f" 'message', coalesce(json_extract({source}, '{path}.message'), ''),"
        f" 'node_id', coalesce(json_extract({source}, '{path}.details[0].metadata.node_id'), ''))"
    )


def _sqlite_decisions(path: str) -> str:
    """The gate decisions at `path` of `body`, each with its verdict named and its time in
    seconds, in order (the aggregate reads an ordered subquery)."""
    decide_time = _sqlite_epoch("json_extract(d.value, '$.decide_time')")
    return (
        "json((SELECT json_group_array(json(decision)) FROM (SELECT json_set(d.value,"
        " '$.verdict', lower(substr(json_extract(d.value, '$.verdict'), 14)),"
        f" '$.decide_time', {decide_time}) AS decision"
        f" FROM json_each(body, '{path}') AS d ORDER BY d.key)))"
    )


def _sqlite_gate(key: str) -> str:
    return f"json_extract(body, '$.gate_opened.gate.{key}')"


_S_NODE_ERROR = _sqlite_error("body", "$.node_finished.error")
_S_EVENT_ERROR = _sqlite_error("body", "$.error")
_S_RUN_ERROR = _sqlite_error("error", "$")
_S_GATE = {
    key: _sqlite_gate(key)
    for key in (
        "name", "node_id", "state", "etag", "prompt", "required_approvals", "autonomy_level",
        "state_snapshot", "proposed_action",
    )
}  # fmt: skip
_S_GATE_TIMES = {
    key: _sqlite_epoch(_sqlite_gate(key)) for key in ("create_time", "update_time", "expire_time")
}
_S_OPENED_DECISIONS = _sqlite_decisions("$.gate_opened.gate.decisions")
_S_GATE_DECISIONS = _sqlite_decisions("$.decisions")
_S_DECIDE_TIME = _sqlite_epoch("json_extract(body, '$.gate_decided.decision.decide_time')")

GRAPH_OWN_NAMES_SQLITE = f"""
UPDATE run_events SET body = json_set(body, '$.node_started.kind',
    CASE json_extract(body, '$.node_started.kind')
        WHEN 'GRAPH_NODE_KIND_HUMAN_GATE' THEN 'gate'
        ELSE lower(substr(json_extract(body, '$.node_started.kind'), 17)) END)
WHERE substr(json_extract(body, '$.node_started.kind'), 1, 16) = 'GRAPH_NODE_KIND_';

UPDATE run_events SET body = json_set(body, '$.node_finished.error', {_S_NODE_ERROR})
WHERE json_type(body, '$.node_finished.error.details') = 'array';

UPDATE run_events SET body = json_remove(json_set(body,
        '$.node_finished.outcome', lower(substr(json_extract(body, '$.node_finished.outcome'), 9)),
        '$.node_finished.duration_s',
        CAST(rtrim(coalesce(json_extract(body, '$.node_finished.duration'), '0s'), 's') AS REAL)),
    '$.node_finished.duration', '$.node_finished.usage.total_tokens')
WHERE substr(json_extract(body, '$.node_finished.outcome'), 1, 8) = 'OUTCOME_';

UPDATE run_events SET body = json_remove(body, '$.cost_update.usage.total_tokens')
WHERE json_type(body, '$.cost_update.usage.total_tokens') IS NOT NULL;

UPDATE run_events SET body = json_set(body, '$.gate_opened.gate', json_object(
    'name', {_S_GATE["name"]},
    'run', run,
    'project', substr(run, 10, instr(run, '/runs/') - 10),
    'node_id', {_S_GATE["node_id"]},
    'status', lower(substr({_S_GATE["state"]}, 7)),
    'etag', {_S_GATE["etag"]},
    'create_time', {_S_GATE_TIMES["create_time"]},
    'update_time', {_S_GATE_TIMES["update_time"]},
    'opened_seq', seq,
    'expire_time', {_S_GATE_TIMES["expire_time"]},
    'prompt', {_S_GATE["prompt"]},
    'required_approvals', {_S_GATE["required_approvals"]},
    'autonomy', CAST(substr({_S_GATE["autonomy_level"]}, 17) AS INTEGER),
    'state_snapshot', json({_S_GATE["state_snapshot"]}),
    'proposed_action', json({_S_GATE["proposed_action"]}),
    'decisions', {_S_OPENED_DECISIONS}))
WHERE substr({_S_GATE["state"]}, 1, 6) = 'STATE_';

UPDATE run_events SET body = json_set(json_remove(body, '$.gate_decided.gate_state'),
    '$.gate_decided.gate_status', lower(substr(json_extract(body, '$.gate_decided.gate_state'), 7)),
    '$.gate_decided.decision.verdict',
    lower(substr(json_extract(body, '$.gate_decided.decision.verdict'), 14)),
    '$.gate_decided.decision.decide_time', {_S_DECIDE_TIME})
WHERE substr(json_extract(body, '$.gate_decided.gate_state'), 1, 6) = 'STATE_';

UPDATE run_events SET body = json_set(body, '$.budget_exceeded.budget', json_object(
    'max_tokens', coalesce(json_extract(body, '$.budget_exceeded.budget.max_tokens'), 0),
    'max_cost_usd', coalesce(json_extract(body, '$.budget_exceeded.budget.max_cost_usd'), 0.0),
    'max_wall_time_s', CAST(rtrim(coalesce(
        json_extract(body, '$.budget_exceeded.budget.max_wall_time'), '0s'), 's') AS REAL)))
WHERE json_type(body, '$.budget_exceeded.budget') = 'object'
    AND json_type(body, '$.budget_exceeded.budget.max_wall_time_s') IS NULL;

UPDATE run_events SET body = json_set(
    json_remove(body, '$.run_state_changed.previous_state', '$.run_state_changed.state'),
    '$.run_state_changed.previous_status',
    lower(substr(json_extract(body, '$.run_state_changed.previous_state'), 7)),
    '$.run_state_changed.status', lower(substr(json_extract(body, '$.run_state_changed.state'), 7)))
WHERE substr(json_extract(body, '$.run_state_changed.state'), 1, 6) = 'STATE_';

UPDATE run_events SET body = json_set(body, '$.error', {_S_EVENT_ERROR})
WHERE json_type(body, '$.error.details') = 'array';

UPDATE run_gates SET body = json_set(body, '$.decisions', {_S_GATE_DECISIONS})
WHERE json_array_length(body, '$.decisions') > 0;

UPDATE agent_runs SET error = {_S_RUN_ERROR}
WHERE error IS NOT NULL AND json_type(error, '$.details') = 'array';
"""


def _pg_epoch(text: str) -> str:
    return f"extract(epoch FROM ({text})::timestamptz)::float8"


def _pg_error(value: str) -> str:
    """A `google.rpc.Status` (JSONB `value`, with its ErrorInfo) as a RunError."""
    return (
        f"jsonb_build_object('code', CASE ({value}->>'code')::int"
        " WHEN 13 THEN 'internal' ELSE 'failed_precondition' END,"
        f" 'reason', coalesce({value}#>>'{{details,0,reason}}', ''),"
        f" 'message', coalesce({value}->>'message', ''),"
        f" 'node_id', coalesce({value}#>>'{{details,0,metadata,node_id}}', ''))"
    )


def _pg_decisions(value: str) -> str:
    """A JSONB array of gate decisions, each with its verdict named and its time in seconds."""
    decide_time = _pg_epoch("d->>'decide_time'")
    return (
        "(SELECT coalesce(jsonb_agg(d || jsonb_build_object("
        f"'verdict', lower(substr(d->>'verdict', 14)), 'decide_time', {decide_time})"
        " ORDER BY i), '[]'::jsonb)"
        f" FROM jsonb_array_elements({value}) WITH ORDINALITY AS e(d, i))"
    )


def _pg_gate(key: str) -> str:
    return f"body#>>'{{gate_opened,gate,{key}}}'"


_P_NODE_ERROR = _pg_error("(body#>'{node_finished,error}')")
_P_EVENT_ERROR = _pg_error("(body->'error')")
_P_RUN_ERROR = _pg_error("error")
_P_GATE = {
    key: _pg_gate(key)
    for key in (
        "name",
        "node_id",
        "state",
        "etag",
        "prompt",
        "required_approvals",
        "autonomy_level",
    )
}
_P_GATE_TIMES = {
    key: _pg_epoch(_pg_gate(key)) for key in ("create_time", "update_time", "expire_time")
}
_P_OPENED_DECISIONS = _pg_decisions("body#>'{gate_opened,gate,decisions}'")
_P_GATE_DECISIONS = _pg_decisions("body->'decisions'")
_P_DECIDE_TIME = _pg_epoch("body#>>'{gate_decided,decision,decide_time}'")

GRAPH_OWN_NAMES_POSTGRES = f"""
UPDATE run_events SET body = jsonb_set(body, '{{node_started,kind}}', to_jsonb(
    CASE body#>>'{{node_started,kind}}'
        WHEN 'GRAPH_NODE_KIND_HUMAN_GATE' THEN 'gate'
        ELSE lower(substr(body#>>'{{node_started,kind}}', 17)) END))
WHERE left(body#>>'{{node_started,kind}}', 16) = 'GRAPH_NODE_KIND_';

UPDATE run_events SET body = jsonb_set(body, '{{node_finished,error}}', {_P_NODE_ERROR})
WHERE jsonb_typeof(body#>'{{node_finished,error,details}}') = 'array';

UPDATE run_events SET body = jsonb_set(body, '{{node_finished}}',
    (((body->'node_finished') - 'duration') #- '{{usage,total_tokens}}')
    || jsonb_build_object(
        'outcome', lower(substr(body#>>'{{node_finished,outcome}}', 9)),
        'duration_s', rtrim(coalesce(body#>>'{{node_finished,duration}}', '0s'), 's')::float8))
WHERE left(body#>>'{{node_finished,outcome}}', 8) = 'OUTCOME_';

UPDATE run_events SET body = body #- '{{cost_update,usage,total_tokens}}'
WHERE body#>'{{cost_update,usage,total_tokens}}' IS NOT NULL;

UPDATE run_events SET body = jsonb_set(body, '{{gate_opened,gate}}', jsonb_build_object(
    'name', {_P_GATE["name"]},
    'run', run,
    'project', split_part(run, '/', 2),
    'node_id', {_P_GATE["node_id"]},
    'status', lower(substr({_P_GATE["state"]}, 7)),
    'etag', {_P_GATE["etag"]},
    'create_time', {_P_GATE_TIMES["create_time"]},
    'update_time', {_P_GATE_TIMES["update_time"]},
    'opened_seq', seq,
    'expire_time', {_P_GATE_TIMES["expire_time"]},
    'prompt', {_P_GATE["prompt"]},
    'required_approvals', ({_P_GATE["required_approvals"]})::int,
    'autonomy', substr({_P_GATE["autonomy_level"]}, 17)::int,
    'state_snapshot', body#>'{{gate_opened,gate,state_snapshot}}',
    'proposed_action', coalesce(body#>'{{gate_opened,gate,proposed_action}}', 'null'::jsonb),
    'decisions', {_P_OPENED_DECISIONS}))
WHERE left({_P_GATE["state"]}, 6) = 'STATE_';

UPDATE run_events SET body = jsonb_set(body, '{{gate_decided}}',
    ((body->'gate_decided') - 'gate_state')
    || jsonb_build_object(
        'gate_status', lower(substr(body#>>'{{gate_decided,gate_state}}', 7)),
        'decision', (body#>'{{gate_decided,decision}}') || jsonb_build_object(
            'verdict', lower(substr(body#>>'{{gate_decided,decision,verdict}}', 14)),
            'decide_time', {_P_DECIDE_TIME})))
WHERE left(body#>>'{{gate_decided,gate_state}}', 6) = 'STATE_';

UPDATE run_events SET body = jsonb_set(body, '{{budget_exceeded,budget}}', jsonb_build_object(
    'max_tokens', coalesce((body#>>'{{budget_exceeded,budget,max_tokens}}')::bigint, 0),
    'max_cost_usd', coalesce((body#>>'{{budget_exceeded,budget,max_cost_usd}}')::float8, 0.0),
    'max_wall_time_s',
    rtrim(coalesce(body#>>'{{budget_exceeded,budget,max_wall_time}}', '0s'), 's')::float8))
WHERE jsonb_typeof(body#>'{{budget_exceeded,budget}}') = 'object'
    AND body#>'{{budget_exceeded,budget,max_wall_time_s}}' IS NULL;

UPDATE run_events SET body = jsonb_set(body, '{{run_state_changed}}',
    ((body->'run_state_changed') - 'previous_state' - 'state')
    || jsonb_build_object(
        'previous_status', lower(substr(body#>>'{{run_state_changed,previous_state}}', 7)),
        'status', lower(substr(body#>>'{{run_state_changed,state}}', 7))))
WHERE left(body#>>'{{run_state_changed,state}}', 6) = 'STATE_';

UPDATE run_events SET body = jsonb_set(body, '{{error}}', {_P_EVENT_ERROR})
WHERE jsonb_typeof(body#>'{{error,details}}') = 'array';

UPDATE run_gates SET body = jsonb_set(body, '{{decisions}}', {_P_GATE_DECISIONS})
WHERE jsonb_array_length(body->'decisions') > 0;

UPDATE agent_runs SET error = {_P_RUN_ERROR}
WHERE error IS NOT NULL AND jsonb_typeof(error->'details') = 'array';
"""


MIGRATIONS = (
    Migration("graph", 1, GRAPH_SCHEMA),
    Migration("graph", 2, GRAPH_OWN_NAMES_SQLITE, postgres_sql=GRAPH_OWN_NAMES_POSTGRES),
    # Who started each run, for dual control; runs from before it have none (anyone may approve).
    Migration("graph", 3, "ALTER TABLE agent_runs ADD COLUMN creator TEXT NOT NULL DEFAULT '';"),
    # The artifact version a run serves (RolloutService's recipe artifacts); '' for the others.
    Migration(
        "graph", 4, "ALTER TABLE agent_runs ADD COLUMN artifact_version TEXT NOT NULL DEFAULT '';"
    ),
)
