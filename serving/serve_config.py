"""The lane config as a Ray Serve config: the same document a RayService's `serveConfigV2`
holds, which the local launcher applies with Ray Serve's declarative deploy.

Each lane is an application `serving.app:build` whose `args` carry only what the engine is built
from (model, version, engine knobs); Ray Serve hashes the args into the code version, so a change
there rolls the replicas over, while the deployment options beside them (`max_ongoing_requests`,
`max_queued_requests`, replicas, health checks, `user_config`) apply to running replicas.
"""

from __future__ import annotations

from typing import Any

from serving.config import LaneConfig, LaneSpec

GATEWAY = "VllmGateway"
STATUS_APP = "lane-status"
STATUS_DEPLOYMENT = "LaneStatus"
STATUS_ROUTE = "/lane-status"


def engine_args(lane: LaneSpec) -> dict[str, Any]:
    """What a replica is built from; any change here means new replicas."""
    return lane.model_dump(mode="json", exclude={"serve", "stream"})


def ray_max_ongoing(lane: LaneSpec) -> int:
    """Requests Ray Serve lets into one replica: the lane's own running and queued requests
    (`admission.py` holds and sheds them) with room to spare, so a request over the lane's
    capacity reaches the replica and is refused at once instead of waiting in Ray's queue."""
    knobs = lane.serve
    queued = knobs.max_queued_requests
    if queued < 0:
        queued = 4 * knobs.max_ongoing_requests
    return 2 * (knobs.max_ongoing_requests + queued) + 16


def deployment_options(lane: LaneSpec) -> dict[str, Any]:
    """The gateway's Ray Serve deployment options, named as Ray Serve's config names them.
    The lane's admission limits travel in `user_config`, so changing them is a light update."""
    knobs = lane.serve
    options: dict[str, Any] = {
        "max_ongoing_requests": ray_max_ongoing(lane),
        "max_queued_requests": -1,
        "health_check_period_s": knobs.health_check_period_s,
        "health_check_timeout_s": knobs.health_check_timeout_s,
        "graceful_shutdown_timeout_s": knobs.graceful_shutdown_timeout_s,
        "ray_actor_options": {"num_cpus": knobs.num_cpus, "num_gpus": knobs.num_gpus},
        "user_config": {
            "max_chunk_delay_ms": lane.stream.max_chunk_delay_ms,
            "max_ongoing_requests": knobs.max_ongoing_requests,
            "max_queued_requests": knobs.max_queued_requests,
        },
    }
    if knobs.autoscaling is not None:
        options["autoscaling_config"] = {
            "min_replicas": knobs.autoscaling.min_replicas,
            "max_replicas": knobs.autoscaling.max_replicas,
            "target_ongoing_requests": knobs.autoscaling.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = knobs.num_replicas
    if knobs.max_surge_percent is not None:
        options["max_surge_percent"] = knobs.max_surge_percent
    return options


def serve_config(config: LaneConfig) -> dict[str, Any]:
    """Ray Serve's multi-application config for every lane plus the lane-status app."""
    applications: list[dict[str, Any]] = [
        {
            "name": STATUS_APP,
            "route_prefix": STATUS_ROUTE,
            "import_path": "serving.status:deployment",
        }
    ]
    for lane in config.lanes:
        applications.append(
            {
                "name": lane.name,
                "route_prefix": lane.route_prefix,
                "import_path": "serving.app:build",
                "args": {
                    "lane": engine_args(lane),
                    "status_interval_s": config.status_report_interval_s,
                },
                "deployments": [{"name": GATEWAY, **deployment_options(lane)}],
            }
        )
    return {
        "http_options": {"host": config.http.host, "port": config.http.port},
        # Access logs would print a line per request and per status report from every replica.
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
        "applications": applications,
    }
