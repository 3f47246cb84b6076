"""deploy/rollouts: the seed's Argo Rollout `maestro-agent-exec` and its AnalysisTemplates
`eval-score-ok` and `error-budget-ok` validate against Argo Rollouts' own CRD schemas (vendored,
unmodified, in deploy/schemas/argo-rollouts/), and the templates call routes Maestro serves with
queries those routes accept.

The CRDs' `openAPIV3Schema` is checked with jsonschema, strictly: an object schema that names its
properties takes no others (unless it says `x-kubernetes-preserve-unknown-fields`), because the
API server prunes such fields silently. Plain JSON Schema would let a misplaced field through.
The check is tests/k8s_schema_support.py's, shared with tests/test_deploy_helm.py, which also
validates the Rollout and templates the chart renders for stage and prod.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from multidict import MultiDict

from maestro.app.rollout_http import EVAL_VERDICT_PATH, SLO_BURN_PATH, slo_burn_template
from tests.k8s_schema_support import DEPLOY, SCHEMAS, VENDORED_CRDS, crd_errors

MANIFEST = DEPLOY / "rollouts" / "agent-exec.yaml"
VENDORED = sorted(name for name in VENDORED_CRDS if name.startswith("argo-rollouts/"))
SEED_STEPS = [
    {"setWeight": 10},
    {"pause": {"duration": "10m"}},
    {
        "analysis": {
            "templates": [{"templateName": "eval-score-ok"}, {"templateName": "error-budget-ok"}]
        }
    },
    {"setWeight": 50},
    {"pause": {"duration": "30m"}},
]
_ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")


def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _one(kind: str, name: str) -> dict[str, Any]:
    [document] = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def _errors(document: dict[str, Any]) -> list[str]:
    return crd_errors(document)


@pytest.mark.parametrize("name", VENDORED)
def test_vendored_crds_are_the_release_files(name: str) -> None:
    digest = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
    assert digest == VENDORED_CRDS[name]
    assert digest in (SCHEMAS / "argo-rollouts" / "README.md").read_text()


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Rollout", "maestro-agent-exec"),
        ("AnalysisTemplate", "eval-score-ok"),
        ("AnalysisTemplate", "error-budget-ok"),
    ],
)
def test_manifests_validate_against_the_argo_rollouts_crds(kind: str, name: str) -> None:
    document = _one(kind, name)
    assert document["apiVersion"] == "argoproj.io/v1alpha1"
    assert _errors(document) == []


def test_the_strict_check_refuses_what_the_api_server_would_drop_or_reject() -> None:
    """The seed's sketch nests rollbackWindow under strategy.canary, where Argo's schema has no
    such field (it is spec.rollbackWindow): refused here, not silently pruned."""
    rollout = copy.deepcopy(_one("Rollout", "maestro-agent-exec"))
    rollout["spec"]["strategy"]["canary"]["rollbackWindow"] = rollout["spec"].pop("rollbackWindow")
    assert any("rollbackWindow" in e for e in _errors(rollout))
    typo = copy.deepcopy(_one("AnalysisTemplate", "error-budget-ok"))
    typo["spec"]["metrics"][0]["failureLimt"] = 0
    assert any("failureLimt" in e for e in _errors(typo))
    wrong = copy.deepcopy(_one("Rollout", "maestro-agent-exec"))
    wrong["spec"]["strategy"]["canary"]["steps"][0] = {"setWeight": "ten"}
    assert any("setWeight" in e for e in _errors(wrong))
    no_url = copy.deepcopy(_one("AnalysisTemplate", "eval-score-ok"))
    del no_url["spec"]["metrics"][0]["provider"]["web"]["url"]
    assert any("'url' is a required property" in e for e in _errors(no_url))


def test_the_rollout_has_the_seeds_steps_and_rollback_window() -> None:
    spec = _one("Rollout", "maestro-agent-exec")["spec"]
    steps = copy.deepcopy(spec["strategy"]["canary"]["steps"])
    del steps[2]["analysis"]["args"]  # what the seed leaves out: where the args come from
    assert steps == SEED_STEPS
    assert spec["rollbackWindow"] == {"revisions": 2}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels["agent-version"]


def test_the_service_and_certificate_match_the_rollouts_pods() -> None:
    spec = _one("Rollout", "maestro-agent-exec")["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    service = _one("Service", "maestro-agent-exec")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    certificate = _one("Certificate", "maestro-agent-exec")["spec"]
    [tls] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == certificate["secretName"]
    assert "maestro-agent-exec" in certificate["dnsNames"]
    assert container["args"][0] == "data-plane"


def _analysis_args(rollout: dict[str, Any]) -> dict[str, str]:
    """The analysis step's args as the controller resolves them from the Rollout (fieldRef of
    metadata annotations or of the pod template's labels)."""
    [step] = [s for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s]
    resolved = {}
    for arg in step["analysis"]["args"]:
        path = arg["valueFrom"]["fieldRef"]["fieldPath"]
        if match := re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path):
            resolved[arg["name"]] = rollout["metadata"]["annotations"][match.group(1)]
        else:
            node: Any = rollout
            for part in path.split("."):
                node = node[part]
            resolved[arg["name"]] = node
    return resolved


@pytest.mark.parametrize(
    ("name", "route"),
    [("eval-score-ok", EVAL_VERDICT_PATH), ("error-budget-ok", SLO_BURN_PATH)],
)
def test_templates_call_maestros_routes_with_args_the_rollout_supplies(
    name: str, route: str
) -> None:
    template = _one("AnalysisTemplate", name)
    rollout = _one("Rollout", "maestro-agent-exec")
    supplied = _analysis_args(rollout)
    declared = {a["name"]: a for a in template["spec"]["args"]}
    for arg_name, arg in declared.items():  # each arg has a value, its own or the Rollout's
        assert "value" in arg or "valueFrom" in arg or arg_name in supplied, arg_name
        if "valueFrom" in arg:
            assert arg["valueFrom"]["secretKeyRef"]["name"] == "maestro-rollouts-analysis"
    values = {n: supplied.get(n, a.get("value", f"secret-{n}")) for n, a in declared.items()}
    [metric] = template["spec"]["metrics"]
    web_provider = metric["provider"]["web"]
    used = set(_ARG.findall(web_provider["url"])) | {
        a for h in web_provider["headers"] for a in _ARG.findall(h["value"])
    }
    assert used <= set(declared), used - set(declared)
    assert {h["key"]: h["value"] for h in web_provider["headers"]} == {
        "Authorization": "Bearer {{args.api-key}}"
    }
    url = urlsplit(_ARG.sub(lambda m: values[m.group(1)], web_provider["url"]))

    # The control plane's Service, on its http port, by a name its certificate carries.
    k8s = [
        d
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    [service] = [
        d
        for d in k8s
        if d["kind"] == "Service" and d["metadata"]["name"] == "maestro-control-plane"
    ]
    [certificate] = [
        d
        for d in k8s
        if d["kind"] == "Certificate" and d["spec"]["secretName"] == "maestro-control-plane-tls"
    ]
    http_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["http"]
    host = url.hostname or ""
    assert url.scheme == "https"
    assert host in certificate["spec"]["dnsNames"]
    assert host.split(".")[0] == service["metadata"]["name"]
    assert url.port == http_port

    # The path is the route's, for the Rollout's project, artifact and candidate version.
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^{}/]+)", re.escape(route))
    match = re.fullmatch(pattern, url.path)
    assert match is not None, url.path
    assert match.groupdict() == {
        "project": supplied["project"],
        "artifact": supplied["artifact"],
        "version": supplied["candidate-version"],
    }
    query = MultiDict(parse_qsl(url.query))
    if route == SLO_BURN_PATH:
        burn = slo_burn_template(query)  # the route accepts the query as it stands
        assert burn.indicator == "errors"
        assert burn.objective_ratio == pytest.approx(0.995)
        assert [(w.long_s, w.short_s, w.max_burn_rate) for w in burn.windows] == [
            (3600.0, 300.0, 14.4)
        ]
    else:
        assert dict(query) == {"suite": supplied["suite"]}

    # Argo reads the verdict and decides on it: passed succeeds, failed fails, and a failure
    # limit of 0 means one failed measurement fails the analysis (failures > failureLimit).
    assert web_provider["jsonPath"] == "{$.verdict}"
    assert metric["successCondition"] == 'result == "passed"'
    assert metric["failureCondition"] == 'result == "failed"'
    assert metric["failureLimit"] == 0
    assert "ONE failed measurement" in MANIFEST.read_text()
