"""Routing benchmarks, one run, against baselines measured in the same run (issue 3, scope 7).

    .venv/bin/python bench/route_bench.py            # about 3-4 minutes on 2 cores
    .venv/bin/python bench/route_bench.py --quick    # a smoke run: small sizes, short windows
    .venv/bin/python bench/route_bench.py --profile  # cProfile of the servers under Choose load

(a) `RoutingSnapshot.decide` latency p50/p99 (perf_counter_ns around each call, after warm-up)
    at 10, 100, 1,000 and 10,000 deployments of one model group, with the seed Rego policy, the
    seed's `pii` content-tag rule and live signals (some breakers open); plain and pii-tagged
    requests; the snapshot build time (parse + compile + snapshot) per size; and what Choose
    adds to each decision, its rationale message (`convert.decision_message`), per size.
(b) LiteLLM Router's `async_get_available_deployment` (default strategy, simple-shuffle) on the
    equivalent model list, timed the same way, and the LiteLLM / Maestro ratios.
(c) Choose and StreamChoose throughput and latency of `maestro up` (seed config, seed policy,
    logging at warning, default telemetry; and Choose again with trace_sampling_ratio 0) against
    a raw grpc.aio echo server (`_echo_server.py`), each driven by the same client: one channel,
    pre-serialized request bytes, C concurrent workers for a fixed window after a warm-up.
(d) Where a Choose call's time goes inside Maestro's code, in-process (no gRPC): each stage of
    the servicer timed on its own. `--profile` goes further: cProfile inside the two servers
    (echo and `maestro up`) for the measured window only, written to
    `results/route_bench_profile.txt`.

Prints a table with the ratios and the acceptance goals, and writes `results/route_bench.json`
and `results/route_bench.md` next to this file. Nothing here is imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything imports litellm: never fetch the price map from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import _route_fixtures as fx
import uvloop
from _measure import Latency, progress, summarise, time_awaits, time_calls
from _measure import machine as measure_machine
from _rpc_load import (
    BENCH,
    CHOOSE_PATH,
    DEMO_PARENT,
    STREAM_CHOOSE_PATH,
    Load,
    RpcRow,
    Run,
    check_decisions,
    choose_request,
    drive,
    profile_choose,
    start_echo,
    start_maestro,
    wait_ready,
)

from maestro.control_plane.route import convert
from maestro.routing.decider import Choice
from maestro.routing.engine import Decision
from maestro.v1 import route_service_pb2 as pb

RESULTS = BENCH / "results"
MESSAGES = [{"role": "user", "content": "hi"}]
GOAL_P99_US = {100: 25.0, 10_000: 100.0}
GOAL_SPEEDUP = 10.0
GOAL_RPC_SHARE = 0.85
FRAMED_LABEL = "Choose -> echo + 2 interceptors + limit"


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure; `--quick` shrinks everything for a smoke run."""

    sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    engine_calls: int = 20_000
    engine_warmup: int = 2_000
    engine_max_s: float = 5.0
    # LiteLLM: (calls, seconds) caps per size; whichever comes first ends the series.
    litellm_caps: dict[int, tuple[int, float]] = field(
        default_factory=lambda: {
            10: (20_000, 6.0),
            100: (20_000, 6.0),
            1_000: (20_000, 10.0),
            10_000: (200, 20.0),
        }
    )
    rationale_calls: int = 2_000
    rationale_max_s: float = 2.0
    load: Load = field(default_factory=lambda: Load(16, warmup_s=1.0, duration_s=5.0, rounds=2))
    section_calls: int = 3_000


QUICK = Plan(
    sizes=(10, 100, 1_000),
    engine_calls=2_000,
    engine_warmup=200,
    engine_max_s=1.0,
    litellm_caps={10: (500, 1.0), 100: (500, 1.0), 1_000: (100, 2.0)},
    rationale_calls=200,
    rationale_max_s=0.5,
    load=Load(16, warmup_s=0.5, duration_s=1.0, rounds=2),
    section_calls=300,
)


# -- (a) the engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineRow:
    deployments: int
    config_bytes: int
    parse_ms: float
    compile_ms: float
    snapshot_ms: float
    build_ms: float
    breakers_open: int
    plain: Latency
    pii: Latency
    plain_winner: str
    pii_winner: str
    # What Choose adds per call on top of the decision: the rationale message (capped at 16
    # candidates) that `convert.decision_message` builds for the plain request's decision.
    rationale: Latency


def rationale_of(decision: Decision) -> object:
    """Choose's response body for a decision, as `RouteServicer.Choose` builds it."""
    choice = Choice(
        decision, "1", frozenset(), frozenset(), uuid.uuid4().hex, datetime.now(UTC), 0, False
    )
    return convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)


def bench_engine(plan: Plan) -> list[EngineRow]:
    # A first parse imports LiteLLM's catalog (seconds); keep it out of the build times.
    fx.build_snapshot(fx.synthetic_config_yaml(2))
    rows = []
    for size in plan.sizes:
        text = fx.synthetic_config_yaml(size)
        snapshot, times = fx.build_snapshot(text)
        opened = fx.set_live_signals(snapshot)
        decide = snapshot.decide
        series = {}
        winners = {}
        for label, request in (("plain", fx.PLAIN_REQUEST), ("pii", fx.PII_REQUEST)):
            samples = time_calls(
                decide, request, plan.engine_calls, plan.engine_warmup, plan.engine_max_s
            )
            series[label] = summarise(samples)
            decision = decide(request)
            winners[label] = snapshot.deployments[decision.winner].deployment_id
        plain, pii = series["plain"], series["pii"]
        rationale = summarise(
            time_calls(
                rationale_of,
                decide(fx.PLAIN_REQUEST),
                plan.rationale_calls,
                plan.rationale_calls // 10,
                plan.rationale_max_s,
            )
        )
        rows.append(
            EngineRow(
                deployments=size,
                config_bytes=len(text.encode()),
                parse_ms=times.parse_s * 1e3,
                compile_ms=times.compile_s * 1e3,
                snapshot_ms=times.snapshot_s * 1e3,
                build_ms=times.total_s * 1e3,
                breakers_open=opened,
                plain=plain,
                pii=pii,
                plain_winner=winners["plain"],
                pii_winner=winners["pii"],
                rationale=rationale,
            )
        )
        progress(
            f"engine {size:>6}: build {times.total_s * 1e3:8.1f} ms, p50/p99 "
            f"{plain.p50_us:.1f}/{plain.p99_us:.1f} us (pii {pii.p50_us:.1f}/{pii.p99_us:.1f} "
            f"us), rationale p50 {rationale.p50_us:.1f} us"
        )
        del snapshot, decide
        gc.collect()
    return rows


# -- (b) LiteLLM ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LitellmRow:
    deployments: int
    router_build_s: float
    latency: Latency
    picked: str


async def _litellm_size(size: int, calls: int, max_s: float) -> LitellmRow:
    from litellm.router import Router

    started = time.perf_counter()
    router = Router(model_list=fx.litellm_model_list(size))  # routing_strategy: simple-shuffle
    built = time.perf_counter() - started
    # In litellm 1.110 the attribute is deprecated (a DeprecationWarning on each read, in favour
    # of Router.select) and takes `request_kwargs`; read it once, outside the timed loop.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pick = router.async_get_available_deployment

    async def one() -> object:
        return await pick(model=fx.MAIN_GROUP, request_kwargs={}, messages=MESSAGES)

    samples = await time_awaits(one, calls, warmup=min(200, calls), max_s=max_s)
    picked = await one()
    picked_id = str((picked.get("model_info") or {}).get("id")) if isinstance(picked, dict) else "?"
    retire = getattr(router, "retire", None)
    if callable(retire):
        retire()
    return LitellmRow(size, built, summarise(samples), picked_id)


def bench_litellm(plan: Plan) -> list[LitellmRow]:
    import litellm

    litellm.suppress_debug_info = True
    rows = []
    for size in plan.sizes:
        calls, max_s = plan.litellm_caps[size]
        row = uvloop.run(_litellm_size(size, calls, max_s))
        rows.append(row)
        progress(
            f"litellm {size:>6}: build {row.router_build_s:6.1f} s, p50/p99 "
            f"{row.latency.p50_us:.1f}/{row.latency.p99_us:.1f} us over {row.latency.n} calls"
        )
        gc.collect()
    return rows


# -- (c) RPC ----------------------------------------------------------------------------------


async def bench_rpc(load: Load, workdir: Path) -> tuple[list[RpcRow], dict[str, str]]:
    echo = start_echo(workdir / "echo")
    framed = start_echo(workdir / "echo-framed", name="echo (framed)", framed=True)
    traced = start_maestro(workdir / "maestro", "maestro", None)
    untraced = start_maestro(workdir / "maestro-unsampled", "maestro (sampling 0)", 0.0)
    servers = (echo, framed, traced, untraced)
    try:
        await asyncio.gather(
            wait_ready(traced, workdir / "maestro"),
            wait_ready(untraced, workdir / "maestro-unsampled"),
        )
        checks = await check_decisions(traced)
        echo.api_key = framed.api_key = traced.api_key  # the same metadata; echoes ignore it
        unary = choose_request().SerializeToString()
        streamed = pb.StreamChooseRequest(request=choose_request()).SerializeToString()
        comparisons = (
            (
                ("Choose -> raw echo (baseline)", echo, CHOOSE_PATH, unary, False),
                ("Choose -> maestro up", traced, CHOOSE_PATH, unary, False),
                ("Choose -> maestro up, trace sampling 0", untraced, CHOOSE_PATH, unary, False),
                (FRAMED_LABEL, framed, CHOOSE_PATH, unary, False),
            ),
            (
                ("StreamChoose -> raw echo (baseline)", echo, STREAM_CHOOSE_PATH, streamed, True),
                ("StreamChoose -> maestro up", traced, STREAM_CHOOSE_PATH, streamed, True),
            ),
        )
        rows = []
        for comparison in comparisons:
            runs: dict[str, list[Run]] = {label: [] for label, *_ in comparison}
            for _ in range(load.rounds):
                for label, server, path, payload, streaming in comparison:
                    metadata = (("x-api-key", server.api_key),)
                    runs[label].append(
                        await drive(
                            label, server, path, payload, metadata, streaming=streaming, load=load
                        )
                    )
            rows += [
                RpcRow.merge(
                    label, server.name, path.rsplit("/", 1)[-1], load.concurrency, len(payload),
                    runs[label],
                )
                for label, server, path, payload, _ in comparison
            ]  # fmt: skip
        return rows, checks
    finally:
        for server in servers:
            server.stop()


# -- (d) in-process sections of the Choose path -----------------------------------------------


@dataclass(frozen=True, slots=True)
class SectionRow:
    stage: str
    latency: Latency


async def bench_sections(plan: Plan) -> list[SectionRow]:
    """Each stage of `RouteServicer.Choose` on its own, with the seed config and a tracer that
    records every span (the server's default), no gRPC."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from maestro.control_plane.route import convert
    from maestro.control_plane.route.service import RouteService
    from maestro.control_plane.route.store import RouteConfigStore, digest_of
    from maestro.control_plane.schema import MIGRATIONS
    from maestro.control_plane.store.sqlite import SqliteSql
    from maestro.core.auth import Principal
    from maestro.routing.decider import ChooseInput
    from maestro.routing.snapshots import Revision as StoredRevision
    from maestro.routing.snapshots import SnapshotRegistry, compile_revision
    from maestro.routing.tagging import ContentTagger

    config_yaml = fx.SEED_CONFIG_PATH.read_text()
    modules = tuple(fx.seed_policy())
    revision = StoredRevision(
        DEMO_PARENT, 1, config_yaml, modules, "bench", "", digest_of(config_yaml, modules),
        datetime.now(UTC),
    )  # fmt: skip
    registry = SnapshotRegistry()
    await registry.publish(revision, compile_revision(revision, registry.board(DEMO_PARENT)))
    database = SqliteSql(Path(":memory:"), MIGRATIONS)
    service = RouteService(
        RouteConfigStore(database),
        registry,
        ContentTagger(),
        tracer=TracerProvider().get_tracer("bench"),
        meter=MeterProvider().get_meter("bench"),
    )
    principal = Principal("demo", None)
    payload = choose_request().SerializeToString()
    request = pb.ChooseRequest.FromString(payload)
    choose_in = convert.choose_input(request, "")
    choice = service.choose(principal, choose_in)
    response = pb.ChooseResponse(
        decision=convert.decision_message(choice, convert.CHOOSE_CANDIDATE_CAP)
    )

    def whole(data: bytes) -> bytes:
        parsed = pb.ChooseRequest.FromString(data)
        made = service.choose(principal, convert.choose_input(parsed, ""))
        return pb.ChooseResponse(
            decision=convert.decision_message(made, convert.CHOOSE_CANDIDATE_CAP)
        ).SerializeToString()

    def to_input(parsed: pb.ChooseRequest) -> object:
        return convert.choose_input(parsed, "")

    def choose(made: ChooseInput) -> object:
        return service.choose(principal, made)

    def to_message(made: Choice) -> object:
        return convert.decision_message(made, convert.CHOOSE_CANDIDATE_CAP)

    snapshot = choice.decision.snapshot
    stages: list[tuple[str, Callable[[Any], object], Any]] = [
        ("1 parse request (ChooseRequest.FromString)", pb.ChooseRequest.FromString, payload),
        ("2 convert.choose_input", to_input, request),
        ("3 RouteService.choose (span, tags, decide, metrics)", choose, choose_in),
        ("    of which RoutingSnapshot.decide", snapshot.decide, choice.decision.request),
        ("4 convert.decision_message (rationale)", to_message, choice),
        ("5 serialize response", pb.ChooseResponse.SerializeToString, response),
        ("1-5 together (the handler body)", whole, payload),
    ]
    rows = [
        SectionRow(
            name, summarise(time_calls(fn, arg, plan.section_calls, plan.section_calls // 10, 2.0))
        )
        for name, fn, arg in stages
    ]
    database.close()
    return rows


# -- the profile ------------------------------------------------------------------------------


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return measure_machine(
        ("numpy", "litellm", "grpcio", "protobuf", "uvloop", "regopy", "maestro")
    )


@dataclass
class Report:
    machine: dict[str, Any]
    plan: Plan
    engine: list[EngineRow] = field(default_factory=list)
    litellm: list[LitellmRow] = field(default_factory=list)
    rpc: list[RpcRow] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    sections: list[SectionRow] = field(default_factory=list)
    wall_s: float = 0.0

    def speedups(self) -> list[dict[str, float]]:
        maestro = {row.deployments: row for row in self.engine}
        out = []
        for row in self.litellm:
            mine = maestro.get(row.deployments)
            if mine is None:
                continue
            out.append(
                {
                    "deployments": row.deployments,
                    "p50_ratio": row.latency.p50_us / mine.plain.p50_us,
                    "p99_ratio": row.latency.p99_us / mine.plain.p99_us,
                }
            )
        return out

    def rpc_share(self, label: str, baseline: str) -> float:
        rows = {row.label: row for row in self.rpc}
        if label not in rows or baseline not in rows or not rows[baseline].rps:
            return math.nan
        return rows[label].rps / rows[baseline].rps

    def rpc_cpu_share(self, label: str, baseline: str) -> float:
        """Server CPU per call of the baseline over the row's: the throughput share when the
        server is the bottleneck; steadier than rps on a shared machine."""
        rows = {row.label: row for row in self.rpc}
        if label not in rows or baseline not in rows or not rows[label].server_cpu_us_per_call:
            return math.nan
        return rows[baseline].server_cpu_us_per_call / rows[label].server_cpu_us_per_call

    def goals(self) -> list[tuple[str, str, bool]]:
        goals = []
        for size, limit in GOAL_P99_US.items():
            row = next((r for r in self.engine if r.deployments == size), None)
            if row is not None:
                worst = max(row.plain.p99_us, row.pii.p99_us)
                goals.append(
                    (f"engine p99 <= {limit:.0f} us at {size:,} deployments",
                     f"{worst:.1f} us (worst of plain/pii)", worst <= limit)
                )  # fmt: skip
        speedups = self.speedups()
        if speedups:
            worst = min(min(s["p50_ratio"], s["p99_ratio"]) for s in speedups)
            goals.append(
                (f">= {GOAL_SPEEDUP:.0f}x faster than LiteLLM's pick, every size, p50 and p99",
                 f"{worst:.1f}x at worst", worst >= GOAL_SPEEDUP)
            )  # fmt: skip
        share = self.rpc_share("Choose -> maestro up", "Choose -> raw echo (baseline)")
        cpu_share = self.rpc_cpu_share("Choose -> maestro up", "Choose -> raw echo (baseline)")
        if not math.isnan(share):
            goals.append(
                (f"Choose RPC >= {GOAL_RPC_SHARE:.0%} of raw echo throughput",
                 f"{share:.1%} by rps ({cpu_share:.1%} by server CPU per call)",
                 share >= GOAL_RPC_SHARE)
            )  # fmt: skip
        return goals

    def table(self) -> str:
        m = self.machine
        v = m["versions"]
        lines = [
            f"Maestro routing benchmark, {m['date']}, commit {m['commit'] or '?'}"
            + (f" + uncommitted {', '.join(m['modified_files'])}" if m["modified_files"] else ""),
            f"{m['cpu']} ({m['nproc']} CPUs), Python {m['python']}, numpy {v.get('numpy')}, "
            f"litellm {v.get('litellm')}, grpcio {v.get('grpcio')}, protobuf {v.get('protobuf')}",
            f"load average (1 min) {m['loadavg_1m_at_start']:.2f} at start, "
            f"{m.get('loadavg_1m_at_end', math.nan):.2f} at end (a shared machine)",
            "",
            "(a) Maestro engine: RoutingSnapshot.decide(RouteRequest(model='gpt-4o')), per call",
            "    one group of N gpt-4o deployments + 4 in-house; seed Rego + content_tags pii;",
            "    live signals on every deployment, ~5% of breakers open",
            f"{'deploy-':>8} {'config':>8} {'build ms':>9} {'(parse':>8} {'rego':>6} "
            f"{'snap)':>6} {'request':>8} {'calls':>7} {'p50 us':>8} {'p90 us':>8} "
            f"{'p99 us':>8} {'max us':>8}  winner",
            f"{'ments':>8} {'KB':>8}",
        ]
        for r in self.engine:
            series = (("plain", r.plain, r.plain_winner), ("pii", r.pii, r.pii_winner))
            for label, lat, winner in series:
                head = (
                    f"{r.deployments:>8,} {r.config_bytes / 1024:>8.0f} {r.build_ms:>9.1f} "
                    f"{r.parse_ms:>8.1f} {r.compile_ms:>6.1f} {r.snapshot_ms:>6.1f}"
                    if label == "plain"
                    else " " * 50
                )
                lines.append(
                    f"{head} {label:>8} {lat.n:>7} {lat.p50_us:>8.1f} {lat.p90_us:>8.1f} "
                    f"{lat.p99_us:>8.1f} {lat.max_us:>8.1f}  {winner}"
                )
        if self.engine:
            lines += [
                "    what Choose adds to each decision: its rationale message, up to 16 candidates",
                "    (convert.decision_message on the plain request's decision)",
                f"{'':>8} {'calls':>8} {'p50 us':>8} {'p99 us':>8} {'x decide p50':>13}",
            ]
            lines += [
                f"{r.deployments:>8,} {r.rationale.n:>8} {r.rationale.p50_us:>8.1f} "
                f"{r.rationale.p99_us:>8.1f} {r.rationale.p50_us / r.plain.p50_us:>12.1f}x"
                for r in self.engine
            ]
        if self.litellm:
            lines += [
                "",
                "(b) LiteLLM Router.async_get_available_deployment(model='gpt-4o'),",
                "    simple-shuffle, the same N deployments in group gpt-4o; ratios to (a)'s plain",
                f"{'deploy-':>8} {'router':>9} {'calls':>7} {'p50 us':>10} {'p90 us':>10} "
                f"{'p99 us':>10} {'max us':>10} {'LiteLLM / Maestro':>25}",
                f"{'ments':>8} {'build s':>9} {'':>7} {'':>10} {'':>10} {'':>10} {'':>10} "
                f"{'p50/p50':>16} {'p99/p99':>8}",
            ]
            ratios = {s["deployments"]: s for s in self.speedups()}
            for pick in self.litellm:
                s = ratios.get(pick.deployments, {"p50_ratio": math.nan, "p99_ratio": math.nan})
                lat = pick.latency
                lines.append(
                    f"{pick.deployments:>8,} {pick.router_build_s:>9.2f} {lat.n:>7} "
                    f"{lat.p50_us:>10.1f} "
                    f"{lat.p90_us:>10.1f} {lat.p99_us:>10.1f} {lat.max_us:>10.1f} "
                    f"{s['p50_ratio']:>15.0f}x {s['p99_ratio']:>7.0f}x"
                )
        if self.rpc:
            p = self.plan.load
            lines += [
                "",
                f"(c) RPC: one grpc.aio channel, {p.concurrency} concurrent workers, raw bytes; "
                f"per row {p.rounds} runs of {p.window_s:g} s",
                f"    (after {p.warmup_s:g} s warm-up each), alternating with the other rows of "
                "its comparison",
                f"{'':<42} {'rps':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'err':>4} {'resp':>5} "
                f"{'share of echo':>14} {'CPU us/call':>13}  {'rps by run':<12}",
                f"{'':<42} {'':>6} {'ms':>6} {'ms':>6} {'ms':>6} {'':>4} {'B':>5} "
                f"{'rps':>6} {'by CPU':>7} {'server':>6} {'client':>6}",
            ]
            baselines = {
                "Choose": "Choose -> raw echo (baseline)",
                "StreamChoose": "StreamChoose -> raw echo (baseline)",
            }
            for rpc in self.rpc:
                share = self.rpc_share(rpc.label, baselines[rpc.method])
                cpu_share = self.rpc_cpu_share(rpc.label, baselines[rpc.method])
                lat = rpc.latency
                by_run = "/".join(f"{rps:.0f}" for rps in rpc.rps_by_run)
                lines.append(
                    f"{rpc.label:<42} {rpc.rps:>6.0f} {lat.p50_us / 1e3:>6.2f} "
                    f"{lat.p90_us / 1e3:>6.2f} {lat.p99_us / 1e3:>6.2f} {rpc.errors:>4} "
                    f"{rpc.response_bytes:>5} {share:>6.1%} {cpu_share:>7.1%} "
                    f"{rpc.server_cpu_us_per_call:>6.0f} {rpc.client_cpu_us_per_call:>6.0f}  "
                    f"{by_run}"
                )
            lines += [
                f"    '{FRAMED_LABEL[10:]}': the raw echo with maestro's grpc set-up and no work",
                "    in it: 2 interceptors that build a wrapping handler per call (OpenTelemetry's",
                "    does) and maximum_concurrent_rpcs=1000",
                "    decisions of the measured server (seed litellm.yaml + routing.rego):",
            ]
            lines += [f"      {label}: {outcome}" for label, outcome in self.checks.items()]
        if self.sections:
            lines += [
                "",
                "(d) Inside Maestro's Choose handler, in-process, seed config, every span recorded",
                f"{'stage':<52} {'p50 us':>8} {'p99 us':>8}",
            ]
            lines += [
                f"{s.stage:<52} {s.latency.p50_us:>8.1f} {s.latency.p99_us:>8.1f}"
                for s in self.sections
            ]
        lines += ["", "Acceptance goals (issue 3)"]
        lines += [
            f"  [{'PASS' if ok else 'FAIL'}] {goal}: {value}" for goal, value, ok in self.goals()
        ]
        lines.append(f"\nwall time {self.wall_s:.0f} s")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "plan": asdict(self.plan),
            "engine": [asdict(r) for r in self.engine],
            "litellm": [asdict(r) for r in self.litellm],
            "litellm_over_maestro": self.speedups(),
            "rpc": [asdict(r) for r in self.rpc],
            "rpc_checks": self.checks,
            "choose_sections": [asdict(s) for s in self.sections],
            "goals": [{"goal": g, "value": v, "met": ok} for g, v, ok in self.goals()],
            "wall_s": self.wall_s,
        }


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="maestro-route-bench-") as directory:
        yield Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Maestro routing benchmarks (issue 3).")
    parser.add_argument("--quick", action="store_true", help="a smoke run, minutes -> seconds")
    parser.add_argument(
        "--profile", action="store_true", help="only profile Choose in `maestro up` (cProfile)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    started = time.perf_counter()
    if args.profile:
        out = args.results / f"route_bench_profile{suffix}.txt"
        with workdir() as directory:
            text = uvloop.run(profile_choose(plan.load, directory))
        out.write_text(text)
        print(text)
        return 0
    report = Report(machine(), plan)
    progress("(a) engine")
    report.engine = bench_engine(plan)
    progress("(d) Choose sections in-process")
    report.sections = uvloop.run(bench_sections(plan))
    # (c) before (b): LiteLLM's 10,000-deployment router holds a lot of memory and threads;
    # the RPC client shares this process.
    progress("(c) RPC: starting the echo server and two `maestro up`")
    with workdir() as directory:
        report.rpc, report.checks = uvloop.run(bench_rpc(plan.load, directory))
    progress("(b) LiteLLM")
    report.litellm = bench_litellm(plan)
    report.wall_s = time.perf_counter() - started
    report.machine["loadavg_1m_at_end"] = os.getloadavg()[0]
    table = report.table()
    print(table)
    (args.results / f"route_bench{suffix}.json").write_text(
        json.dumps(report.as_json(), indent=2, allow_nan=True) + "\n"
    )
    command = "bench/route_bench.py" + (" --quick" if args.quick else "")
    (args.results / f"route_bench{suffix}.md").write_text(
        f"# Routing benchmark results\n\n`.venv/bin/python {command}`\n\n```\n{table}\n```\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
