"""Starting and stopping `maestro up` and `maestro data-plane` as real processes.

SIGTERM at any moment of the start (the gRPC port just open, the routing files being applied,
after ready) drains and exits 0. From the moment a port answers until the first routing
snapshot is applied, health says NOT_SERVING and the HTTP ingress answers 503 with Retry-After,
never a 400 for a config that is not there yet. The routing file's `telemetry.otel_exporter`
names the OTLP collector when the server's config does not.

The slow part of a start is made long on purpose (a routing file of a few thousand deployments),
so each moment is caught by what the process logs or answers, never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from maestro.app.config import MaestroConfig
from maestro.app.serve import otlp_endpoint, with_otlp_endpoint
from maestro.core.settings import TelemetryConfig
from maestro.core.telemetry import build_telemetry
from tests.process_support import BIN, ROOT, demo_config

pytestmark = pytest.mark.slow
DEPLOYMENTS = 3000
"""Enough deployments that applying the routing file is a long moment of the start."""
TIMEOUT_S = 90.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _routing_file(tmp_path: Path, deployments: int = DEPLOYMENTS, otel: str | None = None) -> Path:
    lines = ["model_list:"]
    for i in range(deployments):
        lines.append(f"  - model_name: m{i}\n    litellm_params: {{model: openai/m{i}}}")
    if otel is not None:
        lines.append(f"telemetry:\n  otel_exporter: {otel}")
    path = tmp_path / "litellm.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, routing: Path, *, otlp_off: bool = True) -> Path:
    """The demo config with `routing` as its routing file (no policies), OTLP off as in the
    demo unless `otlp_off` is false (then the routing file's `telemetry.otel_exporter` names
    it)."""
    config = demo_config(tmp_path)
    text = config.read_text().replace(str(ROOT / "deploy/router/litellm.yaml"), str(routing))
    text = text.replace(f"    - {ROOT / 'deploy/router/policies/routing.rego'}\n", "")
    text = text.replace("policy_files:\n", "policy_files: []\n")
    assert '  otlp_endpoint: ""\n' in text  # the demo's: OTLP off
    if not otlp_off:
        text = text.replace('  otlp_endpoint: ""\n', "")
    config.write_text(text)
    return config


class Process:
    """A `maestro` process whose JSON log lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [str(BIN / "maestro"), *args],
            cwd=cwd,
            env={**os.environ, "MAESTRO_SERVER__GRACE_PERIOD_S": "5", **(env or {})},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._logged = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._logged:
                self.output.append(line)
                if line.startswith("{"):
                    self.events.append(json.loads(line))
                self._logged.notify_all()
        with self._logged:
            self.output.append("")  # end of the log
            self._logged.notify_all()

    def logged(self, event: str) -> bool:
        with self._logged:
            return any(e["event"] == event for e in self.events)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        with self._logged:
            while True:
                found = [e for e in self.events if e["event"] == event]
                if found:
                    return found[0]
                if self.output[-1:] == [""]:
                    raise AssertionError(f"exited before {event}:\n{''.join(self.output)}")
                assert time.monotonic() < deadline, f"no {event}:\n{''.join(self.output)}"
                self._logged.wait(0.5)

    def terminate(self) -> tuple[int, list[str]]:
        """SIGTERM; the exit status and the events logged, in order."""
        self.popen.send_signal(signal.SIGTERM)
        return self.finish()

    def finish(self) -> tuple[int, list[str]]:
        status = self.popen.wait(TIMEOUT_S)
        self.wait_for_end()
        with self._logged:
            return status, [e["event"] for e in self.events]

    def wait_for_end(self) -> None:
        with self._logged:
            self._logged.wait_for(lambda: self.output[-1:] == [""], TIMEOUT_S)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._reader.join(TIMEOUT_S)
        assert self.popen.stderr is not None
        self.popen.stderr.close()


@contextmanager
def _up(
    tmp_path: Path, config: Path, port: int | None = None, http_port: int | None = None
) -> Iterator[Process]:
    args = ["up", "--config", str(config), "--port", str(port or 0)]
    process = Process([*args, "--http-port", str(http_port or 0)], tmp_path)
    try:
        yield process
    finally:
        process.kill()


def _until_accepting(port: int, process: Process) -> None:
    """Return as soon as `port` accepts a TCP connection."""
    while True:
        assert process.popen.poll() is None, "".join(process.output)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.002)


def _drained(status: int, events: list[str]) -> None:
    assert status == 0
    assert "server.signalled" in events
    stopping = events.index("server.stopping")
    assert events.index("server.signalled") < stopping < events.index("server.stopped")


def test_sigterm_as_soon_as_the_grpc_port_accepts_drains_and_exits_0(tmp_path: Path) -> None:
    port = _free_port()
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path)), port) as process:
        _until_accepting(port, process)
        status, events = process.terminate()
    _drained(status, events)
    assert "server.ready" not in events, "a server signalled while starting never turns ready"


def test_sigterm_while_the_routing_files_apply_drains_and_exits_0(tmp_path: Path) -> None:
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path))) as process:
        process.wait_for("server.applying_routing_files")
        status, events = process.terminate()
    _drained(status, events)
    assert events.index("server.applying_routing_files") < events.index("server.signalled")
    assert "server.ready" not in events
    assert "server.started_while_stopping" in events


def test_sigterm_after_ready_drains_and_exits_0(tmp_path: Path) -> None:
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path, deployments=3))) as process:
        process.wait_for("server.ready")
        status, events = process.terminate()
    _drained(status, events)
    assert events.index("server.ready") < events.index("server.signalled")


def test_sigint_drains_and_exits_0_like_sigterm(tmp_path: Path) -> None:
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path, deployments=3))) as process:
        process.wait_for("server.ready")
        process.popen.send_signal(signal.SIGINT)
        status, events = process.finish()
    _drained(status, events)


def test_a_routing_file_that_does_not_load_still_exits_2_with_its_problems(
    tmp_path: Path,
) -> None:
    routing = tmp_path / "litellm.yaml"
    routing.write_text(
        "model_list:\n  - model_name: m\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: sk-literal}\n"
    )
    with _up(tmp_path, _config(tmp_path, routing)) as process:
        status = process.popen.wait(TIMEOUT_S)
        process.wait_for_end()
    assert status == 2
    assert f"the routing config {routing} does not load" in "".join(process.output)


def _poll_until_ready(process: Process, ask: Callable[[], Any]) -> tuple[list[Any], list[Any]]:
    """Answers of `ask()` while the process starts, from the first that comes until the log
    says ready (some of them may be answered ready already), then some more after ready."""
    before: list[Any] = []
    while not process.logged("server.ready"):
        assert process.popen.poll() is None, "".join(process.output)
        answer = ask()
        if answer is None:
            time.sleep(0.002)  # not listening yet
        else:
            before.append(answer)
    return before, [ask() for _ in range(3)]


def test_http_answers_503_with_retry_after_until_ready_and_200_after(tmp_path: Path) -> None:
    http_port = _free_port()
    base = f"http://127.0.0.1:{http_port}/v1"
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path)), None, http_port) as process:
        _until_accepting(http_port, process)
        key = (tmp_path / ".maestro" / "demo-api-key").read_text().strip()  # written by now
        headers = {"Authorization": f"Bearer {key}"}
        chat = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}

        def ask() -> tuple[int, int, str | None, str | None] | None:
            try:
                models = httpx.get(f"{base}/models", headers=headers, timeout=20)
                completion = httpx.post(
                    f"{base}/chat/completions", headers=headers, json=chat, timeout=20
                )
            except httpx.TransportError:
                return None  # not listening yet
            return (
                models.status_code,
                completion.status_code,
                models.headers.get("Retry-After"),
                completion.headers.get("Retry-After"),
            )

        before, after = _poll_until_ready(process, ask)
        process.terminate()
    assert before, "the ingress answered nothing while the routing file was applied"
    assert before[0][:2] == (503, 503)
    # 503s until ready, then 200s: never a 400 NO_ROUTE_CONFIG, never back to 503.
    statuses = [s for answer in before for s in answer[:2]]
    assert set(statuses) <= {503, 200}
    assert statuses == sorted(statuses, reverse=True)
    for models, completion, models_retry, completion_retry in before:
        assert models != 503 or models_retry is not None
        assert completion != 503 or completion_retry is not None
    assert [answer[:2] for answer in after] == [(200, 200)] * len(after)


def test_grpc_health_is_not_serving_until_ready_and_serving_after(tmp_path: Path) -> None:
    port = _free_port()
    services = (
        "",
        "maestro.v1.RouteService",
        "maestro.v1.InferenceService",
        "maestro.v1.RolloutService",
    )
    with _up(tmp_path, _config(tmp_path, _routing_file(tmp_path)), port) as process:
        _until_accepting(port, process)  # a channel dialled earlier would back off for seconds
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)

        def ask() -> tuple[int, ...] | None:
            try:
                return tuple(
                    health.Check(health_pb2.HealthCheckRequest(service=s), timeout=20).status
                    for s in services
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return None  # not connected yet
                raise

        before, after = _poll_until_ready(process, ask)
        channel.close()
        process.terminate()
    assert before, "health answered nothing while the routing file was applied"
    assert before[0] == (NOT_SERVING,) * len(services)
    for statuses in zip(*before, strict=True):  # per service: NOT_SERVING, then SERVING
        assert list(statuses) == sorted(statuses, key=[NOT_SERVING, SERVING].index)
    assert after == [(SERVING,) * len(services)] * len(after)


def test_a_data_plane_is_not_serving_and_answers_503_until_its_first_snapshot(
    tmp_path: Path,
) -> None:
    control_port, port, http_port = _free_port(), _free_port(), _free_port()
    config = _config(tmp_path, _routing_file(tmp_path, deployments=3))
    with _up(tmp_path, config, control_port) as control:  # creates the demo project and key
        control.wait_for("server.ready")
        assert control.terminate()[0] == 0
    key = (tmp_path / ".maestro" / "demo-api-key").read_text().strip()
    args = ["data-plane", f"--control-plane=127.0.0.1:{control_port}", f"--port={port}"]
    data = Process(
        [*args, f"--http-port={http_port}", "--simulated-provider"],
        tmp_path,
        {"MAESTRO_API_KEY": key, "MAESTRO_TELEMETRY__OTLP_ENDPOINT": ""},
    )
    try:
        data.wait_for("server.ready")  # listening; no control plane to follow yet
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            models = httpx.get(
                f"http://127.0.0.1:{http_port}/v1/models",
                headers={"Authorization": f"Bearer {key}"},
                timeout=20,
            )
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=20).status == NOT_SERVING
            assert models.status_code == 503
            assert "Retry-After" in models.headers
            assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 503
            assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            with _up(tmp_path, config, control_port):
                data.wait_for("server.serving")  # the first snapshot arrived
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=20).status == SERVING
                models = httpx.get(
                    f"http://127.0.0.1:{http_port}/v1/models",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=20,
                )
                assert models.status_code == 200
                assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200
                status, events = data.terminate()
    finally:
        data.kill()
    assert status == 0
    assert events.index("server.stopping") < events.index("server.stopped")


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """The smallest OTLP/gRPC receiver: keeps the service names of the spans it is sent."""

    def __init__(self) -> None:
        self.services: list[str] = []
        self.received = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for spans in request.resource_spans:
            for attribute in spans.resource.attributes:
                if attribute.key == "service.name":
                    self.services.append(attribute.value.string_value)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def _collector() -> Iterator[tuple[_Collector, int]]:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(0)


def test_the_routing_files_otel_exporter_receives_the_traces(tmp_path: Path) -> None:
    """The seed's litellm.yaml names its collector as `telemetry.otel_exporter`; with no
    `telemetry.otlp_endpoint` of its own, the server sends its spans there."""
    with _collector() as (collector, collector_port):
        endpoint = f"http://127.0.0.1:{collector_port}"
        routing = _routing_file(tmp_path, deployments=3, otel=endpoint)
        with _up(tmp_path, _config(tmp_path, routing, otlp_off=False)) as process:
            resolved = process.wait_for("telemetry.otlp")
            ready = process.wait_for("server.ready")
            with grpc.insecure_channel(ready["address"]) as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=20
                )
            status, _ = process.terminate()  # shutting down flushes the spans
        assert status == 0
        assert collector.received.wait(TIMEOUT_S)
    assert resolved["endpoint"] == endpoint
    assert resolved["source"] == f"{routing}: telemetry.otel_exporter"
    assert "maestro-control-plane" in collector.services


def _with(routing: Path | None, otlp: str | None) -> MaestroConfig:
    return MaestroConfig.model_validate(
        {
            "routing": {"config_file": routing},
            "telemetry": {} if otlp is None else {"otlp_endpoint": otlp},
        }
    )


def test_the_servers_own_otlp_endpoint_wins_over_the_routing_files(tmp_path: Path) -> None:
    routing = _routing_file(tmp_path, 1, otel="http://from-routing:4317")
    assert otlp_endpoint(_with(routing, "http://own:4317")) == (
        "http://own:4317",
        "telemetry.otlp_endpoint",
    )
    assert otlp_endpoint(_with(routing, "")) == (None, "telemetry.otlp_endpoint")  # off
    assert otlp_endpoint(_with(routing, None))[0] == "http://from-routing:4317"


def test_no_otlp_endpoint_from_a_routing_file_without_one_or_that_does_not_load(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [\n")
    odd = tmp_path / "odd.yaml"
    odd.write_text("telemetry:\n  otel_exporter: {endpoint: 7}\n")
    for routing in (None, _routing_file(tmp_path, 1), broken, odd, tmp_path / "missing.yaml"):
        assert otlp_endpoint(_with(routing, None)) == (None, "unset")


def test_the_built_telemetry_exports_to_the_resolved_endpoint(tmp_path: Path) -> None:
    routing = _routing_file(tmp_path, 1, otel="http://collector.example:4317")
    config = with_otlp_endpoint(_with(routing, None))
    assert config.telemetry == TelemetryConfig(otlp_endpoint="http://collector.example:4317")
    telemetry = build_telemetry(config.telemetry)
    try:
        processors = telemetry.tracer_provider._active_span_processor._span_processors
        [exporter] = [p.span_exporter for p in processors if isinstance(p, BatchSpanProcessor)]
        assert exporter._endpoint == "collector.example:4317"
    finally:
        telemetry.shutdown()
