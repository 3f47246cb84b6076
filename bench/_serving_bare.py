"""The bare-engine baseline of bench/serving_bench.py, run with the serving venv's Python:
vLLM's AsyncLLM in this process, built by the lane's own `LaneEngine` from the same knobs, with
no Ray Serve, HTTP or coalescing in front. Prints one JSON line of results.

    .venv-serving/bin/python bench/_serving_bare.py MODEL_DIR LEVELS TOKENS ROUNDS
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

from serving.config import LaneSpec
from serving.engine import LaneEngine
from serving.wire import parse_chat_request


async def level(engine: LaneEngine, concurrency: int, tokens: int) -> dict[str, float]:
    chat = parse_chat_request(
        {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Write about the sea."}],
            "max_tokens": tokens,
            "ignore_eos": True,
        },
        "tiny-llama",
    )

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        first = 0.0
        produced = 0
        ids = engine.prompt_ids(chat)
        async for output in engine.generate(ids, engine.sampling(chat), uuid.uuid4().hex):
            produced += len(output.outputs[0].token_ids)
            if not first and produced:
                first = time.perf_counter() - started
        return produced, first

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = sorted(first for _, first in results)
    return {
        "tokens_per_s": sum(produced for produced, _ in results) / elapsed,
        "ttft_p50_ms": ttfts[len(ttfts) // 2] * 1000,
    }


async def main(model: str, levels: list[int], tokens: int, rounds: int) -> None:
    lane = LaneSpec(
        name="bare",
        model=model,
        served_model_name="tiny-llama",
        engine={
            "dtype": "float32",
            "max_model_len": 1024,
            "max_num_seqs": 64,
            "enforce_eager": True,
        },
    )
    engine = LaneEngine(lane, ray_metrics=False)
    await engine.warm_up()
    report: dict[str, dict[str, float]] = {}
    for concurrency in levels:
        runs = [await level(engine, concurrency, tokens) for _ in range(rounds)]
        report[str(concurrency)] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in runs),
        }
    print(json.dumps(report), flush=True)
    engine.shutdown()


if __name__ == "__main__":  # the engine core is a spawned process: guard the entry point
    asyncio.run(
        main(
            sys.argv[1],
            [int(n) for n in sys.argv[2].split(",")],
            int(sys.argv[3]),
            int(sys.argv[4]),
        )
    )
