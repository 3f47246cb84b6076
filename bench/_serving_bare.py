"""The bare-engine baseline of bench/serving_bench.py, run with the serving venv's Python:
vLLM's AsyncLLM in this process, built by the lane's own `LaneEngine` from the same knobs, with
no Ray Serve, HTTP or coalescing in front.

It stays up so the bench can alternate bare and lane rounds (machine drift then hits both
alike). Protocol, one JSON object per line: it prints `{"ready": true}` once warm, then answers
each `CONCURRENCY TOKENS` line on stdin with `{"tokens_per_s": ..., "ttft_p50_ms": ...}`; EOF
ends it.

    .venv-serving/bin/python bench/_serving_bare.py MODEL_DIR [ENGINE_CPUS]

ENGINE_CPUS: the CPU placement the lane uses (`cpu_placement.engine_cpus`), applied the same
way: the engine worker on those CPUs, this process (engine scheduler, output handling and the
load it generates) on the others.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from serving.config import LaneSpec
from serving.engine import LaneEngine
from serving.placement import reserve_for_engines
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


async def main(model: str, engine_cpus: str | None) -> None:
    if engine_cpus:
        reserve_for_engines(engine_cpus)
    lane = LaneSpec(
        name="bare",
        model=model,
        served_model_name="tiny-llama",
        engine={
            "dtype": "float32",
            "max_model_len": 2048,
            "max_num_seqs": 64,
            "enforce_eager": True,
        },
    )
    engine = LaneEngine(lane, ray_metrics=False)
    await engine.warm_up()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        concurrency, tokens = (int(word) for word in line.split())
        print(json.dumps(await level(engine, concurrency, tokens)), flush=True)
    engine.shutdown()


if __name__ == "__main__":  # the engine core is a spawned process: guard the entry point
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
