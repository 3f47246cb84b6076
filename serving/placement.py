"""CPU placement for lanes on CPU-only nodes (vLLM's CPU backend).

vLLM binds each engine worker's compute threads to the CPUs in `VLLM_CPU_OMP_THREADS_BIND`, but
nothing keeps the rest of a lane off those CPUs: Ray's daemons and metrics agent, the ingress,
the replicas' HTTP servers and the engines' schedulers all float over every core and preempt the
forward pass. With a placement, the engine CPUs belong to the engine workers alone:

1. the launcher (`python -m serving run`) confines itself to the other CPUs before it starts
   Ray, so every Ray process, replica and ingress it starts inherits that mask;
2. a replica widens its own mask to the engine CPUs only while vLLM spawns its engine (the
   OpenMP runtime in the worker drops any place outside the mask the process starts with), then
   confines itself and the engine's scheduler process back to its own CPUs; the workers keep
   their bound threads.

CPU lists use vLLM's syntax: `0-3,8`, and `|` between tensor-parallel ranks (`0-3|4-7`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

OMP_BIND = "VLLM_CPU_OMP_THREADS_BIND"
"""vLLM's engine-CPU list; `auto` (vLLM picks) and `nobind` name no CPUs."""
WORKER_NAME = "VLLM::Worker"
"""The process title vLLM gives its engine workers (`VLLM::Worker`, `VLLM::Worker_TP1`...)."""


def parse_cpus(spec: str) -> frozenset[int]:
    """The CPUs a vLLM CPU list names, over all ranks: `"0-1|4,6"` -> {0, 1, 4, 6}."""
    cpus: set[int] = set()
    for rank in spec.split("|"):
        for part in rank.split(","):
            low, dash, high = part.strip().partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise ValueError(f"not a CPU list: {spec!r} (use e.g. '0-3' or '0-3|4-7')")
            first, last = int(low), int(high or low)
            if last < first:
                raise ValueError(f"descending CPU range {part.strip()!r} in {spec!r}")
            cpus.update(range(first, last + 1))
    return frozenset(cpus)


def engine_cpus_from_environment() -> frozenset[int]:
    spec = os.environ.get(OMP_BIND, "auto")
    return frozenset() if spec in ("auto", "nobind") else parse_cpus(spec)


def confine(pid: int, cpus: frozenset[int]) -> None:
    """Sets the CPU mask of every thread of `pid` (the kernel keeps one mask per thread)."""
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(int(tid), cpus)


def reserve_for_engines(engine_spec: str) -> frozenset[int]:
    """For the launcher, before it starts Ray: names the engine CPUs for vLLM and moves this
    process (and so everything it starts) to the others, which it returns."""
    engine = parse_cpus(engine_spec)
    allowed = frozenset(os.sched_getaffinity(0))
    if not engine <= allowed:
        raise ValueError(
            f"engine CPUs {sorted(engine - allowed)} are not available to this process "
            f"(available: {sorted(allowed)})"
        )
    rest = allowed - engine
    if not rest:
        raise ValueError("cpu_placement leaves no CPU for Ray, the ingress and the replicas")
    os.environ[OMP_BIND] = engine_spec
    confine(os.getpid(), rest)
    return rest


@contextlib.contextmanager
def engine_spawn() -> Iterator[None]:
    """Around the engine's start in a replica: if the engine CPUs lie outside this process's
    mask (the launcher reserved them), widens it for the spawn, then confines this process and
    the engine's processes other than its workers back to the replica's CPUs."""
    own = frozenset(os.sched_getaffinity(0))
    engine = engine_cpus_from_environment()
    if engine <= own:
        yield
        return
    import psutil  # the serving venv's (Ray's); config validation imports this module too

    os.sched_setaffinity(0, own | engine)
    try:
        yield
    finally:
        me = psutil.Process()
        confine(me.pid, own)  # this thread, and those started during the spawn (ZMQ, outputs)
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if not child.name().startswith(WORKER_NAME):
                    confine(child.pid, own)
