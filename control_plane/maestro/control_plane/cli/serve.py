"""Run the server in the foreground until SIGTERM or SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import signal

import structlog
import uvloop

from maestro.control_plane.config import MaestroConfig
from maestro.control_plane.heap import settle_heap
from maestro.control_plane.logs import configure_logging
from maestro.control_plane.server import start_control_plane
from maestro.control_plane.telemetry import build_telemetry

log = structlog.get_logger(__name__)


async def _serve(config: MaestroConfig) -> None:
    telemetry = build_telemetry(config.telemetry)
    telemetry.install_global()
    plane = await start_control_plane(config, telemetry)
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await plane.stop()
        telemetry.shutdown()


def serve(config: MaestroConfig) -> None:
    configure_logging(config.logging)
    uvloop.run(_serve(config))


async def _serve_data_plane(config: MaestroConfig) -> None:
    from maestro.data_plane.server import serve_data_plane

    telemetry = build_telemetry(config.telemetry)
    telemetry.install_global()
    try:
        await serve_data_plane(config, telemetry)
    finally:
        telemetry.shutdown()


def serve_with(config: MaestroConfig, role: str) -> None:
    """Run `role` ("control_plane", the embedded default, or "data_plane") in the foreground."""
    configure_logging(config.logging)
    uvloop.run(_serve(config) if role == "control_plane" else _serve_data_plane(config))
