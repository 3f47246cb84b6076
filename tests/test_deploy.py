"""deploy/k8s manifests stay consistent with the code: the embedded config validates, selectors
match their pods, probes name served ports and services, and the commands exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from maestro.control_plane.cli.app import app
from maestro.control_plane.config import MaestroConfig

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
SERVED = {"", "maestro.v1.RouteService", "maestro.v1.InferenceService"}


def _documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind]


def test_control_plane_config_map_is_a_valid_maestro_config() -> None:
    [config_map] = _of_kind("ConfigMap")
    config = MaestroConfig.model_validate(yaml.safe_load(config_map["data"]["maestro.yaml"]))
    assert config.server.host == "0.0.0.0"
    assert config.data_plane.http_host == "0.0.0.0"


@pytest.mark.parametrize("name", ["maestro-control-plane", "maestro-data-plane"])
def test_deployment_selectors_services_and_probes_agree(name: str) -> None:
    [deployment] = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    [service] = [s for s in _of_kind("Service") if s["metadata"]["name"] == name]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    readiness = container["readinessProbe"]["grpc"]
    assert readiness["port"] in ports.values()
    assert readiness.get("service", "") in SERVED


@pytest.mark.parametrize("command", ["up", "data-plane"])
def test_container_commands_exist(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
