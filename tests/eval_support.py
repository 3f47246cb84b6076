"""Eval tests' helpers: a small task set, a server whose simulated provider answers it with a
configured accuracy, and calls that upload, run and follow a suite through the real API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from maestro.clients import AsyncMaestroClient
from maestro.data_plane.sim import FaultProfile
from maestro.v1 import eval_service_pb2 as epb
from tests.inference_support import PARENT, Stack, stack

CITIES = ("Porto", "Lyon", "Graz", "Turku", "Bergen", "Gdansk", "Malmo", "Utrecht")


def task_rows(count: int, prefix: str = "t") -> list[dict[str, object]]:
    """`count` question-answering tasks with a short answer found in their context, plus every
    fifth a tool task; slices by kind."""
    rows: list[dict[str, object]] = []
    for i in range(count):
        city = CITIES[i % len(CITIES)]
        other = CITIES[(i + 3) % len(CITIES)]
        if i % 5 == 4:
            rows.append(
                {
                    "id": f"{prefix}-{i:04d}",
                    "input": f"Look up order {prefix.upper()}-{i:04d} for the customer.",
                    "tools": [
                        {
                            "type": "function",
                            "function": {
                                "name": "lookup_order",
                                "description": "Find an order by id.",
                                "parameters": {
                                    "type": "object",
                                    "properties": {"order_id": {"type": "string"}},
                                    "required": ["order_id"],
                                },
                            },
                        }
                    ],
                    "expected_tool_calls": [
                        {
                            "name": "lookup_order",
                            "arguments": {"order_id": f"{prefix.upper()}-{i:04d}"},
                        }
                    ],
                    "slices": {"kind": "tool_use"},
                }
            )
            continue
        context = f"Office {i} of Acme moved from {other} to {city} in spring."
        rows.append(
            {
                "id": f"{prefix}-{i:04d}",
                "input": f"Where is office {i} of Acme now? Context: {context}",
                "expected": city,
                "context": context,
                "slices": {"kind": "qa"},
            }
        )
    return rows


def jsonl(rows: Sequence[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def answering_profile(key_file: Path, **quality: object) -> FaultProfile:
    """A simulated provider that knows the answers of `key_file`'s tasks."""
    return FaultProfile.model_validate(
        {
            "strict_models": False,
            "answers": {"key_files": [str(key_file)], "default": quality},
        }
    )


@asynccontextmanager
async def eval_stack(
    tmp_path: Path, rows: Sequence[dict[str, object]], **quality: object
) -> AsyncIterator[Stack]:
    key_file = tmp_path / "tasks.jsonl"
    key_file.write_bytes(jsonl(rows))
    async with stack(tmp_path, primary=answering_profile(key_file, **quality)) as running:
        yield running


async def create_dataset(
    client: AsyncMaestroClient, rows: Sequence[dict[str, object]], dataset_id: str = "tasks"
) -> epb.Dataset:
    response = await client.evals.CreateDataset(
        epb.CreateDatasetRequest(
            parent=PARENT, dataset_id=dataset_id, dataset=epb.Dataset(), jsonl=jsonl(rows)
        )
    )
    return response.dataset


async def create_suite(
    client: AsyncMaestroClient,
    datasets: Sequence[str],
    metrics: Sequence[epb.EvalMetric.ValueType] = (
        epb.EVAL_METRIC_EXACT_MATCH,
        epb.EVAL_METRIC_TOOL_SUCCESS,
    ),
    suite_id: str = "core",
    **thresholds: float,
) -> epb.EvalSuite:
    response = await client.evals.CreateEvalSuite(
        epb.CreateEvalSuiteRequest(
            parent=PARENT,
            eval_suite_id=suite_id,
            eval_suite=epb.EvalSuite(
                datasets=datasets,
                metrics=metrics,
                thresholds=epb.EvalThresholds(**thresholds),
                default_repetitions=1,
            ),
        )
    )
    return response.eval_suite


async def run_to_end(
    client: AsyncMaestroClient,
    suite: str,
    *,
    system: str = "",
    baseline: str = "",
    repetitions: int = 1,
    seed: int = 7,
) -> tuple[epb.EvalRun, list[epb.WatchEvalRunResponse]]:
    """Create a run and follow it with WatchEvalRun to its end: the final run and every
    message the stream carried."""
    target = epb.EvalTarget(model_group="primary")
    if system:
        target.prompt.CopyFrom(epb.EvalPrompt(name="p", system=system))
    created = await client.evals.CreateEvalRun(
        epb.CreateEvalRunRequest(
            parent=PARENT,
            eval_run=epb.EvalRun(
                suite=suite,
                target=target,
                baseline_scorecard=baseline,
                repetitions=repetitions,
                seed=seed,
            ),
        )
    )
    messages = [
        message
        async for message in client.evals.WatchEvalRun(
            epb.WatchEvalRunRequest(name=created.eval_run.name), timeout=120
        )
    ]
    return messages[-1].eval_run, messages
