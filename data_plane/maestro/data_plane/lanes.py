"""Serving-lane load for routing: read from each lane cluster's `/lane-status`, off the hot path.

A Ray Serve lane cluster answers `GET {origin}/lane-status` with every lane's load (replicas'
running and queued requests, KV-cache use, capacity; see `serving/reports.py`). The monitor polls
each cluster that a published snapshot routes to, every `lane_poll_interval_s`, and writes each
lane deployment's load into the routing signals: the rationale shows it, the latency forecast
grows with it, and a saturated lane is excluded. A deployment's lane is the status entry whose
route prefix its `api_base` path starts with (`http://host:8000/tiny/v1` is lane `/tiny`).

Saturated means the next request would be refused or preempted: the lane shed a request in the
last `lane_shed_hold_s` (the relay reports every HTTP 503 from a lane at once, so routing reacts
before the next poll), its KV cache is nearly full, or every slot is busy and it keeps no queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import structlog
import yarl

from maestro.routing.decider import Decider
from maestro.routing.engine import LaneSaturation

log = structlog.get_logger(__name__)
STATUS_PATH = "/lane-status"
SHED_WINDOW_S = 60.0
"""`shed_count` covers this many seconds."""


def lane_address(api_base: str) -> tuple[str, str]:
    """(status URL, route prefix) of a lane deployment's `api_base`."""
    url = yarl.URL(api_base)
    path = url.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return str(url.origin().with_path(STATUS_PATH)), path or "/"


class LaneMonitor:
    def __init__(
        self,
        routes: Decider,
        *,
        interval_s: float,
        shed_hold_s: float,
        kv_cache_saturation: float,
    ) -> None:
        self._routes = routes
        self._interval_s = interval_s
        self._shed_hold_s = shed_hold_s
        self._kv_saturation = kv_cache_saturation
        self._sheds: dict[str, deque[float]] = {}
        self._latest: dict[str, LaneSaturation] = {}
        self._session: aiohttp.ClientSession | None = None

    # -- the request path: a shed seen by the relay -----------------------------------------

    def shed(self, deployment_id: str) -> None:
        """The lane refused a request (HTTP 503): saturated now, not at the next poll.
        `deployment_id` here and below is the lane's `DeploymentSpec.state_key`."""
        sheds = self._sheds.setdefault(deployment_id, deque())
        sheds.append(time.monotonic())
        known = self._latest.get(deployment_id) or LaneSaturation(0, 0, 0.0, 0.0, 0, -1)
        latest = self._latest[deployment_id] = replace(known, shed_count=len(sheds))
        self._routes.set_lane_load(deployment_id, latest, saturated=True)

    # -- polling -----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Poll until cancelled; an unreachable cluster is logged and its lanes left as they
        were (their breakers judge their calls)."""
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lanes.poll_failed")
            await asyncio.sleep(self._interval_s)

    async def poll(self) -> None:
        lanes = self._routes.lane_deployments()
        self._routes.keep_lanes(lanes)  # the gauges of lanes no longer routed to stop
        if not lanes:
            return
        by_status: dict[str, list[tuple[str, str]]] = {}
        for deployment_id, api_base in lanes.items():
            status_url, prefix = lane_address(api_base)
            by_status.setdefault(status_url, []).append((deployment_id, prefix))
        reports = await asyncio.gather(
            *(self._fetch(url) for url in by_status), return_exceptions=True
        )
        now = time.monotonic()
        for (url, deployments), report in zip(by_status.items(), reports, strict=True):
            if isinstance(report, BaseException):
                log.warning("lanes.status_unreachable", url=url, error=str(report))
                continue
            by_prefix = {entry.get("route_prefix"): entry for entry in report.values()}
            for deployment_id, prefix in deployments:
                entry = by_prefix.get(prefix)
                if entry is not None:
                    self._update(deployment_id, entry, now)

    def _update(self, deployment_id: str, entry: Mapping[str, Any], now: float) -> None:
        sheds = self._sheds.get(deployment_id)
        while sheds and sheds[0] < now - SHED_WINDOW_S:
            sheds.popleft()
        # Slots held, less those the engine has not scheduled yet, are generating; the rest
        # (admitted and waiting for a slot, or holding one the engine queues) are waiting.
        engine_waiting = int(entry.get("engine_waiting", 0))
        lane = LaneSaturation(
            running_requests=max(int(entry.get("running", 0)) - engine_waiting, 0),
            queue_depth=int(entry.get("queued", 0)) + engine_waiting,
            kv_cache_usage_ratio=float(entry.get("kv_cache_usage", 0.0)),
            prefix_cache_hit_ratio=float(entry.get("prefix_cache_hit_ratio", 0.0)),
            max_ongoing_requests=int(entry.get("max_ongoing_requests", 0)),
            max_queued_requests=int(entry.get("max_queued_requests", -1)),
            shed_count=len(sheds) if sheds else 0,
        )
        recently_shed = bool(sheds and sheds[-1] >= now - self._shed_hold_s)
        full_without_queue = lane.max_queued_requests == 0 and lane.load >= 1.0
        saturated = (
            recently_shed or full_without_queue or lane.kv_cache_usage_ratio >= self._kv_saturation
        )
        self._latest[deployment_id] = lane
        self._routes.set_lane_load(deployment_id, lane, saturated)

    async def _fetch(self, url: str) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # A busy lane answers slowly (its status app shares the machine with the
                # engines); a slow answer is still worth having.
                timeout=aiohttp.ClientTimeout(total=max(self._interval_s * 8, 3.0))
            )
        async with self._session.get(url) as response:
            response.raise_for_status()
            body = orjson.loads(await response.read())
        lanes: dict[str, Any] = body["lanes"]
        return lanes

    async def aclose(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
