"""Inspect AI's side of `eval_bench.py`: the bench's exact-match tasks on Inspect's `mockllm`.

Runs inside bench/.venv-inspect (built by eval_bench.py from requirements-inspect.txt), never the
project's venv, and imports nothing of Maestro's. Usage:

    bench/.venv-inspect/bin/python bench/_inspect_eval.py --jsonl tasks.jsonl --log-dir DIR \
        [--no-log-samples] [--trials 3] [--warmup 50] [--accuracy 0.9]

Every task of the JSONL (rows of Maestro's `maestro.eval.task.v1` schema: `id`, `input`,
`expected`, `slices`) becomes an Inspect `Sample`; the task is `generate()` scored by `exact()`
(normalised exact match, as Maestro's `exact_match`). The model is `mockllm/model` given
`custom_outputs`, a function that answers each prompt with its task's `expected` (or, for the
share of tasks a hash of the id puts above `--accuracy`, a wrong answer) and sets token usage,
so mockllm never counts tokens itself (it would fetch a tiktoken file from the internet).

Each trial times `inspect_ai.eval(...)` alone (the dataset is built before): generation,
scoring, and the eval log written to `--log-dir` (the default `.eval` format; with
`--no-log-samples`, without its samples). `--warmup` samples run once first, untimed, so lazy
imports and registries are loaded as they are in a long-lived process.

Prints one JSON object on the last line of stdout. An audit hook records every socket connect
and address lookup the process makes; `network` in the output lists them (it should be empty).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_NETWORK: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple):  # AF_UNIX paths are local
            _NETWORK.append(f"connect {address!r}")
    elif event == "socket.getaddrinfo":
        _NETWORK.append(f"getaddrinfo {args[0]!r}")


sys.addaudithook(_audit)

from inspect_ai import Task, eval  # noqa: E402
from inspect_ai import __version__ as inspect_version  # noqa: E402
from inspect_ai.dataset import MemoryDataset, Sample  # noqa: E402
from inspect_ai.model import (  # noqa: E402
    ChatMessage,
    GenerateConfig,
    ModelOutput,
    ModelUsage,
    get_model,
)
from inspect_ai.scorer import exact  # noqa: E402
from inspect_ai.solver import generate  # noqa: E402
from inspect_ai.tool import ToolChoice, ToolInfo  # noqa: E402


def _draw(task_id: str) -> float:
    digest = hashlib.blake2b(f"{task_id}:answer".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _answers(
    rows: list[dict[str, Any]], accuracy: float
) -> Callable[[list[ChatMessage], list[ToolInfo], ToolChoice, GenerateConfig], ModelOutput]:
    """mockllm's `custom_outputs`: the answer for the prompt's task, with token usage set."""
    by_input: dict[str, str] = {}
    for row in rows:
        right = str(row["expected"])
        by_input[str(row["input"])] = right if _draw(str(row["id"])) < accuracy else f"not {right}"

    def answer(
        messages: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        prompt = messages[-1].text
        text = by_input.get(prompt, "I do not know.")
        output = ModelOutput.from_content(model="mockllm", content=text)
        prompt_tokens = len(prompt.split())
        completion_tokens = len(text.split())
        output.usage = ModelUsage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return output

    return answer


def _task(rows: list[dict[str, Any]], name: str) -> Task:
    samples = [
        Sample(id=str(r["id"]), input=str(r["input"]), target=str(r["expected"])) for r in rows
    ]
    return Task(
        dataset=MemoryDataset(samples, name=name), solver=generate(), scorer=exact(), name=name
    )


def _accuracy(log: Any) -> float | None:
    if log.results is None or not log.results.scores:
        return None
    metrics = log.results.scores[0].metrics  # exact(): "mean" of CORRECT = 1, INCORRECT = 0
    metric = metrics.get("accuracy") or metrics.get("mean")
    return None if metric is None else float(metric.value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inspect AI on mockllm, for eval_bench.py.")
    parser.add_argument("--jsonl", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--no-log-samples", action="store_true", help="log_samples=False")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=50, help="samples run once, untimed")
    parser.add_argument("--accuracy", type=float, default=0.9)
    args = parser.parse_args(argv)

    rows = _rows(args.jsonl)
    model = get_model("mockllm/model", custom_outputs=_answers(rows, args.accuracy))
    log_samples = not args.no_log_samples
    settings: dict[str, Any] = {"display": "none", "log_dir": str(args.log_dir)}
    if not log_samples:
        settings["log_samples"] = False

    if args.warmup:
        eval(_task(rows[: args.warmup], "warmup"), model=model, **settings)

    trials: list[dict[str, Any]] = []
    for index in range(args.trials):
        task = _task(rows, f"bench{index}")
        before = set(args.log_dir.glob("*"))
        started = time.perf_counter()
        logs = eval(task, model=model, **settings)
        seconds = time.perf_counter() - started
        log = logs[0]
        written = sorted(set(args.log_dir.glob("*")) - before)
        trials.append(
            {
                "seconds": seconds,
                "samples_per_s": len(rows) / seconds,
                "status": log.status,
                "accuracy": _accuracy(log),
                "samples_in_log": len(log.samples or []),
                "log_bytes": sum(p.stat().st_size for p in written),
            }
        )
    print(
        json.dumps(
            {
                "inspect_ai": inspect_version,
                "samples": len(rows),
                "log_samples": log_samples,
                "max_connections": model.api.max_connections(),
                "trials": trials,
                "network": _NETWORK,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
