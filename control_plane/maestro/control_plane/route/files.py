"""Routing config from files: applied at start and again whenever a file changes.

A file edit becomes a new config revision through the same path as ApplyConfig (validate,
compile, store, publish), so a bad edit is rejected, logged, and the last good revision stays.
Directories are watched rather than files, because editors save by replacing the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from watchfiles import awatch

from maestro.control_plane.config import RoutingConfig
from maestro.control_plane.route.service import RouteService
from maestro.core.auth import Principal
from maestro.core.errors import Aborted, InvalidArgument, MaestroError
from maestro.routing.policy import PolicyModule

log = structlog.get_logger(__name__)
APPLY_ATTEMPTS = 3
"""Replicas sharing a store apply the same files at start; the ones that lose the race read
the revision the winner stored and find it is theirs."""


def read_files(config: RoutingConfig) -> tuple[str, tuple[PolicyModule, ...]]:
    assert config.config_file is not None
    return config.config_file.read_text(), tuple(
        PolicyModule(path.name, path.read_text()) for path in config.policy_files
    )


class RoutingFilesUnusable(Exception):
    """The routing files do not load at start: `problems` says why, one line each."""

    def __init__(self, file: Path, problems: list[str]) -> None:
        super().__init__(f"{file}: " + "; ".join(problems))
        self.file = file
        self.problems = problems


async def apply_files(
    service: RouteService, config: RoutingConfig, *, at_start: bool = False
) -> bool:
    """Apply the files as a new revision when they differ from the current one. At start, files
    that do not load raise RoutingFilesUnusable unless `allow_start_without_config`: a server
    that would answer every call NO_ROUTE_CONFIG while its health says SERVING helps no one."""
    assert config.config_file is not None
    try:
        config_yaml, modules = await asyncio.to_thread(read_files, config)
        principal = Principal(config.project, None)
        name = f"projects/{config.project}/routeConfig"
        for attempt in range(APPLY_ATTEMPTS):
            current = await service.get_config(principal, name)
            if current.revision is not None and (
                current.revision.config_yaml == config_yaml
                and current.revision.policy_modules == modules
            ):
                return False  # applied already (here, or by a replica starting beside us)
            try:
                applied = await service.apply_config(
                    principal, name, config_yaml, modules, mask=(), validate_only=False,
                    etag="", request_id="", description=f"from {config.config_file}",
                )  # fmt: skip
                break
            except Aborted:  # another replica applied first: look again
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
    except InvalidArgument as error:
        problems = [f"{v.field}: {v.description}" for v in error.violations]
        log.error("route.config_file_rejected", file=str(config.config_file), problems=problems)
        if at_start and not config.allow_start_without_config:
            raise RoutingFilesUnusable(config.config_file, problems) from None
        return False
    except (MaestroError, OSError) as error:
        log.error("route.config_file_unusable", file=str(config.config_file), error=str(error))
        if at_start and not config.allow_start_without_config:
            raise RoutingFilesUnusable(config.config_file, [str(error)]) from None
        return False
    revision = applied.view.revision
    log.info(
        "route.config_file_applied",
        file=str(config.config_file),
        revision=revision and revision.revision,
    )
    return True


async def watch_files(service: RouteService, config: RoutingConfig, stop: asyncio.Event) -> None:
    assert config.config_file is not None
    watched = {p.resolve() for p in (config.config_file, *config.policy_files)}
    directories = {str(p.parent) for p in watched}
    async for changes in awatch(*directories, stop_event=stop, debounce=200):
        # Paths from watchfiles are absolute already; resolve() only follows symlinks.
        if any(Path(path) in watched or Path(path).resolve() in watched for _, path in changes):  # noqa: ASYNC240
            await apply_files(service, config)
