"""The lane-status application: every lane's load, in one small JSON document.

Gateway replicas report here (`report`); `GET /lane-status` answers `{"lanes": {name: {...}}}`
(see `reports.LaneReports`). It is its own application, with its own route and replica, so a
status read never waits in the queue of the lane it describes, and one read covers every lane of
the cluster.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.requests import Request

from serving.reports import LaneReports
from serving.serve_config import STATUS_DEPLOYMENT


@serve.deployment(
    name=STATUS_DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
)
class LaneStatus:
    def __init__(self) -> None:
        self._reports = LaneReports()

    def report(self, lane: str, replica: str, figures: dict[str, Any]) -> None:
        self._reports.report(lane, replica, figures)

    async def __call__(self, request: Request) -> dict[str, Any]:
        return {"lanes": self._reports.lanes()}


deployment = LaneStatus.bind()  # type: ignore[attr-defined]
"""The import path of the status application: `serving.status:deployment`."""
