"""A real Maestro server whose routing config points at two real simulated providers.

`primary` (deployment `primary-a`) falls back to `backup` (deployment `backup-b`); each model
group is served by its own SimProvider, so a test can break one and watch the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from maestro.clients import AsyncMaestroClient
from maestro.data_plane.sim import FaultProfile, Faults, SimProvider
from maestro.v1 import common_pb2
from maestro.v1 import inference_service_pb2 as ipb
from maestro.v1 import route_service_pb2 as rpb
from tests.conftest import RunningServer, start_server

CONFIG = """
model_list:
  - model_name: primary
    litellm_params: {{model: openai/primary, api_base: "{primary}"}}
    model_info: {{id: primary-a, quality: 0.9}}
  - model_name: backup
    litellm_params: {{model: openai/backup, api_base: "{backup}"}}
    model_info: {{id: backup-b, quality: 0.5}}
router:
  fallbacks: [{{primary: primary, on_error: [backup]}}]
"""
PARENT = "projects/alpha"


def profile(seed: int = 0, **faults: object) -> FaultProfile:
    """A profile serving any model, with `faults` for all of them."""
    return FaultProfile(strict_models=False, seed=seed, default=Faults.model_validate(faults))


@dataclass
class Stack:
    server: RunningServer
    primary: SimProvider
    backup: SimProvider
    client: AsyncMaestroClient

    @property
    def openai_base_url(self) -> str:
        return openai_base_url(self.server)


def openai_base_url(server: RunningServer) -> str:
    """The server's OpenAI-compatible ingress, for the `openai` client's `base_url`."""
    data = server.plane.data
    assert data is not None
    assert data.http_port is not None
    return f"http://127.0.0.1:{data.http_port}/v1"


@asynccontextmanager
async def stack(
    tmp_path: Path,
    primary: FaultProfile | None = None,
    backup: FaultProfile | None = None,
    overrides: dict[str, object] | None = None,
    config_for: Callable[[str, str], str] | None = None,
) -> AsyncIterator[Stack]:
    """Two simulated providers and a server routing `primary` -> `backup` over them;
    `config_for(primary_url, backup_url)` writes another routing config."""
    async with (
        SimProvider(primary or profile()) as primary_sim,
        SimProvider(backup or profile()) as backup_sim,
    ):
        server = await start_server(tmp_path, **(overrides or {}))
        try:
            async with server.client(server.alpha_key) as client:
                if config_for is None:
                    config = CONFIG.format(primary=primary_sim.base_url, backup=backup_sim.base_url)
                else:
                    config = config_for(primary_sim.base_url, backup_sim.base_url)
                await client.routes.ApplyConfig(
                    rpb.ApplyConfigRequest(
                        route_config=rpb.RouteConfig(
                            name=f"{PARENT}/routeConfig", config_yaml=config
                        )
                    )
                )
                yield Stack(server, primary_sim, backup_sim, client)
        finally:
            await server.plane.stop(grace_s=0)
            server.telemetry.shutdown()


def user(text: str = "Write about the sea.") -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=text)


def stream_request(**fields: object) -> ipb.StreamChatCompletionRequest:
    values: dict[str, object] = {
        "parent": PARENT,
        "model": "primary",
        "messages": [user()],
        "max_tokens": 24,
    }
    values.update(fields)
    return ipb.StreamChatCompletionRequest(**values)  # type: ignore[arg-type]


async def events(
    client: AsyncMaestroClient, request: ipb.StreamChatCompletionRequest, timeout_s: float = 20
) -> list[ipb.StreamChatCompletionResponse]:
    return [
        event async for event in client.inference.StreamChatCompletion(request, timeout=timeout_s)
    ]


def text_of(stream: list[ipb.StreamChatCompletionResponse]) -> str:
    return "".join(e.delta.text for e in stream if e.WhichOneof("event") == "delta")


def kinds(stream: list[ipb.StreamChatCompletionResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in stream]


async def abandon_after_two_deltas(client: AsyncMaestroClient) -> None:
    """Start a long stream one token per chunk, read two deltas, and cancel it."""
    call = client.inference.StreamChatCompletion(
        stream_request(max_tokens=500, coalescing=ipb.ChatCompletionCoalescing(max_chunk_tokens=1))
    )
    received = 0
    async for event in call:
        received += event.WhichOneof("event") == "delta"
        if received == 2:
            break
    call.cancel()
