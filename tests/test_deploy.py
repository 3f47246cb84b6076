"""The Kubernetes manifests stay consistent with the code, both the committed plain manifests
(deploy/k8s, deploy/serving/vllm-rayserve.yaml, deploy/rollouts/agent-exec.yaml: the Helm chart
deploy/helm/maestro rendered with its default values) and the chart rendered with each
environment's values (dev, stage, prod). The embedded config validates, selectors match their
pods, probes name served ports and services, the commands exist, and every listener beyond
loopback serves TLS from a mounted cert-manager Secret. The serving lane's RayService names the
lane's import paths and routes, schedules replicas on GPU workers, and holds the Ray Serve config
generated from deploy/serving/lanes.yaml.

tests/test_deploy_helm.py validates the same documents against the Kubernetes and CRD schemas.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.app.config import MaestroConfig
from maestro.clients import probe
from maestro.core.settings import is_loopback
from serving.config import load_config
from serving.serve_config import serve_config
from tests.k8s_schema_support import CHART, DEPLOY, documents

K8S = DEPLOY / "k8s"
SERVING = DEPLOY / "serving" / "vllm-rayserve.yaml"
ROLLOUT = DEPLOY / "rollouts" / "agent-exec.yaml"
SERVED = {"", "maestro.v1.RouteService", "maestro.v1.InferenceService"}
# "plain": the committed manifests; the others: the chart with values-<name>.yaml.
SOURCES = ("plain", "dev", "stage", "prod")
WORKLOADS = ("Deployment", "Rollout")
ROUTER_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())["router"]


@functools.cache
def _plain_documents() -> tuple[dict[str, Any], ...]:
    return tuple(
        document
        for path in [*sorted(K8S.glob("*.yaml")), SERVING, ROLLOUT]
        for document in yaml.safe_load_all(path.read_text())
        if document
    )


@dataclass(frozen=True)
class Manifests:
    source: str
    documents: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) <= 1
        return found[0] if found else None

    def one(self, kind: str, name: str) -> dict[str, Any]:
        document = self.find(kind, name)
        assert document is not None, f"no {kind} {name} in {self.source}"
        return document

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] in WORKLOADS]

    def workload(self, name: str) -> dict[str, Any]:
        [workload] = [w for w in self.workloads() if w["metadata"]["name"] == name]
        return workload

    def container(self, name: str) -> dict[str, Any]:
        container: dict[str, Any]
        [container] = self.workload(name)["spec"]["template"]["spec"]["containers"]
        return container

    def tls_secret(self, name: str) -> tuple[str, str]:
        """(mount path, Secret name) of the TLS volume of workload `name`."""
        pod = self.workload(name)["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
        [mount] = [m for m in self.container(name)["volumeMounts"] if m["name"] == "tls"]
        assert mount["readOnly"] is True
        return mount["mountPath"], volume["secret"]["secretName"]

    def certificates(self) -> dict[str, dict[str, Any]]:
        """Certificate specs by the Secret they are issued into."""
        return {c["spec"]["secretName"]: c["spec"] for c in self.of_kind("Certificate")}

    def control_plane_config(self) -> MaestroConfig:
        config_map = self.one("ConfigMap", "maestro-control-plane")
        return MaestroConfig.model_validate(yaml.safe_load(config_map["data"]["maestro.yaml"]))

    def data_plane_config(self, name: str, monkeypatch: pytest.MonkeyPatch) -> MaestroConfig:
        """The settings `maestro data-plane` resolves from workload `name`'s args and env,
        through the real command (secrets and the TLS files, absent here, stubbed)."""
        container = self.container(name)
        env = {e["name"]: e.get("value", f"from-{e['name'].lower()}") for e in container["env"]}
        seen: list[MaestroConfig] = []
        monkeypatch.setattr("maestro.app.serve.serve", lambda config, role: seen.append(config))
        monkeypatch.setattr(MaestroConfig, "unreadable_files", lambda self: [])
        result = CliRunner().invoke(app, container["args"], env=env)
        assert result.exit_code == 0, result.output
        return seen[-1]

    def data_planes(self) -> list[str]:
        """Workloads running `maestro data-plane`: the data planes and the agent executors."""
        return [
            w["metadata"]["name"]
            for w in self.workloads()
            if self.container(w["metadata"]["name"]).get("args", [""])[0] == "data-plane"
        ]


@pytest.fixture(params=SOURCES)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    source: str = request.param
    if source == "plain":
        return Manifests(source, _plain_documents())
    return Manifests(source, tuple(documents(source)))


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounted_at(container: dict[str, Any], pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume whose mount holds `path`."""
    [mount] = [m for m in container["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    volume: dict[str, Any]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_control_plane_config_map_is_a_valid_maestro_config(manifests: Manifests) -> None:
    config = manifests.control_plane_config()
    assert config.server.host == "0.0.0.0"
    assert config.data_plane.http_host == "0.0.0.0"


def test_no_listener_beyond_loopback_serves_plaintext(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC and the HTTP ingress (which shares `server.tls`) serve TLS on every non-loopback
    address; the Prometheus endpoint serves only over mutual TLS there. The collector's and the
    router's listeners are checked below."""
    control = manifests.control_plane_config()
    configs = [control] + [
        manifests.data_plane_config(name, monkeypatch) for name in manifests.data_planes()
    ]
    assert len(configs) >= 2
    for config in configs:
        assert is_loopback(config.server.host) or config.server.tls.enabled
        assert config.data_plane.http_port is None or (
            is_loopback(config.data_plane.http_host) or config.server.tls.enabled
        )
        telemetry = config.telemetry
        assert telemetry.metrics_port is None or (
            is_loopback(telemetry.metrics_host) or telemetry.metrics_tls.client_ca_file is not None
        )
    assert control.telemetry.metrics_port is not None


def test_tls_files_are_the_cert_manager_secrets_mounted(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = manifests.certificates()
    control_mount, control_secret = manifests.tls_secret("maestro-control-plane")
    control = manifests.control_plane_config()
    checks = [
        (control_mount, control.server.tls),
        (control_mount, control.telemetry.metrics_tls),
    ]
    for name in manifests.data_planes():
        mount, secret = manifests.tls_secret(name)
        assert secret in issued, secret
        config = manifests.data_plane_config(name, monkeypatch)
        checks.append((mount, config.server.tls))
        assert config.data_plane.control_plane_tls.ca_file == Path(mount) / "ca.crt"
    assert control_secret in issued
    for mount, tls in checks:
        assert tls.cert_file == Path(mount) / "tls.crt"
        assert tls.key_file == Path(mount) / "tls.key"
    assert control.server.tls.client_ca_file == Path(control_mount) / "ca.crt"


def test_every_tls_volume_is_issued_by_the_one_ca(manifests: Manifests) -> None:
    """Each workload's TLS Secret comes from a Certificate here, every Certificate (but a dev CA
    of its own) from the one issuer, and each names its workload's Service."""
    certificates = manifests.certificates()
    issuers = {i["metadata"]["name"]: i["spec"] for i in manifests.of_kind("Issuer")}
    leaf_issuers = set()
    for workload in manifests.workloads():
        name = workload["metadata"]["name"]
        _, secret = manifests.tls_secret(name)
        certificate = certificates[secret]
        leaf_issuers.add((certificate["issuerRef"]["name"], certificate["issuerRef"]["kind"]))
        assert "client auth" in certificate["usages"]
        assert "server auth" in certificate["usages"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        [service] = [
            s
            for s in manifests.of_kind("Service")
            if s["spec"]["selector"].items() <= labels.items()
        ]
        assert service["metadata"]["name"] in certificate["dnsNames"]
    assert leaf_issuers == {("maestro-ca", "Issuer")}
    if issuers:  # dev: the chart's own CA, itself issued by a self-signed Issuer
        assert issuers["maestro-ca"]["ca"]["secretName"] in certificates


def test_data_planes_follow_the_control_plane_over_mutual_tls(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificates = manifests.certificates()
    _, control_secret = manifests.tls_secret("maestro-control-plane")
    # The control plane asks for a certificate, and its own names the host dialled.
    assert manifests.control_plane_config().server.tls.client_ca_file is not None
    for name in manifests.data_planes():
        data = manifests.data_plane_config(name, monkeypatch)
        mount, secret = manifests.tls_secret(name)
        client_tls = data.data_plane.control_plane_tls
        assert client_tls.cert_file == Path(mount) / "tls.crt"
        assert client_tls.key_file == Path(mount) / "tls.key"
        assert "client auth" in certificates[secret]["usages"]
        host = (data.data_plane.control_plane_target or "").rsplit(":", 1)[0]
        assert host in certificates[control_secret]["dnsNames"]


def test_control_plane_runs_replicas_on_postgres_with_the_dsn_from_a_secret(
    manifests: Manifests,
) -> None:
    """Replicas on PostgreSQL everywhere; two or more, kept through a drain by a budget, except
    dev's one (with no budget, which would block every drain)."""
    config = manifests.control_plane_config()
    deployment = manifests.one("Deployment", "maestro-control-plane")
    env = _env(manifests.container("maestro-control-plane"))
    assert config.store.backend == "postgres"
    assert env["MAESTRO_STORE__POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]["name"]
    assert "fieldRef" in env["MAESTRO_GRAPH__REPLICA_ID"]["valueFrom"]
    budget = manifests.find("PodDisruptionBudget", "maestro-control-plane")
    if manifests.source == "dev":
        assert deployment["spec"]["replicas"] == 1
        assert budget is None
    else:
        assert deployment["spec"]["replicas"] >= 2
        assert budget is not None


def _replicas(manifests: Manifests, workload: dict[str, Any]) -> int:
    """The fewest replicas a workload runs: its HPA's minimum where one scales it."""
    for hpa in manifests.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]:
            assert "replicas" not in workload["spec"], "the HPA owns the count"
            minimum: int = hpa["spec"]["minReplicas"]
            return minimum
    replicas: int = workload["spec"]["replicas"]
    return replicas


def test_workload_selectors_services_budgets_and_probes_agree(manifests: Manifests) -> None:
    """Every Deployment and Rollout: its selector matches its pods, each Service selecting them
    targets ports they serve, each probe names a served port (or, exec, a served gRPC port and
    health service), and a budget over them leaves a pod to evict."""
    selected_services = set()
    for workload in manifests.workloads():
        name = workload["metadata"]["name"]
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        container = manifests.container(name)
        ports = _ports(container)
        for service in manifests.of_kind("Service"):
            if service["spec"]["selector"].items() <= pod_labels.items():
                selected_services.add(service["metadata"]["name"])
                assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
        for kind in ("readinessProbe", "livenessProbe"):
            check = container[kind]
            if "exec" in check:
                options = _probe_args(check)
                assert int(options["port"]) in ports.values()
                assert options.get("service", "") in SERVED
            else:
                [target] = [check[a] for a in ("httpGet", "tcpSocket", "grpc") if a in check]
                assert ports.get(target["port"], target["port"]) in ports.values()
        for budget in manifests.of_kind("PodDisruptionBudget"):
            if budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items():
                assert budget["spec"]["minAvailable"] < _replicas(manifests, workload), name
    assert selected_services == {s["metadata"]["name"] for s in manifests.of_kind("Service")}
    for budget in manifests.of_kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in manifests.workloads()
        )


def _http_port(manifests: Manifests, name: str) -> int:
    return _ports(manifests.container(name))["http"]


def test_data_planes_are_probed_on_the_ingress_readyz_and_healthz_over_https(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz is 503 until the first snapshot and while draining; /healthz answers whenever
    the process does. The ingress serves TLS there without asking for a client certificate, so
    kubelet's httpGet (which presents none and checks no certificate) reaches it."""
    for name in manifests.data_planes():
        container = manifests.container(name)
        config = manifests.data_plane_config(name, monkeypatch)
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        assert readiness["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}
        assert liveness["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
        assert config.data_plane.http_port == _http_port(manifests, name)
        assert config.server.tls.enabled
        assert config.server.tls.client_ca_file is None


def test_the_control_plane_is_ready_once_route_service_serves_and_live_on_its_grpc_port(
    manifests: Manifests,
) -> None:
    """Its ingress asks for a client certificate, which kubelet's httpGet cannot present: the
    readiness probe checks RouteService's health (NOT_SERVING until the routing files apply
    and while draining) from inside the pod; liveness is the gRPC port accepting."""
    container = manifests.container("maestro-control-plane")
    config = manifests.control_plane_config()
    assert config.server.tls.client_ca_file is not None
    options = _probe_args(container["readinessProbe"])
    assert options["service"] == "maestro.v1.RouteService"
    assert int(options["port"]) == config.server.port
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert _ports(container)["grpc"] == config.server.port
    assert config.data_plane.http_port == _http_port(manifests, "maestro-control-plane")


def _probe_args(check: dict[str, Any]) -> dict[str, str]:
    """The options of an exec probe running `python -m maestro.clients.probe`."""
    command = check["exec"]["command"]
    assert command[:3] == ["python", "-m", "maestro.clients.probe"]
    return dict(arg.removeprefix("--").split("=", 1) for arg in command[3:])


def test_readiness_probes_speak_tls_with_the_mounted_files(manifests: Manifests) -> None:
    """kubelet's own gRPC probe is plaintext only, so the probe runs in the pod and dials TLS,
    checking the certificate against the name it was issued for."""
    name = "maestro-control-plane"
    mount, secret = manifests.tls_secret(name)
    certificate = manifests.certificates()[secret]
    command = manifests.container(name)["readinessProbe"]["exec"]["command"]
    options = probe.parse_args(command[3:])  # the probe itself accepts what the manifest says
    assert options.ca_file == Path(mount) / "ca.crt"
    assert options.server_name in certificate["dnsNames"]
    assert options.cert_file in (None, Path(mount) / "tls.crt")


def _all_manifests() -> list[Manifests]:
    return [Manifests("plain", _plain_documents())] + [
        Manifests(source, tuple(documents(source))) for source in SOURCES[1:]
    ]


def test_the_manifests_run_these_commands() -> None:
    commands = {
        manifests.container(workload["metadata"]["name"])["args"][0]
        for manifests in _all_manifests()
        for workload in manifests.workloads()
        if manifests.container(workload["metadata"]["name"])["name"] == "maestro"
    }
    assert commands == {"up", "data-plane"}


@pytest.mark.parametrize("command", ["up", "data-plane"])
def test_container_commands_exist(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


# The collector (deploy/observability's config, with the chart's TLS overlay) and the router.


def _merged(base: Any, over: Any) -> Any:
    """The collector's merge of its --config files: maps key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {
            key: _merged(base[key], over[key]) if key in base and key in over else value
            for key, value in (base | over).items()
        }
    return over


def _collector_config(manifests: Manifests) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the collector's merged config, its container)."""
    container = manifests.container("otel-collector")
    data = manifests.one("ConfigMap", "otel-collector")["data"]
    pod = manifests.workload("otel-collector")["spec"]["template"]["spec"]
    config: dict[str, Any] = {}
    for arg in container["args"]:
        path = arg.removeprefix("--config=")
        volume = _mounted_at(container, pod, path)
        assert volume["configMap"]["name"] == "otel-collector"
        config = _merged(config, yaml.safe_load(data[Path(path).name]))
    return config, container


def _listen_host(endpoint: str) -> str:
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return host or "0.0.0.0"  # ":8889" is every address


def test_the_collector_serves_tls_beyond_loopback(manifests: Manifests) -> None:
    """Every listener of the merged config (OTLP gRPC and HTTP, the Prometheus exporter, the
    health check) beyond loopback serves TLS from the mounted cert-manager Secret; Prometheus
    must present a client certificate, as for Maestro's metrics. The pod serves those ports,
    the Service targets them, and the probes hit the health check over HTTPS."""
    config, container = _collector_config(manifests)
    pod = manifests.workload("otel-collector")["spec"]["template"]["spec"]
    mount, secret = manifests.tls_secret("otel-collector")
    listeners = {
        **{f"otlp/{p}": s for p, s in config["receivers"]["otlp"]["protocols"].items()},
        "prometheus": config["exporters"]["prometheus"],
        "health_check": config["extensions"]["health_check"],
    }
    listened = set()
    for name, server in listeners.items():
        listened.add(int(server["endpoint"].rsplit(":", 1)[1]))
        if is_loopback(_listen_host(server["endpoint"])):
            continue
        tls = server.get("tls", {})
        assert tls.get("cert_file") == f"{mount}/tls.crt", name
        assert tls.get("key_file") == f"{mount}/tls.key", name
    assert config["exporters"]["prometheus"]["tls"]["client_ca_file"] == f"{mount}/ca.crt"
    assert _mounted_at(container, pod, f"{mount}/tls.crt")["secret"]["secretName"] == secret
    assert secret in manifests.certificates()
    assert "otel-collector" in manifests.certificates()[secret]["dnsNames"]
    ports = _ports(container)
    assert set(ports.values()) == listened
    health = int(listeners["health_check"]["endpoint"].rsplit(":", 1)[1])
    for kind in ("readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        assert get["scheme"] == "HTTPS"
        assert ports[get["port"]] == health
    assert {"traces", "metrics", "logs"} <= set(config["service"]["pipelines"])


def test_maestro_exports_to_the_collector_over_tls_and_checks_it(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OTLP endpoint of every Maestro process is the collector's Service over https, by a
    name its certificate carries, checked against the pod's mounted CA."""
    _, collector_secret = manifests.tls_secret("otel-collector")
    names = manifests.certificates()[collector_secret]["dnsNames"]
    configs = {"maestro-control-plane": manifests.control_plane_config()} | {
        name: manifests.data_plane_config(name, monkeypatch) for name in manifests.data_planes()
    }
    for name, config in configs.items():
        endpoint = urlsplit(config.telemetry.otlp_endpoint or "")
        assert endpoint.scheme == "https", name
        assert endpoint.hostname in names
        assert endpoint.port == _ports(manifests.container("otel-collector"))["otlp-grpc"]
        mount, _ = manifests.tls_secret(name)
        env = _env(manifests.container(name))
        assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"]["value"] == f"{mount}/ca.crt"


def test_the_router_is_the_seeds_and_serves_tls(manifests: Manifests) -> None:
    """Appendix A's router: a ClusterIP Service on 4000, the OTLP endpoint and LITELLM_CONFIG
    from the Secret litellm-config (config.yaml), mounted where LiteLLM reads its config; its
    port serves HTTPS from a cert-manager Secret, and LiteLLM's health routes are its probes."""
    service = manifests.one("Service", "litellm-router")
    container = manifests.container("litellm-router")
    pod = manifests.workload("litellm-router")["spec"]["template"]["spec"]
    env = _env(container)
    assert service["spec"]["type"] == ROUTER_VALUES["service"]["type"] == "ClusterIP"
    [port] = service["spec"]["ports"]
    assert port["port"] == ROUTER_VALUES["service"]["port"] == 4000
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://otel-collector:4317"
    assert env["LITELLM_CONFIG"]["valueFrom"] == {
        "secretKeyRef": {"name": "litellm-config", "key": "config.yaml"}
    }
    config_volume = _mounted_at(container, pod, env["CONFIG_FILE_PATH"]["value"])
    assert config_volume["secret"]["secretName"] == "litellm-config"
    assert Path(env["CONFIG_FILE_PATH"]["value"]).name == "config.yaml"
    assert ipaddress.ip_address(env["HOST"]["value"]).is_unspecified
    served = int(env["PORT"]["value"])
    assert _ports(container)[port["targetPort"]] == served
    _, secret = manifests.tls_secret("litellm-router")
    for variable in ("SSL_CERTFILE_PATH", "SSL_KEYFILE_PATH", "OTEL_EXPORTER_OTLP_CERTIFICATE"):
        tls_volume = _mounted_at(container, pod, env[variable]["value"])
        assert tls_volume["secret"]["secretName"] == secret
    assert "litellm-router" in manifests.certificates()[secret]["dnsNames"]
    for kind in ("readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        assert get["scheme"] == "HTTPS"
        assert get["path"].startswith("/health/")
        assert _ports(container)[get["port"]] == served


# The serving lane (absent from dev).


def _ray_service(manifests: Manifests) -> dict[str, Any]:
    ray_service = manifests.find("RayService", "maestro-serving")
    if ray_service is None:
        assert manifests.source == "dev"
        pytest.skip("dev runs no lane")
    assert ray_service["apiVersion"] == "ray.io/v1"
    return ray_service


def _serve_applications(manifests: Manifests) -> dict[str, dict[str, Any]]:
    serve_config = _ray_service(manifests)["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "KubeRay takes serveConfigV2 as a YAML string"
    return {app["name"]: app for app in yaml.safe_load(serve_config)["applications"]}


def test_ray_service_has_the_lane_and_the_status_app(manifests: Manifests) -> None:
    apps = _serve_applications(manifests)
    assert set(apps) == {"llama-3-1-8b", "lane-status"}
    lane, status = apps["llama-3-1-8b"], apps["lane-status"]
    assert lane["import_path"] == "serving.app:build"
    assert lane["route_prefix"] == f"/{lane['args']['lane']['name']}" == "/llama-3-1-8b"
    assert status["import_path"] == "serving.status:deployment"
    assert status["route_prefix"] == "/lane-status"


def test_ray_service_serve_config_is_the_lane_config_generated(manifests: Manifests) -> None:
    generated = serve_config(load_config(SERVING.parent / "lanes.yaml"))
    assert yaml.safe_load(_ray_service(manifests)["spec"]["serveConfigV2"]) == generated


def test_lane_args_hold_only_what_replicas_are_built_from(manifests: Manifests) -> None:
    """Ray Serve hashes an application's args into its code version: deployment options kept
    out of the args change running replicas instead of replacing them."""
    lane = _serve_applications(manifests)["llama-3-1-8b"]
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


def test_ray_cluster_schedules_replicas_on_gpu_workers(manifests: Manifests) -> None:
    spec = _ray_service(manifests)["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    [head_container] = head["template"]["spec"]["containers"]
    head_ports = _ports(head_container)
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
    lane_app = _serve_applications(manifests)["llama-3-1-8b"]
    [deployment] = lane_app["deployments"]
    assert gpus >= deployment["ray_actor_options"]["num_gpus"]
    max_replicas = deployment["autoscaling_config"]["max_replicas"]
    assert workers["maxReplicas"] * gpus >= max_replicas
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]


def test_ray_dashboard_needs_a_token_and_only_the_operator_reaches_it(
    manifests: Manifests,
) -> None:
    """KubeRay deploys serveConfigV2 through the dashboard, so it stays on: protected by Ray's
    token authentication and a NetworkPolicy instead of bound to every address unguarded. The
    Serve port takes Maestro's own pods only: control plane, data planes, agent executors."""
    cluster = _ray_service(manifests)["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host") != "0.0.0.0"
    policy = manifests.one("NetworkPolicy", "maestro-serving")
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
    maestro_pods = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for w in manifests.workloads()
        if manifests.container(w["metadata"]["name"])["name"] == "maestro"
    }
    assert set(components["values"]) == maestro_pods >= {"control-plane", "data-plane"}
