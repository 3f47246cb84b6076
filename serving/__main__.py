"""`python -m serving`: run the lanes of a config on a local Ray instance, or build the tiny model.

    python -m serving run --config lane.yaml           # serve; SIGHUP re-applies the file
    python -m serving serve-config --config lane.yaml  # the Ray Serve config (serveConfigV2)
    python -m serving tiny-model DIR                   # write the test model to DIR

`run` starts Ray (or joins `--address`), starts Ray Serve's HTTP proxy on the config's host and
port, deploys the lane-status application and one application per lane, and prints one JSON line
per event (`lane.ready`, `lane.updated`, `lane.update_failed`). SIGHUP re-reads the file and
re-applies it: knob changes apply in place, model/version/engine changes roll the replicas over
without dropping open streams, and lanes no longer listed are deleted. SIGTERM/SIGINT shut down.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, "time": time.time(), **fields}), flush=True)


def _ray_cpus(config: Any) -> int:
    """Logical CPUs for Ray's scheduler: room for every lane's replicas twice over (a rolling
    update starts new replicas before the old ones leave), and at least the machine's cores."""
    needed = sum(
        lane.serve.num_cpus
        * (
            lane.serve.autoscaling.max_replicas
            if lane.serve.autoscaling
            else lane.serve.num_replicas
        )
        for lane in config.lanes
    )
    return max(os.cpu_count() or 1, math.ceil(2 * needed) + 1)  # type: ignore[no-any-return]


def _apply(config: Any) -> set[str]:
    """Applies the config with Ray Serve's declarative deploy (as KubeRay does with a
    RayService's serveConfigV2): lanes not listed are deleted, unchanged ones kept."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serving.serve_config import STATUS_APP, serve_config

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(serve_config(config)))
    names = {lane.name for lane in config.lanes} | {STATUS_APP}
    _wait_running(names)
    return names - {STATUS_APP}


def _wait_running(names: set[str], timeout_s: float = 900) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = serve.status().applications
        states = {name: statuses[name].status for name in names if name in statuses}
        if any(name not in names for name in statuses):  # deleted lanes still going away
            states["(deleting)"] = ApplicationStatus.DELETING
        failed = [n for n, s in states.items() if s == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            raise RuntimeError(f"lanes failed to deploy: {', '.join(sorted(failed))}")
        if states.keys() == names and all(s == ApplicationStatus.RUNNING for s in states.values()):
            return
        time.sleep(0.5)
    raise TimeoutError("lanes did not reach RUNNING in time")


def run(config_path: Path, address: str | None, metrics_port: int | None) -> int:
    import ray
    from ray import serve

    from serving.config import load_config

    config = load_config(config_path)
    reload = threading.Event()
    stop = threading.Event()

    def on_signals() -> None:
        signal.signal(signal.SIGHUP, lambda *_: reload.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())

    on_signals()
    if config.ingress == "haproxy":
        # Read by Ray Serve when it starts (here, and in the Ray processes it spawns).
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    if config.cpu_placement is not None:
        if address:
            # The engine CPU list and the masks travel to what this process starts, not to the
            # nodes of a running cluster.
            raise SystemExit(
                "cpu_placement applies to the Ray instance `run` starts; start the nodes of an "
                "existing cluster under their own placement instead of --address"
            )
        from serving.placement import reserve_for_engines

        rest = reserve_for_engines(config.cpu_placement.engine_cpus)
        _event(
            "lane.cpu_placement", engine_cpus=config.cpu_placement.engine_cpus, rest=sorted(rest)
        )
    init: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if address:
        init["address"] = address
    else:
        init["num_cpus"] = _ray_cpus(config)
        if metrics_port is not None:
            init["_metrics_export_port"] = metrics_port
    ray.init(**init)
    # A Ray driver's SIGTERM handler exits at once (status 15): ours again, so SIGTERM shuts
    # Serve and Ray down below and the lane's batched spans are exported.
    on_signals()
    serve.start(http_options={"host": config.http.host, "port": config.http.port})
    deployed = _apply(config)
    _event("lane.ready", port=config.http.port, lanes=sorted(deployed))
    while not stop.is_set():
        if reload.wait(0.2):
            reload.clear()
            try:
                config = load_config(config_path)
                deployed = _apply(config)
                _event("lane.updated", lanes=sorted(deployed))
            except Exception as error:  # keep serving the last good config
                _event("lane.update_failed", error=str(error))
    serve.shutdown()
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="serve the lanes of a config file")
    run_parser.add_argument("--config", type=Path, required=True)
    run_parser.add_argument("--address", help="join this Ray cluster instead of starting one")
    run_parser.add_argument("--metrics-port", type=int, help="Ray's Prometheus export port")
    show = commands.add_parser("serve-config", help="print the Ray Serve config (serveConfigV2)")
    show.add_argument("--config", type=Path, required=True)
    tiny = commands.add_parser("tiny-model", help="build the tiny test model")
    tiny.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "serve-config":
        import yaml

        from serving.config import load_config
        from serving.serve_config import serve_config

        print(yaml.safe_dump(serve_config(load_config(args.config)), sort_keys=False), end="")
        return 0
    if args.command == "tiny-model":
        from serving.tiny_model import build_tiny_model

        print(build_tiny_model(args.out))
        return 0
    return run(args.config, args.address, args.metrics_port)


if __name__ == "__main__":
    sys.exit(main())
