"""Read-only HTTP routes Argo Rollouts' `web` metric provider polls (deploy/rollouts/): the
judges of a candidate artifact version, as JSON, on the ingress of the control plane.

- ``GET /v1/projects/{project}/artifacts/{artifact}/versions/{version}:sloBurn`` judges the
  version's error-budget burn from the live observations the control plane keeps per version
  (`RolloutPlane.series`), against a stable version over the same seconds
  (`judges.judge_slo_burn`: the `error-budget-ok` analysis of a native rollout, same verdict).
  Query: `stable` (a version id of the same artifact; default the artifact's stable version),
  `indicator` (`errors`, the default, or `latency`), `objective` (the SLO ratio, in (0, 1);
  required), `long`, `short` and `max_burn_rate` (one window pair, default `1h`, `5m`, `14.4`;
  repeat all three, up to 4 times, for more pairs), `min_requests` (default 100) and
  `latency_threshold_ms` (the latency indicator only, required there). Durations: `90s`, `5m`,
  `1h`, `1h30m`, `500ms`, or plain seconds.
- ``GET /v1/projects/{project}/artifacts/{artifact}/versions/{version}:evalVerdict?suite=S``:
  the verdict of the scorecard of the newest SUCCEEDED eval run of suite `S` (an id of the
  project's suites, or its full name) whose target is this artifact version.

Both answer ``{"verdict": "passed" | "failed" | "inconclusive", "measurements": [...],
"message": ...}`` with 200 whatever the verdict (Argo's `jsonPath: "{$.verdict}"` and
`successCondition`/`failureCondition` decide; a non-2xx answer is a measurement *error* there,
counted against `consecutiveErrorLimit`, not a failure). 400 names the bad query parameter
(`error.param`), 401 without a valid key, 403 for a key of another project or without the scope
of RolloutService.GetArtifactVersion (inference, approver or admin), 404 for a version, suite or
(`:evalVerdict`) eval run that does not exist. Errors have the ingress's shape.

Mounted on the ingress's aiohttp application (`rollout_routes`), so its readiness gate answers
503 before the process is ready and while it drains, like every other route there.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import orjson
from aiohttp import web

from maestro.control_plane.evals.records import RunState, Scorecard
from maestro.control_plane.evals.store import EvalStore
from maestro.control_plane.rollouts.assembly import RolloutPlane
from maestro.control_plane.rollouts.judges import (
    BurnWindow,
    SloBurnTemplate,
    Verdict,
    judge_slo_burn,
)
from maestro.control_plane.rollouts.records import VersionRecord
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    FieldViolation,
    InvalidArgument,
    MaestroError,
    NotFound,
    Unimplemented,
    internal_error,
)
from maestro.core.quotas import UNLIMITED, Limiter
from maestro.core.rpc.interceptors import Authenticate
from maestro.core.rpc.scopes import METHOD_SCOPES
from maestro.data_plane.http_ingress import error_response, http_caller

SCOPES = METHOD_SCOPES["/maestro.v1.RolloutService/GetArtifactVersion"]
"""The HTTP face of reading a version: the same scopes (inference, approver, admin)."""
VERSION_PATH = "/v1/projects/{project}/artifacts/{artifact}/versions/{version}"
SLO_BURN_PATH = VERSION_PATH + ":sloBurn"
EVAL_VERDICT_PATH = VERSION_PATH + ":evalVerdict"
DEFAULT_LONG_S = 3600.0
DEFAULT_SHORT_S = 300.0
DEFAULT_MAX_BURN_RATE = 14.4
"""The SRE workbook's fast-burn pair: 2% of a 30-day budget in one hour."""
MAX_WINDOW_PAIRS = 4
MAX_RUNS_SCANNED = 2000
"""`:evalVerdict` reads SUCCEEDED runs of the suite newest first, this many at most, for one
whose target is the version (the store has no index on the target)."""
_RUN_PAGE = 200
_SLO_PARAMS = frozenset(
    {
        "stable",
        "indicator",
        "objective",
        "long",
        "short",
        "max_burn_rate",
        "min_requests",
        "latency_threshold_ms",
    }
)
_EVAL_PARAMS = frozenset({"suite"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_VERDICTS = {"PASS": "passed", "FAIL": "failed", "INCONCLUSIVE": "inconclusive"}

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rollout_routes(
    plane: RolloutPlane,
    authenticate: Authenticate,
    *,
    evals: EvalStore | None = None,
    insecure_project: str | None = None,
    limiter: Limiter = UNLIMITED,
    clock: Clock = time.time,
) -> list[web.RouteDef]:
    """The routes, for `app.router.add_routes` on the ingress's application before it starts.

    `authenticate` is the process's key check (`ProjectService.authenticate`); `evals` the
    EvalService store (`:evalVerdict` answers 501 without it); `insecure_project` and `limiter`
    as the ingress has them (keyless dev mode; failed-key throttling per peer)."""
    api = _RolloutApi(plane, authenticate, evals, insecure_project, limiter, clock)
    return [
        web.get(SLO_BURN_PATH, api.slo_burn, allow_head=False),
        web.get(EVAL_VERDICT_PATH, api.eval_verdict, allow_head=False),
    ]


class _RolloutApi:
    def __init__(
        self,
        plane: RolloutPlane,
        authenticate: Authenticate,
        evals: EvalStore | None,
        insecure_project: str | None,
        limiter: Limiter,
        clock: Clock,
    ) -> None:
        self._plane = plane
        self._authenticate = authenticate
        self._evals = evals
        self._insecure_project = insecure_project
        self._limiter = limiter
        self._clock = clock

    async def slo_burn(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._slo_burn)

    async def eval_verdict(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._eval_verdict)

    async def _answer(
        self,
        request: web.Request,
        judge: Callable[[web.Request, VersionRecord], Awaitable[dict[str, Any]]],
    ) -> web.Response:
        try:
            principal = await self._caller(request)
            info = request.match_info
            project, artifact, version = info["project"], info["artifact"], info["version"]
            require_project(principal, project)  # before any look-up: existence stays private
            store = self._plane.store
            record = await store.aio(store.get_version, project, artifact, version)
            body = await judge(request, record)
        except MaestroError as error:
            return error_response(error)
        except Exception:  # an answer without internals, and a log line to find it by
            return error_response(internal_error("rollout_http.unhandled_error"))
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _caller(self, request: web.Request) -> Principal:
        """As the ingress authenticates (`http_caller`), with GetArtifactVersion's scopes."""
        return await http_caller(
            request, self._authenticate, self._insecure_project, self._limiter, SCOPES
        )

    # -- :sloBurn -------------------------------------------------------------------------------

    async def _slo_burn(self, request: web.Request, candidate: VersionRecord) -> dict[str, Any]:
        query = request.query
        _refuse_unknown(query.keys(), _SLO_PARAMS)
        template = slo_burn_template(query)
        stable_id = _one(query, "stable")
        store = self._plane.store
        if not stable_id:
            artifact = await store.aio(store.artifact, candidate.project, candidate.artifact_id)
            stable_id = artifact.stable_version if artifact is not None else ""
            if not stable_id:
                raise _bad(
                    "stable",
                    f"{candidate.artifact} has no stable version yet: name the version to "
                    "compare with",
                )
        try:
            stable = await store.aio(
                store.get_version, candidate.project, candidate.artifact_id, stable_id
            )
        except NotFound as error:
            raise _bad("stable", error.message) from None
        if stable.version_id == candidate.version_id:
            raise _bad("stable", "must be another version than the candidate")
        series = self._plane.series
        longest = max(pair.long_s for pair in template.windows)
        if longest > series.horizon_s:
            raise _bad(
                "long",
                f"{longest:g}s is longer than the {series.horizon_s:g}s of traffic kept per "
                "version",
            )
        now = self._clock()
        verdict = judge_slo_burn(series, candidate.name, stable.name, template, now)
        return {
            **verdict_json(verdict),
            "candidate": candidate.name,
            "stable": stable.name,
            "indicator": template.indicator,
            "time": now,
        }

    # -- :evalVerdict ---------------------------------------------------------------------------

    async def _eval_verdict(self, request: web.Request, version: VersionRecord) -> dict[str, Any]:
        query = request.query
        _refuse_unknown(query.keys(), _EVAL_PARAMS)
        suite_id = _suite_id(_one(query, "suite"), version.project)
        evals = self._evals
        if evals is None:
            raise Unimplemented(
                "eval verdicts need EvalService, which this server does not run",
                reason="EVALS_DISABLED",
            )
        suite = await evals.aio(evals.get_suite, version.project, suite_id)
        found = await evals.aio(_latest_scorecard, evals, version.project, suite.name, version.name)
        if found is None:
            raise NotFound(
                f"no SUCCEEDED eval run of {suite.name} targets {version.name} (among the "
                f"{MAX_RUNS_SCANNED} newest): run the suite on it first",
                reason="EVAL_RUN_NOT_FOUND",
            )
        run_name, scorecard = found
        verdict = _VERDICTS.get(scorecard.verdict, "inconclusive")
        return {
            "verdict": verdict,
            "measurements": [
                {
                    "metric": t.threshold,
                    "value": _finite(t.measured),
                    "limit": _finite(t.limit),
                    "passed": t.outcome == "PASSED",
                    "outcome": t.outcome.lower(),
                }
                for t in scorecard.thresholds
            ],
            "message": (
                f"{scorecard.verdict} on {suite.name}: "
                + (
                    "; ".join(t.message for t in scorecard.thresholds if t.message)
                    or "no thresholds"
                )
            ),
            "scorecard": scorecard.name,
            "run": run_name,
            "suite": suite.name,
            "version": version.name,
            "time": scorecard.create_time,
        }


def slo_burn_template(query: Any) -> SloBurnTemplate:
    """The `:sloBurn` query as a judge's template; InvalidArgument naming the parameter."""
    indicator_text = _one(query, "indicator") or "errors"
    if indicator_text not in ("errors", "latency"):
        raise _bad("indicator", "errors or latency")
    indicator: Literal["errors", "latency"] = "latency" if indicator_text == "latency" else "errors"
    objective_text = _one(query, "objective")
    if not objective_text:
        raise _bad("objective", "required: the SLO's ratio of good requests, such as 0.995")
    objective = _number(objective_text, "objective")
    if not 0 < objective < 1:
        raise _bad("objective", "must be between 0 and 1, such as 0.995")
    longs = query.getall("long", [])
    shorts = query.getall("short", [])
    rates = query.getall("max_burn_rate", [])
    count = max(len(longs), len(shorts), len(rates), 1)
    if count > 1 and not len(longs) == len(shorts) == len(rates):
        # One pair may lean on the defaults field by field; more pairs name every field.
        raise _bad("long", "repeat long, short and max_burn_rate together, once per window pair")
    if count > MAX_WINDOW_PAIRS:
        raise _bad("long", f"at most {MAX_WINDOW_PAIRS} window pairs")
    windows = []
    for index in range(count):
        long_s = _duration(longs[index], "long") if longs else DEFAULT_LONG_S
        short_s = _duration(shorts[index], "short") if shorts else DEFAULT_SHORT_S
        rate = _number(rates[index], "max_burn_rate") if rates else DEFAULT_MAX_BURN_RATE
        if not rate > 0:
            raise _bad("max_burn_rate", "must be positive")
        if not short_s < long_s:
            raise _bad("short", f"must be shorter than long ({short_s:g}s >= {long_s:g}s)")
        windows.append(BurnWindow(long_s, short_s, rate))
    min_text = _one(query, "min_requests")
    min_requests = 0
    if min_text:
        try:
            min_requests = int(min_text)
        except ValueError:
            raise _bad("min_requests", "a whole number") from None
        if min_requests < 1:
            raise _bad("min_requests", "at least 1")
    threshold_text = _one(query, "latency_threshold_ms")
    threshold = 0.0
    if indicator == "latency":
        if not threshold_text:
            raise _bad("latency_threshold_ms", "required with indicator=latency")
        threshold = _number(threshold_text, "latency_threshold_ms")
        if not threshold > 0:
            raise _bad("latency_threshold_ms", "must be positive")
    elif threshold_text:
        raise _bad("latency_threshold_ms", "only with indicator=latency")
    return SloBurnTemplate(indicator, objective, tuple(windows), threshold, min_requests)


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "verdict": verdict.outcome,
        "measurements": [
            {
                "metric": m.metric,
                "value": _finite(m.value),
                "limit": _finite(m.limit),
                "passed": m.passed,
            }
            for m in verdict.measurements
        ],
        "message": verdict.message,
    }


def parse_duration(text: str) -> float:
    """``90s``, ``5m``, ``1h30m``, ``500ms``, ``1d`` or plain seconds, as seconds; ValueError
    otherwise."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"not a duration: {text!r}") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


def _latest_scorecard(
    evals: EvalStore, project: str, suite: str, version: str
) -> tuple[str, Scorecard] | None:
    """(run name, scorecard) of the newest SUCCEEDED run of `suite` targeting `version`."""
    after: list[Any] | None = None
    where = {"state": RunState.SUCCEEDED, "suite": suite}
    scanned = 0
    while scanned < MAX_RUNS_SCANNED:
        runs = evals.list_runs(project, after, _RUN_PAGE, where, False)
        for run in runs:
            if run.spec.target.artifact_version == version:
                return run.name, evals.get_scorecard(project, run.run_id)
        scanned += len(runs)
        if len(runs) < _RUN_PAGE:
            return None
        after = [runs[-1].create_time, runs[-1].run_id]
    return None


def _suite_id(text: str, project: str) -> str:
    if not text:
        raise _bad("suite", "required: the eval suite's id or projects/{project}/evalSuites/{id}")
    if "/" not in text:
        return text
    prefix = f"projects/{project}/evalSuites/"
    suite_id = text.removeprefix(prefix)
    if suite_id == text or not suite_id or "/" in suite_id:
        raise _bad("suite", f"a suite of the version's project: {prefix}{{suite}}")
    return suite_id


def _refuse_unknown(given: Iterable[str], known: frozenset[str]) -> None:
    for name in given:
        if name not in known:
            raise _bad(name, f"unknown parameter; known: {', '.join(sorted(known))}")


def _one(query: Any, name: str) -> str:
    values: list[str] = query.getall(name, [])
    if len(values) > 1:
        raise _bad(name, "give it once")
    return values[0].strip() if values else ""


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(name, f"not a number: {text[:50]!r}") from None
    if not math.isfinite(value):
        raise _bad(name, "must be finite")
    return value


def _duration(text: str, name: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise _bad(name, f"a duration such as 5m or 1h, got {text[:50]!r}") from None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _bad(param: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(param, description)])


__all__ = ["EVAL_VERDICT_PATH", "SLO_BURN_PATH", "parse_duration", "rollout_routes"]
