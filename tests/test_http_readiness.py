"""Readiness on the HTTP ingress: 503 with `Retry-After` on every route but the probes until the
first routing snapshot is applied, and again once draining; `/healthz` answers throughout. Also
the `Retry-After` of errors that carry a retry hint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from maestro.core.errors import ResourceExhausted, Unavailable
from maestro.core.readiness import Readiness
from maestro.data_plane.http_ingress import (
    NOT_READY_RETRY_AFTER_S,
    RETRY_AFTER_KEY,
    OpenAIIngress,
    error_response,
)
from maestro.data_plane.sim import SimProvider
from maestro.v1 import route_service_pb2 as pb
from tests.conftest import RunningServer
from tests.inference_support import profile

Http = TestClient[web.Request, web.Application]

CONFIG = """
model_list:
  - model_name: chat
    litellm_params: {{model: openai/chat, api_base: "{sim}"}}
    model_info: {{id: chat-a}}
"""
GATED = (
    ("GET", "/v1/models", None),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),
    ("POST", "/route/choose", {"model": "chat"}),
)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def http(server: RunningServer, readiness: Readiness) -> AsyncIterator[Http]:
    """An ingress over the test server's own data plane and routes, with a Readiness of its own
    that the test flips."""
    async with SimProvider(profile()) as sim:
        async with server.client(server.alpha_key) as alpha:
            config = CONFIG.format(sim=sim.base_url)
            await alpha.routes.ApplyConfig(
                pb.ApplyConfigRequest(
                    route_config=pb.RouteConfig(
                        name="projects/alpha/routeConfig", config_yaml=config
                    )
                )
            )
        async with _served(server, readiness) as client:
            yield client


@asynccontextmanager
async def _served(server: RunningServer, readiness: Readiness) -> AsyncIterator[Http]:
    data = server.plane.data
    assert data is not None
    ingress = OpenAIIngress(
        data.service,
        server.plane.routes,
        server.plane.projects.authenticate,
        None,
        readiness=readiness,
    )
    client = TestClient(TestServer(ingress.application()))
    await client.start_server()
    client.session.headers["Authorization"] = f"Bearer {server.alpha_key}"
    try:
        yield client
    finally:
        await client.close()


async def _statuses(http: Http) -> list[int]:
    found = []
    for method, path, body in GATED:
        async with http.request(method, path, json=body) as response:
            found.append(response.status)
    return found


async def test_before_ready_the_routes_answer_503_not_ready_with_retry_after(
    http: Http,
) -> None:
    for method, path, body in GATED:
        async with http.request(method, path, json=body) as response:
            assert response.status == 503, path
            assert response.headers["Retry-After"] == str(NOT_READY_RETRY_AFTER_S)
            error = (await response.json())["error"]
            assert error["code"] == "NOT_READY"


async def test_before_ready_a_keyless_garbage_request_is_503_not_401_or_400(
    http: Http,
) -> None:
    async with http.post(
        "/route/choose", data=b"{nope", headers={"Authorization": "Bearer mk_bad"}
    ) as response:
        assert response.status == 503


async def test_before_ready_readyz_is_503_and_healthz_is_200_not_ready(http: Http) -> None:
    async with http.get("/readyz") as ready, http.get("/healthz") as health:
        assert ready.status == 503
        assert ready.headers["Retry-After"] == str(NOT_READY_RETRY_AFTER_S)
        assert health.status == 200
        assert (await health.json())["ready"] is False


async def test_once_marked_ready_every_route_and_readyz_answer_200(
    http: Http, readiness: Readiness
) -> None:
    readiness.mark_ready()
    async with http.get("/readyz") as ready, http.get("/healthz") as health:
        assert ready.status == 200
        assert (await health.json())["ready"] is True
    assert await _statuses(http) == [200, 200, 200]


async def test_draining_answers_503_again_and_healthz_stays_200(
    http: Http, readiness: Readiness
) -> None:
    readiness.mark_ready()
    readiness.mark_draining()
    assert await _statuses(http) == [503, 503, 503]
    async with http.get("/readyz") as ready, http.get("/healthz") as health:
        assert ready.status == 503
        assert health.status == 200


def test_resource_exhausted_with_a_retry_hint_in_its_metadata_has_retry_after() -> None:
    error = ResourceExhausted(
        "every deployment is at its limits",
        reason="DEPLOYMENT_LIMITS_REACHED",
        metadata={RETRY_AFTER_KEY: "2.5"},
    )
    response = error_response(error)
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"  # rounded up
    assert response.body is not None
    assert orjson.loads(response.body)["error"]["code"] == "DEPLOYMENT_LIMITS_REACHED"  # type: ignore[arg-type]


def test_retry_delay_wins_over_the_metadata_hint_and_a_bad_hint_adds_no_header() -> None:
    both = ResourceExhausted(
        "x", reason="RATE_LIMITED", retry_delay_s=0.2, metadata={RETRY_AFTER_KEY: "9"}
    )
    bad = ResourceExhausted("x", reason="RATE_LIMITED", metadata={RETRY_AFTER_KEY: "soon"})
    none = Unavailable("x", reason="NO_HEALTHY_DEPLOYMENT")
    assert error_response(both).headers["Retry-After"] == "1"  # at least one second
    assert "Retry-After" not in error_response(bad).headers
    assert "Retry-After" not in error_response(none).headers
