"""A real serving lane for tests: Ray Serve + vLLM (CPU build) running the tiny model, started
from the serving venv (`.venv-serving`, built by `make serving-setup`) as a user starts it:
`python -m serving run --config lane.yaml`.

Two lanes share one Ray instance: `alpha`, small on purpose (4 requests running, 4 queued: a
burst of 16 is twice its capacity), and `beta`, roomy. Their spans go to an OTLP receiver in the
test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

ROOT = Path(__file__).resolve().parent.parent
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"
SERVED_MODEL = "tiny-llama"
ALPHA_CAPACITY = 8
"""alpha's max_ongoing_requests (4) plus max_queued_requests (4)."""

LANES = """
http: {{host: 127.0.0.1, port: {port}}}
lanes:
  - name: alpha
    model: {model}
    served_model_name: tiny-llama
    version: "{alpha_version}"
    engine: {{dtype: float32, max_model_len: 2048, max_num_seqs: 8, enforce_eager: true}}
    serve: {{max_ongoing_requests: 4, max_queued_requests: 4, num_cpus: 0.25,
             graceful_shutdown_timeout_s: 120}}
    stream: {{max_chunk_delay_ms: 20}}
  - name: beta
    model: {model}
    served_model_name: tiny-llama
    version: "{beta_version}"
    engine: {{dtype: float32, max_model_len: 1024, max_num_seqs: 32, enforce_eager: true}}
    serve: {{max_ongoing_requests: 32, max_queued_requests: -1, num_cpus: 0.25,
             graceful_shutdown_timeout_s: 120}}
    stream: {{max_chunk_delay_ms: 20}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what the lane exports lands in `spans`."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, name: str, trace_id: bytes, timeout_s: float = 30) -> trace_pb2.Span:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for span in self.spans:
                    if span.name == name and span.trace_id == trace_id:
                        return span
            time.sleep(0.1)
        raise AssertionError(f"no {name!r} span in trace {trace_id.hex()}")


@dataclass
class Lane:
    process: subprocess.Popen[str]
    config_path: Path
    model: Path
    port: int
    sink: SpanSink
    versions: dict[str, str] = field(default_factory=lambda: {"alpha": "1", "beta": "1"})

    def base_url(self, lane: str) -> str:
        return f"http://127.0.0.1:{self.port}/{lane}/v1"

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/lane-status", timeout=5)
        response.raise_for_status()
        lanes: dict[str, Any] = response.json()["lanes"]
        return lanes

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until no lane holds a request (a previous test's streams have ended)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lanes = self.status()
            if len(lanes) == 2 and all(
                lane["running"] + lane["queued"] == 0 for lane in lanes.values()
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"the lanes stayed busy: {self.status()}")

    def roll(self, lane: str, version: str) -> None:
        """Re-apply the config with a new version of `lane` (SIGHUP); returns at once."""
        self.versions[lane] = version
        write_config(self.config_path, self.port, self.model, self.versions)
        self.process.send_signal(signal.SIGHUP)

    def wait_event(self, name: str, timeout_s: float = 600) -> dict[str, Any]:
        return wait_event(self.process, name, timeout_s)


def write_config(path: Path, port: int, model: Path, versions: dict[str, str]) -> None:
    path.write_text(
        LANES.format(
            port=port, model=model, alpha_version=versions["alpha"], beta_version=versions["beta"]
        )
    )


def build_model(out: Path) -> Path:
    subprocess.run(
        [str(SERVING_PYTHON), "-m", "serving", "tiny-model", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    return out


@contextlib.contextmanager
def launcher(config: Path, log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`python -m serving run --config CONFIG` as a user starts it; at exit, SIGTERM, then
    whatever is left of its Ray instance is stopped."""
    log = log_path.open("w")
    process = subprocess.Popen(
        # Niced: vLLM's CPU engine busy-polls and spins its OpenMP threads, and on a 2-core
        # machine that starves the data plane under test. In production the lane has its own
        # (GPU) nodes; a lower priority stands in for that here.
        ["nice", "-n", "15", str(SERVING_PYTHON), "-m", "serving", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Ray's own processes outlive a killed driver; stop whatever is left of this instance.
        subprocess.run(
            [str(SERVING_PYTHON.parent / "ray"), "stop", "--force"],
            capture_output=True,
            timeout=120,
        )
        log.close()
        if process.stdout is not None:
            process.stdout.close()


def wait_event(process: subprocess.Popen[str], name: str, timeout_s: float) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the lane launcher exited with {process.wait()}")
        if line.startswith('{"event"'):
            event: dict[str, Any] = json.loads(line)
            if event["event"] == "lane.update_failed":
                raise AssertionError(f"the lane update failed: {event}")
            if event["event"] == name:
                return event
    raise AssertionError(f"no {name} from the lane launcher in {timeout_s} s")


def start_lane(workdir: Path) -> Iterator[Lane]:
    sink = SpanSink()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)  # type: ignore[no-untyped-call]
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    lane_config = workdir / "lanes.yaml"
    model = build_model(workdir / "tiny-llama")
    port = free_port()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    write_config(lane_config, port, model, {"alpha": "1", "beta": "1"})
    try:
        with launcher(lane_config, workdir / "lane.log", env) as process:
            lane = Lane(process, lane_config, model, port, sink)
            lane.wait_event("lane.ready", timeout_s=600)
            yield lane
    finally:
        receiver.stop(grace=None)
