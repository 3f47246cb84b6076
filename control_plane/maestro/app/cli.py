"""Commands. Server commands read a config file plus MAESTRO_* environment overrides; client
commands read the target and API key from options or MAESTRO_TARGET / MAESTRO_API_KEY."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format

from maestro.app import eval_cli, rollout_cli
from maestro.app.config import ConfigError, MaestroConfig, load_config
from maestro.clients import MaestroClient, MaestroRpcError
from maestro.control_plane.graph.recipe import Recipe
from maestro.control_plane.projects.service import ProjectService
from maestro.control_plane.projects.store import ProjectStore
from maestro.control_plane.schema import MIGRATIONS
from maestro.control_plane.store.opening import open_store
from maestro.core.auth import ALL_SCOPES, INFERENCE, hash_secret, parse_scopes
from maestro.core.errors import InvalidArgument, MaestroError
from maestro.core.redact import redact
from maestro.v1 import common_pb2
from maestro.v1 import project_service_pb2 as project_pb
from maestro.v1 import route_service_pb2 as route_pb

app = typer.Typer(
    help="Maestro: route, stream and govern LLM and agent traffic.", no_args_is_help=True
)
admin = typer.Typer(
    help="Operator commands that act on the local store directly.", no_args_is_help=True
)
keys = typer.Typer(help="API keys of your project (through the API).", no_args_is_help=True)
route = typer.Typer(help="RouteService: decisions and routing config.", no_args_is_help=True)
app.add_typer(admin, name="admin")
app.add_typer(keys, name="keys")
recipe = typer.Typer(
    help="Agent graph recipes, checked locally: no server needed.", no_args_is_help=True
)
app.add_typer(admin, name="admin")
app.add_typer(keys, name="keys")
app.add_typer(route, name="route")
app.add_typer(recipe, name="recipe")

DEMO_PROJECT = "demo"
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config; default: the embedded demo.")
]
TargetOption = Annotated[
    str, typer.Option("--target", envvar="MAESTRO_TARGET", help="Server address host:port.")
]
ScopeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scope",
        help="Scope the key gets (repeat for several): admin, inference, approver, data-plane, "
        "operator.",
    ),
]
PrincipalOption = Annotated[
    str, typer.Option(help="Who holds the key, e.g. alice@example.com (dual control counts it).")
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="MAESTRO_API_KEY", help="API key; default: the demo key file."
    ),
]


def main() -> None:
    app()


DEMO = object()
"""`_load`'s default: the packaged demo config."""


def _load(config_path: Path | object | None = DEMO, **overrides: object) -> MaestroConfig:
    """`config_path`, the demo config (DEMO), or the built-in defaults (None), then the
    environment, then `overrides`; exits 2 with one line per problem."""
    path = config_path if isinstance(config_path, Path) else None
    if config_path is DEMO:
        path = Path(str(resources.files("maestro.control_plane") / "demo.yaml"))
    try:
        return load_config(
            path, env=os.environ, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def _read_default_key() -> str:
    path = Path(".maestro/demo-api-key")
    if not path.exists():
        typer.echo("no --api-key, MAESTRO_API_KEY or .maestro/demo-api-key", err=True)
        raise typer.Exit(2)
    return path.read_text().strip()


def _demo_key_file(config: MaestroConfig) -> Path:
    return config.store.sqlite_path.parent / "demo-api-key"


def _bootstrap_demo(config: MaestroConfig) -> None:
    """First run: create the `demo` project and write a key for it next to the database."""
    sql = open_store(config.store, MIGRATIONS)
    try:
        store = ProjectStore(sql)
        service = ProjectService(store)
        service.create_project(DEMO_PROJECT, "Demo project")
        key_file = _demo_key_file(config)
        if key_file.exists() and store.find_key_by_hash(hash_secret(key_file.read_text().strip())):
            return
        # The embedded default is one person's: its key may also change the global layer.
        created = service.create_key_offline(DEMO_PROJECT, "maestro up demo key", ALL_SCOPES)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(created.secret + "\n")
        typer.echo(
            f"created project projects/{DEMO_PROJECT}; its API key is in {key_file}", err=True
        )
    finally:
        sql.close()


@app.command()
def up(
    config_path: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Override server.port (0: any free port).")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(help="Override data_plane.http_port, the OpenAI-compatible ingress."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Dev mode: calls without a key act for the demo project (loopback only)."
        ),
    ] = False,
) -> None:
    """Start the embedded default: control plane and data plane on SQLite with the demo
    project, and the simulated provider standing in for hosted models."""
    overrides: dict[str, object] = {
        "server.host": host,
        "server.port": port,
        "data_plane.http_port": http_port,
    }
    if insecure:
        overrides |= {"auth.mode": "insecure", "auth.insecure_project": DEMO_PROJECT}
    config = _load(config_path or DEMO, **overrides)
    _bootstrap_demo(config)
    from maestro.app.serve import serve

    serve(config)


@app.command("data-plane")
def data_plane(
    control_plane: Annotated[
        str,
        typer.Option(
            "--control-plane",
            envvar="MAESTRO_TARGET",
            help="The control plane to follow, host:port.",
        ),
    ] = "127.0.0.1:50051",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MAESTRO_API_KEY",
            help="API key on the control plane; the data plane serves its project.",
        ),
    ] = None,
    config_path: ConfigOption = None,
    port: Annotated[int, typer.Option(help="gRPC port of InferenceService.")] = 50061,
    http_port: Annotated[int, typer.Option(help="Port of the OpenAI-compatible ingress.")] = 8081,
    node_id: Annotated[str, typer.Option(help="Name in WatchConfig and reports.")] = "",
    simulated_provider: Annotated[
        bool,
        typer.Option(
            help="Send deployments without an api_base to an in-process simulated provider, "
            "as the embedded default does (no keys, no network)."
        ),
    ] = False,
    control_plane_ca: Annotated[
        Path | None,
        typer.Option(help="TLS to the control plane: the CA (PEM) its certificate chains to."),
    ] = None,
    control_plane_cert: Annotated[
        Path | None,
        typer.Option(help="Mutual TLS: this data plane's client certificate (PEM)."),
    ] = None,
    control_plane_key: Annotated[
        Path | None, typer.Option(help="Mutual TLS: the private key (PEM) of that certificate.")
    ] = None,
) -> None:
    """Run a data plane on its own, following a control plane: InferenceService and the
    OpenAI-compatible ingress, with config snapshots from WatchConfig. Its own TLS is
    `server.tls` (config file, or MAESTRO_SERVER__TLS__CERT_FILE and the like)."""
    key = api_key or _read_default_key()
    overrides: dict[str, object] = {
        "server.port": port,
        "data_plane.http_port": http_port,
        "data_plane.control_plane_target": control_plane,
        "data_plane.control_plane_api_key": key,
        "data_plane.node_id": node_id or None,
        "data_plane.simulated_provider": simulated_provider,
        "data_plane.control_plane_tls.ca_file": control_plane_ca,
        "data_plane.control_plane_tls.cert_file": control_plane_cert,
        "data_plane.control_plane_tls.key_file": control_plane_key,
        "telemetry.service_name": "maestro-data-plane",
    }
    config = _load(config_path, **overrides)  # no --config: the built-in defaults
    from maestro.app.serve import serve

    serve(config, "data_plane")


@app.command("sim-provider")
def sim_provider(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 8900,
    profile: Annotated[
        Path | None, typer.Option(help="Fault profile (YAML or JSON): latency, errors, brownouts.")
    ] = None,
) -> None:
    """Serve the simulated OpenAI-compatible provider until SIGTERM or SIGINT."""
    from maestro.core.logs import configure_logging
    from maestro.core.settings import LoggingConfig
    from maestro.data_plane.sim import ProfileError, run

    configure_logging(LoggingConfig())
    try:
        run(host, port, profile)
    except ProfileError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(config_path: Annotated[Path, typer.Argument(help="YAML config file.")]) -> None:
    """Validate a config file (with MAESTRO_* overrides) and print the effective settings,
    secrets masked (keys, DSN passwords)."""
    config = _load(config_path)
    typer.echo(json.dumps(redact(config.model_dump(mode="json")), indent=2))


@admin.command("create-project")
def create_project(
    project: Annotated[
        str, typer.Argument(help="Project id: lower-case letters, digits, hyphens.")
    ],
    display_name: Annotated[str, typer.Option(help="Human-readable name.")] = "",
    principal: PrincipalOption = "",
    config_path: ConfigOption = None,
) -> None:
    """Create a project in the store (idempotent) and mint its first API key, with every tenant
    scope (admin, inference, approver, data-plane)."""
    config = _load(config_path or DEMO)
    sql = open_store(config.store, MIGRATIONS)
    try:
        service = ProjectService(ProjectStore(sql))
        record = service.create_project(project, display_name)
        created = service.create_key_offline(
            project, "created by maestro admin create-project", identity=principal
        )
    except MaestroError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(2) from None
    finally:
        sql.close()
    typer.echo(f"project: {record.name}\napi key: {created.secret}")


@admin.command("create-key")
def admin_create_key(
    project: Annotated[str, typer.Argument(help="Project id the key acts for.")],
    scope: ScopeOption = None,
    principal: PrincipalOption = "",
    display_name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    config_path: ConfigOption = None,
) -> None:
    """Mint a key in the store directly (default scope: inference). The way to grant
    `operator`: the global routing layer and the global kill switch."""
    config = _load(config_path or DEMO)
    sql = open_store(config.store, MIGRATIONS)
    try:
        service = ProjectService(ProjectStore(sql))
        scopes = parse_scopes(tuple(scope or [INFERENCE]), "--scope")
        if ProjectStore(sql).get_project(f"projects/{project}") is None:
            typer.echo(f"error: project projects/{project} does not exist", err=True)
            raise typer.Exit(2)
        created = service.create_key_offline(project, display_name, scopes, principal)
    except MaestroError as error:
        typer.echo(f"error: {error.message}", err=True)
        raise typer.Exit(2) from None
    finally:
        sql.close()
    typer.echo(f"api key: {created.secret}\nscopes: {' '.join(sorted(scopes))}")


def _client(target: str, api_key: str | None) -> MaestroClient:
    """A client of `target`; over TLS when MAESTRO_TLS_CA_FILE (the server's CA) or, for a
    server that requires mutual TLS, MAESTRO_TLS_CERT_FILE and MAESTRO_TLS_KEY_FILE are set."""
    if api_key is None:
        default_file = Path(".maestro/demo-api-key")
        api_key = default_file.read_text().strip() if default_file.exists() else None
    return MaestroClient(
        target,
        api_key=api_key,
        timeout_s=10,
        ca_file=os.environ.get("MAESTRO_TLS_CA_FILE") or None,
        cert_file=os.environ.get("MAESTRO_TLS_CERT_FILE") or None,
        key_file=os.environ.get("MAESTRO_TLS_KEY_FILE") or None,
    )


eval_cli.register(app, lambda target, api_key: _client(target, api_key))
rollout_cli.register(app, lambda target, api_key: _client(target, api_key))


def _print(message: object) -> None:
    typer.echo(json_format.MessageToJson(message, indent=2))  # type: ignore[arg-type]


def _fail(error: MaestroRpcError) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


@app.command("get-project")
def get_project(
    name: Annotated[str, typer.Argument(help="projects/{project}")],
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Print a project."""
    with _client(target, api_key) as client:
        try:
            _print(client.get_project(name))
        except MaestroRpcError as error:
            _fail(error)


@keys.command("list")
def list_keys(
    parent: Annotated[str, typer.Argument(help="projects/{project}")],
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """List a project's API keys (metadata only)."""
    with _client(target, api_key) as client:
        try:
            request = project_pb.ListApiKeysRequest(parent=parent)
            while True:
                response = client.projects.ListApiKeys(request)
                for key in response.api_keys:
                    _print(key)
                if not response.next_page_token:
                    break
                request.page_token = response.next_page_token
        except MaestroRpcError as error:
            _fail(error)


@keys.command("create")
def create_key(
    parent: Annotated[str, typer.Argument(help="projects/{project}")],
    display_name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    scope: ScopeOption = None,
    principal: PrincipalOption = "",
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Create an API key (default scope: inference); its secret is printed once."""
    new_key = project_pb.ApiKey(display_name=display_name, scopes=scope or [], principal=principal)
    with _client(target, api_key) as client:
        try:
            response = client.projects.CreateApiKey(
                project_pb.CreateApiKeyRequest(parent=parent, api_key=new_key)
            )
        except MaestroRpcError as error:
            _fail(error)
        _print(response)


@keys.command("delete")
def delete_key(
    name: Annotated[str, typer.Argument(help="projects/{project}/apiKeys/{api_key}")],
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Revoke an API key."""
    with _client(target, api_key) as client:
        try:
            client.projects.DeleteApiKey(project_pb.DeleteApiKeyRequest(name=name))
        except MaestroRpcError as error:
            _fail(error)
    typer.echo(f"deleted {name}")


def _choose_request(
    project: str, model: str, tags: list[str], message: list[str]
) -> route_pb.ChooseRequest:
    return route_pb.ChooseRequest(
        parent=f"projects/{project}",
        model=model,
        step_tags=tags,
        messages=[
            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=m) for m in message
        ],
    )


ProjectOption = Annotated[str, typer.Option(help="Project id.")]
ModelOption = Annotated[str, typer.Option(help="Model group or alias; empty: any.")]
TagOption = Annotated[list[str], typer.Option("--tag", help="Step tag (repeatable), e.g. pii.")]
MessageOption = Annotated[
    list[str], typer.Option("--message", help="User message text (repeatable); it is tagged too.")
]
ObjectivesOption = Annotated[
    str, typer.Option(help="x-maestro-objectives, e.g. quality,latency or cost=0.7,quality=0.3.")
]


@route.command("choose")
def route_choose(
    project: ProjectOption = "demo",
    model: ModelOption = "",
    tag: TagOption = [],  # noqa: B006 - typer reads the default, never mutates it
    message: MessageOption = [],  # noqa: B006
    objectives: ObjectivesOption = "",
    explain: Annotated[bool, typer.Option(help="Dry run listing every candidate.")] = False,
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Ask for a routing decision and print it with its rationale."""
    request = _choose_request(project, model, tag, message)
    metadata = (("x-maestro-objectives", objectives),) if objectives else ()
    with _client(target, api_key) as client:
        try:
            if explain:
                _print(
                    client.routes.ExplainRoute(
                        route_pb.ExplainRouteRequest(request=request), metadata=metadata
                    ).decision
                )
            else:
                _print(client.routes.Choose(request, metadata=metadata).decision)
        except MaestroRpcError as error:
            _fail(error)


@route.command("get-config")
def route_get_config(
    project: ProjectOption = "demo",
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Print the project's current routing config."""
    with _client(target, api_key) as client:
        try:
            name = f"projects/{project}/routeConfig"
            _print(client.routes.GetConfig(route_pb.GetConfigRequest(name=name)).route_config)
        except MaestroRpcError as error:
            _fail(error)


@route.command("apply")
def route_apply(
    config_file: Annotated[Path, typer.Argument(help="LiteLLM-format YAML.")],
    policy: Annotated[list[Path], typer.Option(help="Rego module file (repeatable).")] = [],  # noqa: B006
    project: ProjectOption = "demo",
    validate_only: Annotated[bool, typer.Option(help="Check without storing.")] = False,
    target: TargetOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
) -> None:
    """Validate and apply a routing config as a new revision."""
    config = route_pb.RouteConfig(
        name=f"projects/{project}/routeConfig",
        config_yaml=config_file.read_text(),
        policy_modules=[
            route_pb.RoutePolicyModule(name=p.name, source=p.read_text()) for p in policy
        ],
    )
    with _client(target, api_key) as client:
        try:
            response = client.routes.ApplyConfig(
                route_pb.ApplyConfigRequest(route_config=config, validate_only=validate_only)
            )
        except MaestroRpcError as error:
            _fail(error)
    _print(response.validation)
    typer.echo(f"revision: {response.route_config.revision_id}")


RecipeFile = Annotated[
    Path,
    typer.Argument(
        help="Recipe YAML, or the name of a built-in recipe (planner_executor, debate, "
        "critique_improve, toolformer).",
    ),
]


def _read_recipe(source: Path) -> Recipe:
    from importlib import resources

    from maestro.control_plane.graph.recipe import parse_recipe

    path = source
    if not path.exists():
        built_in = resources.files("maestro.control_plane.graph.recipes") / f"{source}.yaml"
        if not built_in.is_file():
            typer.echo(f"no file {source} and no built-in recipe of that name", err=True)
            raise typer.Exit(2)
        text = built_in.read_text()
    else:
        text = path.read_text()
    try:
        return parse_recipe(text, field="")
    except InvalidArgument as error:
        for violation in error.violations:
            typer.echo(f"{source}: {violation.field}: {violation.description}", err=True)
        raise typer.Exit(1) from None


@recipe.command("validate")
def recipe_validate(source: RecipeFile) -> None:
    """Check a recipe; print each problem with its field and line, exit 1 if there are any."""
    checked = _read_recipe(source)
    typer.echo(
        f"{source}: valid ({len(checked.spec.nodes)} nodes, {len(checked.spec.edges)} edges)"
    )


@recipe.command("diagram")
def recipe_diagram(source: RecipeFile) -> None:
    """Print a recipe as a Mermaid flowchart."""
    from maestro.control_plane.graph.recipe import mermaid

    typer.echo(mermaid(_read_recipe(source).spec), nl=False)
