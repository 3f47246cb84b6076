"""The Helm chart deploy/helm/maestro: `helm lint` passes with every values file, and every
document `helm template` renders (defaults, dev, stage, prod) validates against the Kubernetes
schemas (kubernetes-validate, strict, for the oldest and newest release the chart is checked
for) or, for custom resources, against KubeRay's, Argo Rollouts' and cert-manager's own CRD
schemas (vendored in deploy/schemas/). The plain manifests under deploy/ are the chart rendered
with its default values, and the chart's copies of the collector config and of the Ray Serve
config are their sources' (deploy/helm/render.py writes all of them).

tests/test_deploy.py checks what the rendered manifests mean (selectors, probes, commands, TLS)
for the same values files; tests/test_deploy_argo.py the Rollout's analyses.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.helm import render
from serving.config import load_config
from serving.serve_config import serve_config
from tests.k8s_schema_support import (
    CHART,
    DEPLOY,
    ENVIRONMENTS,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    SCHEMAS,
    VENDORED_CRDS,
    crd_errors,
    documents,
    has_crd,
    helm,
    kubernetes_errors,
    schema_errors,
    template,
    values_args,
)


def _name(document: dict[str, Any]) -> str:
    return f"{document['kind']}/{document['metadata']['name']}"


def _one(environment: str, kind: str, name: str) -> dict[str, Any]:
    [document] = [
        d for d in documents(environment) if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    return document


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_helm_lint_passes(environment: str) -> None:
    result = helm(
        "lint",
        str(CHART),
        "--strict",
        "--namespace",
        NAMESPACE,
        "--kube-version",
        f"{KUBERNETES_VERSIONS[0]}.0",
        *values_args(environment),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_every_rendered_document_validates(environment: str, version: str) -> None:
    rendered = documents(environment)
    errors = {_name(d): schema_errors(d, version) for d in rendered}
    assert {name: e for name, e in errors.items() if e} == {}
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "ConfigMap", "Certificate"} <= kinds
    names = [_name(d) for d in rendered]
    assert len(names) == len(set(names)), "two documents of one kind share a name"


def test_each_environment_renders_what_it_says() -> None:
    """dev: one of each, no lane, no Rollout, its own CA; stage and prod: the lane, the
    Rollout, budgets for every replicated service; prod: three control-plane replicas."""
    kinds = {e: {d["kind"] for d in documents(e)} for e in ENVIRONMENTS}
    assert {
        "RayService",
        "Rollout",
        "AnalysisTemplate",
        "Issuer",
        "PodDisruptionBudget",
    }.isdisjoint(kinds["dev"] - {"Issuer"})
    assert "Issuer" in kinds["dev"]
    for environment in ("default", "stage", "prod"):
        assert {"RayService", "NetworkPolicy", "Rollout", "HorizontalPodAutoscaler"} <= kinds[
            environment
        ]
        assert "Issuer" not in kinds[environment], "outside dev the issuer is the operator's"
    for environment in ("stage", "prod"):
        budgets = {
            d["metadata"]["name"]
            for d in documents(environment)
            if d["kind"] == "PodDisruptionBudget"
        }
        replicated = {
            d["metadata"]["name"] for d in documents(environment) if d["kind"] == "Deployment"
        }
        assert budgets == replicated
    assert _one("prod", "Deployment", "maestro-control-plane")["spec"]["replicas"] == 3
    assert _one("dev", "Deployment", "maestro-control-plane")["spec"]["replicas"] == 1


def test_the_strict_checks_refuse_what_the_api_server_would_drop_or_reject() -> None:
    deployment = copy.deepcopy(_one("default", "Deployment", "maestro-control-plane"))
    deployment["spec"]["replica"] = 2
    assert any("replica" in e for e in kubernetes_errors(deployment, KUBERNETES_VERSIONS[0]))
    probe = copy.deepcopy(_one("default", "Deployment", "maestro-data-plane"))
    container = probe["spec"]["template"]["spec"]["containers"][0]
    del container["readinessProbe"]["httpGet"]["port"]
    assert any("'port' is a required" in e for e in kubernetes_errors(probe, "1.37"))

    ray_service = copy.deepcopy(_one("default", "RayService", "maestro-serving"))
    cluster = ray_service["spec"]["rayClusterConfig"]
    cluster["authOption"] = cluster.pop("authOptions")
    assert any("authOption" in e for e in crd_errors(ray_service))
    ray_service = copy.deepcopy(_one("default", "RayService", "maestro-serving"))
    ray_service["spec"]["rayClusterDeletionDelaySeconds"] = "5m"
    assert any("rayClusterDeletionDelaySeconds" in e for e in crd_errors(ray_service))

    certificate = copy.deepcopy(_one("default", "Certificate", "maestro-control-plane"))
    certificate["spec"]["usages"].append("server authentication")
    assert crd_errors(certificate)
    issuer = copy.deepcopy(_one("dev", "Issuer", "maestro-ca"))
    issuer["spec"]["ca"]["secret"] = issuer["spec"]["ca"].pop("secretName")
    assert crd_errors(issuer)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert not has_crd(unknown)
    assert schema_errors(unknown, KUBERNETES_VERSIONS[0])


def test_the_plain_manifests_are_the_chart_rendered_with_its_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """deploy/k8s/*.yaml, deploy/serving/vllm-rayserve.yaml and deploy/rollouts/agent-exec.yaml
    are generated, and so are the chart's copies of the collector and serve configs:
    `python deploy/helm/render.py` rewrites them all."""
    status = render.main(["--check"])
    out, err = capsys.readouterr()
    assert status == 0, out + err


def test_the_chart_collector_config_is_deploy_observabilitys() -> None:
    """One collector config: the chart's file is a link to deploy/observability's, which Helm
    follows when it renders or packages the chart."""
    link = CHART / "files" / "otel-collector.yaml"
    assert link.is_symlink()
    assert link.resolve() == (DEPLOY / "observability" / "otel-collector.yaml").resolve()


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_the_rendered_configs_are_the_chart_files_unchanged(environment: str) -> None:
    """What the ConfigMap and the RayService carry is the files' text, byte for byte."""
    files = CHART / "files"
    collector = _one(environment, "ConfigMap", "otel-collector")["data"]
    assert collector["otel-collector.yaml"] == (files / "otel-collector.yaml").read_text()
    assert collector["tls.yaml"] == (files / "otel-collector-tls.yaml").read_text()
    if environment != "dev":
        ray_service = _one(environment, "RayService", "maestro-serving")
        assert ray_service["spec"]["serveConfigV2"] == (files / "serve-config.yaml").read_text()


def test_the_chart_serve_config_is_generated_from_the_lane_config() -> None:
    text = (CHART / "files" / "serve-config.yaml").read_text()
    generated = serve_config(load_config(DEPLOY / "serving" / "lanes.yaml"))
    assert text == yaml.safe_dump(generated, sort_keys=False)


@pytest.mark.parametrize(
    "name", sorted(n for n in VENDORED_CRDS if not n.startswith("argo-rollouts/"))
)
def test_vendored_crds_are_the_release_files(name: str) -> None:
    """(Argo Rollouts' are checked in tests/test_deploy_argo.py.)"""
    digest = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
    assert digest == VENDORED_CRDS[name]
    assert digest in (SCHEMAS / Path(name).parent / "README.md").read_text()


def _images(environment: str) -> set[str]:
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str):
                found.add(node["image"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(documents(environment))
    return found


def test_prod_pins_every_image_and_refuses_an_unpinned_one() -> None:
    for image in _images("prod"):
        name = image.split("@")[0].rsplit("/", 1)[-1]
        digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
        assert digest or (":" in name and not name.endswith(":latest")), image
    for image in ("ghcr.io/litellm/router:latest", "ghcr.io/litellm/router", "localhost:5000/r"):
        result = template(*values_args("prod"), "--set", f"router.image={image}")
        assert result.returncode != 0
        assert "router.image" in result.stderr
    by_digest = "ghcr.io/litellm/router@sha256:" + "0" * 64
    assert template(*values_args("prod"), "--set", f"router.image={by_digest}").returncode == 0
    # Outside prod the seed's `latest` renders.
    assert "ghcr.io/litellm/router:latest" in _images("default")


def test_the_values_schema_refuses_unknown_and_mistyped_values() -> None:
    for setting in ("controlPlane.replica=3", "tls.enabled=false", "controlPlane.replicas=two"):
        result = template("--set", setting)
        assert result.returncode != 0, setting
        assert "values don't meet the specifications of the schema" in result.stderr, setting


def test_certificates_can_come_from_elsewhere_but_tls_stays() -> None:
    """tls.certificates off: no Certificate is rendered, and every pod still mounts and serves
    its TLS Secret (made by the operator). The self-signed CA needs the chart's certificates."""
    result = template("--set", "tls.certificates=false")
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert not [d for d in rendered if d["kind"] == "Certificate"]
    default = {_name(d) for d in documents("default") if d["kind"] != "Certificate"}
    assert {_name(d) for d in rendered} == default
    result = template("--set", "tls.certificates=false", "--set", "tls.selfSignedCA=true")
    assert result.returncode != 0
    assert "tls.selfSignedCA" in result.stderr


def test_dev_makes_its_own_ca_and_issues_everything_from_it() -> None:
    rendered = documents("dev")
    issuers = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "Issuer"}
    certificates = [d["spec"] for d in rendered if d["kind"] == "Certificate"]
    [ca] = [c for c in certificates if c.get("isCA")]
    assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
    assert issuers["maestro-ca"] == {"ca": {"secretName": ca["secretName"]}}
    for certificate in certificates:
        if certificate is not ca:
            assert certificate["issuerRef"] == {"name": "maestro-ca", "kind": "Issuer"}
            assert "client auth" in certificate["usages"]


def test_the_chart_admits_the_oldest_kubernetes_it_is_validated_for_and_no_older() -> None:
    assert template(kube_version=KUBERNETES_VERSIONS[0]).returncode == 0
    major, minor = KUBERNETES_VERSIONS[0].split(".")
    older = template(kube_version=f"{major}.{int(minor) - 1}")
    assert older.returncode != 0
    assert "kubeVersion" in older.stderr


@pytest.mark.parametrize("environment", sorted(ENVIRONMENTS))
def test_every_maestro_pod_exports_its_metrics(environment: str) -> None:
    """The control plane serves :9464 (mutual TLS); data planes and agent executors, which
    serve no metrics port, push theirs to the collector over OTLP."""
    workloads = [
        d
        for d in documents(environment)
        if d["kind"] in {"Deployment", "Rollout"}
        and d["metadata"]["name"] in {"maestro-data-plane", "maestro-agent-exec"}
    ]
    assert workloads
    for workload in workloads:
        [container] = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MAESTRO_TELEMETRY__OTLP_METRICS"] == "true", _name(workload)
        assert env["MAESTRO_TELEMETRY__OTLP_ENDPOINT"].startswith("https://")
    [config_map] = [
        d
        for d in documents(environment)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "maestro-control-plane"
    ]
    assert yaml.safe_load(config_map["data"]["maestro.yaml"])["telemetry"]["metrics_port"] == 9464
