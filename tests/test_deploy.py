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
from maestro.clients import probe
from maestro.core.settings import is_loopback
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


def _control_plane_config() -> MaestroConfig:
    [config_map] = _of_kind("ConfigMap")
    return MaestroConfig.model_validate(yaml.safe_load(config_map["data"]["maestro.yaml"]))


def _container(name: str) -> dict[str, Any]:
    [deployment] = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    container: dict[str, Any]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _tls_secret(name: str) -> tuple[str, str]:
    """(mount path, Secret name) of the TLS volume of Deployment `name`."""
    [deployment] = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == name]
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
    [mount] = [m for m in _container(name)["volumeMounts"] if m["name"] == "tls"]
    assert mount["readOnly"] is True
    return mount["mountPath"], volume["secret"]["secretName"]


def _data_plane_config(monkeypatch: pytest.MonkeyPatch) -> MaestroConfig:
    """The settings `maestro data-plane` resolves from the manifest's args and env, through the
    real command (secrets and the TLS files, absent here, stubbed)."""
    container = _container("maestro-data-plane")
    env = {e["name"]: e.get("value", f"from-{e['name'].lower()}") for e in container["env"]}
    seen: list[MaestroConfig] = []
    monkeypatch.setattr("maestro.app.serve.serve", lambda config, role: seen.append(config))
    monkeypatch.setattr(MaestroConfig, "unreadable_files", lambda self: [])
    result = CliRunner().invoke(app, container["args"], env=env)
    assert result.exit_code == 0, result.output
    return seen[0]


def test_control_plane_config_map_is_a_valid_maestro_config() -> None:
    config = _control_plane_config()
    assert config.server.host == "0.0.0.0"
    assert config.data_plane.http_host == "0.0.0.0"


def test_no_listener_beyond_loopback_serves_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC and the HTTP ingress (which shares `server.tls`) serve TLS on every non-loopback
    address; the Prometheus endpoint serves only over mutual TLS there."""
    for config in (_control_plane_config(), _data_plane_config(monkeypatch)):
        assert is_loopback(config.server.host) or config.server.tls.enabled
        assert config.data_plane.http_port is None or (
            is_loopback(config.data_plane.http_host) or config.server.tls.enabled
        )
        telemetry = config.telemetry
        assert telemetry.metrics_port is None or (
            is_loopback(telemetry.metrics_host) or telemetry.metrics_tls.client_ca_file is not None
        )
    assert _control_plane_config().telemetry.metrics_port is not None


def test_tls_files_are_the_cert_manager_secrets_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    issued = {c["spec"]["secretName"]: c for c in _of_kind("Certificate")}
    control_mount, control_secret = _tls_secret("maestro-control-plane")
    data_mount, data_secret = _tls_secret("maestro-data-plane")
    control, data = _control_plane_config(), _data_plane_config(monkeypatch)
    assert {control_secret, data_secret} <= set(issued)
    for mount, tls in (
        (control_mount, control.server.tls),
        (control_mount, control.telemetry.metrics_tls),
        (data_mount, data.server.tls),
    ):
        assert tls.cert_file == Path(mount) / "tls.crt"
        assert tls.key_file == Path(mount) / "tls.key"
    assert control.server.tls.client_ca_file == Path(control_mount) / "ca.crt"
    assert data.data_plane.control_plane_tls.ca_file == Path(data_mount) / "ca.crt"


def test_data_planes_follow_the_control_plane_over_mutual_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _data_plane_config(monkeypatch)
    mount, secret = _tls_secret("maestro-data-plane")
    certificates = {c["spec"]["secretName"]: c["spec"] for c in _of_kind("Certificate")}
    client_tls = data.data_plane.control_plane_tls
    assert client_tls.cert_file == Path(mount) / "tls.crt"
    assert client_tls.key_file == Path(mount) / "tls.key"
    assert "client auth" in certificates[secret]["usages"]
    # The control plane asks for that certificate, and its own names the host dialled.
    assert _control_plane_config().server.tls.client_ca_file is not None
    host = (data.data_plane.control_plane_target or "").rsplit(":", 1)[0]
    _, control_secret = _tls_secret("maestro-control-plane")
    assert host in certificates[control_secret]["dnsNames"]


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
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "exec" in probe:
            options = _probe_args(probe)
            assert int(options["port"]) in ports.values()
            assert options.get("service", "") in SERVED
        else:
            [target] = [probe[a] for a in ("httpGet", "tcpSocket") if a in probe]
            assert ports.get(target["port"], target["port"]) in ports.values()


def _http_port(name: str) -> int:
    port: int = {p["name"]: p["containerPort"] for p in _container(name)["ports"]}["http"]
    return port


def test_data_planes_are_probed_on_the_ingress_readyz_and_healthz_over_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/readyz is 503 until the first snapshot and while draining; /healthz answers whenever
    the process does. The ingress serves TLS there without asking for a client certificate, so
    kubelet's httpGet (which presents none and checks no certificate) reaches it."""
    container = _container("maestro-data-plane")
    config = _data_plane_config(monkeypatch)
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert config.data_plane.http_port == _http_port("maestro-data-plane")
    assert config.server.tls.enabled
    assert config.server.tls.client_ca_file is None


def test_the_control_plane_is_ready_once_route_service_serves_and_live_on_its_grpc_port() -> None:
    """Its ingress asks for a client certificate, which kubelet's httpGet cannot present: the
    readiness probe checks RouteService's health (NOT_SERVING until the routing files apply
    and while draining) from inside the pod; liveness is the gRPC port accepting."""
    container = _container("maestro-control-plane")
    config = _control_plane_config()
    assert config.server.tls.client_ca_file is not None
    options = _probe_args(container["readinessProbe"])
    assert options["service"] == "maestro.v1.RouteService"
    assert int(options["port"]) == config.server.port
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == config.server.port
    assert config.data_plane.http_port == _http_port("maestro-control-plane")


def _probe_args(probe: dict[str, Any]) -> dict[str, str]:
    """The options of an exec probe running `python -m maestro.clients.probe`."""
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-m", "maestro.clients.probe"]
    return dict(arg.removeprefix("--").split("=", 1) for arg in command[3:])


@pytest.mark.parametrize("name", ["maestro-control-plane"])
def test_readiness_probes_speak_tls_with_the_mounted_files(name: str) -> None:
    """kubelet's own gRPC probe is plaintext only, so the probe runs in the pod and dials TLS,
    checking the certificate against the name it was issued for."""
    mount, secret = _tls_secret(name)
    [certificate] = [c for c in _of_kind("Certificate") if c["spec"]["secretName"] == secret]
    command = _container(name)["readinessProbe"]["exec"]["command"]
    options = probe.parse_args(command[3:])  # the probe itself accepts what the manifest says
    assert options.ca_file == Path(mount) / "ca.crt"
    assert options.server_name in certificate["spec"]["dnsNames"]
    assert options.cert_file in (None, Path(mount) / "tls.crt")


@pytest.mark.parametrize("command", ["up", "data-plane"])
def test_container_commands_exist(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _serving_documents(kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(SERVING.read_text()) if d and d["kind"] == kind]


def _ray_service() -> dict[str, Any]:
    ray_service: dict[str, Any]
    [ray_service] = _serving_documents("RayService")
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


def test_ray_dashboard_needs_a_token_and_only_the_operator_reaches_it() -> None:
    """KubeRay deploys serveConfigV2 through the dashboard, so it stays on: protected by Ray's
    token authentication and a NetworkPolicy instead of bound to every address unguarded."""
    cluster = _ray_service()["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host") != "0.0.0.0"
    [policy] = _serving_documents("NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    [selected] = spec["podSelector"]["matchExpressions"]
    assert set(selected["values"]) == {"serving-head", "serving-gpu"}
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in spec["ingress"]:
        assert rule["from"], "every rule names who may connect"
        for port in rule.get("ports", [{"port": "any"}]):
            by_port.setdefault(port["port"], []).extend(rule["from"])
    [operator] = by_port[8265]
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    [maestro] = by_port[8000]
    [components] = maestro["podSelector"]["matchExpressions"]
    assert set(components["values"]) == {"control-plane", "data-plane"}
