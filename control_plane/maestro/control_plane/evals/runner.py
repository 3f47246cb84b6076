"""Executes eval runs: every task of the suite's datasets, `repetitions` times, through the data
plane, graded and stored in batches, then the scorecard.

A replica runs a run while it holds its lease (renewed with every batch written); a run whose
lease lapsed (its replica died) is taken over by the next scan and resumes where its stored
results end, so a crash repeats at most one unwritten batch. Answers come from a `TaskCaller`
the wiring provides (the in-process data plane), so this module never imports a plane.

Per answer, grading is a few string operations; semantic similarity needs the embedding model
and is scored a batch at a time in a worker thread, each distinct text embedded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import structlog

from maestro.control_plane.evals import grading, scoring
from maestro.control_plane.evals.datasets import EvalTask, parse_jsonl
from maestro.control_plane.evals.metrics import EvalMetrics
from maestro.control_plane.evals.records import (
    COST_PER_TASK,
    EXACT_MATCH,
    HALLUCINATION_RATE,
    LATENCY,
    SEMANTIC_SIM,
    TOOL_SUCCESS,
    TTFT,
    DatasetRecord,
    Progress,
    RunRecord,
    RunState,
    Scorecard,
    TaskResult,
)
from maestro.control_plane.evals.store import EvalStore

log = structlog.get_logger(__name__)

LEASE_S = 30.0
SCAN_INTERVAL_S = 10.0
FLUSH_INTERVAL_S = 0.25
FLUSH_MAX = 256


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task execution as the data plane gets it."""

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...]
    tags: tuple[str, ...]
    model_group: str
    seed: int
    deployment: str = ""
    """Pinned: this deployment only, no fallback."""
    recipe: str = ""
    """Run as this recipe revision's agent graph instead of one chat call."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the target answered, or why it could not (`error`)."""

    text: str = ""
    tool_calls: tuple[grading.ToolCall, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    deployment: str = ""
    ttft_s: float | None = None
    total_s: float = 0.0
    error: str = ""


class TaskCaller(Protocol):
    async def answer(self, project: str, request: TaskRequest) -> Answer: ...


class Embedder(Protocol):
    @property
    def model_id(self) -> str: ...
    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class _Execution:
    dataset: DatasetRecord
    task: EvalTask
    repetition: int


@dataclass(slots=True)
class _Graded:
    """An answer graded except for semantic similarity (scored in the batch)."""

    execution: _Execution
    answer: Answer
    scores: dict[str, float]


class EvalRunner:
    def __init__(
        self,
        store: EvalStore,
        caller: TaskCaller,
        embedder: Callable[[], Embedder],
        owner: str,
        on_change: Callable[[str], None],
        maestro_version: str,
        metrics: EvalMetrics | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self._embedder_factory = embedder
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self.owner = owner
        self.on_change = on_change
        self.maestro_version = maestro_version
        self.metrics = metrics
        self._running: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None

    def embedder(self) -> Embedder:
        """The embedding model, made on first use (from a worker thread: it loads weights)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory()
            return self._embedder

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Scan for runs to take (queued ones and those of a dead replica) every few seconds."""
        if self._scanner is None:
            self._scanner = asyncio.create_task(self._scan_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._scanner, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._scanner = None

    def submit(self, project: str, run_id: str) -> None:
        """Start the run here now (it was just created here)."""
        name = f"projects/{project}/evalRuns/{run_id}"
        if name in self._running:
            return
        task = asyncio.create_task(self._drive(project, run_id))
        self._running[name] = task
        task.add_done_callback(lambda _: self._running.pop(name, None))

    def cancel_local(self, name: str) -> None:
        task = self._running.get(name)
        if task is not None:
            task.cancel()

    async def _scan_forever(self) -> None:
        while True:
            try:
                for project, run_id in await self.store.aio(self.store.orphaned):
                    self.submit(project, run_id)
            except Exception:  # the store is unreachable for now: the next scan tries again
                log.warning("eval.scan_failed", exc_info=True)
            await asyncio.sleep(SCAN_INTERVAL_S)

    # -- one run --------------------------------------------------------------------------------

    async def _drive(self, project: str, run_id: str) -> None:
        name = f"projects/{project}/evalRuns/{run_id}"
        run = await self.store.aio(self.store.claim, project, run_id, self.owner, LEASE_S)
        if run is None:
            return
        self.on_change(name)
        try:
            outcome = await self._execute(run)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the run fails; the server goes on
            log.exception("eval.run_failed", run=name)
            outcome = (RunState.FAILED, f"the run could not complete: {type(error).__name__}", None)
        state, message, scorecard = outcome
        if state is not RunState.RUNNING:
            ended = await self.store.aio(
                self.store.finish, project, run_id, state, message, scorecard, self.owner
            )
            if ended is not None and scorecard is not None and self.metrics is not None:
                self.metrics.record(project, scorecard)
        self.on_change(name)

    async def _execute(self, run: RunRecord) -> tuple[RunState, str, Scorecard | None]:
        spec = run.spec
        tasks: list[tuple[DatasetRecord, tuple[EvalTask, ...]]] = []
        for dataset in spec.datasets:
            content = await self.store.aio(
                self.store.dataset_content, dataset.project, dataset.dataset_id
            )
            parsed = parse_jsonl(content.encode())
            if parsed.sha256 != dataset.sha256:
                return RunState.FAILED, f"dataset {dataset.name} does not match its digest", None
            tasks.append((dataset, parsed.tasks))
        done = await self.store.aio(self.store.results, run.project, run.run_id)
        finished = {(r.dataset, r.task_id, r.repetition) for r in done}
        pending: list[_Execution] = []
        for repetition in range(spec.repetitions):
            order = [(d, t) for d, ts in tasks for t in ts]
            random.Random(spec.seed + repetition).shuffle(order)
            pending += [
                _Execution(d, t, repetition)
                for d, t in order
                if (d.name, t.id, repetition) not in finished
            ]
        total = sum(len(ts) for _, ts in tasks) * spec.repetitions
        progress = _progress_of(done, total, spec.repetitions)
        results = list(done)  # `_answer_all` appends each batch it stores
        state = await self._answer_all(run, pending, progress, results)
        if state is not None:
            return state
        return RunState.SUCCEEDED, "", await self._scorecard(run, results)

    async def _answer_all(
        self,
        run: RunRecord,
        pending: list[_Execution],
        progress: Progress,
        results: list[TaskResult],
    ) -> tuple[RunState, str, Scorecard | None] | None:
        spec = run.spec
        queue: asyncio.Queue[_Execution] = asyncio.Queue()
        for execution in pending:
            queue.put_nowait(execution)
        graded: list[_Graded] = []
        wake = asyncio.Event()
        metrics = set(spec.suite_snapshot.metrics)
        if spec.suite_snapshot.thresholds.hallucination_rate_max is not None:
            metrics.add(HALLUCINATION_RATE)

        async def work() -> None:
            while True:
                try:
                    execution = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                answer = await self._ask(run, execution)
                graded.append(_Graded(execution, answer, _grade(execution.task, answer, metrics)))
                if len(graded) >= FLUSH_MAX:
                    wake.set()

        workers = [
            asyncio.create_task(work())
            for _ in range(max(1, min(spec.max_concurrent, len(pending))))
        ]
        all_done = asyncio.gather(*workers)
        try:
            while True:
                finished = all_done.done()
                if not finished:
                    await _first(wake, all_done, FLUSH_INTERVAL_S)
                    wake.clear()
                batch, graded[:] = list(graded), []
                if batch or finished:
                    stored = await self._flush(run, batch, metrics, progress, results)
                    progress = stored[1]
                    if stored[0] is not RunState.RUNNING:
                        return stored[0], "", None
                    if spec.max_cost_usd and progress.cost_usd >= spec.max_cost_usd:
                        return RunState.FAILED, "the run's budget (max_cost_usd) ran out", None
                    used = progress.prompt_tokens + progress.completion_tokens
                    if spec.max_tokens and used >= spec.max_tokens:
                        return RunState.FAILED, "the run's budget (max_tokens) ran out", None
                if finished:
                    all_done.result()  # re-raise a worker's error
                    return None
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _ask(self, run: RunRecord, execution: _Execution) -> Answer:
        spec = run.spec
        messages = execution.task.messages
        if spec.target.prompt_system:
            messages = ({"role": "system", "content": spec.target.prompt_system}, *messages)
        request = TaskRequest(
            messages,
            execution.task.tools,
            execution.task.tags,
            spec.target.model_group,
            spec.seed + execution.repetition,
            spec.target.deployment,
            spec.target.recipe,
        )
        try:
            return await self.caller.answer(run.project, request)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # one task's failure is scored, not fatal
            return Answer(error=f"{type(error).__name__}: {error}"[:500])

    async def _flush(
        self,
        run: RunRecord,
        batch: list[_Graded],
        metrics: set[str],
        progress: Progress,
        results: list[TaskResult],
    ) -> tuple[RunState, Progress]:
        if SEMANTIC_SIM in metrics:
            scored = [g for g in batch if SEMANTIC_SIM in g.scores and not g.answer.error]
            if scored:  # errored answers keep their 0
                embedder = await asyncio.to_thread(self.embedder)
                pairs = [(g.answer.text, g.execution.task.expected or "") for g in scored]
                similarities = await asyncio.to_thread(embedder.similarity, pairs)
                for g, similarity in zip(scored, similarities, strict=True):
                    g.scores[SEMANTIC_SIM] = similarity
        pass_min = run.spec.suite_snapshot.semantic_pass_min
        new = [_result(g, pass_min) for g in batch]
        if self.metrics is not None:
            for result in new:
                outcome = "errored" if result.error else "passed" if result.passed else "failed"
                self.metrics.executions.add(1, (("outcome", outcome),))
        progress = _advance(progress, new, results, run.spec.repetitions)
        results += new
        state = await self.store.aio(
            self.store.record_progress,
            run.project,
            run.run_id,
            self.owner,
            LEASE_S,
            progress,
            new,
        )
        self.on_change(run.name)
        return state, progress

    async def _scorecard(self, run: RunRecord, results: list[TaskResult]) -> Scorecard:
        spec = run.spec
        baseline: list[TaskResult] | None = None
        if spec.baseline:
            project, run_id = _run_of_scorecard(spec.baseline)
            baseline = await self.store.aio(self.store.results, project, run_id)
        metrics = [*spec.suite_snapshot.metrics]
        if spec.suite_snapshot.thresholds.hallucination_rate_max is not None:
            metrics.append(HALLUCINATION_RATE)
        metrics += [TTFT, LATENCY]

        def compute() -> Scorecard:
            scores = scoring.metric_scores(metrics, results, baseline or ())
            thresholds, flipped = scoring.threshold_results(
                spec.suite_snapshot.thresholds, results, baseline, spec.seed
            )
            regressed = flipped.regressed if flipped else []
            return Scorecard(
                run=run.name,
                suite=spec.suite,
                target=spec.target,
                baseline=spec.baseline,
                verdict=scoring.verdict(thresholds),
                metrics=tuple(scores),
                thresholds=tuple(thresholds),
                regressed_task_count=len(regressed),
                improved_task_count=len(flipped.improved) if flipped else 0,
                regressed_tasks=scoring.task_refs(regressed),
                task_count=len({r.key for r in results}),
                repetitions=spec.repetitions,
                seed=spec.seed,
                total_cost_usd=sum(r.cost_usd for r in results),
                prompt_tokens=sum(r.prompt_tokens for r in results),
                completion_tokens=sum(r.completion_tokens for r in results),
                input_digests=tuple(d.sha256 for d in spec.datasets)
                + ((spec.target.prompt_version,) if spec.target.prompt_version else ()),
                labels=dict(spec.labels),
                maestro_version=self.maestro_version,
                suite_digest=_suite_digest(run),
                embedding_model=self.embedder().model_id if SEMANTIC_SIM in metrics else "",
                create_time=time.time(),
                provenance_id=f"prov-{run.run_id}",
            )

        return await asyncio.to_thread(compute)


async def _first(event: asyncio.Event, done: asyncio.Future[Any], timeout_s: float) -> None:
    """Until `event` is set, `done` completes or `timeout_s` passes, whichever comes first;
    `done` is never cancelled by it."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, done}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _grade(task: EvalTask, answer: Answer, metrics: set[str]) -> dict[str, float]:
    """Every metric that applies to this task, semantic similarity as a placeholder."""
    scores: dict[str, float] = {}
    answered = not answer.error
    if task.expected is not None:
        if EXACT_MATCH in metrics:
            scores[EXACT_MATCH] = grading.exact_match(answer.text, task.expected) if answered else 0
        if SEMANTIC_SIM in metrics:
            scores[SEMANTIC_SIM] = 0.0
        if HALLUCINATION_RATE in metrics and answered and answer.text:
            grounding = [str(m.get("content", "")) for m in task.messages]
            grounding += [task.context or "", task.expected]
            scores[HALLUCINATION_RATE] = grading.hallucinated(answer.text, grounding)
    if task.expected_tool_calls and TOOL_SUCCESS in metrics:
        expected = [(c.name, c.arguments) for c in task.expected_tool_calls]
        scores[TOOL_SUCCESS] = grading.tool_success(answer.tool_calls, expected) if answered else 0
    if COST_PER_TASK in metrics:
        scores[COST_PER_TASK] = answer.cost_usd
    if answered:
        scores[LATENCY] = answer.total_s
        if answer.ttft_s is not None:
            scores[TTFT] = answer.ttft_s
    return scores


def _result(graded: _Graded, pass_min: float) -> TaskResult:
    scores = graded.scores
    answer = graded.answer
    checks = [
        scores[EXACT_MATCH] == 1.0 if EXACT_MATCH in scores else True,
        scores[SEMANTIC_SIM] >= pass_min if SEMANTIC_SIM in scores else True,
        scores[TOOL_SUCCESS] == 1.0 if TOOL_SUCCESS in scores else True,
    ]
    execution = graded.execution
    task = execution.task
    return TaskResult(
        dataset=execution.dataset.name,
        dataset_sha256=execution.dataset.sha256,
        task_id=task.id,
        repetition=execution.repetition,
        scores=dict(scores),
        passed=not answer.error and all(checks),
        output=grading.shown_output(answer.text, answer.tool_calls),
        expected=task.expected or "",
        slices=dict(task.slices),
        deployment=answer.deployment,
        error=answer.error,
        cost_usd=answer.cost_usd,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


def _progress_of(results: Sequence[TaskResult], total: int, repetitions: int) -> Progress:
    return _advance(Progress(total_tasks=total), list(results), [], repetitions)


def _advance(
    progress: Progress, new: Sequence[TaskResult], before: Sequence[TaskResult], repetitions: int
) -> Progress:
    per_rep = progress.total_tasks // repetitions if repetitions else 0
    counts: dict[int, int] = {}
    for result in (*before, *new):
        counts[result.repetition] = counts.get(result.repetition, 0) + 1
    return replace(
        progress,
        completed_tasks=progress.completed_tasks + len(new),
        errored_tasks=progress.errored_tasks + sum(1 for r in new if r.error),
        completed_repetitions=sum(1 for n in counts.values() if per_rep and n >= per_rep),
        cost_usd=progress.cost_usd + sum(r.cost_usd for r in new),
        prompt_tokens=progress.prompt_tokens + sum(r.prompt_tokens for r in new),
        completion_tokens=progress.completion_tokens + sum(r.completion_tokens for r in new),
    )


def _run_of_scorecard(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return parts[1], parts[3]


def _suite_digest(run: RunRecord) -> str:
    body = asdict(run.spec.suite_snapshot)
    for key in ("create_time", "update_time", "etag"):
        body.pop(key)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
