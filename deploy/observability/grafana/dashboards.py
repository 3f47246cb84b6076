"""Maestro's Grafana dashboards, as code (grafana-foundation-sdk, Grafana 11.6).

    .venv/bin/python deploy/observability/grafana/dashboards.py           # write the JSON files
    .venv/bin/python deploy/observability/grafana/dashboards.py --check   # exit 1 on drift

Writes one JSON model per dashboard next to this file (router.json, agentops.json,
serving.json, cost.json, delivery.json). They are committed; tests/test_observability_pack.py
runs `--check`, so an edit here without regenerating fails the build.

Every dashboard has a `datasource` variable (any Prometheus data source; the first one by
default) and a `maestro_project` variable (label_values of the project label), so the files
import into any Grafana with no edits. Panels query the metric names and labels Maestro exports
(README "Observability"); the SLO objective is the one the alert rules use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prom_model

HERE = Path(__file__).resolve().parent

SLO_OBJECTIVE = 0.995
"""Availability objective of inference calls; equal to `maestro:slo_availability:objective` in
../prometheus/maestro-recording.yaml (a test keeps them equal)."""
ERROR_BUDGET = round(1 - SLO_OBJECTIVE, 6)

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
PROJECT = 'maestro_project=~"$maestro_project"'
"""Matcher of the project variable, for metrics labelled maestro_project."""
EVAL_PROJECT = 'project=~"$maestro_project"'
"""The same for eval and rollout metrics, which label the project `project`."""
PROJECT_VALUES = "maestro_inference_calls_total"
"""The series the project variable lists the projects of: every project makes calls."""
RATE = "$__rate_interval"
CALL_ERRORS = 'status_class=~"server_error|refused"'
"""Calls that spend the error budget: failed by the providers or shed by Maestro."""
TAGS = ["maestro"]


@dataclass(frozen=True)
class Q:
    """One PromQL query of a panel: the expression and its legend."""

    expr: str
    legend: str = ""


def _target(query: Q, ref_id: str) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .expr(query.expr)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .range()
        .editor_mode(prom_model.QueryEditorMode.CODE)
    )
    if query.legend:
        target = target.legend_format(query.legend)
    return target


def _targets(queries: Sequence[Q]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    return [_target(q, chr(ord("A") + i)) for i, q in enumerate(queries)]


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Q,
    stacked: bool = False,
    width: int = 12,
    max_value: float | None = None,
    thresholds: dash.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
        .legend(_legend())
        .targets(_targets(queries))
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if max_value is not None:
        panel = panel.max(max_value)
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
    return panel


def states(
    title: str, description: str, query: Q, mapping: dict[str, tuple[str, str]], width: int = 12
) -> statetimeline.Panel:
    """A state timeline: one row per series, each value shown as a named, coloured state."""
    options = {
        value: model.ValueMappingResult(text=text, color=color, index=index)
        for index, (value, (text, color)) in enumerate(mapping.items())
    }
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .mappings([model.ValueMap(options=options)])
        .targets(_targets([query]))
    )


def histogram_heatmap(title: str, description: str, query: Q, width: int = 12) -> heatmap.Panel:
    """A heatmap of a Prometheus histogram's buckets (rate per `le`)."""
    target = _target(query, "A").format(prom_model.PromQueryFormat.HEATMAP)
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .calculate(False)
        .with_target(target)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .exponent(0.5)
            .steps(64)
        )
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
    )


def quantiles(
    metric: str, by: str, selector: str = "", qs: Sequence[float] = (0.5, 0.95)
) -> list[Q]:
    """histogram_quantile of a histogram's buckets, by `by` (plus `le`), one query per
    quantile."""
    matchers = "{" + selector + "}" if selector else ""
    return [
        Q(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{matchers}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in qs
    ]


def _variables() -> list[cogbuilder.Builder[model.VariableModel]]:
    datasource = (
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus").regex("")
    )
    project = (
        dash.QueryVariable("maestro_project")
        .label("Project")
        .datasource(DATASOURCE)
        .query(f"label_values({PROJECT_VALUES}, maestro_project)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )
    return [datasource, project]


def _dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .variables(_variables())
        .link(
            dash.DashboardLink("Maestro")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def _add(
    board: dash.Dashboard, rows: Sequence[tuple[str, Sequence[cogbuilder.Builder[model.Panel]]]]
) -> dash.Dashboard:
    for title, panels in rows:
        board = board.with_row(dash.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


def router() -> dash.Dashboard:
    calls = f"maestro_inference_calls_total{{{PROJECT}}}"
    errors = f"maestro_inference_calls_total{{{PROJECT},{CALL_ERRORS}}}"
    board = _dashboard(
        "maestro-router",
        "Maestro / Router",
        "Routing decisions, fallbacks, provider health and latency of inference calls.",
    )
    return _add(
        board,
        [
            (
                "Routing",
                [
                    graph(
                        "Route decisions by model",
                        "Decisions per second by the model group they chose.",
                        "reqps",
                        Q(
                            "sum by (gen_ai_response_model) "
                            f"(rate(maestro_route_decisions_total{{{PROJECT}}}[{RATE}]))",
                            "{{gen_ai_response_model}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "Route decisions by outcome",
                        "Decisions per second by outcome: routed, or why none was possible.",
                        "reqps",
                        Q(
                            "sum by (outcome) "
                            f"(rate(maestro_route_decisions_total{{{PROJECT}}}[{RATE}]))",
                            "{{outcome}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "Exclusion reasons",
                        "Candidate deployments excluded per second, by reason (policy, content "
                        "tags, breaker open, limits) and requested model.",
                        "short",
                        Q(
                            "sum by (reason, gen_ai_request_model) "
                            f"(rate(maestro_route_exclusions_total{{{PROJECT}}}[{RATE}]))",
                            "{{reason}} ({{gen_ai_request_model}})",
                        ),
                    ),
                    graph(
                        "Fallback rate",
                        "Moves to another deployment (or retries of the same one) per call, "
                        "and decisions that routed to a fallback group.",
                        "percentunit",
                        Q(
                            f"sum(rate(maestro_inference_fallbacks_total{{{PROJECT}}}[{RATE}]))"
                            f" / sum(rate({calls}[{RATE}]))",
                            "fallbacks per call",
                        ),
                        Q(
                            f"sum(rate(maestro_route_fallback_routes_total[{RATE}])) / "
                            f"sum(rate(maestro_route_decisions_total[{RATE}]))",
                            "decisions routed to a fallback group",
                        ),
                    ),
                    graph(
                        "Fallbacks by reason",
                        "Fallbacks per second by why the attempt before failed.",
                        "short",
                        Q(
                            "sum by (reason) "
                            f"(rate(maestro_inference_fallbacks_total{{{PROJECT}}}[{RATE}]))",
                            "{{reason}}",
                        ),
                        stacked=True,
                    ),
                ],
            ),
            (
                "Calls and error budget",
                [
                    graph(
                        "Calls by status class",
                        "Inference calls per second: ok, client_error (the caller's fault), "
                        "server_error (every deployment failed), refused (shed).",
                        "reqps",
                        Q(f"sum by (status_class) (rate({calls}[{RATE}]))", "{{status_class}}"),
                        stacked=True,
                    ),
                    graph(
                        "Error-budget burn rate",
                        f"Error ratio (server_error + refused) over the error budget of a "
                        f"{SLO_OBJECTIVE:.1%} objective, over 1h and 5m. 14.4 on both pages "
                        f"(MaestroErrorBudgetBurnFast); 6 over 6h and 30m files a ticket.",
                        "short",
                        *[
                            Q(
                                f"(sum by (maestro_project) (rate({errors}[{window}])) / "
                                f"sum by (maestro_project) (rate({calls}[{window}]))) "
                                f"/ {ERROR_BUDGET}",
                                f"{{{{maestro_project}}}} {window}",
                            )
                            for window in ("1h", "5m")
                        ],
                        thresholds=_thresholds((None, "green"), (6, "orange"), (14.4, "red")),
                    ),
                ],
            ),
            (
                "Providers",
                [
                    graph(
                        "Provider saturation",
                        "Each deployment's calls in flight over its max_parallel_requests; "
                        "MaestroProviderSaturated fires above 90% for 10 minutes.",
                        "percentunit",
                        Q(
                            "max by (maestro_deployment_id) (maestro_inference_saturation_ratio)",
                            "{{maestro_deployment_id}}",
                        ),
                        max_value=1,
                        thresholds=_thresholds((None, "green"), (0.9, "red")),
                    ),
                    graph(
                        "Calls in flight by deployment",
                        "Attempts in progress on each deployment.",
                        "short",
                        Q(
                            "sum by (maestro_deployment_id) (maestro_inference_in_flight)",
                            "{{maestro_deployment_id}}",
                        ),
                        stacked=True,
                    ),
                    states(
                        "Breaker states",
                        "Each deployment's circuit breaker over time (any data plane open "
                        "counts as open).",
                        Q(
                            "max by (maestro_deployment_id) ("
                            '(maestro_inference_breaker_state{state="open"} == 1) * 2 or '
                            '(maestro_inference_breaker_state{state="half_open"} == 1) or '
                            '(maestro_inference_breaker_state{state="closed"} == 1) * 0)',
                            "{{maestro_deployment_id}}",
                        ),
                        {
                            "0": ("closed", "green"),
                            "1": ("half_open", "orange"),
                            "2": ("open", "red"),
                        },
                    ),
                    graph(
                        "Breaker transitions",
                        "Breaker state changes per deployment; MaestroBreakerFlapping fires "
                        "above 6 in 15 minutes.",
                        "short",
                        Q(
                            "max by (maestro_deployment_id) (sum by (maestro_deployment_id, "
                            "instance) "
                            f"(increase(maestro_inference_breaker_transitions_total[{RATE}])))",
                            "{{maestro_deployment_id}}",
                        ),
                    ),
                    graph(
                        "429 share by deployment",
                        "Share of attempts the provider rate limited (HTTP 429); "
                        "MaestroProviderRateLimited fires above 10%.",
                        "percentunit",
                        Q(
                            "sum by (maestro_deployment_id) "
                            "(rate(maestro_inference_attempts_total"
                            f'{{outcome="rate_limited"}}[{RATE}])) '
                            "/ sum by (maestro_deployment_id) "
                            f"(rate(maestro_inference_attempts_total[{RATE}]))",
                            "{{maestro_deployment_id}}",
                        ),
                        max_value=1,
                        thresholds=_thresholds((None, "green"), (0.1, "red")),
                    ),
                    graph(
                        "Attempts by outcome",
                        "Attempts per second on each deployment, by outcome.",
                        "reqps",
                        Q(
                            "sum by (maestro_deployment_id, outcome) "
                            f"(rate(maestro_inference_attempts_total[{RATE}]))",
                            "{{maestro_deployment_id}} {{outcome}}",
                        ),
                    ),
                    graph(
                        "Shed calls",
                        "Calls refused at once because a data plane was at "
                        "max_inflight_calls; MaestroInferenceShedding fires above 0.1/s.",
                        "reqps",
                        Q(f"sum(rate(maestro_inference_refused_total[{RATE}]))", "refused"),
                        thresholds=_thresholds((None, "green"), (0.1, "red")),
                    ),
                ],
            ),
            (
                "Latency",
                [
                    graph(
                        "Call duration",
                        "Whole-call duration by the model that answered (p50, p95).",
                        "s",
                        *quantiles(
                            "gen_ai_client_operation_duration_seconds", "gen_ai_response_model"
                        ),
                    ),
                    graph(
                        "Time to first token",
                        "From request to the first token sent to the caller (p50, p95).",
                        "s",
                        *quantiles(
                            "maestro_inference_time_to_first_token_seconds", "gen_ai_response_model"
                        ),
                    ),
                    graph(
                        "Time per output token",
                        "Mean gap between output tokens of streamed calls (p50, p95).",
                        "s",
                        *quantiles(
                            "maestro_inference_time_per_output_token_seconds",
                            "gen_ai_response_model",
                        ),
                    ),
                    graph(
                        "RPC latency p95 by method",
                        "Time to serve Maestro's gRPC methods (p95).",
                        "ms",
                        *quantiles(
                            "rpc_server_duration_milliseconds",
                            "rpc_method",
                            PROJECT,
                            qs=(0.95,),
                        ),
                    ),
                    graph(
                        "RPC errors by code",
                        "gRPC calls per second that ended with a status other than OK.",
                        "reqps",
                        Q(
                            "sum by (rpc_method, rpc_grpc_status_code) "
                            "(rate(rpc_server_duration_milliseconds_count"
                            f'{{{PROJECT},rpc_grpc_status_code!="0"}}[{RATE}]))',
                            "{{rpc_method}} code {{rpc_grpc_status_code}}",
                        ),
                    ),
                ],
            ),
        ],
    )


def agentops() -> dash.Dashboard:
    finished = f"maestro_graph_runs_finished_total{{{PROJECT}}}"
    board = _dashboard(
        "maestro-agentops",
        "Maestro / AgentOps",
        "Agent graph runs: node runtimes, retries, human-in-the-loop gates and run outcomes.",
    )
    return _add(
        board,
        [
            (
                "Nodes",
                [
                    graph(
                        "Node runtime by kind",
                        "Duration of node attempts by node kind (p50, p95).",
                        "s",
                        *quantiles("maestro_graph_node_duration_seconds", "kind"),
                    ),
                    graph(
                        "Node attempts by outcome",
                        "Node attempts per second by how they ended, and in all.",
                        "short",
                        Q(
                            "sum by (outcome) "
                            f"(rate(maestro_graph_node_duration_seconds_count[{RATE}]))",
                            "{{outcome}}",
                        ),
                        Q(f"sum(rate(maestro_graph_node_attempts_total[{RATE}]))", "all attempts"),
                    ),
                    graph(
                        "Node retries by kind",
                        "Retries of failed node attempts per second, by node kind.",
                        "short",
                        Q(
                            f"sum by (kind) (rate(maestro_graph_node_retries_total[{RATE}]))",
                            "{{kind}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "Steps replayed",
                        "Steps run again after their replica stopped (crash, lost lease, "
                        "kill switch).",
                        "short",
                        Q(f"sum(increase(maestro_graph_steps_replayed_total[{RATE}]))", "replayed"),
                    ),
                ],
            ),
            (
                "Human in the loop",
                [
                    graph(
                        "HITL decision latency",
                        "From a gate opening to the decision that closed it, by verdict "
                        "(p50, p95).",
                        "s",
                        *quantiles("maestro_graph_gate_decision_latency_seconds", "verdict"),
                    ),
                    graph(
                        "Gate decisions by verdict",
                        "Gate decisions recorded (approve, edit, block).",
                        "short",
                        Q(
                            "sum by (verdict) "
                            f"(increase(maestro_graph_gate_decisions_total[{RATE}]))",
                            "{{verdict}}",
                        ),
                        stacked=True,
                    ),
                ],
            ),
            (
                "Runs",
                [
                    graph(
                        "Runs finished by state",
                        "Runs reaching a final state per second: succeeded, failed, "
                        "cancelled, blocked.",
                        "short",
                        Q(f"sum by (state) (rate({finished}[{RATE}]))", "{{state}}"),
                        stacked=True,
                    ),
                    graph(
                        "Run success ratio by recipe",
                        "Share of finished runs that succeeded, by recipe.",
                        "percentunit",
                        Q(
                            "sum by (recipe) (rate(maestro_graph_runs_finished_total"
                            f'{{{PROJECT},state="succeeded"}}[{RATE}])) '
                            f"/ sum by (recipe) (rate({finished}[{RATE}]))",
                            "{{recipe}}",
                        ),
                        max_value=1,
                    ),
                ],
            ),
        ],
    )


def serving() -> dash.Dashboard:
    board = _dashboard(
        "maestro-serving",
        "Maestro / Serving",
        "The Ray Serve + vLLM lanes: batching, KV cache, queues, saturation, and token latency.",
    )
    return _add(
        board,
        [
            (
                "Lanes",
                [
                    graph(
                        "Batch size",
                        "Requests in each lane's running batch (batch efficiency: higher is "
                        "better until time per output token suffers).",
                        "short",
                        Q(
                            "max by (maestro_deployment_id) (maestro_lane_batch_size)",
                            "{{maestro_deployment_id}}",
                        ),
                    ),
                    graph(
                        "KV cache usage",
                        "Share of each lane's KV cache in use; the lane counts as saturated at "
                        "data_plane.lane_kv_cache_saturation (98%).",
                        "percentunit",
                        Q(
                            "max by (maestro_deployment_id) (maestro_lane_kv_cache_usage_ratio)",
                            "{{maestro_deployment_id}}",
                        ),
                        max_value=1,
                        thresholds=_thresholds((None, "green"), (0.9, "orange"), (0.98, "red")),
                    ),
                    graph(
                        "Queue depth",
                        "Requests waiting in each lane's queue.",
                        "short",
                        Q(
                            "max by (maestro_deployment_id) (maestro_lane_queue_depth)",
                            "{{maestro_deployment_id}}",
                        ),
                    ),
                    states(
                        "Lane saturated",
                        "Whether routing treats each lane as saturated (shedding or KV cache "
                        "full); MaestroLaneSaturated fires after 10 minutes.",
                        Q(
                            "max by (maestro_deployment_id) (maestro_lane_saturated)",
                            "{{maestro_deployment_id}}",
                        ),
                        {"0": ("ok", "green"), "1": ("saturated", "red")},
                    ),
                ],
            ),
            (
                "Token latency",
                [
                    histogram_heatmap(
                        "Time to first token (histogram)",
                        "Distribution of the time to first token, every model.",
                        Q(
                            "sum by (le) (rate("
                            f"maestro_inference_time_to_first_token_seconds_bucket[{RATE}]))",
                            "{{le}}",
                        ),
                    ),
                    histogram_heatmap(
                        "Time per output token (histogram)",
                        "Distribution of the mean gap between output tokens, every model.",
                        Q(
                            "sum by (le) (rate("
                            f"maestro_inference_time_per_output_token_seconds_bucket[{RATE}]))",
                            "{{le}}",
                        ),
                    ),
                    graph(
                        "Time to first token by model",
                        "p50 and p95 by the model that answered.",
                        "s",
                        *quantiles(
                            "maestro_inference_time_to_first_token_seconds", "gen_ai_response_model"
                        ),
                    ),
                    graph(
                        "Time per output token by model",
                        "p50 and p95 by the model that answered.",
                        "s",
                        *quantiles(
                            "maestro_inference_time_per_output_token_seconds",
                            "gen_ai_response_model",
                        ),
                    ),
                ],
            ),
        ],
    )


def cost() -> dash.Dashboard:
    spend = f"maestro_inference_cost_usd_total{{{PROJECT}}}"
    board = _dashboard(
        "maestro-cost",
        "Maestro / Cost",
        "What inference costs: per project per day, per graph run, per model, and tokens.",
    )
    return _add(
        board,
        [
            (
                "Spend",
                [
                    graph(
                        "$ per project per day",
                        "Spend of each project over the 24 hours up to each point.",
                        "currencyUSD",
                        Q(
                            f"sum by (maestro_project) (increase({spend}[1d]))",
                            "{{maestro_project}}",
                        ),
                    ),
                    graph(
                        "Spend rate vs the same hour yesterday",
                        "This hour's spend rate over the same hour a day ago; "
                        "MaestroCostAnomaly fires above 3x (against the day and week before) "
                        "and above $5 an hour.",
                        "short",
                        Q(
                            f"sum by (maestro_project) (rate({spend}[1h])) / "
                            f"sum by (maestro_project) (rate({spend}[1h] offset 1d))",
                            "{{maestro_project}}",
                        ),
                        thresholds=_thresholds((None, "green"), (3, "red")),
                    ),
                    graph(
                        "$ per task (graph run) by recipe",
                        "Cost of finished graph runs over the last 24 hours, per run, by recipe.",
                        "currencyUSD",
                        Q(
                            "sum by (recipe) (increase(maestro_graph_runs_cost_usd_total"
                            f"{{{PROJECT}}}[1d])) / sum by (recipe) (increase("
                            f"maestro_graph_runs_finished_total{{{PROJECT}}}[1d]))",
                            "{{recipe}}",
                        ),
                    ),
                    graph(
                        "$ per hour by model",
                        "Spend rate by the model that answered, in USD an hour.",
                        "currencyUSD",
                        Q(
                            f"sum by (gen_ai_response_model) (rate({spend}[{RATE}])) * 3600",
                            "{{gen_ai_response_model}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "$ per call by model",
                        "Mean cost of one inference call, by the model that answered.",
                        "currencyUSD",
                        Q(
                            f"sum by (gen_ai_response_model) (rate({spend}[{RATE}])) / "
                            "sum by (gen_ai_response_model) (rate(maestro_inference_calls_total"
                            f"{{{PROJECT}}}[{RATE}]))",
                            "{{gen_ai_response_model}}",
                        ),
                    ),
                ],
            ),
            (
                "Tokens",
                [
                    graph(
                        "Tokens by type",
                        "Tokens per second, input and output.",
                        "short",
                        Q(
                            "sum by (gen_ai_token_type) (rate(maestro_inference_tokens_total"
                            f"{{{PROJECT}}}[{RATE}]))",
                            "{{gen_ai_token_type}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "Tokens by requested model",
                        "Tokens per second by the model group callers asked for.",
                        "short",
                        Q(
                            "sum by (gen_ai_request_model) (rate(maestro_inference_tokens_total"
                            f"{{{PROJECT}}}[{RATE}]))",
                            "{{gen_ai_request_model}}",
                        ),
                        stacked=True,
                    ),
                ],
            ),
        ],
    )


def delivery() -> dash.Dashboard:
    board = _dashboard(
        "maestro-delivery",
        "Maestro / Evals & Rollouts",
        "Scorecards of eval suites and the progress of rollouts (canary weights, analyses, "
        "rollbacks).",
    )
    return _add(
        board,
        [
            (
                "Evals",
                [
                    graph(
                        "Scorecard scores",
                        "The latest scorecard's mean of each metric, by suite, target and metric.",
                        "short",
                        Q(
                            "max by (suite, target, metric) "
                            f"(maestro_eval_scorecard_score{{{EVAL_PROJECT}}})",
                            "{{suite}} {{target}} {{metric}}",
                        ),
                    ),
                    states(
                        "Scorecard verdicts",
                        "The latest verdict of each suite and target; "
                        "MaestroEvalScorecardFailing fires on FAIL.",
                        Q(
                            "min by (suite, target) "
                            f"(maestro_eval_scorecard_verdict{{{EVAL_PROJECT}}})",
                            "{{suite}} {{target}}",
                        ),
                        {
                            "-1": ("FAIL", "red"),
                            "0": ("INCONCLUSIVE", "orange"),
                            "1": ("PASS", "green"),
                        },
                    ),
                    graph(
                        "Scorecards by verdict",
                        "Scorecards written, by suite and verdict.",
                        "short",
                        Q(
                            "sum by (suite, verdict) "
                            f"(increase(maestro_eval_scorecards_total[{RATE}]))",
                            "{{suite}} {{verdict}}",
                        ),
                    ),
                    graph(
                        "Task executions by outcome",
                        "Eval task executions scored per second (passed, failed, errored).",
                        "short",
                        Q(
                            f"sum by (outcome) (rate(maestro_eval_task_executions_total[{RATE}]))",
                            "{{outcome}}",
                        ),
                        stacked=True,
                    ),
                ],
            ),
            (
                "Rollouts",
                [
                    graph(
                        "Canary weight",
                        "The candidate's share of its artifact's traffic, per live rollout.",
                        "percent",
                        Q(
                            "max by (artifact, rollout) "
                            f"(maestro_rollout_canary_weight_percent{{{EVAL_PROJECT}}})",
                            "{{artifact}} {{rollout}}",
                        ),
                        max_value=100,
                    ),
                    graph(
                        "Rollout changes by action",
                        "Rollout audit events (WEIGHT_CHANGED, PROMOTED, ROLLED_BACK, ...); "
                        "MaestroRolloutRolledBack fires on ROLLED_BACK.",
                        "short",
                        Q(
                            "sum by (action) "
                            f"(increase(maestro_rollout_changes_total{{{EVAL_PROJECT}}}[{RATE}]))",
                            "{{action}}",
                        ),
                        stacked=True,
                    ),
                    graph(
                        "Analyses by outcome",
                        "Rollout analysis verdicts by template and outcome.",
                        "short",
                        Q(
                            "sum by (template, outcome) "
                            f"(increase(maestro_rollout_analyses_total{{{EVAL_PROJECT}}}[{RATE}]))",
                            "{{template}} {{outcome}}",
                        ),
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {
    "router": router,
    "agentops": agentops,
    "serving": serving,
    "cost": cost,
    "delivery": delivery,
}


def render(name: str) -> str:
    """The JSON file of dashboard `name`, as committed."""
    built = DASHBOARDS[name]().build()
    # Stable panel ids in layout order (the SDK leaves them unset): links and "view panel"
    # URLs keep pointing at the same panel across regenerations.
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="Write nothing; exit 1 naming each JSON file that differs from what this code makes.",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="Folder of the JSON files.")
    args = parser.parse_args(argv)
    drifted = []
    for name in DASHBOARDS:
        path = args.out / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                drifted.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if drifted:
        for path in drifted:
            print(
                f"drift: {path} differs from what dashboards.py makes; regenerate with "
                "`.venv/bin/python deploy/observability/grafana/dashboards.py`",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
