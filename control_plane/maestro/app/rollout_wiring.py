"""RolloutService in the `maestro up` process: its content checks (the data plane's artifact
compiler, GraphService's recipe parser), the snapshot registry its splits go to, the data
plane's observations it judges, and the kill switch that aborts its rollouts."""

from __future__ import annotations

from opentelemetry import metrics

from maestro.app.config import MaestroConfig
from maestro.app.rollout_evals import EvalGates, artifact_prompt
from maestro.control_plane.evals.assembly import EvalPlane
from maestro.control_plane.graph.assembly import GraphPlane
from maestro.control_plane.graph.recipe import parse_recipe
from maestro.control_plane.graph.records import RecipeRecord
from maestro.control_plane.graph.service import ArtifactRecipe
from maestro.control_plane.rollouts.assembly import RolloutPlane, build_rollouts
from maestro.control_plane.rollouts.convert import parse_version
from maestro.control_plane.rollouts.freeze import FreezeWindow
from maestro.control_plane.rollouts.records import Kind
from maestro.control_plane.route.service import RouteService
from maestro.control_plane.store.sql import Sql
from maestro.core.auth import Principal
from maestro.core.errors import FieldViolation, InvalidArgument, NotFound
from maestro.routing.artifacts import compile_artifact, kind_of
from maestro.routing.snapshots import SnapshotRegistry


def check_content(kind: Kind, media_type: str, content: bytes) -> str:
    """INVALID_ARGUMENT unless `content` is a valid `kind` of `media_type`: what the data plane
    will render compiles, and a recipe parses as GraphService runs it. Returns the version's
    autonomy level (an agent's or recipe's `autonomy`; "" for a prompt)."""
    try:
        declared = kind_of(media_type)
    except InvalidArgument:
        raise InvalidArgument(
            [
                FieldViolation(
                    "artifact_version.media_type",
                    f"{media_type[:100]!r} is not a media type Maestro serves",
                )
            ]
        ) from None
    if declared != kind.label:
        raise InvalidArgument(
            [
                FieldViolation(
                    "artifact_version.media_type",
                    f"{media_type} holds a {declared}, not a {kind.label}",
                )
            ]
        )
    compiled = compile_artifact(media_type, content)
    if kind == Kind.RECIPE:
        return parse_recipe(content.decode(), field="content").spec.autonomy
    return compiled.autonomy


def build_rollout_plane(
    config: MaestroConfig,
    sql: Sql,
    registry: SnapshotRegistry,
    routes: RouteService,
    graph: GraphPlane | None,
    evals: EvalPlane | None,
    meter: metrics.Meter | None = None,
) -> RolloutPlane:
    settings = config.rollouts
    plane = build_rollouts(
        sql,
        registry.publish_traffic,
        check_content,
        settings.oci_dir or config.store.sqlite_path.parent / "oci",
        [
            FreezeWindow(w.start.timestamp(), w.end.timestamp(), w.reason, tuple(w.projects))
            for w in settings.freeze_windows
        ],
        measure_interval_s=settings.measure_interval_s,
        max_analysis_wait_s=settings.max_analysis_wait_s,
        pause_scale=settings.pause_scale,
        registry=settings.registry,
        notifications=settings.notifications,
        meter=meter,
    )
    plane.service.current_traffic = registry.traffic
    plane.drive = settings.drive

    def config_version(project: str) -> str:
        published = registry.current(f"projects/{project}")
        return published.snapshot_version if published is not None else ""

    plane.store.config_version = config_version
    routes.observation_listeners.append(plane.observe)
    if graph is not None:
        graph.service.kill_switch_listeners.append(plane.service.abort_all)
        graph.service.artifact_recipe = artifact_recipes(plane, registry)
        plane.service.kill_switch = graph.service.switch_in_effect
    if evals is not None:
        plane.controller.analyst.eval_gate = EvalGates(evals)
        evals.service.artifact_prompt = artifact_prompt(plane.service)
        eval_store = evals.store

        async def eval_runs_of(project: str, version: str) -> tuple[str, ...]:
            return await eval_store.aio(eval_store.runs_targeting, project, version)

        plane.service.eval_runs_of = eval_runs_of
    return plane


def artifact_recipes(plane: RolloutPlane, registry: SnapshotRegistry) -> ArtifactRecipe:
    """GraphService's hook for `run.artifact`: the recipe version the artifact's traffic split
    picks for the run's key, as a recipe revision the run pins (its revision id derived from the
    content digest, so each version compiles once and never collides with a recipe's)."""
    store = plane.store

    async def recipe(principal: Principal, artifact: str, key: str) -> RecipeRecord:
        traffic = registry.traffic(f"projects/{principal.project_id}")
        split = traffic.split(artifact) if traffic is not None else None
        if split is None:
            raise NotFound(
                f"artifact {artifact[:200]} serves no version: start a rollout of it",
                reason="ARTIFACT_NOT_SERVING",
            )
        project, artifact_id, version_id = parse_version(split.pick(key).version, "run.artifact")
        version = await store.aio(store.get_version, project, artifact_id, version_id)
        if version.kind != Kind.RECIPE:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "run.artifact",
                        f"{artifact} holds {version.kind.label} versions; a run needs a recipe "
                        "artifact",
                    )
                ]
            )
        source = await store.aio(store.version_content, project, artifact_id, version_id)
        return RecipeRecord(
            project,
            artifact_id,
            "sha256-" + version.digest.removeprefix("sha256:")[:24],
            version.description,
            source,
            version.create_time,
            version.create_time,
            artifact_version=version.name,
        )

    return recipe
