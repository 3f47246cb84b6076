"""Transport security with a throwaway CA (tests/tls_support.py, made with the openssl CLI).

`maestro up` in a process, configured with `server.tls`: the `openai` client and the generated
client connect over TLS, and plaintext gRPC and plain HTTP are refused. In process: mutual TLS
(`client_ca_file`) refuses clients without a certificate the CA signed and serves those with
one, on the gRPC port and the HTTP ingress alike; a remote data plane follows its control plane
over mutual TLS; the Prometheus endpoint serves over mutual TLS; the readiness probe the
manifests run dials TLS; unreadable or incomplete TLS settings stop the config with the
setting's name.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
import yaml

from maestro.app.config import ConfigError, load_config
from maestro.app.data_plane_server import start_data_plane_server
from maestro.clients import AsyncMaestroClient, MaestroClient, MaestroRpcError, probe
from maestro.core.settings import TelemetryConfig, TlsConfig
from maestro.core.telemetry import build_telemetry, serve_metrics
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server, test_config
from tests.process_support import demo_config, maestro_process
from tests.tls_support import Pki, make_pki

PARENT = "projects/alpha"
ROUTES = "model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: openai/gpt-4o}\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _https(pki: Pki, client_cert: bool = False) -> openai.DefaultHttpxClient:
    """The `openai` client's HTTP client, trusting only the test CA; with `client_cert`,
    presenting the data plane's certificate (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return openai.DefaultHttpxClient(verify=context)


def _chat(base_url: str, api_key: str, http_client: openai.DefaultHttpxClient | None = None) -> int:
    client = openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=20, http_client=http_client
    )
    with client:
        answer = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert answer.usage is not None
    return answer.usage.completion_tokens


# -- maestro up, in a process -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsUp:
    address: str
    openai_base_url: str
    api_key: str


@pytest.fixture(scope="module")
def tls_up(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsUp]:
    """`maestro up` with the demo config plus `server.tls` (server certificate, no client CA)."""
    folder = tmp_path_factory.mktemp("up")
    path = demo_config(folder)
    config = yaml.safe_load(path.read_text())
    config["server"]["tls"] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    path.write_text(yaml.safe_dump(config))
    args = ["up", "--config", str(path), "--port", "0", "--http-port", "0"]
    env = {**os.environ, "MAESTRO_SERVER__GRACE_PERIOD_S": "1"}
    with maestro_process(args, folder, env) as (ready, _):
        api_key = (folder / ".maestro" / "demo-api-key").read_text().strip()
        yield TlsUp(ready["address"], ready["openai_base_url"], api_key)


@pytest.mark.slow
def test_openai_client_chats_over_https_with_maestro_up(tls_up: TlsUp, pki: Pki) -> None:
    assert tls_up.openai_base_url.startswith("https://")
    assert _chat(tls_up.openai_base_url, tls_up.api_key, _https(pki)) == 5


@pytest.mark.slow
def test_generated_client_calls_maestro_up_over_tls(tls_up: TlsUp, pki: Pki) -> None:
    with MaestroClient(tls_up.address, api_key=tls_up.api_key, ca_file=pki.ca) as client:
        project = client.get_project("projects/demo")
    assert project.name == "projects/demo"


@pytest.mark.slow
def test_plaintext_grpc_is_refused_by_maestro_up(tls_up: TlsUp) -> None:
    with (
        MaestroClient(tls_up.address, api_key=tls_up.api_key, timeout_s=5) as client,
        pytest.raises(MaestroRpcError) as refused,
    ):
        client.get_project("projects/demo")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_plain_http_to_the_tls_ingress_is_refused(tls_up: TlsUp) -> None:
    plain = tls_up.openai_base_url.replace("https://", "http://", 1)
    with pytest.raises(openai.APIConnectionError):
        _chat(plain, tls_up.api_key)


@pytest.mark.slow
def test_a_client_that_does_not_trust_the_ca_is_refused(tls_up: TlsUp, pki: Pki) -> None:
    """The client side of TLS checks too: a CA it was not given does not vouch for the
    server (here the rogue CA's certificate stands in for "some other CA")."""
    with (
        MaestroClient(tls_up.address, api_key=tls_up.api_key, ca_file=pki.rogue_cert) as client,
        pytest.raises(MaestroRpcError) as refused,
    ):
        client.get_project("projects/demo")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_the_readiness_probe_checks_health_over_tls(tls_up: TlsUp, pki: Pki) -> None:
    """`python -m maestro.clients.probe`, which the manifests run because kubelet's gRPC probe
    is plaintext only: SERVING over TLS exits 0; a plaintext dial exits 1."""
    host, port = tls_up.address.rsplit(":", 1)
    dial = ["--host", host, "--port", port, "--service", "maestro.v1.RouteService"]
    assert probe.main([*dial, "--ca-file", str(pki.ca), "--server-name", "localhost"]) == 0
    assert probe.main(dial) == 1


# -- mutual TLS, in process ---------------------------------------------------------------------


def _mtls(pki: Pki) -> dict[str, object]:
    return {
        "server.tls.cert_file": str(pki.server_cert),
        "server.tls.key_file": str(pki.server_key),
        "server.tls.client_ca_file": str(pki.ca),
        "data_plane.simulated_provider": True,
    }


@asynccontextmanager
async def _mtls_server(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningServer]:
    """A control plane requiring client certificates, with a route for `gpt-4o` in alpha."""
    server = await start_server(tmp_path, **_mtls(pki))
    try:
        async with _client(server, pki, (pki.client_cert, pki.client_key)) as client:
            await client.routes.ApplyConfig(
                rpb.ApplyConfigRequest(
                    route_config=rpb.RouteConfig(name=f"{PARENT}/routeConfig", config_yaml=ROUTES)
                )
            )
        yield server
    finally:
        await server.plane.stop(grace_s=0)
        server.telemetry.shutdown()


def _client(server: RunningServer, pki: Pki, cert: tuple[Path, Path] | None) -> AsyncMaestroClient:
    """A client of `server` trusting the test CA, presenting `cert` (certificate, key) if any."""
    cert_file, key_file = cert or (None, None)
    return AsyncMaestroClient(
        server.target,
        api_key=server.alpha_key,
        timeout_s=5,
        ca_file=pki.ca,
        cert_file=cert_file,
        key_file=key_file,
    )


async def test_mutual_tls_refuses_a_client_without_a_certificate_the_ca_signed(
    tmp_path: Path, pki: Pki
) -> None:
    async with _mtls_server(tmp_path, pki) as server:
        codes = []
        for cert in (None, (pki.rogue_cert, pki.rogue_key)):  # none; one from another CA
            async with _client(server, pki, cert) as client:
                with pytest.raises(MaestroRpcError) as refused:
                    await client.get_project(PARENT)
                codes.append(refused.value.code())
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2


async def test_mutual_tls_serves_a_client_certificate_the_ca_signed(
    tmp_path: Path, pki: Pki
) -> None:
    async with _mtls_server(tmp_path, pki) as server:
        async with _client(server, pki, (pki.client_cert, pki.client_key)) as client:
            project = await client.get_project(PARENT)
        data = server.plane.data
        assert data is not None
        assert data.base_url is not None
        base_url = data.base_url
        # The HTTP ingress asks for the same client certificate.
        tokens = await asyncio.to_thread(
            _chat, base_url, server.alpha_key, _https(pki, client_cert=True)
        )
        with pytest.raises(openai.APIConnectionError):
            await asyncio.to_thread(_chat, base_url, server.alpha_key, _https(pki))
    assert project.name == PARENT
    assert base_url.startswith("https://")
    assert tokens == 5


async def test_remote_data_plane_follows_the_control_plane_over_mutual_tls(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "control").mkdir()
    async with _mtls_server(tmp_path / "control", pki) as control:
        config = test_config(
            tmp_path,
            **{
                "data_plane.control_plane_target": control.target,
                "data_plane.control_plane_api_key": control.alpha_key,
                "data_plane.control_plane_tls.ca_file": str(pki.ca),
                "data_plane.control_plane_tls.cert_file": str(pki.client_cert),
                "data_plane.control_plane_tls.key_file": str(pki.client_key),
                "data_plane.simulated_provider": True,
                "server.tls.cert_file": str(pki.server_cert),
                "server.tls.key_file": str(pki.server_key),
            },
        )
        telemetry = build_telemetry(config.telemetry)
        data = await start_data_plane_server(config, telemetry)
        try:
            await asyncio.wait_for(data.follower.synced.wait(), 30)
            async with AsyncMaestroClient(
                data.address, api_key=control.alpha_key, timeout_s=10, ca_file=pki.ca
            ) as client:
                # The data plane checks this caller's key with the control plane, over mTLS too.
                models = await client.inference.ListModels(ipb.ListModelsRequest(parent=PARENT))
        finally:
            await data.stop(grace_s=0)
            telemetry.shutdown()
    assert [group.model for group in models.model_groups] == ["gpt-4o"]


# -- the Prometheus endpoint and config checks --------------------------------------------------


def _get(url: str, context: ssl.SSLContext) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        body: bytes = response.read()
        return body


async def test_metrics_endpoint_over_mutual_tls_serves_only_a_scraper_with_a_certificate(
    pki: Pki,
) -> None:
    config = TelemetryConfig(
        metrics_port=9464,  # validated here; the test serves on a free port below
        metrics_host="127.0.0.1",
        metrics_tls=TlsConfig(
            cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca
        ),
    )
    server = serve_metrics(config, 0)
    url = f"https://127.0.0.1:{server.server_port}/metrics"
    scraper = ssl.create_default_context(cafile=str(pki.ca))
    scraper.load_cert_chain(pki.client_cert, pki.client_key)
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    try:
        body = await asyncio.to_thread(_get, url, scraper)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_get, url, anonymous)
    finally:
        server.shutdown()
        server.server_close()
    assert b"python_info" in body or b"# HELP" in body


def test_metrics_bind_loopback_by_default_and_elsewhere_only_with_mutual_tls(pki: Pki) -> None:
    assert TelemetryConfig().metrics_host == "127.0.0.1"
    with pytest.raises(ConfigError) as exposed:
        load_config(
            None,
            env={"MAESTRO_TELEMETRY__METRICS_PORT": "9464"},
            **{"telemetry.metrics_host": "0.0.0.0"},
        )
    protected = load_config(
        None,
        env={
            "MAESTRO_TELEMETRY__METRICS_PORT": "9464",
            "MAESTRO_TELEMETRY__METRICS_HOST": "0.0.0.0",
            "MAESTRO_TELEMETRY__METRICS_TLS__CERT_FILE": str(pki.server_cert),
            "MAESTRO_TELEMETRY__METRICS_TLS__KEY_FILE": str(pki.server_key),
            "MAESTRO_TELEMETRY__METRICS_TLS__CLIENT_CA_FILE": str(pki.ca),
        },
    )
    assert "telemetry" in str(exposed.value)
    assert "metrics_tls" in str(exposed.value)
    assert protected.telemetry.metrics_tls.client_ca_file == pki.ca


def test_unreadable_or_incomplete_tls_settings_name_the_setting(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "absent.crt"
    with pytest.raises(ConfigError) as unreadable:
        load_config(
            None,
            env={},
            **{"server.tls.cert_file": str(missing), "server.tls.key_file": str(pki.server_key)},
        )
    with pytest.raises(ConfigError) as half:
        load_config(None, env={}, **{"server.tls.cert_file": str(pki.server_cert)})
    with pytest.raises(ConfigError) as client_half:
        load_config(
            None, env={}, **{"data_plane.control_plane_tls.cert_file": str(pki.client_cert)}
        )
    assert f"server.tls.cert_file: {missing} does not exist" in str(unreadable.value)
    assert "server.tls" in str(half.value)
    assert "cert_file and key_file" in str(half.value)
    assert "data_plane.control_plane_tls" in str(client_half.value)


def test_tls_settings_from_the_environment(pki: Pki) -> None:
    config = load_config(
        None,
        env={
            "MAESTRO_SERVER__TLS__CERT_FILE": str(pki.server_cert),
            "MAESTRO_SERVER__TLS__KEY_FILE": str(pki.server_key),
            "MAESTRO_SERVER__TLS__CLIENT_CA_FILE": str(pki.ca),
        },
    )
    assert config.server.tls.enabled
    assert config.server.tls.client_ca_file == pki.ca
