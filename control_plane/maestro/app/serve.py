"""Run a server in the foreground until SIGTERM or SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Literal, Protocol

import uvloop

from maestro.app.config import MaestroConfig
from maestro.control_plane.route.files import RoutingFilesUnusable
from maestro.core.heap import settle_heap
from maestro.core.logs import configure_logging
from maestro.core.telemetry import Telemetry, build_telemetry

Role = Literal["control_plane", "data_plane"]


class _Stoppable(Protocol):
    async def stop(self, grace_s: float | None = None) -> None: ...


async def _start(config: MaestroConfig, telemetry: Telemetry, role: Role) -> _Stoppable:
    if role == "control_plane":
        from maestro.app.server import start_control_plane

        return await start_control_plane(config, telemetry)
    from maestro.app.data_plane_server import start_data_plane_server

    return await start_data_plane_server(config, telemetry)


async def _serve(config: MaestroConfig, role: Role) -> None:
    telemetry = build_telemetry(config.telemetry)
    telemetry.install_global()
    try:
        try:
            running = await _start(config, telemetry, role)
        except RoutingFilesUnusable as error:
            print(f"maestro: the routing config {error.file} does not load:", file=sys.stderr)
            for problem in error.problems:
                print(f"  {problem}", file=sys.stderr)
            raise SystemExit(2) from None
        settle_heap()
        await _until_signalled()
        await running.stop()
    finally:
        telemetry.shutdown()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def serve(config: MaestroConfig, role: Role = "control_plane") -> None:
    """`maestro up` (the embedded default: control plane with its data plane) or
    `maestro data-plane`, in the foreground on uvloop."""
    configure_logging(config.logging)
    uvloop.run(_serve(config, role))
