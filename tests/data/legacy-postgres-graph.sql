--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: agent_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.agent_runs (
    name text NOT NULL,
    project text NOT NULL,
    recipe text NOT NULL,
    recipe_revision_id text NOT NULL,
    recipe_source text NOT NULL,
    input_state jsonb NOT NULL,
    state jsonb NOT NULL,
    status integer NOT NULL,
    state_reason text DEFAULT ''::text NOT NULL,
    next_node text DEFAULT ''::text NOT NULL,
    in_flight jsonb,
    visits jsonb NOT NULL,
    prompt_tokens bigint DEFAULT 0 NOT NULL,
    completion_tokens bigint DEFAULT 0 NOT NULL,
    cost_usd double precision DEFAULT 0 NOT NULL,
    budget jsonb NOT NULL,
    autonomy integer NOT NULL,
    error jsonb,
    kill_switch text DEFAULT ''::text NOT NULL,
    open_gates jsonb NOT NULL,
    last_seq bigint DEFAULT 0 NOT NULL,
    owner text DEFAULT ''::text NOT NULL,
    lease_expire double precision DEFAULT 0 NOT NULL,
    trace_id text NOT NULL,
    request_id text,
    create_time double precision NOT NULL,
    update_time double precision NOT NULL,
    end_time double precision
);


--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_log (
    id text NOT NULL,
    event_time double precision NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    reason text NOT NULL,
    detail jsonb NOT NULL
);


--
-- Name: graph_recipe_revisions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.graph_recipe_revisions (
    project text NOT NULL,
    recipe_id text NOT NULL,
    revision_id text NOT NULL,
    source_yaml text NOT NULL,
    create_time double precision NOT NULL
);


--
-- Name: graph_recipes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.graph_recipes (
    project text NOT NULL,
    recipe_id text NOT NULL,
    revision_id text NOT NULL,
    display_name text DEFAULT ''::text NOT NULL,
    source_yaml text NOT NULL,
    create_time double precision NOT NULL,
    update_time double precision NOT NULL
);


--
-- Name: kill_switches; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.kill_switches (
    name text NOT NULL,
    engaged integer NOT NULL,
    reason text NOT NULL,
    updated_by text NOT NULL,
    update_time double precision NOT NULL,
    etag text NOT NULL
);


--
-- Name: maestro_schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.maestro_schema_migrations (
    version integer NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: run_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_events (
    run text NOT NULL,
    seq bigint NOT NULL,
    event_time double precision NOT NULL,
    node_id text DEFAULT ''::text NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    body jsonb NOT NULL
);


--
-- Name: run_gates; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.run_gates (
    name text NOT NULL,
    run text NOT NULL,
    project text NOT NULL,
    opened_seq bigint NOT NULL,
    status integer NOT NULL,
    node_id text NOT NULL,
    body jsonb NOT NULL,
    etag text NOT NULL,
    create_time double precision NOT NULL,
    update_time double precision NOT NULL,
    expire_time double precision
);


--
-- Name: tool_effects; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tool_effects (
    idempotency_key text NOT NULL,
    tool text NOT NULL,
    arguments jsonb NOT NULL,
    result jsonb NOT NULL,
    calls integer NOT NULL,
    create_time double precision NOT NULL
);


--
-- Data for Name: agent_runs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.agent_runs VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 'alpha', 'projects/alpha/recipes/gated', '667eda6c3136', '
autonomy: L2
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
  - {id: publish, kind: model, max_tokens: 8}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: publish, when: state.gate.decision == "approve"}
  - {from: review, to: __end__}
  - {from: publish, to: __end__}
', '{}', '{"tool": null, "draft": "not at to look people could to a"}', 4, 'waiting at gate review', 'review', NULL, '{"draft": 1}', 5, 8, 0, '{"max_tokens": 0, "max_cost_usd": 0.0, "max_wall_time_s": 0.0}', 2, NULL, '', '["projects/alpha/runs/79f6968ba12f44b0ad9b/gates/review-1"]', 7, '', 1796455161.641042, '62860be28d88dcd00635631c93671da3', NULL, 1796455151.6409514, 1796455151.650628, NULL);


--
-- Data for Name: audit_log; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: graph_recipe_revisions; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.graph_recipe_revisions VALUES ('alpha', 'gated', '667eda6c3136', '
autonomy: L2
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
  - {id: publish, kind: model, max_tokens: 8}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: publish, when: state.gate.decision == "approve"}
  - {from: review, to: __end__}
  - {from: publish, to: __end__}
', 1796455151.633936);


--
-- Data for Name: graph_recipes; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.graph_recipes VALUES ('alpha', 'gated', '667eda6c3136', '', '
autonomy: L2
nodes:
  - {id: draft, kind: model, max_tokens: 8}
  - {id: review, kind: gate, gate: {prompt: Ship it?}}
  - {id: publish, kind: model, max_tokens: 8}
edges:
  - {from: __start__, to: draft}
  - {from: draft, to: review}
  - {from: review, to: publish, when: state.gate.decision == "approve"}
  - {from: review, to: __end__}
  - {from: publish, to: __end__}
', 1796455151.633936, 1796455151.633936);


--
-- Data for Name: kill_switches; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: maestro_schema_migrations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.maestro_schema_migrations VALUES (1, '2026-12-05 07:19:09.587168+00');


--
-- Data for Name: run_events; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 1, 1796455151.6409514, '', 0, '{"run_state_changed": {"state": "STATE_QUEUED", "reason": "created", "previous_state": "STATE_QUEUED"}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 2, 1796455151.6409514, '', 0, '{"run_state_changed": {"state": "STATE_RUNNING", "reason": "claimed by vm-9580", "previous_state": "STATE_QUEUED"}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 3, 1796455151.6409514, 'draft', 1, '{"provenance": {"id": "f2d579776da64be9a31f2b42cf4a0e9b"}, "node_started": {"kind": "GRAPH_NODE_KIND_MODEL", "idempotency_key": "", "estimated_cost_usd": 0.0}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 4, 1796455151.650628, 'draft', 1, '{"provenance": {"id": "f2d579776da64be9a31f2b42cf4a0e9b", "producer": "primary-a", "input_digests": ["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]}, "node_finished": {"usage": {"total_tokens": 13, "prompt_tokens": 5, "completion_tokens": 8}, "output": {"tool": null, "draft": "not at to look people could to a"}, "outcome": "OUTCOME_SUCCEEDED", "cost_usd": 0.0, "duration": "0.004309s", "next_node_ids": ["review"]}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 5, 1796455151.650628, '', 0, '{"cost_update": {"usage": {"total_tokens": 13, "prompt_tokens": 5, "completion_tokens": 8}, "cost_usd": 0.0, "budget_used_ratio": 0.0}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 6, 1796455151.650628, 'review', 0, '{"gate_opened": {"gate": {"etag": "1a54f649e0062f17", "name": "projects/alpha/runs/79f6968ba12f44b0ad9b/gates/review-1", "state": "STATE_OPEN", "prompt": "Ship it?", "node_id": "review", "decisions": [], "create_time": "2026-12-05T07:19:11.650566Z", "update_time": "2026-12-05T07:19:11.650566Z", "autonomy_level": "AUTONOMY_LEVEL_L2", "state_snapshot": {"tool": null, "draft": "not at to look people could to a"}, "approvals_counted": 0, "required_approvals": 1}}}');
INSERT INTO public.run_events VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b', 7, 1796455151.650628, '', 0, '{"run_state_changed": {"state": "STATE_WAITING_FOR_APPROVAL", "reason": "Ship it?", "previous_state": "STATE_RUNNING"}}');


--
-- Data for Name: run_gates; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.run_gates VALUES ('projects/alpha/runs/79f6968ba12f44b0ad9b/gates/review-1', 'projects/alpha/runs/79f6968ba12f44b0ad9b', 'alpha', 6, 1, 'review', '{"prompt": "Ship it?", "autonomy": 2, "decisions": [], "state_snapshot": {"tool": null, "draft": "not at to look people could to a"}, "proposed_action": null, "required_approvals": 1}', '1a54f649e0062f17', 1796455151.6505659, 1796455151.6505659, NULL);


--
-- Data for Name: tool_effects; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Name: agent_runs agent_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.agent_runs
    ADD CONSTRAINT agent_runs_pkey PRIMARY KEY (name);


--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);


--
-- Name: graph_recipe_revisions graph_recipe_revisions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.graph_recipe_revisions
    ADD CONSTRAINT graph_recipe_revisions_pkey PRIMARY KEY (project, recipe_id, revision_id);


--
-- Name: graph_recipes graph_recipes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.graph_recipes
    ADD CONSTRAINT graph_recipes_pkey PRIMARY KEY (project, recipe_id);


--
-- Name: kill_switches kill_switches_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.kill_switches
    ADD CONSTRAINT kill_switches_pkey PRIMARY KEY (name);


--
-- Name: maestro_schema_migrations maestro_schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.maestro_schema_migrations
    ADD CONSTRAINT maestro_schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: run_events run_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_events
    ADD CONSTRAINT run_events_pkey PRIMARY KEY (run, seq);


--
-- Name: run_gates run_gates_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.run_gates
    ADD CONSTRAINT run_gates_pkey PRIMARY KEY (name);


--
-- Name: tool_effects tool_effects_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tool_effects
    ADD CONSTRAINT tool_effects_pkey PRIMARY KEY (idempotency_key);


--
-- Name: agent_runs_by_project; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_runs_by_project ON public.agent_runs USING btree (project, create_time DESC, name DESC);


--
-- Name: agent_runs_by_request; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX agent_runs_by_request ON public.agent_runs USING btree (project, request_id);


--
-- Name: agent_runs_by_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_runs_by_status ON public.agent_runs USING btree (project, status);


--
-- Name: agent_runs_claimable; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX agent_runs_claimable ON public.agent_runs USING btree (status, lease_expire);


--
-- Name: run_gates_by_project; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX run_gates_by_project ON public.run_gates USING btree (project, create_time, name);


--
-- Name: run_gates_by_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX run_gates_by_run ON public.run_gates USING btree (run, opened_seq);


--
-- Name: run_gates_expiring; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX run_gates_expiring ON public.run_gates USING btree (status, expire_time);


--
-- PostgreSQL database dump complete
--


