"""EvalService as the domain sees it: datasets, suites, runs, scorecards and comparisons.

No grpc here: `servicer.py` converts messages. Every call checks the caller's project before it
looks anything up; bad input is refused with field violations before anything is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from maestro.control_plane.evals import gates, scoring, stats
from maestro.control_plane.evals.datasets import DatasetRowError, parse_jsonl
from maestro.control_plane.evals.records import (
    DEFAULT_CONCURRENCY,
    DEFAULT_REPETITIONS,
    DEFAULT_SEMANTIC_PASS_MIN,
    MAX_CONCURRENCY,
    METRICS,
    DatasetRecord,
    GateDecision,
    MetricScore,
    Progress,
    RunRecord,
    RunSpec,
    RunState,
    Scorecard,
    SuiteRecord,
    Target,
    TaskResult,
    Thresholds,
)
from maestro.control_plane.evals.runner import EvalRunner
from maestro.control_plane.evals.store import EvalStore
from maestro.core import names, paging
from maestro.core.auth import Principal, require_project
from maestro.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

MAX_DATASET_BYTES = 4 * 1024 * 1024
MAX_TASKS = 100_000
MAX_PROMPT_CHARS = 32 * 1024
MAX_UNFINISHED_RUNS = 16
MAX_LABELS = 32
_ID = re.compile(rf"^{names.RESOURCE_ID}$")
_SUITE = re.compile(rf"^projects/({names.PROJECT_ID})/evalSuites/({names.RESOURCE_ID})$")
_DATASET = re.compile(rf"^projects/({names.PROJECT_ID})/datasets/({names.RESOURCE_ID})$")
_RUN = re.compile(rf"^projects/({names.PROJECT_ID})/evalRuns/({names.RESOURCE_ID})$")
_SCORECARD = re.compile(
    rf"^projects/({names.PROJECT_ID})/evalRuns/({names.RESOURCE_ID})/scorecard$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _name(pattern: re.Pattern[str], value: str, field: str, shape: str) -> tuple[str, str]:
    match = pattern.fullmatch(value)
    if match is None:
        what = "required" if not value else f"{value[:80]!r} is not a valid name"
        raise InvalidArgument([FieldViolation(field, f"{what}; expected {shape}")])
    return match.group(1), match.group(2)


_SUITE_FIELDS = {
    "display_name": "display_name",
    "description": "description",
    "datasets": "datasets",
    "metrics": "metrics",
    "thresholds": "thresholds",
    "default_repetitions": "default_repetitions",
    "semantic_similarity_pass_min": "semantic_pass_min",
}
"""The suite fields UpdateEvalSuite may change: API path -> record field."""


def _suite_record(project: str, suite_id: str, suite: NewSuite) -> SuiteRecord:
    """A suite as stored: text bounded, zeros replaced by the defaults, a fresh etag."""
    now = time.time()
    return SuiteRecord(
        project,
        suite_id,
        suite.display_name[:200],
        suite.description[:2000],
        suite.datasets,
        suite.metrics,
        suite.thresholds,
        suite.default_repetitions or DEFAULT_REPETITIONS,
        suite.semantic_pass_min or DEFAULT_SEMANTIC_PASS_MIN,
        now,
        now,
        secrets.token_hex(8),
    )


def _rate(value: float, *, allow_inf: bool = False) -> bool:
    """Not negative and not NaN (NaN compares false with everything, so it would pass any
    limit check unseen); infinity only where it means "no limit"."""
    return value >= 0 and (math.isfinite(value) or allow_inf)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _check_id(value: str, field: str) -> None:
    if value and not _ID.fullmatch(value):
        raise InvalidArgument(
            [FieldViolation(field, "1-63 lower-case letters, digits and hyphens")]
        )


@dataclass(frozen=True, slots=True)
class NewSuite:
    display_name: str
    description: str
    datasets: tuple[str, ...]
    metrics: tuple[str, ...]
    thresholds: Thresholds
    default_repetitions: int
    semantic_pass_min: float


@dataclass(frozen=True, slots=True)
class NewRun:
    suite: str
    target: Target
    baseline: str
    repetitions: int
    seed: int
    max_cost_usd: float
    max_tokens: int
    max_concurrent: int
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Comparison:
    diffs: list[tuple[MetricScore, MetricScore, float | None, stats.Interval, float | None]]
    """(base score, candidate score, p-value, paired delta interval, Holm-adjusted p)."""
    flips: scoring.Flips


SubjectRevision = Callable[[Principal, str], Awaitable[str]]
"""The current revision of a gate's subject (a recipe), NOT_FOUND if it does not exist."""
_RECIPE = re.compile(rf"^projects/({names.PROJECT_ID})/recipes/({names.RESOURCE_ID})$")
_RECIPE_REVISION = re.compile(
    rf"^projects/({names.PROJECT_ID})/recipes/({names.RESOURCE_ID})(@[A-Za-z0-9_-]{{1,64}})?$"
)
BUILTIN_PROJECT = "builtin"
RecipeRevision = Callable[[Principal, str], Awaitable[str]]
"""A recipe name pinned to a revision (`...@revision`), NOT_FOUND if there is none."""


@dataclass(frozen=True, slots=True)
class GateRequest:
    scorecard: str
    kind: str
    subject: str
    from_level: int
    to_level: int
    inputs: gates.GateInputs
    request_id: str


ArtifactPrompt = Callable[[Principal, str], Awaitable[tuple[str, str]]]
"""(caller, artifact version name) -> (system text, content digest); NOT_FOUND or
INVALID_ARGUMENT (on `eval_run.target.artifact_version`) when it cannot be a prompt target."""


class EvalService:
    def __init__(
        self, store: EvalStore, runner: EvalRunner, subject_revision: SubjectRevision | None = None
    ) -> None:
        self.store = store
        self.runner = runner
        self.subject_revision = subject_revision
        self.recipe_revision: RecipeRevision | None = None
        """Set by the wiring when GraphService runs beside this service."""
        self.artifact_prompt: ArtifactPrompt | None = None
        """Set by the wiring when RolloutService runs beside this service: an artifact
        version's system text (rendered with its defaults) and its content digest."""

    # -- datasets -------------------------------------------------------------------------------

    async def create_dataset(
        self,
        principal: Principal,
        parent: str,
        dataset_id: str,
        display_name: str,
        description: str,
        source_uri: str,
        content: bytes,
        expected_sha256: str,
        request_id: str,
    ) -> DatasetRecord:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        _check_id(dataset_id, "dataset_id")
        if expected_sha256 and not _SHA256.fullmatch(expected_sha256.lower()):
            raise InvalidArgument([FieldViolation("expected_sha256", "64 hex digits")])
        if not content:
            raise InvalidArgument([FieldViolation("jsonl", "required: the dataset's JSONL")])
        if len(content) > MAX_DATASET_BYTES:
            raise InvalidArgument([FieldViolation("jsonl", "at most 4 MiB")])
        digest = hashlib.sha256(content).hexdigest()
        if expected_sha256 and expected_sha256.lower() != digest:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "expected_sha256",
                        f"the content's SHA-256 is {digest}, not {expected_sha256.lower()}: "
                        "the dataset differs from its manifest",
                    )
                ]
            )
        try:
            parsed = await asyncio.to_thread(parse_jsonl, content, max_rows=MAX_TASKS)
        except DatasetRowError as error:
            raise InvalidArgument([FieldViolation("jsonl", str(error))]) from None
        except ValueError as error:
            raise InvalidArgument([FieldViolation("jsonl", str(error))]) from None
        record = DatasetRecord(
            project,
            dataset_id or _new_id("ds"),
            display_name[:200],
            description[:2000],
            source_uri[:2000],
            digest,
            len(parsed.tasks),
            len(content),
            "prov-" + hashlib.sha256(f"{project}/{digest}".encode()).hexdigest()[:16],
            time.time(),
        )
        return await self.store.aio(
            self.store.create_dataset, record, content.decode("utf-8"), request_id
        )

    async def get_dataset(self, principal: Principal, name: str) -> DatasetRecord:
        project, dataset_id = _name(_DATASET, name, "name", "projects/{project}/datasets/{dataset}")
        require_project(principal, project)
        return await self.store.aio(self.store.get_dataset, project, dataset_id)

    async def list_datasets(
        self, principal: Principal, parent: str, size: int, token: str, filter_text: str
    ) -> paging.Page[DatasetRecord]:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        limit = paging.page_size(size)
        scope = f"datasets:{project}:{filter_text}"
        after = paging.decode_token(token, scope)
        where: dict[str, str] = {}
        # `manifest.sha256` is the API's name; the filter grammar takes plain words.
        text = filter_text.replace("manifest.sha256", "sha")
        for field, value in paging.parse_filter(
            text, {"display_name": paging.STRING, "sha": paging.STRING}
        ):
            where["sha256" if field == "sha" else field] = str(value)
        rows = await self.store.aio(self.store.list_datasets, project, after, limit + 1, where)
        return paging.page_of(rows, limit, scope, lambda d: [d.create_time, d.dataset_id])

    # -- suites ---------------------------------------------------------------------------------

    async def _check_suite(self, project: str, suite: NewSuite | SuiteRecord, field: str) -> None:
        violations: list[FieldViolation] = []
        if not 1 <= len(suite.datasets) <= 20:
            violations.append(FieldViolation(f"{field}.datasets", "1 to 20 datasets"))
        if len(set(suite.datasets)) != len(suite.datasets):
            violations.append(FieldViolation(f"{field}.datasets", "duplicates"))
        for index, dataset in enumerate(suite.datasets):
            match = _DATASET.fullmatch(dataset)
            if match is None or match.group(1) != project:
                violations.append(
                    FieldViolation(
                        f"{field}.datasets[{index}]",
                        f"expected projects/{project}/datasets/{{dataset}}",
                    )
                )
                continue
            try:
                await self.store.aio(self.store.get_dataset, project, match.group(2))
            except NotFound:
                violations.append(
                    FieldViolation(f"{field}.datasets[{index}]", f"{dataset} does not exist")
                )
        if not suite.metrics:
            violations.append(FieldViolation(f"{field}.metrics", "at least one metric"))
        if len(set(suite.metrics)) != len(suite.metrics):
            violations.append(FieldViolation(f"{field}.metrics", "duplicates"))
        for index, metric in enumerate(suite.metrics):
            if metric not in METRICS:
                violations.append(
                    FieldViolation(
                        f"{field}.metrics[{index}]",
                        f"unknown metric {metric!r}; one of {', '.join(METRICS)}",
                    )
                )
        limits = suite.thresholds
        for key, value, top in (
            ("max_regression_rate", limits.regressions_max, 1.0),
            ("max_hallucination_rate", limits.hallucination_rate_max, 1.0),
            ("max_cost_per_task_delta_ratio", limits.cost_per_task_delta_max, 10.0),
        ):
            if value is not None and not 0.0 <= value <= top:
                violations.append(
                    FieldViolation(f"{field}.thresholds.{key}", f"must be within 0..{top:g}")
                )
        if limits.cost_per_task_delta_max is not None and "cost_per_task" not in suite.metrics:
            violations.append(
                FieldViolation(
                    f"{field}.thresholds.max_cost_per_task_delta_ratio",
                    "needs the cost_per_task metric in the suite",
                )
            )
        if not 0 <= suite.default_repetitions <= 10:
            violations.append(FieldViolation(f"{field}.default_repetitions", "0 to 10"))
        if not 0.0 <= suite.semantic_pass_min <= 1.0:
            violations.append(FieldViolation(f"{field}.semantic_similarity_pass_min", "0 to 1"))
        if violations:
            raise InvalidArgument(violations)

    async def create_suite(
        self,
        principal: Principal,
        parent: str,
        suite_id: str,
        suite: NewSuite,
        request_id: str,
        validate_only: bool,
    ) -> SuiteRecord:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        _check_id(suite_id, "eval_suite_id")
        await self._check_suite(project, suite, "eval_suite")
        record = _suite_record(project, suite_id or _new_id("suite"), suite)
        if validate_only:
            return record
        return await self.store.aio(self.store.create_suite, record, request_id)

    def _suite_name(self, principal: Principal, name: str, field: str = "name") -> tuple[str, str]:
        project, suite_id = _name(_SUITE, name, field, "projects/{project}/evalSuites/{suite}")
        require_project(principal, project)
        return project, suite_id

    async def get_suite(self, principal: Principal, name: str) -> SuiteRecord:
        project, suite_id = self._suite_name(principal, name)
        return await self.store.aio(self.store.get_suite, project, suite_id)

    async def list_suites(
        self, principal: Principal, parent: str, size: int, token: str
    ) -> paging.Page[SuiteRecord]:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        limit = paging.page_size(size)
        scope = f"suites:{project}"
        after = paging.decode_token(token, scope)
        rows = await self.store.aio(
            self.store.list_suites, project, after[0] if after else None, limit + 1
        )
        return paging.page_of(rows, limit, scope, lambda s: [s.suite_id])

    async def update_suite(
        self,
        principal: Principal,
        name: str,
        changes: NewSuite,
        paths: set[str],
        etag: str,
        validate_only: bool,
    ) -> SuiteRecord:
        project, suite_id = self._suite_name(principal, name, "eval_suite.name")
        allowed = set(_SUITE_FIELDS)
        if not paths:
            raise InvalidArgument([FieldViolation("update_mask", "required")])
        if "*" in paths:
            paths = allowed
        unknown = paths - allowed
        if unknown:
            raise InvalidArgument(
                [FieldViolation("update_mask", f"cannot update {sorted(unknown)}")]
            )
        current = await self.store.aio(self.store.get_suite, project, suite_id)
        incoming = _suite_record(project, suite_id, changes)

        def merged(base: SuiteRecord) -> SuiteRecord:
            fields = {_SUITE_FIELDS[path]: getattr(incoming, _SUITE_FIELDS[path]) for path in paths}
            return replace(base, **fields, update_time=incoming.update_time, etag=incoming.etag)

        candidate = merged(current)
        await self._check_suite(project, candidate, "eval_suite")
        if validate_only:
            return candidate
        return await self.store.aio(self.store.replace_suite, current, etag, merged)

    async def delete_suite(self, principal: Principal, name: str, etag: str) -> None:
        project, suite_id = self._suite_name(principal, name)
        await self.store.aio(self.store.delete_suite, project, suite_id, etag)

    # -- runs -----------------------------------------------------------------------------------

    def _run_name(self, principal: Principal, name: str, field: str = "name") -> tuple[str, str]:
        project, run_id = _name(_RUN, name, field, "projects/{project}/evalRuns/{eval_run}")
        require_project(principal, project)
        return project, run_id

    async def create_run(
        self, principal: Principal, parent: str, run_id: str, new: NewRun, request_id: str
    ) -> RunRecord:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        _check_id(run_id, "eval_run_id")
        violations: list[FieldViolation] = []
        if not 0 <= new.repetitions <= 10:
            violations.append(FieldViolation("eval_run.repetitions", "0 to 10"))
        if not 0 <= new.max_concurrent <= MAX_CONCURRENCY:
            violations.append(
                FieldViolation("eval_run.max_concurrent_tasks", f"0 to {MAX_CONCURRENCY}")
            )
        if not _rate(new.max_cost_usd, allow_inf=True) or new.max_tokens < 0:
            violations.append(FieldViolation("eval_run.budget", "must not be negative or NaN"))
        if len(new.labels) > MAX_LABELS:
            violations.append(FieldViolation("eval_run.labels", f"at most {MAX_LABELS}"))
        for key, value in new.labels.items():
            if not _LABEL.fullmatch(key) or len(value) > 63:
                violations.append(
                    FieldViolation(
                        f"eval_run.labels[{key[:63]!r}]",
                        "keys: lower-case letter then letters, digits, _ or -; values up to 63",
                    )
                )
        target = new.target
        if target.artifact_version and target.prompt_system:
            violations.append(
                FieldViolation("eval_run.target", "at most one of artifact_version and prompt")
            )
        if target.deployment and target.model_group:
            violations.append(
                FieldViolation("eval_run.target", "at most one of model_group and deployment")
            )
        if target.recipe and (target.prompt_system or target.deployment):
            violations.append(
                FieldViolation("eval_run.target", "a recipe target takes no prompt or deployment")
            )
        if target.recipe:
            match = _RECIPE_REVISION.fullmatch(target.recipe)
            if match is None or match.group(1) not in (project, BUILTIN_PROJECT):
                violations.append(
                    FieldViolation(
                        "eval_run.target.recipe",
                        f"projects/{project}/recipes/{{recipe}}[@{{revision}}], or a built-in "
                        "recipe projects/builtin/recipes/{recipe}",
                    )
                )
        if len(target.prompt_system) > MAX_PROMPT_CHARS:
            violations.append(FieldViolation("eval_run.target.prompt.system", "at most 32 KiB"))
        if violations:
            raise InvalidArgument(violations)
        suite_project, suite_id = _name(
            _SUITE, new.suite, "eval_run.suite", "projects/{project}/evalSuites/{suite}"
        )
        if suite_project != project:
            raise InvalidArgument(
                [FieldViolation("eval_run.suite", "must be a suite of the run's project")]
            )
        baseline = ""
        if new.baseline:
            base_project, base_run = _name(
                _SCORECARD,
                new.baseline,
                "eval_run.baseline_scorecard",
                "projects/{project}/evalRuns/{eval_run}/scorecard",
            )
            if base_project != project:
                raise InvalidArgument(
                    [FieldViolation("eval_run.baseline_scorecard", "must be of the run's project")]
                )
            await self.store.aio(self.store.get_scorecard, project, base_run)
            baseline = new.baseline
        if target.artifact_version:
            if self.artifact_prompt is None:
                raise FailedPrecondition(
                    "artifact version targets need RolloutService, which this server does not "
                    "run; give the prompt inline (target.prompt)",
                    reason="ROLLOUTS_DISABLED",
                )
            system, digest = await self.artifact_prompt(principal, target.artifact_version)
            target = replace(target, prompt_system=system, prompt_version=digest)
        suite = await self.store.aio(self.store.get_suite, project, suite_id)
        datasets = []
        for dataset in suite.datasets:
            _, dataset_id = _name(_DATASET, dataset, "eval_run.suite", "a dataset")
            datasets.append(await self.store.aio(self.store.get_dataset, project, dataset_id))
        unfinished = await self.store.aio(self.store.count_unfinished, project)
        if unfinished >= MAX_UNFINISHED_RUNS:
            raise ResourceExhausted(
                f"the project has {unfinished} eval runs queued or running (at most "
                f"{MAX_UNFINISHED_RUNS}); wait for one to end or cancel one",
                reason="EVAL_RUN_QUOTA",
            )
        if target.prompt_system and not target.artifact_version:
            version = hashlib.sha256(target.prompt_system.encode()).hexdigest()[:16]
            target = replace(target, prompt_version=version)
        if target.recipe:  # pinned: a later revision of the recipe is another thing to measure
            if self.recipe_revision is None:
                raise FailedPrecondition(
                    "recipe targets need agent graphs, which this server does not run",
                    reason="GRAPHS_DISABLED",
                )
            target = replace(target, recipe=await self.recipe_revision(principal, target.recipe))
        repetitions = new.repetitions or suite.default_repetitions
        seed = new.seed or secrets.randbelow(2**31 - 1) + 1
        spec = RunSpec(
            suite.name,
            target,
            baseline,
            repetitions,
            seed,
            new.max_cost_usd,
            new.max_tokens,
            new.max_concurrent or DEFAULT_CONCURRENCY,
            dict(new.labels),
            suite,
            tuple(datasets),
        )
        total = sum(d.task_count for d in datasets) * repetitions
        record = RunRecord(
            project,
            run_id or _new_id("run"),
            spec,
            RunState.QUEUED,
            "",
            Progress(total_tasks=total),
            1,
            time.time(),
            None,
            None,
        )
        created = await self.store.aio(self.store.create_run, record, request_id)
        if created.state is RunState.QUEUED:
            self.runner.submit(project, created.run_id)
        return created

    async def get_run(self, principal: Principal, name: str) -> RunRecord:
        project, run_id = self._run_name(principal, name)
        return await self.store.aio(self.store.get_run, project, run_id)

    async def list_runs(
        self,
        principal: Principal,
        parent: str,
        size: int,
        token: str,
        filter_text: str,
        order_by: str,
    ) -> paging.Page[RunRecord]:
        project = names.parse_project_name(parent, "parent")
        require_project(principal, project)
        order = " ".join(order_by.split())
        if order not in ("", "create_time desc", "create_time", "create_time asc"):
            raise InvalidArgument(
                [FieldViolation("order_by", "`create_time desc` (default) or `create_time`")]
            )
        ascending = order in ("create_time", "create_time asc")
        states = frozenset(s.name for s in RunState)
        where: dict[str, object] = {}
        for field, value in paging.parse_filter(
            filter_text, {"state": states, "suite": paging.STRING}
        ):
            where[field] = RunState[str(value)] if field == "state" else str(value)
        limit = paging.page_size(size)
        scope = f"evalRuns:{project}:{filter_text}:{ascending}"
        after = paging.decode_token(token, scope)
        rows = await self.store.aio(
            self.store.list_runs, project, after, limit + 1, where, ascending
        )
        return paging.page_of(rows, limit, scope, lambda r: [r.create_time, r.run_id])

    async def cancel_run(self, principal: Principal, name: str, reason: str) -> RunRecord:
        project, run_id = self._run_name(principal, name)
        message = f"cancelled: {reason[:500]}" if reason else "cancelled"
        ended = await self.store.aio(
            self.store.finish, project, run_id, RunState.CANCELLED, message, None
        )
        if ended is None:
            run = await self.store.aio(self.store.get_run, project, run_id)
            raise FailedPrecondition(
                f"eval run {name} has already ended ({run.state.name})",
                reason="EVAL_RUN_ENDED",
            )
        self.runner.cancel_local(ended.name)
        self.runner.on_change(ended.name)
        return ended

    async def get_scorecard(self, principal: Principal, name: str) -> Scorecard:
        project, run_id = _name(
            _SCORECARD, name, "name", "projects/{project}/evalRuns/{eval_run}/scorecard"
        )
        require_project(principal, project)
        return await self.store.aio(self.store.get_scorecard, project, run_id)

    async def _scorecard_results(
        self, principal: Principal, name: str, field: str
    ) -> tuple[Scorecard, list[TaskResult]]:
        project, run_id = _name(
            _SCORECARD, name, field, "projects/{project}/evalRuns/{eval_run}/scorecard"
        )
        require_project(principal, project)
        card = await self.store.aio(self.store.get_scorecard, project, run_id)
        return card, await self.store.aio(self.store.results, project, run_id)

    async def compare(
        self, principal: Principal, base_name: str, candidate_name: str
    ) -> Comparison:
        base, base_results = await self._scorecard_results(principal, base_name, "base_scorecard")
        cand, cand_results = await self._scorecard_results(
            principal, candidate_name, "candidate_scorecard"
        )
        return await asyncio.to_thread(_compare, base, base_results, cand, cand_results)

    async def evaluate_gate(
        self, principal: Principal, request: GateRequest
    ) -> tuple[GateDecision, list[gates.GateCheck]]:
        """Decide a gate and record the decision: the audit trail promotions are checked in."""
        project, run_id = _name(
            _SCORECARD,
            request.scorecard,
            "scorecard",
            "projects/{project}/evalRuns/{eval_run}/scorecard",
        )
        require_project(principal, project)
        violations: list[FieldViolation] = []
        if request.kind not in gates.KINDS:
            violations.append(FieldViolation("kind", f"one of {', '.join(gates.KINDS)}"))
        inputs = request.inputs
        if not _rate(inputs.max_burn_rate):
            violations.append(FieldViolation("max_burn_rate", "a finite number, not negative"))
        if inputs.max_age_s is not None and inputs.max_age_s <= 0:
            violations.append(FieldViolation("max_scorecard_age", "must be positive"))
        for index, forecast in enumerate(inputs.forecasts):
            if not forecast.slo:
                violations.append(FieldViolation(f"slo_forecasts[{index}].slo", "required"))
            if not _rate(forecast.forecast_burn_rate):
                violations.append(
                    FieldViolation(
                        f"slo_forecasts[{index}].forecast_burn_rate",
                        "a finite number, not negative",
                    )
                )
            remaining = forecast.error_budget_remaining
            if remaining is not None and not math.isfinite(remaining):
                violations.append(
                    FieldViolation(
                        f"slo_forecasts[{index}].error_budget_remaining_ratio", "a finite number"
                    )
                )
        revision = ""
        if request.kind == gates.AUTONOMY_PROMOTION:
            if not (1 <= request.from_level <= 3 and request.to_level == request.from_level + 1):
                violations.append(
                    FieldViolation(
                        "to_autonomy_level", "must be exactly one above from_autonomy_level (L1-L4)"
                    )
                )
            if not inputs.forecasts:
                violations.append(
                    FieldViolation("slo_forecasts", "an autonomy promotion needs at least one")
                )
            match = _RECIPE.fullmatch(request.subject)
            if match is None or match.group(1) != project:
                violations.append(
                    FieldViolation(
                        "subject", f"the recipe promoted: projects/{project}/recipes/{{recipe}}"
                    )
                )
        if violations:
            raise InvalidArgument(violations)
        card = await self.store.aio(self.store.get_scorecard, project, run_id)
        if request.kind == gates.AUTONOMY_PROMOTION and self.subject_revision is not None:
            revision = await self.subject_revision(principal, request.subject)
        passed, checks = gates.decide(card, inputs, time.time())
        decision = GateDecision(
            project,
            _new_id("gate"),
            card.name,
            request.kind,
            request.subject[:300],
            revision,
            request.from_level,
            request.to_level,
            passed,
            tuple(asdict(c) for c in checks),
            principal.who if principal.api_key else "",
            time.time(),
        )
        recorded = await self.store.aio(self.store.record_decision, decision, request.request_id)
        if recorded is not decision:  # a retried request: its recorded outcome, unchanged
            checks = [gates.GateCheck(**c) for c in recorded.checks]
        return recorded, checks


def _compare(
    base: Scorecard,
    base_results: Sequence[TaskResult],
    cand: Scorecard,
    cand_results: Sequence[TaskResult],
) -> Comparison:
    base_scores = {(m.metric, m.dataset, m.slice): m for m in base.metrics if not m.slice}
    base_summary = scoring.summarise(base_results)
    cand_summary = scoring.summarise(cand_results)
    shared = sorted(set(base_summary) & set(cand_summary))
    by_dataset_sha = {r.dataset: r.dataset_sha256 for r in cand_results}
    rows: list[tuple[MetricScore, MetricScore, float | None, stats.Interval]] = []
    for score in cand.metrics:
        if score.slice:
            continue
        key = (score.metric, score.dataset, "")
        base_key = key
        if score.dataset and key not in base_scores:
            # Same content under another name (each project uploads its own copy).
            sha = by_dataset_sha.get(score.dataset)
            base_key = next(
                (
                    k
                    for k in base_scores
                    if k[0] == score.metric
                    and k[1]
                    and any(r.dataset == k[1] and r.dataset_sha256 == sha for r in base_results)
                ),
                key,
            )
        if base_key not in base_scores:
            continue
        keys = [
            k
            for k in shared
            if (not score.dataset or by_dataset_sha.get(score.dataset) == k[0])
            and score.metric in base_summary[k].scores
            and score.metric in cand_summary[k].scores
        ]
        b = [base_summary[k].scores[score.metric] for k in keys]
        c = [cand_summary[k].scores[score.metric] for k in keys]
        p_value = scoring._paired_p(score.metric, b, c) if keys else None
        interval = (
            stats.paired_bootstrap_mean_diff(b, c, resamples=scoring.RESAMPLES, seed=len(keys))
            if len(keys) >= 2
            else stats.Interval(score.mean - base_scores[base_key].mean, 0.0, 0.0)
        )
        rows.append((base_scores[base_key], score, p_value, interval))
    if not rows:
        raise FailedPrecondition(
            "the scorecards share no (metric, dataset) pair", reason="NOTHING_IN_COMMON"
        )
    # One family per task set (all tasks, each dataset): the metrics compared on the same tasks.
    # Rows of different task sets re-test the same differences, so one family of all of them
    # would correct one test as several.
    holm: dict[int, float] = {}
    for dataset in {row[1].dataset for row in rows}:
        family = [
            i for i, row in enumerate(rows) if row[2] is not None and row[1].dataset == dataset
        ]
        adjusted = stats.holm_adjust([rows[i][2] or 0.0 for i in family])
        holm |= dict(zip(family, adjusted, strict=True))
    diffs = [(*row, holm.get(i)) for i, row in enumerate(rows)]
    return Comparison(diffs, scoring.flips(base_results, cand_results))
