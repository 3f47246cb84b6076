"""The simulated provider: an OpenAI-compatible server with configurable latency and faults.

It stands in for hosted providers in the embedded default (`maestro up` with no keys), the tests,
chaos runs and load tests. The official `openai` client works against it unchanged. Its output is
deterministic for a (model, messages, seed); its faults are drawn from the profile's seed.

    async with SimProvider(FaultProfile(default=Faults(error_rate=0.1))) as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim")

With an `answers` section in its profile it also answers eval tasks (an answer key read from
JSONL datasets) right or wrong at per-model and per-prompt-version rates; other prompts still get
the deterministic words.

Modules: `profile` (the schema), `faults` (per-request decisions), `answers` (the answer key and
simulated quality), `text` (the deterministic words), `wire` (OpenAI's formats), `stats`
(counters), `server` (HTTP, `SimProvider`, `run`).
"""

from maestro.data_plane.sim.profile import (
    AnswerProfile,
    Brownout,
    FaultProfile,
    Faults,
    FixedLatency,
    LognormalLatency,
    ProfileError,
    PromptQuality,
    Quality,
    TokenRange,
    UniformLatency,
    load_profile,
    parse_profile,
)
from maestro.data_plane.sim.server import DEFAULT_PORT, SimProvider, run, serve
from maestro.data_plane.sim.stats import SimStats
from maestro.data_plane.sim.text import VOCABULARY, completion_text, prompt_tokens

__all__ = [
    "DEFAULT_PORT",
    "VOCABULARY",
    "AnswerProfile",
    "Brownout",
    "FaultProfile",
    "Faults",
    "FixedLatency",
    "LognormalLatency",
    "ProfileError",
    "PromptQuality",
    "Quality",
    "SimProvider",
    "SimStats",
    "TokenRange",
    "UniformLatency",
    "completion_text",
    "load_profile",
    "parse_profile",
    "prompt_tokens",
    "run",
    "serve",
]
