"""Where and how each deployment is called, worked out once per deployment, not per call.

OpenAI-compatible deployments (OpenAI, vLLM, the Maestro lane, anything with an `api_base` and an
OpenAI-style provider) go through the native client with the bare model name; every other
provider goes through LiteLLM with the full LiteLLM model string. `model_info.client` forces one
or the other. In the embedded default, a
deployment without an `api_base` is sent to the in-process simulated provider instead, so the
seed config runs with no keys and no network.

Every call through the native client carries the call's W3C trace context (`traceparent`), so an
OpenAI-compatible server that traces (a serving lane, vLLM, the simulator, a hosted gateway)
joins the call's trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from maestro.data_plane.providers.types import Provider
from maestro.routing.catalog import LANE_PROVIDERS
from maestro.routing.spec import DeploymentSpec

NATIVE_PROVIDERS = frozenset(
    {"openai", "hosted_vllm", "vllm", "maestro_lane", "openai_like", "custom_openai"}
)
OPENAI_BASE = "https://api.openai.com/v1"
_ENV_PREFIX = "os.environ/"
NO_CREDENTIAL = "maestro-no-credential"
"""Sent as the key of a tenant's deployment that names none, so nothing fills one in."""


@dataclass(frozen=True, slots=True)
class Target:
    """How to call one deployment."""

    provider: Provider
    model: str
    api_base: str | None
    api_key: str | None
    lane: bool = False
    """A Maestro serving lane: HTTP 503 means it shed the request."""
    traced: bool = False
    """The call's trace context travels with it (`traceparent`): the native client's calls."""


def _secret(value: str | None) -> str | None:
    """LiteLLM's `os.environ/NAME` indirection, resolved when the target is built."""
    if value and value.startswith(_ENV_PREFIX):
        return os.environ.get(value[len(_ENV_PREFIX) :])
    return value


def _bare(model: str, provider: str) -> str:
    prefix = provider + "/"
    return model[len(prefix) :] if model.startswith(prefix) else model


class TargetResolver:
    def __init__(
        self, native: Provider, translating: Provider, simulated_base_url: str | None = None
    ) -> None:
        self._native = native
        self._translating = translating
        self._simulated = simulated_base_url
        self._cache: dict[tuple[str, str, str | None, str | None, str], Target] = {}

    def target(self, deployment: DeploymentSpec) -> Target:
        key = (
            deployment.state_key,
            deployment.litellm_model,
            deployment.api_base,
            deployment.api_key,
            deployment.client,
        )
        target = self._cache.get(key)
        if target is None:
            target = self._build(deployment)
            self._cache[key] = target
        return target

    def _build(self, deployment: DeploymentSpec) -> Target:
        api_key = _secret(deployment.api_key)
        # LiteLLM looks for a provider's key in the environment when given none; a tenant's
        # deployment must never carry the operator's credentials (`routing.tenancy`).
        litellm_key = NO_CREDENTIAL if deployment.owner and api_key is None else api_key
        if deployment.api_base is None and self._simulated is not None:
            return Target(
                self._native, deployment.litellm_model, self._simulated, None, traced=True
            )
        if deployment.client == "litellm":
            return Target(
                self._translating, deployment.litellm_model, deployment.api_base, litellm_key
            )
        if deployment.client == "native" or (
            deployment.provider in NATIVE_PROVIDERS
            and (deployment.api_base or deployment.provider == "openai")
        ):
            return Target(
                self._native,
                _bare(deployment.litellm_model, deployment.provider),
                deployment.api_base or OPENAI_BASE,
                api_key,
                lane=deployment.provider in LANE_PROVIDERS,
                traced=True,
            )
        return Target(self._translating, deployment.litellm_model, deployment.api_base, litellm_key)
