"""A 4 MiB prompt with PII in a content part, and the latency of small calls running beside it.

    .venv/bin/python bench/pii_large_prompt_bench.py                # about 45 s on 2 cores
    .venv/bin/python bench/pii_large_prompt_bench.py --phase-s 1    # a smoke run

Issue 15: the PII tagger read only plain-string `content`, on the event loop. Now it reads every
text a provider sees (content parts included) and, above `OFF_LOOP_TAGGING_COST`, in its own
thread. This bench shows both on a real server: every 4 MiB call must be tagged `pii` and routed
to the in-house deployment, and small calls from other callers should keep their latency.

Processes: the simulated provider (`maestro sim-provider`, its own process, unpaced, no time to
first token) serving model groups `hosted` and `local` (in house; `content_tags: {pii:
[local]}`); Maestro in this process (`start_control_plane`, the assembly of `maestro up`, HTTP
ingress on, logging at warning, heap settled as `maestro up` does), and the load client on the
same event loop (its share is the same in every phase; the 4 MiB bodies are serialised once).

Phases, each `--phase-s` seconds, in one run: `--small` callers each send a small non-streaming
call (`model: hosted`, 8 tokens), then wait `--think-ms`; in every phase but the baseline one
more caller starts the 4 MiB call every `--big-every-ms` (back to back when a call takes
longer; model `hosted`, three text parts: an instruction, 4 MiB of text, then an e-mail
address). The 4 MiB text is prose, or log lines (digit-dense: the tagger's slowest realistic
text). Each kind runs with tagging off the loop (as built) and on the loop
(`OFF_LOOP_TAGGING_COST` raised past the prompt: the old behaviour); a floor phase stubs the
tagger out (it finds nothing, so that call routes hosted): what moving 4 MiB through the client,
the ingress, the relay and the sim costs the small calls without any scan.
Figures: small calls' p50/p99/max, big calls' count, p50 and routing. Writes
`results/pii_large_prompt.md` next to this file (not with `--out -`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is on sys.path but the repository root is not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import orjson

from bench._measure import Latency, machine, progress, summarise

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MIB = 1024 * 1024
EMAIL = "jane.doe@example.com"
SIM_PROFILE = "models: [hosted, local]\ndefault: {}\n"
ROUTER_CONFIG = """\
model_list:
  - model_name: hosted
    litellm_params: {{model: openai/hosted, api_base: "{base}"}}
    model_info: {{id: hosted-a, quality: 0.9, in_house: false}}
  - model_name: local
    litellm_params: {{model: openai/local, api_base: "{base}"}}
    model_info: {{id: local-a, quality: 0.5, in_house: true}}
router:
  fallbacks: [{{primary: hosted, on_error: [local]}}]
policies:
  content_tags:
    pii: [local]
"""
SMALL_BODY = orjson.dumps(
    {
        "model": "hosted",
        "messages": [{"role": "user", "content": "Summarise this memo in one line."}],
        "max_tokens": 8,
    }
)
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    prompt: str | None  # "prose", "logs" or None (no big call)
    off_loop: bool = True
    scan: bool = True  # False: the tagger finds nothing at once (the floor, not a real mode)


PHASES = (
    Phase("baseline: small calls only", None),
    Phase("+ 4 MiB prose, no content scan (floor; routes hosted)", "prose", scan=False),
    Phase("+ 4 MiB prose, tagging off the loop", "prose"),
    Phase("+ 4 MiB prose, tagging on the loop (old)", "prose", off_loop=False),
    Phase("+ 4 MiB log lines, tagging off the loop", "logs"),
    Phase("+ 4 MiB log lines, tagging on the loop (old)", "logs", off_loop=False),
)


@dataclass
class Outcome:
    phase: Phase
    small: Latency
    small_errors: int = 0
    big: list[int] = field(default_factory=list)
    big_in_house: int = 0
    big_errors: int = 0


# -- prompts ----------------------------------------------------------------------------------


def prose(size: int) -> str:
    sentences = (
        "The committee reviewed the proposal on Tuesday and asked for a clearer rationale. ",
        "Meanwhile the team kept shipping small improvements and wrote down their effect. ",
        "In 2023 the platform served 12 regions, and by spring it had grown to 31 of them. ",
        "She summarised the meeting: three risks, two open questions and one decision.\n",
    )
    text = "".join(sentences) * (size // sum(map(len, sentences)) + 1)
    return text[:size]


def log_lines(size: int) -> str:
    lines = []
    length = i = 0
    while length < size:
        line = (
            f"2024-03-{i % 28 + 1:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
            f".{i % 1000:03d}Z "
            f"INFO req={i * 7919 % 1000000:06d} status={200 + i % 5} bytes={i * 131 % 99991} "
            f"ms={i % 997}\n"
        )
        lines.append(line)
        length += len(line)
        i += 1
    return "".join(lines)[:size]


def big_body(kind: str) -> bytes:
    text = prose(4 * MIB) if kind == "prose" else log_lines(4 * MIB)
    parts = [
        {"type": "text", "text": "Summarise the attached document."},
        {"type": "text", "text": text},
        {"type": "text", "text": f"Mail the summary to {EMAIL}."},
    ]
    body = {"model": "hosted", "messages": [{"role": "user", "content": parts}], "max_tokens": 8}
    return orjson.dumps(body)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def sim_provider(directory: Path) -> Iterator[str]:
    """The simulated provider in its own process group; yields its base URL."""
    port = free_port()
    profile = directory / "sim-profile.yaml"
    profile.write_text(SIM_PROFILE)
    log = (directory / "sim.log").open("wb")
    command = [str(BIN / "maestro"), "sim-provider", "--port", str(port), "--profile", str(profile)]
    popen = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        log.close()


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S:.0f} s")


@contextlib.asynccontextmanager
async def maestro(directory: Path, sim: str) -> AsyncIterator[tuple[str, str]]:
    """Maestro in this process; yields the chat completions URL and an API key."""
    from maestro.app.config import load_config
    from maestro.app.server import start_control_plane
    from maestro.clients import AsyncMaestroClient
    from maestro.core.auth import OPERATOR, TENANT_SCOPES
    from maestro.core.heap import settle_heap
    from maestro.core.logs import configure_logging
    from maestro.core.telemetry import build_telemetry
    from maestro.v1 import route_service_pb2 as rpb

    config = load_config(
        None,
        env={},
        **{
            "server.port": 0,
            "store.sqlite_path": str(directory / "maestro.db"),
            "data_plane.http_port": 0,
            "logging.level": "warning",
        },
    )
    configure_logging(config.logging)
    telemetry = build_telemetry(config.telemetry)
    plane = await start_control_plane(config, telemetry)
    try:
        plane.projects.create_project("bench")
        # Endpoints and in-house facts are the operator's to state: an operator key applies.
        scopes = TENANT_SCOPES | {OPERATOR}
        key = plane.projects.create_key_offline("bench", "bench", scopes, "bench").secret
        async with AsyncMaestroClient(plane.address, api_key=key) as client:
            yaml = ROUTER_CONFIG.format(base=f"{sim}/v1")
            await client.routes.ApplyConfig(
                rpb.ApplyConfigRequest(
                    route_config=rpb.RouteConfig(
                        name="projects/bench/routeConfig", config_yaml=yaml
                    )
                )
            )
        assert plane.data is not None
        assert plane.data.http_port is not None
        settle_heap()  # as `maestro up` once start-up is done
        yield f"http://127.0.0.1:{plane.data.http_port}/v1/chat/completions", key
    finally:
        await plane.stop(grace_s=0)
        telemetry.shutdown()


# -- load -------------------------------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    # A BytesIO, which aiohttp sends in chunks (raw bytes over 1 MiB make it warn).
    async with session.post(url, data=io.BytesIO(body)) as response:
        payload: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload}")
        return payload


async def run_phase(
    session: aiohttp.ClientSession, url: str, phase: Phase, bodies: dict[str, bytes], args: Any
) -> Outcome:
    from maestro.routing import decider
    from maestro.routing.tagging import ContentTagger

    clock = time.perf_counter_ns
    deadline = clock() + int(args.phase_s * 1e9)
    samples: list[int] = []
    outcome = Outcome(phase, summarise([]))
    threshold = decider.OFF_LOOP_TAGGING_COST
    tags = ContentTagger.tags
    if not phase.off_loop:
        decider.OFF_LOOP_TAGGING_COST = 1 << 40  # every prompt tagged inline, as before
    if not phase.scan:
        ContentTagger.tags = lambda self, texts: frozenset()  # type: ignore[method-assign]

    async def small_caller() -> None:
        while clock() < deadline:
            started = clock()
            try:
                answer = await post(session, url, SMALL_BODY)
                assert answer["maestro"]["model_group"] == "hosted"
                samples.append(clock() - started)
            except Exception:
                outcome.small_errors += 1
            await asyncio.sleep(args.think_ms / 1000)

    async def big_caller(body: bytes) -> None:
        while clock() < deadline:
            started = clock()
            try:
                answer = await post(session, url, body)
                outcome.big.append(clock() - started)
                outcome.big_in_house += answer["maestro"]["model_group"] == "local"
            except Exception as error:
                progress(f"big call failed: {error!s:.200}")
                outcome.big_errors += 1
            # The same offered load in every phase: one call per period (or back to back).
            await asyncio.sleep(max(0.0, args.big_every_ms / 1000 - (clock() - started) / 1e9))

    try:
        callers = [small_caller() for _ in range(args.small)]
        if phase.prompt is not None:
            callers.append(big_caller(bodies[phase.prompt]))
        await asyncio.gather(*callers)
    finally:
        decider.OFF_LOOP_TAGGING_COST = threshold
        ContentTagger.tags = tags  # type: ignore[method-assign]
    outcome.small = summarise(samples)
    return outcome


async def measure(args: Any) -> tuple[list[Outcome], dict[str, Any]]:
    facts = machine(["aiohttp", "pydantic", "grpcio"])
    bodies = {"prose": big_body("prose"), "logs": big_body("logs")}
    with (
        tempfile.TemporaryDirectory(prefix="pii-bench-") as folder,
        sim_provider(Path(folder)) as sim,
    ):
        await wait_ready(f"{sim}/healthz")
        async with maestro(Path(folder), sim) as (url, key):
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                for body in (SMALL_BODY, bodies["prose"]):  # warm-up: connections, caches
                    await post(session, url, body)
                outcomes = []
                for phase in PHASES:
                    progress(phase.name)
                    outcomes.append(await run_phase(session, url, phase, bodies, args))
    facts["load_average_end"] = os.getloadavg()
    facts["big_body_bytes"] = {kind: len(body) for kind, body in bodies.items()}
    return outcomes, facts


# -- report -----------------------------------------------------------------------------------


def report(outcomes: list[Outcome], facts: dict[str, Any], args: Any, command: str) -> str:
    from maestro.routing.decider import OFF_LOOP_TAGGING_COST

    rows = [
        "| phase | small calls | p50 ms | p99 ms | max ms | errors | 4 MiB calls | "
        "4 MiB p50 ms | routed in house |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        big = summarise(o.big)
        rows.append(
            f"| {o.phase.name} | {o.small.n} | {o.small.p50_us / 1000:.2f} | "
            f"{o.small.p99_us / 1000:.2f} | {o.small.max_us / 1000:.2f} | {o.small_errors} | "
            f"{big.n} | {big.p50_us / 1000:.1f} | {o.big_in_house}/{big.n + o.big_errors} |"
        )
    return "\n".join(
        [
            "# PII tagging of a 4 MiB prompt beside small calls",
            "",
            f"Command: `{command}`",
            "",
            f"Date {facts['date']}, {facts['nproc']} cores ({facts['cpu']}), Python "
            f"{facts['python']}, commit {facts['commit']} with modified files: "
            f"{len(facts['modified_files'])}. Load average (1 min) at start "
            f"{facts['loadavg_1m_at_start']:.2f}, at end {facts['load_average_end'][0]:.2f} "
            "(a shared machine).",
            "",
            f"{args.small} small callers (8-token non-streaming calls, {args.think_ms:g} ms "
            f"between calls), {args.phase_s:g} s per phase; one 4 MiB call every "
            f"{args.big_every_ms:g} ms (or back to back when slower), their bodies "
            f"{facts['big_body_bytes']['prose']:,} and {facts['big_body_bytes']['logs']:,} "
            "bytes, an e-mail address in their third text part. Tagging moves off the "
            f"loop above {OFF_LOOP_TAGGING_COST:,} characters.",
            "",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--phase-s", type=float, default=6.0, help="seconds per phase")
    parser.add_argument("--small", type=int, default=8, help="concurrent small callers")
    parser.add_argument("--think-ms", type=float, default=10.0, help="wait between small calls")
    parser.add_argument(
        "--big-every-ms", type=float, default=600.0, help="start a 4 MiB call this often"
    )
    parser.add_argument(
        "--out", default=str(BENCH / "results" / "pii_large_prompt.md"), help="'-': print only"
    )
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/pii_large_prompt_bench.py", *sys.argv[1:]])
    outcomes, facts = asyncio.run(measure(args))
    text = report(outcomes, facts, args, command)
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
