"""One replica's vLLM engine: `AsyncLLM` built from the lane's knobs, its chat template, and the
figures its stat loggers keep."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from serving.config import LaneSpec
from serving.figures import EngineFigures
from serving.placement import engine_spawn
from serving.wire import ChatRequest


def engine_args(lane: LaneSpec) -> AsyncEngineArgs:
    knobs = lane.engine
    return AsyncEngineArgs(
        model=lane.model,
        served_model_name=[lane.model_name],
        dtype=knobs.dtype,
        max_model_len=knobs.max_model_len,
        max_num_seqs=knobs.max_num_seqs,
        max_num_batched_tokens=knobs.max_num_batched_tokens,
        quantization=knobs.quantization,
        gpu_memory_utilization=knobs.gpu_memory_utilization,
        enforce_eager=knobs.enforce_eager,
        enable_prefix_caching=knobs.enable_prefix_caching,
        stream_interval=knobs.stream_interval,
        tensor_parallel_size=knobs.tensor_parallel_size,
        seed=knobs.seed,
        disable_log_stats=False,
    )


class LaneEngine:
    def __init__(self, lane: LaneSpec, *, ray_metrics: bool = True) -> None:
        # Read by vLLM's CPU backend only; GPU hosts size the cache by gpu_memory_utilization.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(lane.engine.cpu_kv_cache_gib)
        self.figures = EngineFigures()
        loggers: list[Any] = [self.figures.logger_factory]
        if ray_metrics:
            # vLLM's Prometheus metrics (queue, KV usage, TTFT, inter-token latency...) through
            # Ray's metrics agent, which Prometheus scrapes on each node's metrics-export port.
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

            loggers.append(RayPrometheusStatLogger)
        with engine_spawn():
            self.llm = AsyncLLM.from_engine_args(engine_args(lane), stat_loggers=loggers)
        self._tokenizer = self.llm.get_tokenizer()

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        ids: Any = self._tokenizer.apply_chat_template(
            request.messages, tokenize=True, add_generation_prompt=True
        )
        if hasattr(ids, "keys"):  # transformers 5 answers a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    @staticmethod
    def sampling(request: ChatRequest) -> SamplingParams:
        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop or None,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        """Deltas; when the consumer is slower than the engine, vLLM merges the deltas that
        wait, so each item carries everything produced since the previous one."""
        outputs: AsyncGenerator[RequestOutput, None] = self.llm.generate(
            {"prompt_token_ids": prompt_ids}, params, request_id
        )
        return outputs

    async def warm_up(self) -> None:
        """One short generation before the replica takes traffic: the first request pays for
        the chat template's compilation and the engine's first steps, and would otherwise stall
        the replica's event loop while a burst waits behind it."""
        request = ChatRequest(
            model="",
            messages=[{"role": "user", "content": "warm up"}],
            stream=True,
            include_usage=False,
            max_tokens=2,
            temperature=0.0,
            top_p=1.0,
            stop=[],
            seed=None,
            ignore_eos=True,
        )
        async for _ in self.generate(self.prompt_ids(request), self.sampling(request), "warm-up"):
            pass

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()
