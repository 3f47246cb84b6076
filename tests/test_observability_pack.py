"""deploy/observability holds together: the alert and recording rules pass `promtool check
rules` and their unit tests, Alertmanager's config passes `amtool check-config` and routes each
severity to its Slack receiver, every alert links a runbook in this repository with the three
sections on-call needs, the committed dashboards are what their generator makes, every PromQL
expression of the pack parses, and the collector config wires only components it defines.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages
(`.ci/run` installs them); without them these tests fail, they are never skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.observability.grafana import dashboards
from deploy.observability.queries import (
    RULE_FILES,
    Use,
    dashboard_expressions,
    dashboard_files,
    metric_uses,
    missing_uses,
    pack_expressions,
)

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "deploy" / "observability"
PROMETHEUS = PACK / "prometheus"
ALERTS = PROMETHEUS / "maestro-alerts.yaml"
RECORDING = PROMETHEUS / "maestro-recording.yaml"
ALERT_TESTS = PROMETHEUS / "maestro-alerts.test.yaml"
ALERTMANAGER = PACK / "alertmanager" / "alertmanager.yaml"
COLLECTOR = PACK / "otel-collector.yaml"
RUNBOOKS = PACK / "runbooks"
RUNBOOK_BASE = "https://github.com/maestro-dev/maestro/blob/main/"
"""Runbook links point at this repository's main branch; the rest of the URL is the file's
path in the repository."""
RUNBOOK_SECTIONS = ("## What it means", "## First three things to look at", "## Mitigation")
DEBIAN_PACKAGE = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: `apt-get install -y {DEBIAN_PACKAGE[name]}` "
            "(.ci/run installs it); the observability pack's checks need it"
        )
    return path


def _run(*args: str, cwd: Path = PACK) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool(args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=110
    )


def _alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def _collector() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COLLECTOR.read_text())
    return config


# --- Prometheus rules ---------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_alert_and_recording_rules() -> None:
    checked = _run("promtool", "check", "rules", str(RECORDING), str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    tested = _run("promtool", "test", "rules", ALERT_TESTS.name, cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    data = yaml.safe_load(ALERT_TESTS.read_text())
    fired = {
        case["alertname"]
        for group in data["tests"]
        for case in group.get("alert_rule_test") or []
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in _alerts()} - fired == set()


def test_every_alert_has_a_severity_group_summary_description_and_runbook_url() -> None:
    for rule in _alerts():
        labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
        assert labels.get("severity") in {"page", "ticket"}, rule["alert"]
        assert labels.get("alert_group"), rule["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key), (rule["alert"], key)


def test_every_runbook_url_names_the_alerts_runbook_file_in_this_repository() -> None:
    for rule in _alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        path = ROOT / url.removeprefix(RUNBOOK_BASE)
        assert path == RUNBOOKS / f"{rule['alert']}.md", url
        assert path.is_file(), f"{rule['alert']}: {path} does not exist"


def test_every_runbook_has_what_it_means_first_three_things_and_mitigation() -> None:
    for rule in _alerts():
        text = (RUNBOOKS / f"{rule['alert']}.md").read_text()
        assert text.startswith(f"# {rule['alert']}\n"), rule["alert"]
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings == list(RUNBOOK_SECTIONS), (rule["alert"], headings)
        first_three = text.split(RUNBOOK_SECTIONS[1])[1].split(RUNBOOK_SECTIONS[2])[0]
        assert re.findall(r"^\d\. ", first_three, re.M) == ["1. ", "2. ", "3. "], rule["alert"]


def test_every_runbook_file_belongs_to_an_alert() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == names


def test_dashboards_and_recording_rules_share_the_slo_objective() -> None:
    data = yaml.safe_load(RECORDING.read_text())
    [objective] = [
        rule["expr"]
        for group in data["groups"]
        for rule in group["rules"]
        if rule.get("record") == "maestro:slo_availability:objective"
    ]
    assert objective == f"vector({dashboards.SLO_OBJECTIVE})"


# --- Alertmanager -------------------------------------------------------------------------


def test_amtool_check_config_accepts_the_alertmanager_config_and_its_templates() -> None:
    checked = _run("amtool", "check-config", str(ALERTMANAGER))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 templates" in checked.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=MaestroErrorBudgetBurnFast"], "slack-pages"),
        (["severity=ticket", "alertname=MaestroErrorBudgetBurnSlow"], "slack-tickets"),
    ],
)
def test_alertmanager_routes_each_severity_to_its_slack_receiver(
    labels: list[str], receiver: str
) -> None:
    routed = _run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert routed.returncode == 0, routed.stderr
    assert routed.stdout.split() == [receiver]


def test_alertmanager_slack_messages_link_the_runbook_and_inhibit_tickets_under_a_page() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["alertname", "maestro_project"]
    for receiver in config["receivers"]:
        [slack] = receiver["slack_configs"]
        assert slack["api_url_file"].startswith("/")
        assert slack["channel"].startswith("#")
        assert "maestro.slack.runbook" in slack["title_link"]
    [inhibit] = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['severity="page"']
    assert inhibit["target_matchers"] == ['severity="ticket"']
    assert set(inhibit["equal"]) == {"alert_group", "maestro_project"}
    template = (ALERTMANAGER.parent / "maestro-slack.tmpl").read_text()
    assert ".Annotations.runbook_url" in template


def test_amtool_renders_the_slack_templates() -> None:
    rendered = _run(
        "amtool",
        "template",
        "render",
        f"--template.glob={ALERTMANAGER.parent / 'maestro-slack.tmpl'}",
        '--template.text={{ template "maestro.slack.title" . }}\n'
        '{{ template "maestro.slack.text" . }}',
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "*Runbook:*" in rendered.stdout


# --- Grafana dashboards -------------------------------------------------------------------


def test_committed_dashboards_match_their_generator() -> None:
    checked = subprocess.run(
        [sys.executable, str(PACK / "grafana" / "dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert checked.returncode == 0, checked.stderr
    assert {p.stem for p in dashboard_files()} == set(dashboards.DASHBOARDS)


def test_every_dashboard_has_the_datasource_and_project_variables_and_panels_use_them() -> None:
    for path in dashboard_files():
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", path.name
        assert variables["datasource"]["query"] == "prometheus", path.name
        assert variables["maestro_project"]["query"].startswith("label_values("), path.name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                path.name,
                panel["title"],
            )
            assert panel["targets"], (path.name, panel["title"])


def test_every_promql_expression_of_the_dashboards_and_rules_parses(tmp_path: Path) -> None:
    """promtool 2.42 has no command that only parses an expression, so each one becomes a
    recording rule of a scratch file that `promtool check rules` reads."""
    expressions = pack_expressions()
    assert len({e.source.split(":")[0] for e in expressions}) == len(dashboard_files()) + len(
        RULE_FILES
    )
    rules = [
        {"record": f"check:expression_{index}", "expr": expression.promql}
        for index, expression in enumerate(expressions)
    ]
    scratch = tmp_path / "expressions.yaml"
    scratch.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
    checked = _run("promtool", "check", "rules", str(scratch))
    where = "\n".join(f"check:expression_{i}: {e.source}" for i, e in enumerate(expressions))
    assert checked.returncode == 0, checked.stdout + checked.stderr + "\n" + where


def test_dashboard_variable_queries_are_checked_as_promql() -> None:
    router = next(p for p in dashboard_files() if p.stem == "router")
    [variable] = [e for e in dashboard_expressions(router) if "variable" in e.source]
    assert variable.promql == "group by (maestro_project) (maestro_inference_calls_total)"


# --- the query helper ---------------------------------------------------------------------


def test_metric_uses_take_labels_from_matchers_grouping_and_vector_matching() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, gen_ai_response_model) (rate("
        'maestro_inference_time_to_first_token_seconds_bucket{maestro_project=~".*"}[5m])))'
        " / on (maestro_project) group_left () maestro:recorded:ratio"
        " + label_replace(max without (otel_scope_name) (maestro_lane_saturated),"
        ' "maestro_project", "$1", "project", "(.*)")'
    )
    assert metric_uses(expr) == {
        Use(
            "maestro_inference_time_to_first_token_seconds_bucket",
            ("gen_ai_response_model", "le", "maestro_project"),
        ),
        Use("maestro_lane_saturated", ("maestro_project", "otel_scope_name")),
    }


def test_missing_uses_name_what_a_scrape_lacks() -> None:
    scrape = (
        "# TYPE maestro_inference_calls_total counter\n"
        'maestro_inference_calls_total{maestro_project="demo",status_class="ok"} 3.0\n'
        'maestro_x_seconds_sum{a="1"} 1.0\n'
    )
    missing = missing_uses(
        [
            Use("maestro_inference_calls_total", ("maestro_project", "status_class")),
            Use("maestro_inference_calls_total", ("instance", "job", "maestro_project")),
            Use("maestro_inference_calls_total", ("outcome",)),
            Use("maestro_x_seconds_bucket", ("le",)),
            Use("maestro_route_decisions_total", ()),
        ],
        scrape,
    )
    assert [(use.metric, use.labels) for use, _ in missing] == [
        ("maestro_inference_calls_total", ("outcome",)),
        ("maestro_x_seconds_bucket", ("le",)),
        ("maestro_route_decisions_total", ()),
    ]
    assert "seen: ['maestro_project,status_class']" in missing[0][1]
    assert "histogram maestro_x_seconds has no _bucket series" in missing[1][1]


# --- OpenTelemetry collector --------------------------------------------------------------


def test_collector_pipelines_use_only_receivers_processors_and_exporters_it_defines() -> None:
    config = _collector()
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            assert pipeline[kind], (name, kind)
            assert set(pipeline[kind]) <= set(config[kind]), (name, kind)
        assert pipeline["processors"][0] == "memory_limiter", name
        assert pipeline["processors"][-1] == "batch", name
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    used = {c for p in pipelines.values() for k in ("receivers", "exporters") for c in p[k]}
    assert used == set(config["receivers"]) | set(config["exporters"])


def test_collector_keeps_the_seeds_ports_exporters_and_pipelines() -> None:
    config = _collector()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    exporters = config["exporters"]
    assert exporters["prometheus"]["endpoint"] == ":8889"
    assert exporters["prometheus"]["resource_to_telemetry_conversion"] == {"enabled": True}
    assert exporters["loki"]["endpoint"] == "http://loki:3100/loki/api/v1/push"
    assert exporters["otlphttp/grafana"]["endpoint"] == "http://grafana-agent:4318"
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlphttp/grafana"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["logs"]["exporters"] == ["loki"]
    assert all(p["receivers"] == ["otlp"] for p in pipelines.values())
