"""The HTTP judges Argo's analyses poll (maestro.app.rollout_http): `:sloBurn` over the control
plane's per-version series and `:evalVerdict` over EvalService's scorecards.

A real server (conftest `start_server`) makes the projects, keys and artifact versions through
its API; the routes are mounted the way the process mounts them, on the ingress's own aiohttp
application (its readiness gate included), over the server's RolloutPlane and key check.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from maestro.app.rollout_http import parse_duration, rollout_routes
from maestro.control_plane.evals.records import (
    Progress,
    RunRecord,
    RunSpec,
    RunState,
    Scorecard,
    SuiteRecord,
    Target,
    ThresholdResult,
    Thresholds,
)
from maestro.control_plane.evals.store import EvalStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.core.auth import DATA_PLANE, INFERENCE
from maestro.routing.signals import Observation
from tests.conftest import RunningServer
from tests.rollout_support import ARTIFACT, push_prompt

NOW = 1_900_000_000.0
OBJECTIVE = "objective=0.99&long=1m&short=10s&max_burn_rate=5&min_requests=50"


@dataclass
class Api:
    server: RunningServer
    http: TestClient[Any, Any]
    evals: EvalStore
    stable: str
    """Version ids of alpha's support-answer artifact."""
    candidate: str

    def path(self, version: str, verb: str, project: str = "alpha") -> str:
        artifact = ARTIFACT.replace("projects/alpha", f"projects/{project}")
        return f"/v1/{artifact}/versions/{version}:{verb}"

    async def get(self, url: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
        key = self.server.alpha_key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.get(url, headers=headers) as response:
            return response.status, await response.json()

    def feed(self, version: str, requests: int, errors: int = 0, at: float = NOW) -> None:
        """`requests` calls of `version` (`errors` of them failed), seen in one report at `at`."""
        rollouts = self.server.plane.rollouts
        assert rollouts is not None
        rollouts.series.ingest(
            f"{ARTIFACT}/versions/{version}",
            Observation(
                "d1",
                "projects/alpha",
                at,
                request_count=requests,
                error_counts={"error": errors} if errors else {},
            ),
            at,
        )


@pytest.fixture
async def api(server: RunningServer, alpha: Any, tmp_path: Path) -> AsyncIterator[Api]:
    plane = server.plane
    assert plane.rollouts is not None
    assert plane.data is not None
    stable = (await push_prompt(alpha, "stable")).name.rsplit("/", 1)[1]
    candidate = (await push_prompt(alpha, "candidate")).name.rsplit("/", 1)[1]
    # A store of its own for the eval runs the test writes (no runner there to pick them up).
    sql = SqliteSql(tmp_path / "evals.db", MIGRATIONS)
    evals = EvalStore(sql)
    # Mounted as the process mounts it, the ingress's application plus these routes, but over
    # this test's eval store and clock (the server's own copies are dropped here).
    plane.data.ingress.extra_routes.clear()
    app = plane.data.ingress.application()
    app.router.add_routes(
        rollout_routes(plane.rollouts, plane.projects.authenticate, evals=evals, clock=lambda: NOW)
    )
    async with TestClient(TestServer(app)) as http:
        yield Api(server, http, evals, stable, candidate)
    sql.close()


async def test_slo_burn_passes_a_candidate_within_its_budget(api: Api) -> None:
    api.feed(api.stable, 200)
    api.feed(api.candidate, 200, errors=0)
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    )
    assert status == 200, body
    assert body["verdict"] == "passed"
    assert body["candidate"] == f"{ARTIFACT}/versions/{api.candidate}"
    assert body["stable"] == f"{ARTIFACT}/versions/{api.stable}"
    metrics = {m["metric"]: m for m in body["measurements"]}
    assert metrics["request_count"] == {
        "metric": "request_count",
        "value": 200.0,
        "limit": 50.0,
        "passed": True,
    }
    assert metrics["burn_rate:1m"]["value"] == 0.0
    assert metrics["burn_rate:1m"]["limit"] == 5.0
    assert "<=" in body["message"]


async def test_slo_burn_fails_a_candidate_burning_more_than_stable(api: Api) -> None:
    api.feed(api.stable, 1000)
    api.feed(api.candidate, 200, errors=40)  # 20% errors: burn 20 against a 1% budget
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    )
    assert status == 200, body
    assert body["verdict"] == "failed"
    metrics = {m["metric"]: m for m in body["measurements"]}
    assert metrics["burn_rate:1m"]["value"] == pytest.approx(20.0)
    assert metrics["burn_rate:1m"]["passed"] is False
    assert metrics["errors_vs_stable_p"]["value"] < 0.05
    assert "worse than stable" in body["message"]


async def test_slo_burn_is_inconclusive_on_too_little_traffic(api: Api) -> None:
    api.feed(api.candidate, 10, errors=10)
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    )
    assert status == 200, body
    assert body["verdict"] == "inconclusive"
    assert body["measurements"] == [
        {"metric": "request_count", "value": 10.0, "limit": 50.0, "passed": False}
    ]
    assert "too few candidate requests" in body["message"]


async def test_slo_burn_judges_latency_against_a_threshold(api: Api) -> None:
    api.feed(api.stable, 200)
    api.feed(api.candidate, 200)  # no latency samples: too few judged requests
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
        "&indicator=latency&latency_threshold_ms=1000"
    )
    assert status == 200, body
    assert body["indicator"] == "latency"
    assert body["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("objective=2", "objective"),
        ("objective=abc", "objective"),
        ("long=1h", "objective"),  # objective is required
        ("objective=0.99&indicator=availability", "indicator"),
        ("objective=0.99&long=an-hour", "long"),
        ("objective=0.99&long=5m&short=1h", "short"),
        ("objective=0.99&long=4h", "long"),  # beyond the 3h the series keeps
        ("objective=0.99&max_burn_rate=0", "max_burn_rate"),
        ("objective=0.99&max_burn_rate=nan", "max_burn_rate"),
        ("objective=0.99&min_requests=-1", "min_requests"),
        ("objective=0.99&min_requests=1.5", "min_requests"),
        ("objective=0.99&indicator=latency", "latency_threshold_ms"),
        ("objective=0.99&latency_threshold_ms=500", "latency_threshold_ms"),
        ("objective=0.99&long=1h&long=6h&short=5m", "long"),
        ("objective=0.99&objective=0.9", "objective"),
        ("objective=0.99&window=1h", "window"),  # an unknown parameter, not ignored
        ("objective=0.99&stable=no-such-version", "stable"),
    ],
)
async def test_slo_burn_names_the_bad_parameter(api: Api, query: str, param: str) -> None:
    if "stable=" not in query:
        query += f"&stable={api.stable}"
    status, body = await api.get(f"{api.path(api.candidate, 'sloBurn')}?{query}")
    assert status == 400, body
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert body["error"]["param"] == param


async def test_slo_burn_without_stable_needs_an_artifact_with_one(api: Api) -> None:
    """Leaving `stable` out compares with the artifact's stable version; before its first
    rollout the artifact has none, which the answer says."""
    status, body = await api.get(f"{api.path(api.candidate, 'sloBurn')}?{OBJECTIVE}")
    assert status == 400
    assert body["error"]["param"] == "stable"
    assert "no stable version" in body["error"]["message"]
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?{OBJECTIVE}&stable={api.candidate}"
    )
    assert (status, body["error"]["param"]) == (400, "stable")


async def test_several_window_pairs(api: Api) -> None:
    api.feed(api.stable, 200)
    api.feed(api.candidate, 200)
    query = (
        f"stable={api.stable}&objective=0.99&min_requests=50"
        "&long=1m&short=10s&max_burn_rate=5&long=2h&short=10m&max_burn_rate=2"
    )
    status, body = await api.get(f"{api.path(api.candidate, 'sloBurn')}?{query}")
    assert status == 200, body
    assert {m["metric"] for m in body["measurements"]} == {
        "request_count",
        "burn_rate:1m",
        "burn_rate:10s",
        "burn_rate:2h",
        "burn_rate:10m",
    }


async def test_unknown_version_is_404_and_another_tenants_project_403(api: Api) -> None:
    status, body = await api.get(
        f"{api.path('no-such-version', 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    )
    assert status == 404, body
    assert body["error"]["code"] == "ARTIFACT_VERSION_NOT_FOUND"
    status, body = await api.get(f"{api.path('v', 'evalVerdict')}?suite=core")
    assert status == 404, body

    # beta's key on alpha's version, and alpha's key on beta's project: refused before any
    # look-up, so it does not matter whether the version exists.
    for key, project in ((api.server.beta_key, "alpha"), (api.server.alpha_key, "beta")):
        for verb, query in (("sloBurn", OBJECTIVE), ("evalVerdict", "suite=core")):
            status, body = await api.get(f"{api.path(api.candidate, verb, project)}?{query}", key)
            assert status == 403, body
            assert body["error"]["code"] == "PROJECT_MISMATCH"


async def test_keys_need_a_reading_scope(api: Api) -> None:
    url = f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    status, body = await api.get(url, key="")
    assert (status, body["error"]["code"]) == (401, "API_KEY_MISSING")
    status, body = await api.get(url, key="mk-not-a-key")
    assert (status, body["error"]["code"]) == (401, "API_KEY_INVALID")
    data_plane = api.server.new_key("dp", frozenset({DATA_PLANE}))
    status, body = await api.get(url, key=data_plane)
    assert (status, body["error"]["code"]) == (403, "SCOPE_MISSING")
    reader = api.server.new_key("ci", frozenset({INFERENCE}))
    status, _ = await api.get(url, key=reader)
    assert status == 200


async def test_not_ready_answers_503_like_every_ingress_route(api: Api) -> None:
    api.server.plane.readiness.mark_draining()
    status, body = await api.get(
        f"{api.path(api.candidate, 'sloBurn')}?stable={api.stable}&{OBJECTIVE}"
    )
    assert status == 503
    assert body["error"]["code"] == "NOT_READY"


# -- :evalVerdict -------------------------------------------------------------------------------


def _suite(store: EvalStore) -> SuiteRecord:
    suite = SuiteRecord(
        "alpha", "core", "Core", "", (), ("exact_match",), Thresholds(), 1, 0.8, time.time()
    )
    return store.create_suite(suite, "")


def _succeeded(
    store: EvalStore,
    suite: SuiteRecord,
    run_id: str,
    version: str,
    verdict: str,
    created: float,
    state: RunState = RunState.SUCCEEDED,
) -> None:
    target = Target(artifact_version=version, prompt_system="s", prompt_version="sha256:x")
    spec = RunSpec(suite.name, target, "", 1, 7, 0.0, 0, 8, {}, suite, ())
    run = RunRecord("alpha", run_id, spec, RunState.QUEUED, "", Progress(), 1, created, None, None)
    store.create_run(run, "")
    outcome = {"PASS": "PASSED", "FAIL": "FAILED"}.get(verdict, "INCONCLUSIVE")
    card = Scorecard(
        run=run.name,
        suite=suite.name,
        target=target,
        baseline="",
        verdict=verdict,
        metrics=(),
        thresholds=(ThresholdResult("regression_rate", outcome, 0.05, 0.02, f"{run_id} m"),),
        regressed_task_count=0,
        improved_task_count=0,
        regressed_tasks=(),
        task_count=10,
        repetitions=1,
        seed=7,
        total_cost_usd=0.0,
        prompt_tokens=0,
        completion_tokens=0,
        input_digests=(),
        labels={},
        maestro_version="test",
        suite_digest="",
        embedding_model="",
        create_time=created,
    )
    store.finish("alpha", run_id, state, "", card if state == RunState.SUCCEEDED else None)


async def test_eval_verdict_is_the_newest_succeeded_run_on_the_version(api: Api) -> None:
    suite = _suite(api.evals)
    candidate = f"{ARTIFACT}/versions/{api.candidate}"
    stable = f"{ARTIFACT}/versions/{api.stable}"
    url = f"{api.path(api.candidate, 'evalVerdict')}?suite=core"

    status, body = await api.get(url)
    assert status == 404, body
    assert body["error"]["code"] == "EVAL_RUN_NOT_FOUND"

    _succeeded(api.evals, suite, "old", candidate, "PASS", 100.0)
    _succeeded(api.evals, suite, "newer", candidate, "FAIL", 200.0)
    _succeeded(api.evals, suite, "other-version", stable, "PASS", 300.0)
    _succeeded(api.evals, suite, "failed-run", candidate, "PASS", 400.0, RunState.FAILED)
    status, body = await api.get(url)
    assert status == 200, body
    assert body["verdict"] == "failed"
    assert body["run"] == "projects/alpha/evalRuns/newer"
    assert body["scorecard"] == "projects/alpha/evalRuns/newer/scorecard"
    assert body["suite"] == "projects/alpha/evalSuites/core"
    assert body["measurements"] == [
        {
            "metric": "regression_rate",
            "value": 0.02,
            "limit": 0.05,
            "passed": False,
            "outcome": "failed",
        }
    ]
    assert body["message"].startswith("FAIL on projects/alpha/evalSuites/core")

    _succeeded(api.evals, suite, "newest", candidate, "INCONCLUSIVE", 500.0)
    status, body = await api.get(
        f"{api.path(api.candidate, 'evalVerdict')}?suite=projects/alpha/evalSuites/core"
    )
    assert (status, body["verdict"], body["run"]) == (
        200,
        "inconclusive",
        "projects/alpha/evalRuns/newest",
    )


@pytest.mark.parametrize(
    ("query", "status", "param"),
    [
        ("", 400, "suite"),
        ("suite=projects/beta/evalSuites/core", 400, "suite"),
        ("suite=core&stable=v1", 400, "stable"),
        ("suite=missing", 404, None),
    ],
)
async def test_eval_verdict_refuses_bad_queries(
    api: Api, query: str, status: int, param: str | None
) -> None:
    _suite(api.evals)
    got, body = await api.get(f"{api.path(api.candidate, 'evalVerdict')}?{query}")
    assert got == status, body
    assert body["error"]["param"] == param


async def test_eval_verdict_without_eval_service_is_501(api: Api) -> None:
    plane = api.server.plane
    assert plane.rollouts is not None
    assert plane.data is not None
    app = plane.data.ingress.application()
    app.router.add_routes(rollout_routes(plane.rollouts, plane.projects.authenticate))
    async with (
        TestClient(TestServer(app)) as http,
        http.get(
            api.path(api.candidate, "evalVerdict") + "?suite=core",
            headers={"Authorization": f"Bearer {api.server.alpha_key}"},
        ) as response,
    ):
        assert response.status == 501
        assert (await response.json())["error"]["code"] == "EVALS_DISABLED"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "5 m", "m", "1h5", "inf", "5x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
