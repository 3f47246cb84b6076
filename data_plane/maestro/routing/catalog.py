"""What LiteLLM knows about a model: its provider and its list prices.

LiteLLM is the catalog here, used at config time only. It would fetch its price map over the
network at import unless told not to; Maestro always uses the map bundled with the pinned
release, so config loading never touches the network and is reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

IN_HOUSE_PROVIDERS = frozenset({"vllm", "hosted_vllm", "ollama", "ollama_chat", "maestro_lane"})
LANE_PROVIDERS = frozenset({"maestro_lane"})
"""Maestro's Ray Serve + vLLM lane: its load is read from its lane-status application, and an
HTTP 503 from it means it shed the request (Ray Serve's queue was full)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    provider: str
    input_cost_per_token: float | None
    output_cost_per_token: float | None
    max_input_tokens: int | None


@cache
def litellm_module() -> Any:
    """LiteLLM, imported once, with the bundled price map (no network at import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


@cache  # configs repeat the same model across many deployments; LiteLLM's parse is slow
def lookup(model: str) -> CatalogEntry:
    """Provider and prices of a LiteLLM model string such as `openai/gpt-4o`.

    Raises ValueError when LiteLLM cannot tell the provider. `maestro_lane/<served model>` is
    Maestro's own lane, which LiteLLM does not know: self-hosted, no list price.
    """
    provider, _, bare = model.partition("/")
    if provider in LANE_PROVIDERS and bare:
        return CatalogEntry(provider, None, None, None)
    litellm = litellm_module()
    try:
        bare, provider, _, _ = litellm.get_llm_provider(model)
    except Exception as error:  # LiteLLM raises its own BadRequestError subclasses
        raise ValueError(f"unknown provider for model {model!r}") from error
    prices: dict[str, Any] = litellm.model_cost.get(model) or litellm.model_cost.get(bare) or {}
    return CatalogEntry(
        provider=str(provider),
        input_cost_per_token=_number(prices.get("input_cost_per_token")),
        output_cost_per_token=_number(prices.get("output_cost_per_token")),
        max_input_tokens=_int(prices.get("max_input_tokens")),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
