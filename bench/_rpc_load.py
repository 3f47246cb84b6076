"""The RPC side of the routing benchmark: server processes, the load client, the profiler.

`maestro up` and the raw echo server (`_echo_server.py`) run as subprocesses; `drive` loads
either one the same way (one grpc.aio channel, pre-serialized bytes, C concurrent workers, a
warm-up, then a fixed window whose completions count) and reads both processes' CPU time at the
window's edges, so CPU per call explains the throughput.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _route_fixtures as fx
import grpc
from _measure import Latency, progress, summarise

from maestro.v1 import common_pb2
from maestro.v1 import route_service_pb2 as pb

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CHOOSE_PATH = "/maestro.v1.RouteService/Choose"
STREAM_CHOOSE_PATH = "/maestro.v1.RouteService/StreamChoose"
DEMO_PARENT = "projects/demo"
# grpc-stubs lacks `grpc.aio.EOF` and types a stream call as taking a request iterator.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
# Runs `maestro up` (or the echo server) under cProfile. grpc.aio runs every handler on the main
# thread's event loop, which is what cProfile sees; SIGUSR1 switches the profiler on and off so
# the stats cover exactly the measured window. Written to the stats file when the server exits.
# The default (wall) clock: handlers never block, and a per-thread CPU clock costs a system call
# per event here, which distorts far more.
PROFILE_SNIPPET = """
import cProfile, signal, sys
out, target, bench = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [target, *sys.argv[4:]]
if target == "echo":
    sys.path.insert(0, bench)
    from _echo_server import main
else:
    from maestro.app.cli import main
profiler = cProfile.Profile()
enabled = False
def toggle(signum, frame):
    global enabled
    (profiler.disable if enabled else profiler.enable)()
    enabled = not enabled
signal.signal(signal.SIGUSR1, toggle)
try:
    main()
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


@dataclass(frozen=True, slots=True)
class Load:
    """C workers; each run warms up for `warmup_s`, then counts a window of
    `duration_s / rounds`. Callers alternate the servers of a comparison round by round, so
    load from other work on the machine falls on both sides alike."""

    concurrency: int
    warmup_s: float
    duration_s: float
    rounds: int = 1

    @property
    def window_s(self) -> float:
        return self.duration_s / self.rounds


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    api_key: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""


def free_port() -> int:
    # `maestro up` logs its ready line at info level; at warning it is silent, so the bench
    # picks the port itself and polls for readiness.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def maestro_config(directory: Path, port: int, sampling_ratio: float | None) -> Path:
    telemetry: dict[str, Any] = {"service_name": "maestro-bench"}
    if sampling_ratio is not None:
        telemetry["trace_sampling_ratio"] = sampling_ratio
    config = {
        "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 2},
        "auth": {"mode": "api_key"},
        "store": {"sqlite_path": str(directory / "maestro.db")},
        "telemetry": telemetry,
        "logging": {"level": "warning", "format": "json"},
        "routing": {
            "project": "demo",
            "config_file": str(fx.SEED_CONFIG_PATH),
            "policy_files": [str(fx.SEED_POLICY_PATH)],
            "watch": True,
        },
        # The RPC bench measures RouteService; the data plane (and its HTTP port) stays off.
        "data_plane": {"enabled": False},
    }
    path = directory / "maestro.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_maestro(
    directory: Path, name: str, sampling_ratio: float | None, profile_to: Path | None = None
) -> ServerProcess:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = maestro_config(directory, port, sampling_ratio)
    command = [str(BIN / "maestro"), "up", "--config", str(config)]
    if profile_to is not None:
        command = [sys.executable, "-c", PROFILE_SNIPPET, str(profile_to), "maestro", str(BENCH)]
        command += ["up", "--config", str(config)]
    log_path = directory / "maestro.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=directory, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy()
        )
    return ServerProcess(name, process, f"127.0.0.1:{port}", log_path)


def start_echo(
    directory: Path, profile_to: Path | None = None, *, name: str = "echo", framed: bool = False
) -> ServerProcess:
    """The raw echo server; `framed`: with maestro's grpc set-up and no work in it (two
    interceptors that build a wrapping handler per call, maximum_concurrent_rpcs=1000)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "echo.log"
    options = ["--wrapping-interceptors", "2", "--max-concurrent-rpcs", "1000"] if framed else []
    command = [sys.executable, str(BENCH / "_echo_server.py"), *options]
    if profile_to is not None:
        command = [sys.executable, "-c", PROFILE_SNIPPET, str(profile_to), "echo", str(BENCH)]
        command += options
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints its ready line within a second
    if not line:
        raise RuntimeError(f"the echo server exited with {process.wait()}")
    return ServerProcess(name, process, str(json.loads(line)["address"]), log_path)


def choose_request(*tags: str, text: str = "") -> pb.ChooseRequest:
    request = pb.ChooseRequest(parent=DEMO_PARENT, model="gpt-4o", step_tags=list(tags))
    if text:
        request.messages.add(role=common_pb2.CHAT_ROLE_USER, content=text)
    return request


async def wait_ready(server: ServerProcess, directory: Path, deadline_s: float = 120) -> None:
    """Ready = the demo key exists and a Choose succeeds (the config is applied after the
    server starts serving, so health alone is not enough)."""
    key_file = directory / "demo-api-key"
    deadline = time.monotonic() + deadline_s
    payload = choose_request().SerializeToString()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log_tail()}")
        if key_file.exists() and not server.api_key:
            server.api_key = key_file.read_text().strip()
        if server.api_key:
            async with grpc.aio.insecure_channel(server.address) as channel:
                call = channel.unary_unary(CHOOSE_PATH, None, None)
                with suppress(grpc.aio.AioRpcError):
                    await call(payload, metadata=(("x-api-key", server.api_key),), timeout=2)
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready in {deadline_s} s:\n{server.log_tail()}")


@dataclass(frozen=True, slots=True)
class Run:
    """One window of load on one server."""

    window_s: float
    samples: list[int]
    errors: int
    response_bytes: int
    server_cpu_s: float
    client_cpu_s: float


@dataclass(frozen=True, slots=True)
class RpcRow:
    """All runs of one comparison row, merged."""

    label: str
    server: str
    method: str
    concurrency: int
    runs: int
    duration_s: float
    calls: int
    errors: int
    rps: float
    rps_by_run: list[float]
    latency: Latency
    request_bytes: int
    response_bytes: int
    server_cpu_us_per_call: float
    client_cpu_us_per_call: float

    @classmethod
    def merge(
        cls, label: str, server: str, method: str, concurrency: int, request_bytes: int,
        runs: list[Run],
    ) -> RpcRow:  # fmt: skip
        samples = [sample for run in runs for sample in run.samples]
        duration = sum(run.window_s for run in runs)
        calls = max(len(samples), 1)
        return cls(
            label, server, method, concurrency, len(runs), duration, len(samples),
            sum(run.errors for run in runs), len(samples) / duration,
            [len(run.samples) / run.window_s for run in runs], summarise(samples),
            request_bytes, runs[-1].response_bytes,
            sum(run.server_cpu_s for run in runs) / calls * 1e6,
            sum(run.client_cpu_s for run in runs) / calls * 1e6,
        )  # fmt: skip


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    label: str,
    server: ServerProcess,
    path: str,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
    *,
    streaming: bool,
    load: Load,
) -> Run:
    """C workers on one channel for warm-up + window; completions inside the window count."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    errors = 0
    response_bytes = 0
    async with grpc.aio.insecure_channel(server.address) as channel:
        await channel.channel_ready()
        unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        bidi = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
        window_start = clock() + int(load.warmup_s * 1e9)
        window_end = window_start + int(load.window_s * 1e9)

        def record(started: int, ended: int) -> None:
            if window_start <= ended < window_end:
                samples.append(ended - started)

        async def unary_worker() -> None:
            nonlocal errors, response_bytes
            while (started := clock()) < window_end and errors < 1000:
                try:
                    response = await unary(payload, metadata=metadata)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                record(started, clock())
                response_bytes = len(response)

        async def stream_worker() -> None:
            nonlocal errors, response_bytes
            call: Any = bidi(metadata=metadata)  # type: ignore[call-arg]
            try:
                while (started := clock()) < window_end:
                    await call.write(payload)
                    response = await call.read()
                    if response is EOF:
                        errors += 1
                        return
                    record(started, clock())
                    response_bytes = len(response)
                await call.done_writing()
                await call.code()
            except grpc.aio.AioRpcError:
                errors += 1
            finally:
                call.cancel()

        cpu: dict[str, float] = {}

        async def account() -> None:
            """Server and client CPU at the window's edges: CPU per call explains the rps."""
            pid = server.process.pid
            await asyncio.sleep(max(0.0, (window_start - clock()) / 1e9))
            cpu["server"], cpu["client"] = process_cpu_s(pid), time.process_time()
            await asyncio.sleep(max(0.0, (window_end - clock()) / 1e9))
            cpu["server"] = process_cpu_s(pid) - cpu["server"]
            cpu["client"] = time.process_time() - cpu["client"]

        worker = stream_worker if streaming else unary_worker
        await asyncio.gather(account(), *(worker() for _ in range(load.concurrency)))
    run = Run(load.window_s, samples, errors, response_bytes, cpu["server"], cpu["client"])
    per_call = 1e6 / max(len(samples), 1)
    progress(
        f"rpc {label:<40} {len(samples) / load.window_s:8.0f} rps  p50 "
        f"{summarise(samples).p50_us / 1e3:6.2f} ms  errors {errors}  CPU/call server "
        f"{run.server_cpu_s * per_call:.0f} us, client {run.client_cpu_s * per_call:.0f} us"
    )
    return run


async def check_decisions(server: ServerProcess) -> dict[str, str]:
    """What the measured server answers, and the acceptance's pii cases, once each."""
    metadata = (("x-api-key", server.api_key),)
    cases = {
        "no tags": choose_request(),
        "step tagged pii": choose_request("pii"),
        "email in message": choose_request(text="Mail the draft to jane.doe@example.com please"),
        "card in message": choose_request(text="Charge card 4111 1111 1111 1111 for the order"),
    }
    outcome: dict[str, str] = {}
    async with grpc.aio.insecure_channel(server.address) as channel:
        choose = channel.unary_unary(
            CHOOSE_PATH,
            request_serializer=pb.ChooseRequest.SerializeToString,
            response_deserializer=pb.ChooseResponse.FromString,
        )
        for label, request in cases.items():
            response = await choose(request, metadata=metadata, timeout=10)
            decision = response.decision
            outcome[label] = (
                f"{decision.deployment.model_group} (tags {list(decision.supplied_tags)}"
                f" + detected {list(decision.detected_tags)}, {len(decision.candidates)} "
                f"candidates, {response.ByteSize()} B)"
            )
        stream = channel.stream_stream(
            STREAM_CHOOSE_PATH,
            request_serializer=pb.StreamChooseRequest.SerializeToString,
            response_deserializer=pb.StreamChooseResponse.FromString,
        )
        call: Any = stream(metadata=metadata)  # type: ignore[call-arg]
        await call.write(pb.StreamChooseRequest(request=choose_request()))
        answer = await call.read()
        await call.done_writing()
        if answer is EOF or not answer.HasField("response"):
            raise RuntimeError(f"StreamChoose did not answer with a decision: {answer}")
        outcome["StreamChoose, no tags"] = answer.response.decision.deployment.model_group
    return outcome


# Functions on Maestro's Choose path, by (path suffix, function name), for the per-call split.
_OTEL_GRPC = "opentelemetry/instrumentation/grpc/_aio_server.py"
_OTEL_SDK = "opentelemetry/sdk/trace/__init__.py"
_RPC = "maestro/control_plane/rpc/"
_ROUTE = "maestro/control_plane/route/"
PROFILE_PATH = (
    ("otel grpc interceptor: intercept_service", _OTEL_GRPC, "intercept_service"),
    ("maestro Guard: intercept_service", _RPC + "interceptors.py", "intercept_service"),
    ("otel grpc interceptor: _unary_interceptor (span)", _OTEL_GRPC, "_unary_interceptor"),
    ("  maestro handlers.run (the guard around the call)", _RPC + "handlers.py", "run"),
    ("    maestro interceptors.guard (auth, duration)", _RPC + "interceptors.py", "guard"),
    ("    RouteServicer.Choose", _ROUTE + "servicer.py", "Choose"),
    ("      convert.choose_input", _ROUTE + "convert.py", "choose_input"),
    ("      RouteService.choose", _ROUTE + "service.py", "choose"),
    ("        RoutingSnapshot.decide", _ROUTE + "engine.py", "decide"),
    ("        RouteService._record (attributes, counters)", _ROUTE + "service.py", "_record"),
    ("      convert.decision_message", _ROUTE + "convert.py", "decision_message"),
    ("otel sdk Tracer.start_span (both spans)", _OTEL_SDK, "start_span"),
    ("otel sdk Span.set_attribute", _OTEL_SDK, "set_attribute"),
    ("otel sdk Span.set_attributes", _OTEL_SDK, "set_attributes"),
    ("otel sdk Span.end", _OTEL_SDK, "end"),
)  # fmt: skip


def _time_per_call(stats: pstats.Stats, calls: int) -> tuple[float, dict[str, float]]:
    """Profiled time per call (us) in total and for each PROFILE_PATH entry (cumulative)."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    total = sum(entry[2] for entry in table.values())
    parts: dict[str, float] = {}
    for label, suffix, function in PROFILE_PATH:
        cumulative = sum(
            entry[3]
            for (path, _, name), entry in table.items()
            if name == function and path.endswith(suffix)
        )
        parts[label] = cumulative / max(calls, 1) * 1e6
    return total / max(calls, 1) * 1e6, parts


async def profile_choose(load: Load, workdir: Path) -> str:
    """Choose against the echo server and `maestro up`, each under cProfile for the measured
    window only; where the time of one call goes."""
    lines = [
        "Choose under cProfile, the server's event-loop thread, measured window only;",
        f"{load.concurrency} workers, {load.window_s:g} s after {load.warmup_s:g} s warm-up. "
        "cProfile slows Python code several-fold",
        "and does not see grpc's Cython internals: read the split, not the absolute numbers.",
        "",
    ]
    payload = choose_request().SerializeToString()
    texts = []
    for name in ("echo", "maestro"):
        stats_path = workdir / f"{name}.pstats"
        directory = workdir / f"profiled-{name}"
        server = (
            start_echo(directory, stats_path)
            if name == "echo"
            else start_maestro(directory, "maestro", None, stats_path)
        )
        try:
            if name == "maestro":
                await wait_ready(server, directory)
            loop = asyncio.get_running_loop()
            toggle = server.process.send_signal
            loop.call_later(load.warmup_s, toggle, signal.SIGUSR1)
            loop.call_later(load.warmup_s + load.window_s, toggle, signal.SIGUSR1)
            metadata = (("x-api-key", server.api_key or "unused"),)
            run = await drive(
                f"Choose -> {name} under cProfile", server, CHOOSE_PATH, payload, metadata,
                streaming=False, load=load,
            )  # fmt: skip
        finally:
            server.stop()
        buffer = io.StringIO()
        stats = pstats.Stats(str(stats_path), stream=buffer)
        calls = len(run.samples)
        per_call, parts = _time_per_call(stats, calls)
        lines.append(
            f"{name:>8}: {calls} calls ({calls / run.window_s:.0f} rps under the profiler), "
            f"{per_call:.0f} us per call in profiled Python-level calls"
        )
        if name == "maestro":
            lines.append("          cumulative time per Choose call on the path:")
            lines += [f"          {label:<52} {us:8.1f} us" for label, us in parts.items()]
        stats.strip_dirs()
        buffer.write(f"\n===== {name}: by own time =====\n")
        stats.sort_stats(pstats.SortKey.TIME).print_stats(30)
        if name == "maestro":
            buffer.write(f"\n===== {name}: by cumulative time =====\n")
            stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(40)
        texts.append(buffer.getvalue())
    return "\n".join(lines) + "\n" + "\n".join(texts)
