"""CPU placement of a lane (`cpu_placement`): the engine workers' threads run on the engine CPUs
alone, and every other process the launcher started (Ray's daemons, the replicas, the engines'
schedulers, the ingress) on the rest. One real lane, started as a user starts it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from serving.config import LaneConfig
from serving.placement import parse_cpus, reserve_for_engines
from tests.lane_support import ROOT, SERVING_PYTHON, build_model, free_port, launcher, wait_event

CONFIG = """
cpu_placement: {{engine_cpus: "{engine}"}}
http: {{host: 127.0.0.1, port: {port}}}
lanes:
  - name: placed
    model: {model}
    served_model_name: tiny-llama
    engine: {{dtype: float32, max_model_len: 512, max_num_seqs: 4, enforce_eager: true}}
    serve: {{max_ongoing_requests: 4, num_cpus: 0.25}}
"""


def descendants(root: int) -> dict[int, str]:
    """pid -> process name (`comm`, at most 15 characters) of every process below `root`."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        names[int(entry)] = name
        children.setdefault(parent, []).append(int(entry))
    found: dict[int, str] = {}
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found[child] = names[child]
            pending.append(child)
    return found


def thread_masks(pid: int) -> set[frozenset[int]]:
    """The CPU masks of a process's threads (empty if it has ended meanwhile)."""
    masks = set()
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return set()
    for tid in threads:
        try:
            masks.add(frozenset(os.sched_getaffinity(int(tid))))
        except ProcessLookupError:
            continue
    return masks


@pytest.fixture(scope="module")
def placed_lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, str]]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("a CPU placement needs at least two CPUs")
    engine = str(cpus[0])
    workdir = tmp_path_factory.mktemp("placed")
    port = free_port()
    config = workdir / "lanes.yaml"
    model = build_model(workdir / "tiny-llama")
    config.write_text(CONFIG.format(engine=engine, port=port, model=model))
    with launcher(config, workdir / "lane.log", dict(os.environ)) as process:
        placement = wait_event(process, "lane.cpu_placement", timeout_s=60)
        assert placement["rest"] == cpus[1:]
        wait_event(process, "lane.ready", timeout_s=600)
        yield process.pid, port, engine


def test_engine_workers_have_the_engine_cpus_and_every_other_lane_process_the_rest(
    placed_lane: tuple[int, int, str],
) -> None:
    launcher_pid, _, engine = placed_lane
    engine_cpus = parse_cpus(engine)
    rest = frozenset(os.sched_getaffinity(0)) - engine_cpus
    processes = descendants(launcher_pid)
    workers = {pid for pid, name in processes.items() if name.startswith("VLLM::Worker")}
    schedulers = {pid for pid, name in processes.items() if name.startswith("VLLM::EngineCor")}
    replicas = {pid for pid, name in processes.items() if name.startswith("ray::ServeRepl")}
    assert workers, processes
    assert schedulers, processes
    assert replicas, processes
    assert {"raylet", "haproxy"} <= set(processes.values()), processes
    for pid in workers:
        assert thread_masks(pid) == {engine_cpus}, processes[pid]
    for pid in set(processes) - workers:
        assert thread_masks(pid) <= {rest}, processes[pid]


def test_a_placed_lane_streams_a_completion(placed_lane: tuple[int, int, str]) -> None:
    _, port, _ = placed_lane
    response = httpx.post(
        f"http://127.0.0.1:{port}/placed/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Write about the sea."}],
            "max_tokens": 24,
            "ignore_eos": True,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("0", {0}), ("0-2,5", {0, 1, 2, 5}), ("0-1|4,6", {0, 1, 4, 6})],
)
def test_cpu_lists_parse_in_vllms_syntax(spec: str, cpus: set[int]) -> None:
    assert parse_cpus(spec) == cpus


@pytest.mark.parametrize("spec", ["", "a", "3-1", "0,", "1-"])
def test_a_malformed_engine_cpu_list_is_rejected_with_the_config(spec: str) -> None:
    with pytest.raises(ValidationError, match="engine_cpus"):
        LaneConfig.model_validate(
            {"cpu_placement": {"engine_cpus": spec}, "lanes": [{"name": "a", "model": "m"}]}
        )


def test_a_placement_that_leaves_no_cpu_for_the_rest_is_refused_before_anything_moves() -> None:
    before = os.sched_getaffinity(0)
    everything = ",".join(map(str, sorted(before)))
    with pytest.raises(ValueError, match="leaves no CPU"):
        reserve_for_engines(everything)
    with pytest.raises(ValueError, match="not available"):
        reserve_for_engines(str(max(before) + 1))
    assert os.sched_getaffinity(0) == before
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ


def test_a_placement_with_an_existing_cluster_is_refused_before_joining_it(tmp_path: Path) -> None:
    config = tmp_path / "lanes.yaml"
    config.write_text(CONFIG.format(engine="0", port=free_port(), model=tmp_path / "none"))
    command = ["-m", "serving", "run", "--config", str(config), "--address", "127.0.0.1:1"]
    result = subprocess.run(
        [str(SERVING_PYTHON), *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cpu_placement applies to the Ray instance `run` starts" in result.stderr
