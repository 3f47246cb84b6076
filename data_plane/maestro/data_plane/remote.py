"""A data plane deployed apart from its control plane: what it needs from it, over gRPC.

- `SnapshotFollower` follows RouteService.WatchConfig (xDS-style): it compiles each snapshot it
  receives into a local registry, ACKs it, or NACKs it with the reason while keeping the
  previous one (its traffic splits still apply, on their own: a rollback reaches a data plane
  that cannot compile the project's config), and resumes from its last version after a
  reconnect. Calls never wait on it: they route with whatever snapshot is local. A snapshot's
  artifact traffic splits are published beside its config (`SnapshotRegistry.publish_traffic`,
  which compiles the prompt and agent versions); an empty config_yaml means "splits only": the
  project has no config of its own and routes with the global one.
- `ObservationReporter` sends the observations the data plane gathers on
  RouteService.ReportObservations, numbering batches and re-sending unanswered ones after a
  reconnect (the server counts a batch id once).
- `RemoteKeyVerifier` authenticates callers' API keys by asking the control plane which project
  a key belongs to (ProjectService.ListProjects with that key), cached for a short TTL.

Reconnects back off exponentially with jitter (tenacity) and go on until the data plane stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.rpc import code_pb2, status_pb2
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from maestro.clients import AsyncMaestroClient
from maestro.core.auth import KEY_PREFIX, Principal
from maestro.core.errors import MaestroError, Unavailable
from maestro.routing.layers import GLOBAL_PROJECT
from maestro.routing.policy import PolicyModule
from maestro.routing.signals import Observation
from maestro.routing.snapshots import Compiled, Revision, SnapshotRegistry, compile_layers
from maestro.routing.spec import load_yaml
from maestro.routing.traffic import (
    ProjectTraffic,
    TrafficSplit,
    VersionShare,
    parse_snapshot_version,
)
from maestro.routing.wire import observation_message
from maestro.v1 import project_service_pb2, project_service_pb2_grpc
from maestro.v1 import route_service_pb2 as rpb

log = structlog.get_logger(__name__)

STREAM_TIMEOUT_S = 3600.0
"""Long-lived streams are re-opened hourly (resuming where they were) rather than never."""
MAX_PENDING_OBSERVATIONS = 10_000
_RECONNECT = wait_exponential_jitter(multiplier=0.2, max=10.0)


class StreamEnded(Exception):
    """The server ended a long-lived stream; reconnect."""


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        wait=_RECONNECT,
        retry=retry_if_exception_type((grpc.RpcError, StreamEnded)),
        reraise=True,
    )


# -- snapshots ----------------------------------------------------------------------------------


def _modules(messages: Any) -> tuple[PolicyModule, ...]:
    return tuple(PolicyModule(m.name, m.source) for m in messages)


def compile_snapshot(message: rpb.RouteConfigSnapshot, registry: SnapshotRegistry) -> Compiled:
    """Compile a RouteConfigSnapshot's config as received (CPU-bound: run off the event loop).
    Its routing snapshot's version is the config's part of `snapshot_version`: decisions name
    the config they used, as on the control plane."""
    project = message.route_config.removesuffix("/routeConfig")
    layered = bool(message.global_revision_id)
    snapshot = compile_layers(
        project,
        load_yaml(message.config_yaml),
        _modules(message.policy_modules),
        _modules(message.global_policy_modules) if layered else None,
        parse_snapshot_version(message.snapshot_version)[0],
        registry.board(project),
    )
    global_revision = (
        _revision(GLOBAL_PROJECT, message.global_revision_id, "", message.global_policy_modules)
        if layered
        else None
    )
    return Compiled(snapshot, global_revision, message.config_yaml)


def traffic_of(message: rpb.RouteConfigSnapshot) -> ProjectTraffic | None:
    """The traffic splits a snapshot carries, at the revision its version names; None when
    the version names none (the project has no splits)."""
    revision = parse_snapshot_version(message.snapshot_version)[1]
    if revision is None:
        return None
    return ProjectTraffic(
        message.route_config.removesuffix("/routeConfig"),
        revision,
        {
            split.artifact: TrafficSplit(
                split.artifact,
                tuple(
                    VersionShare(
                        w.artifact_version, w.weight_percent, w.digest, w.media_type, w.content
                    )
                    for w in split.version_weights
                ),
            )
            for split in message.traffic_splits
        },
    )


def _revision(project: str, number: str, config_yaml: str, modules: Any) -> Revision:
    return Revision(
        project=project,
        revision=int(number) if number.isdigit() else 0,
        config_yaml=config_yaml,
        policy_modules=_modules(modules),
        description="received on WatchConfig",
        creator="control-plane",
        digest="",
        create_time=datetime.now(UTC),
    )


class SnapshotFollower:
    def __init__(
        self, client: AsyncMaestroClient, registry: SnapshotRegistry, node_id: str
    ) -> None:
        self._client = client
        self._registry = registry
        self._node_id = node_id
        self._version = ""
        self.synced = asyncio.Event()
        """Set once the first response was applied: the data plane can route."""

    async def run(self) -> None:
        """Follow until cancelled, reconnecting with backoff."""
        async for attempt in _retrying():
            with attempt:
                await self._session()

    async def _session(self) -> None:
        requests: asyncio.Queue[rpb.WatchConfigRequest] = asyncio.Queue()
        requests.put_nowait(
            rpb.WatchConfigRequest(node_id=self._node_id, version_info=self._version)
        )

        async def outgoing() -> AsyncIterator[rpb.WatchConfigRequest]:
            while True:
                yield await requests.get()

        call = self._client.routes.WatchConfig(outgoing(), timeout=STREAM_TIMEOUT_S)
        async for response in call:
            requests.put_nowait(await self._apply(response))
        raise StreamEnded

    async def _apply(self, response: rpb.WatchConfigResponse) -> rpb.WatchConfigRequest:
        rejected = []
        for message in response.snapshots:
            try:
                await self._apply_snapshot(message)
            except (MaestroError, ValueError) as error:
                log.error(
                    "data_plane.snapshot_rejected",
                    config=message.route_config,
                    version=message.snapshot_version,
                    error=str(error),
                )
                rejected.append(
                    rpb.RejectedRouteConfig(
                        route_config=message.route_config,
                        snapshot_version=message.snapshot_version,
                        error=status_pb2.Status(
                            code=code_pb2.INVALID_ARGUMENT, message=str(error)[:1000]
                        ),
                    )
                )
        kept = {m.route_config.removesuffix("/routeConfig") for m in response.snapshots}
        for name in response.removed_route_configs:
            await self._registry.remove(name.removesuffix("/routeConfig"))
            await self._registry.remove_traffic(name.removesuffix("/routeConfig"))
        if response.full_state:
            for published in self._registry.all(None):
                if published.project not in kept:
                    await self._registry.remove(published.project)
            for traffic in self._registry.all_traffic(None):
                if traffic.project not in kept:
                    await self._registry.remove_traffic(traffic.project)
        ack = rpb.WatchConfigRequest(node_id=self._node_id, response_nonce=response.nonce)
        if rejected:
            ack.version_info = self._version  # a NACK keeps the version it had
            ack.error_detail.CopyFrom(
                status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="snapshots rejected")
            )
            ack.rejected_route_configs.extend(rejected)
        else:
            self._version = response.version_info
            ack.version_info = self._version
        self.synced.set()
        return ack

    async def _apply_snapshot(self, message: rpb.RouteConfigSnapshot) -> None:
        """Publish one project's snapshot: its traffic splits and its config (unless empty,
        "splits only", or the one already applied), each on its own. A config this data plane
        cannot compile must not hold back the splits (a rollback among them), nor splits it
        refuses the config: the part that applies is published, and the snapshot is still
        reported rejected (raised) when either part was refused."""
        project = message.route_config.removesuffix("/routeConfig")
        config_version = parse_snapshot_version(message.snapshot_version)[0]
        current = self._registry.current(project)
        refused: list[Exception] = []
        try:
            traffic = traffic_of(message)
            if traffic is not None:
                await self._registry.publish_traffic(traffic)
            elif self._registry.traffic(project) is not None:
                await self._registry.remove_traffic(project)
        except (MaestroError, ValueError) as error:
            refused.append(error)
        if message.config_yaml and (current is None or current.snapshot_version != config_version):
            try:
                compiled = await asyncio.to_thread(compile_snapshot, message, self._registry)
            except (MaestroError, ValueError) as error:
                refused.append(error)
            else:
                revision = _revision(
                    project, message.revision_id, message.config_yaml, message.policy_modules
                )
                await self._registry.publish(revision, compiled)
        if refused:
            if len(refused) == 1:
                raise refused[0]
            raise ValueError("; ".join(str(error) for error in refused))
        log.info("data_plane.snapshot_applied", project=project, version=message.snapshot_version)


# -- observations -------------------------------------------------------------------------------


class ObservationReporter:
    """A sink for `Observer.flush` that streams batches to the control plane."""

    def __init__(self, client: AsyncMaestroClient, node_id: str) -> None:
        self._client = client
        self._node_id = node_id
        self._pending: deque[Observation] = deque()
        self._wakeup = asyncio.Event()
        self._unanswered: OrderedDict[str, rpb.ReportObservationsRequest] = OrderedDict()
        self._ids = itertools.count(1)
        self.dropped = 0
        self.accepted = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __call__(self, batch: list[Observation]) -> None:
        for observation in batch:
            if len(self._pending) >= MAX_PENDING_OBSERVATIONS:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(observation)
        self._wakeup.set()
        if self._pending:
            self._idle.clear()

    async def run(self) -> None:
        async for attempt in _retrying():
            with attempt:
                await self._session()

    @property
    def settled(self) -> bool:
        """Nothing waits to be sent or answered."""
        return not self._pending and not self._unanswered

    async def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until every observation handed over was answered: at shutdown, so
        the last window's traffic still reaches the control plane."""
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: cancel-safe on 3.11
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self.settled

    async def _session(self) -> None:
        async def outgoing() -> AsyncIterator[rpb.ReportObservationsRequest]:
            for request in list(self._unanswered.values()):  # re-sent after a reconnect
                yield request
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending:
                    chunk = [self._pending.popleft() for _ in range(min(1000, len(self._pending)))]
                    request = rpb.ReportObservationsRequest(
                        node_id=self._node_id,
                        batch_id=str(next(self._ids)),
                        observations=[_observation_message(o) for o in chunk],
                    )
                    self._unanswered[request.batch_id] = request
                    yield request

        call = self._client.routes.ReportObservations(outgoing(), timeout=STREAM_TIMEOUT_S)
        async for answer in call:
            if self._unanswered.pop(answer.batch_id, None) is not None:
                self.accepted += answer.accepted_count
            if self.settled:
                self._idle.set()
        raise StreamEnded


def _observation_message(observation: Observation) -> rpb.DeploymentObservation:
    message = observation_message(observation)
    message.artifact_version = observation.artifact_version
    return message


# -- caller authentication ----------------------------------------------------------------------


class RemoteKeyVerifier:
    """`authenticate(secret)` for a data plane without the key store: asks the control plane."""

    def __init__(
        self,
        target: str,
        ttl_s: float,
        credentials: grpc.ChannelCredentials | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`credentials`: TLS to the control plane (see `maestro.clients.channel_credentials`);
        None: plaintext. `tracer_provider`: traces the checks, each under the request that
        made it (None: the global provider)."""
        interceptors = aio_client_interceptors(tracer_provider=tracer_provider)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
            if credentials is not None
            else grpc.aio.insecure_channel(target, interceptors=interceptors)
        )
        self._projects = project_service_pb2_grpc.ProjectServiceStub(self._channel)
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._checking: dict[str, asyncio.Future[Principal | None]] = {}
        """Checks in flight by key digest: the calls that miss the cache together (a burst,
        or every call of a busy key when its entry expires) share one round trip."""

    async def authenticate(self, secret: str) -> Principal | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        check = self._checking.get(digest)
        if check is None:
            check = asyncio.ensure_future(self._check(secret, digest, now))
            self._checking[digest] = check
            check.add_done_callback(lambda done: self._checked(digest, done))
        # Shielded: a caller that leaves (cancelled) does not cancel the others' check.
        return await asyncio.shield(check)

    def _checked(self, digest: str, check: asyncio.Future[Principal | None]) -> None:
        del self._checking[digest]
        if not check.cancelled():
            check.exception()  # retrieved: every caller may have left before it failed

    async def _check(self, secret: str, digest: str, now: float) -> Principal | None:
        try:
            listed = await self._projects.ListProjects(
                project_service_pb2.ListProjectsRequest(page_size=1),
                metadata=(("x-api-key", secret),),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                principal = None
            else:
                raise Unavailable(
                    "cannot verify the API key: the control plane is unreachable",
                    reason="CONTROL_PLANE_UNAVAILABLE",
                ) from None
        else:
            principal = await self._own_key(secret, listed) if listed.projects else None
        self._cache[digest] = (now + self._ttl_s, principal)
        if len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return principal

    async def _own_key(
        self, secret: str, listed: project_service_pb2.ListProjectsResponse
    ) -> Principal | None:
        """The key's scopes and holder: any key may read its own metadata. Its id is the part
        of the secret after `mk_` (see `auth.new_key`)."""
        project = listed.projects[0].name
        key_id = secret[len(KEY_PREFIX) :].split("_", 1)[0]
        try:
            key = await self._projects.GetApiKey(
                project_service_pb2.GetApiKeyRequest(name=f"{project}/apiKeys/{key_id}"),
                metadata=(("x-api-key", secret),),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    "cannot verify the API key: the control plane is unreachable",
                    reason="CONTROL_PLANE_UNAVAILABLE",
                ) from None
            return None
        return Principal(
            project.removeprefix("projects/"),
            key.api_key.name,
            frozenset(key.api_key.scopes),
            key.api_key.principal,
        )

    async def close(self) -> None:
        await self._channel.close(None)
