"""Run a server in the foreground until SIGTERM or SIGINT, then stop gracefully.

The signal handlers are installed before anything opens a port, so a signal at any moment of
the start ends in the same drain and exit status 0. A signal during the start marks the process
draining at once (health never turns SERVING, the ingress answers 503), lets the start finish,
and then stops everything it opened. The start is bounded (the store, the routing files), and
letting it finish is what keeps every resource it opened owned by one object that `stop()`
releases: a start cancelled half-way would leave them to each of its steps to clean up.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Literal, Protocol

import structlog
import uvloop

from maestro.app.config import MaestroConfig
from maestro.control_plane.route.files import RoutingFilesUnusable
from maestro.core.errors import MaestroError
from maestro.core.heap import settle_heap
from maestro.core.logs import configure_logging, export_logs
from maestro.core.readiness import Readiness
from maestro.core.telemetry import Telemetry, build_telemetry
from maestro.routing.spec import load_yaml

log = structlog.get_logger(__name__)
Role = Literal["control_plane", "data_plane"]
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stoppable(Protocol):
    async def stop(self, grace_s: float | None = None) -> None: ...


def otlp_endpoint(config: MaestroConfig) -> tuple[str | None, str]:
    """The OTLP/gRPC endpoint traces go to, and where that was decided.

    The server's own `telemetry.otlp_endpoint` wins when set (an empty string turns OTLP off);
    unset, the routing file's `telemetry.otel_exporter` (the LiteLLM config's collector URL, e.g.
    `http://otel-collector:4317`) names it. A routing file that does not load is skipped here:
    applying it reports its problems later. Read once at start; an edit takes a restart.
    """
    configured = config.telemetry.otlp_endpoint
    if configured is not None:
        return configured.strip() or None, "telemetry.otlp_endpoint"
    file = config.routing.config_file
    if file is None:
        return None, "unset"
    try:
        document = load_yaml(file.read_text(), str(file))
    except (OSError, ValueError, MaestroError):
        return None, "unset"
    section = document.get("telemetry")
    exporter = section.get("otel_exporter") if isinstance(section, dict) else None
    if isinstance(exporter, str) and exporter.strip():
        return exporter.strip(), f"{file}: telemetry.otel_exporter"
    if exporter is not None:
        log.warning(
            "telemetry.otel_exporter_ignored",
            file=str(file),
            hint="telemetry.otel_exporter is a collector URL such as http://otel-collector:4317",
        )
    return None, "unset"


def with_otlp_endpoint(config: MaestroConfig) -> MaestroConfig:
    """`config` with the OTLP endpoint `otlp_endpoint` resolves, logged with its source."""
    endpoint, source = otlp_endpoint(config)
    log.info("telemetry.otlp", endpoint=endpoint, source=source)
    if endpoint == config.telemetry.otlp_endpoint:
        return config
    telemetry = config.telemetry.model_copy(update={"otlp_endpoint": endpoint})
    return config.model_copy(update={"telemetry": telemetry})


async def process_telemetry(config: MaestroConfig, role: Role) -> Telemetry:
    """The process's telemetry (`config` with its OTLP endpoint resolved: `with_otlp_endpoint`).
    A data plane serves its key's project, named in every signal's resource (`maestro.project`)
    and asked of the control plane first (bounded: unnamed when it does not answer in time); a
    control plane serves many projects and names none."""
    project = None
    if role == "data_plane":
        from maestro.app.data_plane_server import key_project

        project = await key_project(config)
    return build_telemetry(config.telemetry, project=project)


async def _start(
    config: MaestroConfig, telemetry: Telemetry, role: Role, readiness: Readiness
) -> _Stoppable:
    if role == "control_plane":
        from maestro.app.server import start_control_plane

        return await start_control_plane(config, telemetry, readiness)
    from maestro.app.data_plane_server import start_data_plane_server

    return await start_data_plane_server(config, telemetry, readiness)


async def _serve(config: MaestroConfig, role: Role) -> None:
    readiness = Readiness()
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        log.info("server.signalled", signal=signum.name, was_ready=readiness.ready)
        readiness.mark_draining()
        signalled.set()

    # Before anything opens a port (the metrics endpoint of build_telemetry included).
    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        config = with_otlp_endpoint(config)
        try:
            telemetry = await process_telemetry(config, role)
        except OSError as error:  # the one port it binds: the metrics endpoint
            settings = config.telemetry
            print(
                f"maestro: cannot serve metrics on {settings.metrics_host}:"
                f"{settings.metrics_port}: {error.strerror or error}. Set "
                "telemetry.metrics_port (MAESTRO_TELEMETRY__METRICS_PORT) to a free port, or "
                "unset it to serve none.",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        telemetry.install_global()
        export_logs(telemetry.logger_provider)
        try:
            try:
                running = await _start(config, telemetry, role, readiness)
            except RoutingFilesUnusable as error:
                print(f"maestro: the routing config {error.file} does not load:", file=sys.stderr)
                for problem in error.problems:
                    print(f"  {problem}", file=sys.stderr)
                raise SystemExit(2) from None
            if not signalled.is_set():
                settle_heap()
            await signalled.wait()
            await running.stop()
        finally:
            export_logs(None)
            telemetry.shutdown()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)


def serve(config: MaestroConfig, role: Role = "control_plane") -> None:
    """`maestro up` (the embedded default: control plane with its data plane) or
    `maestro data-plane`, in the foreground on uvloop."""
    configure_logging(config.logging)
    uvloop.run(_serve(config, role))
