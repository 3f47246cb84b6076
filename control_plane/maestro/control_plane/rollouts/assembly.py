"""Assembly of RolloutService in a control-plane process: store, OCI layout, per-version series,
analyst, service, controller, servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry import metrics

from maestro.control_plane.config import NotificationsConfig, RegistryConfig
from maestro.control_plane.rollouts.analysis import Analyst, EvalGateRunner
from maestro.control_plane.rollouts.controller import RolloutController
from maestro.control_plane.rollouts.freeze import FreezeCalendar, FreezeWindow
from maestro.control_plane.rollouts.judges import VersionSeries
from maestro.control_plane.rollouts.metrics import RolloutMetrics
from maestro.control_plane.rollouts.mirror import RegistryMirror
from maestro.control_plane.rollouts.notify import Notifier
from maestro.control_plane.rollouts.oci import OciLayout, build_manifest, content_digest
from maestro.control_plane.rollouts.records import Kind, VersionRecord
from maestro.control_plane.rollouts.service import ContentCheck, RolloutService
from maestro.control_plane.rollouts.servicer import RolloutServicer
from maestro.control_plane.rollouts.store import CHANGES_CHANNEL, RolloutStore
from maestro.control_plane.store.sql import Sql
from maestro.routing.signals import Observation
from maestro.routing.traffic import ProjectTraffic
from maestro.v1 import rollout_service_pb2_grpc


@dataclass
class RolloutPlane:
    store: RolloutStore
    series: VersionSeries
    service: RolloutService
    controller: RolloutController
    mirror: RegistryMirror | None = None
    notifier: Notifier | None = None
    drive: bool = True
    """Whether this replica runs the controller (`rollouts.drive`)."""

    def register(self, server: grpc.aio.Server, stopping: asyncio.Event) -> None:
        rollout_service_pb2_grpc.add_RolloutServiceServicer_to_server(
            RolloutServicer(self.service, stopping), server
        )

    _pending: set[asyncio.Task[object]] = field(default_factory=set)

    def _track(self, task: asyncio.Task[object]) -> None:
        """Keep a publish task referenced until it is done (asyncio holds tasks weakly)."""
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def observe(self, observation: Observation, now: float) -> None:
        """Feed a data-plane observation to the per-version series: only versions that the
        observation's own project's split serves, so a tenant's reports never reach another's
        rollout and a forged version name makes no series."""
        version = observation.artifact_version
        if not version:
            return
        traffic = self.service.current_traffic(observation.project)
        split = traffic.split(version.partition("/versions/")[0]) if traffic is not None else None
        if split is not None and any(share.version == version for share in split.shares):
            self.series.ingest(version, observation, now)

    async def start(self) -> None:
        if self.mirror is not None:
            await self.mirror.start()
        if self.notifier is not None:
            await self.notifier.start()
        await self.service.publish_all()
        sql = self.store.sql
        if sql.shared:
            loop = asyncio.get_running_loop()

            def heard(payload: str) -> None:
                project = payload.removeprefix("projects/")
                self._track(loop.create_task(self.service.publish_traffic(project)))

            def reconnected() -> None:
                self._track(loop.create_task(self.service.publish_all()))

            sql.listen(CHANGES_CHANNEL, heard, reconnected)
        if self.drive:
            await self.controller.start()
        else:
            self.service.controller = None  # another replica drives; verbs only change state

    async def stop(self) -> None:
        await self.controller.stop()
        if self.notifier is not None:
            await self.notifier.stop()  # flushes what is queued, for a few seconds
        if self.mirror is not None:
            await self.mirror.stop()


def build_rollouts(
    sql: Sql,
    publish: Callable[[ProjectTraffic], Awaitable[object]],
    check_content: ContentCheck,
    oci_dir: Path,
    freeze_windows: Sequence[FreezeWindow] = (),
    eval_gate: EvalGateRunner | None = None,
    measure_interval_s: float = 1.0,
    max_analysis_wait_s: float = 300.0,
    pause_scale: float = 1.0,
    registry: RegistryConfig | None = None,
    notifications: NotificationsConfig | None = None,
    meter: metrics.Meter | None = None,
) -> RolloutPlane:
    store = RolloutStore(sql)
    layout = OciLayout(oci_dir)

    series = VersionSeries()
    service = RolloutService(
        store, publish, check_content, FreezeCalendar(freeze_windows), LayoutBlobs(layout)
    )
    analyst = Analyst(
        series, eval_gate, measure_interval_s=measure_interval_s, max_wait_s=max_analysis_wait_s
    )
    controller = RolloutController(service, analyst, pause_scale)
    if meter is not None:
        service.listeners.append(RolloutMetrics(meter).listen)
    mirror = RegistryMirror.from_config(layout, registry) if registry is not None else None
    service.mirror = mirror
    notifier = Notifier.from_config(notifications, sql) if notifications is not None else None
    if notifier is not None:
        service.listeners.append(notifier.listen)
    return RolloutPlane(store, series, service, controller, mirror, notifier)


class LayoutBlobs:
    """Versions in the OCI image layout: the manifest digest computed in the create
    transaction (pure), the files written after it commits, off the event loop."""

    def __init__(self, layout: OciLayout) -> None:
        self._layout = layout

    def manifest_digest(self, record: VersionRecord, content: bytes) -> str:
        manifest = build_manifest(
            content, record.media_type, record.kind.label, _annotations(record)
        )
        return content_digest(manifest)

    def write(self, record: VersionRecord, content: bytes) -> None:
        self._layout.put(
            content,
            record.media_type,
            record.kind.label,
            _annotations(record),
            f"{record.project}/{record.artifact_id}:{record.version_id}",
        )


def _annotations(record: VersionRecord) -> dict[str, str]:
    p = record.provenance
    found = {
        "org.opencontainers.image.source": p.source_repository,
        "org.opencontainers.image.revision": p.source_commit,
        "dev.maestro.source.path": p.source_path,
        "dev.maestro.builder": p.builder,
        "dev.maestro.creator": p.creator,
        "dev.maestro.provenance-id": p.provenance_id,
        "org.opencontainers.image.description": record.description,
    }
    return {k: v for k, v in found.items() if v}


__all__ = ["Kind", "RolloutPlane", "build_rollouts"]
