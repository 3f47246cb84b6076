"""deploy/k8s manifests stay consistent with the code: the embedded config validates, selectors
match their pods, probes name served ports and services, and the commands exist. The serving
lane's RayService (deploy/serving) names the lane's import paths and routes, schedules replicas on
GPU workers, and holds the Ray Serve config generated from deploy/serving/lanes.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.app.config import MaestroConfig
from serving.config import load_config
from serving.serve_config import serve_config

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
SERVING = K8S.parent / "serving" / "vllm-rayserve.yaml"
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


def test_control_plane_runs_replicas_on_postgres_with_the_dsn_from_a_secret() -> None:
    [config_map] = _of_kind("ConfigMap")
    config = MaestroConfig.model_validate(yaml.safe_load(config_map["data"]["maestro.yaml"]))
    [deployment] = [
        d for d in _of_kind("Deployment") if d["metadata"]["name"] == "maestro-control-plane"
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert deployment["spec"]["replicas"] >= 2
    assert config.store.backend == "postgres"
    assert env["MAESTRO_STORE__POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]["name"]
    assert "fieldRef" in env["MAESTRO_GRAPH__REPLICA_ID"]["valueFrom"]


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


def _ray_service() -> dict[str, Any]:
    ray_service: dict[str, Any]
    [ray_service] = [d for d in yaml.safe_load_all(SERVING.read_text()) if d]
    assert ray_service["apiVersion"] == "ray.io/v1"
    assert ray_service["kind"] == "RayService"
    return ray_service


def _serve_applications() -> dict[str, dict[str, Any]]:
    serve_config = _ray_service()["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "KubeRay takes serveConfigV2 as a YAML string"
    return {app["name"]: app for app in yaml.safe_load(serve_config)["applications"]}


def test_ray_service_has_the_lane_and_the_status_app() -> None:
    apps = _serve_applications()
    assert set(apps) == {"llama-3-1-8b", "lane-status"}
    lane, status = apps["llama-3-1-8b"], apps["lane-status"]
    assert lane["import_path"] == "serving.app:build"
    assert lane["route_prefix"] == f"/{lane['args']['lane']['name']}" == "/llama-3-1-8b"
    assert status["import_path"] == "serving.status:deployment"
    assert status["route_prefix"] == "/lane-status"


def test_ray_service_serve_config_is_the_lane_config_generated() -> None:
    generated = serve_config(load_config(SERVING.parent / "lanes.yaml"))
    assert yaml.safe_load(_ray_service()["spec"]["serveConfigV2"]) == generated


def test_lane_args_hold_only_what_replicas_are_built_from() -> None:
    """Ray Serve hashes an application's args into its code version: deployment options kept
    out of the args change running replicas instead of replacing them."""
    lane = _serve_applications()["llama-3-1-8b"]
    assert set(lane["args"]["lane"]) == {"name", "model", "served_model_name", "version", "engine"}
    [deployment] = lane["deployments"]
    assert deployment["name"] == "VllmGateway"
    # The lane sheds by itself (serving/admission.py); Ray Serve only lets every request in.
    assert deployment["max_queued_requests"] == -1
    assert deployment["max_ongoing_requests"] > deployment["user_config"]["max_ongoing_requests"]
    assert (
        deployment["ray_actor_options"]["num_gpus"]
        == (lane["args"]["lane"]["engine"]["tensor_parallel_size"])
    )


def test_ray_cluster_schedules_replicas_on_gpu_workers() -> None:
    spec = _ray_service()["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    [head_container] = head["template"]["spec"]["containers"]
    head_ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert head_ports["serve"] == 8000
    assert head_ports["dashboard"] == 8265
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})

    [workers] = cluster["workerGroupSpecs"]
    pod = workers["template"]["spec"]
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"]
    )
    assert pod["nodeSelector"]
    [worker] = pod["containers"]
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    lane_app = _serve_applications()["llama-3-1-8b"]
    [deployment] = lane_app["deployments"]
    assert gpus >= deployment["ray_actor_options"]["num_gpus"]
    max_replicas = deployment["autoscaling_config"]["max_replicas"]
    assert workers["maxReplicas"] * gpus >= max_replicas
