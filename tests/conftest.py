"""Shared fixtures: a real control-plane server on 127.0.0.1:0 with its real interceptors.

Two projects, `alpha` and `beta`, each with an API key, exist in a fresh store per test: an
SQLite file, or with `MAESTRO_TEST_STORE=postgres` (`make test` runs the suite both ways) a fresh
database on a real PostgreSQL server, one per test folder, so a test that restarts its server on
the same folder finds its data again. Tests that name a store themselves keep it. Spans go to an
in-memory exporter so tests can assert what was traced.
"""

from __future__ import annotations

import os

# Before any test module imports litellm: its bundled price map, never the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from maestro.app.config import MaestroConfig, load_config
from maestro.app.server import ControlPlane, start_control_plane
from maestro.clients import AsyncMaestroClient
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.postgres import PostgresSql
from maestro.control_plane.store.sql import Sql
from maestro.control_plane.store.sqlite import SqliteSql
from maestro.core.auth import TENANT_SCOPES
from maestro.core.telemetry import Telemetry, build_telemetry
from tests.postgres_support import fresh_database, postgres_server


@dataclass
class RunningServer:
    plane: ControlPlane
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    telemetry: Telemetry
    alpha_key: str
    beta_key: str

    @property
    def target(self) -> str:
        return self.plane.address

    def new_key(
        self, identity: str, scopes: frozenset[str] = TENANT_SCOPES, project: str = "alpha"
    ) -> str:
        """Another key of `project`, held by `identity` (dual control counts identities)."""
        return self.plane.projects.create_key_offline(project, identity, scopes, identity).secret

    def client(self, api_key: str | None) -> AsyncMaestroClient:
        return AsyncMaestroClient(
            self.target,
            api_key=api_key,
            timeout_s=10,
            tracer_provider=self.telemetry.tracer_provider,
        )


LOOPBACK_TENANT_ENDPOINTS = {
    "*": [
        {"api_base": "http://127.0.0.1", "trust_tenant_facts": True},
        {"api_base": "http://localhost", "trust_tenant_facts": True},
    ]
}
STORE_BACKEND = os.environ.get("MAESTRO_TEST_STORE", "sqlite")
_postgres: dict[str, str] = {}
"""With STORE_BACKEND postgres: the session's server ("server"), and a database per test folder."""


def _store_settings(tmp_path: Path, overrides: dict[str, object]) -> dict[str, object]:
    if STORE_BACKEND != "postgres" or any(key.startswith("store.") for key in overrides):
        return {}
    folder = str(tmp_path)
    if folder not in _postgres:
        _postgres[folder] = fresh_database(_postgres["server"])
    return {"store.backend": "postgres", "store.postgres_dsn": _postgres[folder]}


def test_config(tmp_path: Path, **overrides: object) -> MaestroConfig:
    return load_config(
        None,
        env={},
        **{
            "server.port": 0,
            "store.sqlite_path": str(tmp_path / "maestro.db"),
            "data_plane.http_port": 0,
            # The simulated providers tests start are the tenants' own: loopback, trusted facts.
            "routing.tenant_endpoints": LOOPBACK_TENANT_ENDPOINTS,
            **_store_settings(tmp_path, overrides),
            **overrides,
        },
    )


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def start_server(tmp_path: Path, **overrides: object) -> RunningServer:
    return await start_server_reading(tmp_path, (), overrides)


async def start_server_reading(
    tmp_path: Path, metric_readers: tuple[MetricReader, ...], overrides: dict[str, object]
) -> RunningServer:
    """A test server whose metrics `metric_readers` read too (a Prometheus exposition, say)."""
    spans = InMemorySpanExporter()
    metrics = InMemoryMetricReader()
    config = test_config(tmp_path, **overrides)
    telemetry = build_telemetry(
        config.telemetry,
        span_processors=(SimpleSpanProcessor(spans),),
        metric_readers=(metrics, *metric_readers),
    )
    plane = await start_control_plane(config, telemetry)
    keys = {}
    for project in ("alpha", "beta"):
        plane.projects.create_project(project)
        keys[project] = plane.projects.create_key_offline(project, "test").secret
    return RunningServer(plane, spans, metrics, telemetry, keys["alpha"], keys["beta"])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(tmp_path)
    yield running
    await running.plane.stop(grace_s=0)
    running.telemetry.shutdown()


@pytest.fixture
async def alpha(server: RunningServer) -> AsyncIterator[AsyncMaestroClient]:
    async with server.client(server.alpha_key) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server_dsn() -> Iterator[str]:
    """One real PostgreSQL server for the session (see tests/postgres_support.py)."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session", autouse=STORE_BACKEND == "postgres")
def _postgres_for_every_server(postgres_server_dsn: str) -> None:
    """Under MAESTRO_TEST_STORE=postgres, every test server stores in PostgreSQL."""
    _postgres["server"] = postgres_server_dsn


@pytest.fixture
def postgres_dsn(postgres_server_dsn: str) -> str:
    """A fresh, empty database on that server."""
    return fresh_database(postgres_server_dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def store_sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sql]:
    """The one store layer on each backend, every slice's migrations applied: store tests take
    this, so one suite runs against SQLite and a real PostgreSQL."""
    sql: Sql
    if request.param == "sqlite":
        sql = SqliteSql(tmp_path / "maestro.db", MIGRATIONS)
    else:
        sql = PostgresSql(request.getfixturevalue("postgres_dsn"), MIGRATIONS)
    yield sql
    sql.close()
