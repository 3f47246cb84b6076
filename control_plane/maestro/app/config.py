"""Server configuration: a YAML file, then environment overrides, validated once at start.

Environment overrides use `MAESTRO_<SECTION>__<FIELD>` (for example `MAESTRO_SERVER__PORT=7000`)
and are passed in as a mapping, so tests never touch `os.environ`. A bad value stops the server
with one line per problem naming the field and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from maestro.control_plane.config import (
    AuthConfig,
    GraphConfig,
    RolloutsConfig,
    RoutingConfig,
    StoreConfig,
)
from maestro.core.settings import (
    LoggingConfig,
    Section,
    ServerConfig,
    TelemetryConfig,
    is_loopback,
)
from maestro.data_plane.settings import DataPlaneConfig

ENV_PREFIX = "MAESTRO_"


class MaestroConfig(Section):
    """The whole server configuration."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    store: StoreConfig = StoreConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    logging: LoggingConfig = LoggingConfig()
    routing: RoutingConfig = RoutingConfig()
    data_plane: DataPlaneConfig = DataPlaneConfig()
    graph: GraphConfig = GraphConfig()
    rollouts: RolloutsConfig = RolloutsConfig()

    @model_validator(mode="after")
    def _insecure_only_on_loopback(self) -> MaestroConfig:
        if self.auth.mode == "insecure" and not is_loopback(self.server.host):
            raise ValueError(
                "auth.mode=insecure is allowed only when server.host is a loopback address "
                f"(got {self.server.host!r}); bind 127.0.0.1 or use auth.mode=api_key"
            )
        return self

    def unreadable_files(self) -> list[str]:
        """The certificate and key files this config names that cannot be read: checked when a
        config is loaded for use, not when a manifest's config is only validated."""
        return [
            *self.server.tls.unreadable("server.tls"),
            *self.telemetry.metrics_tls.unreadable("telemetry.metrics_tls"),
            *self.data_plane.control_plane_tls.unreadable("data_plane.control_plane_tls"),
        ]


class ConfigError(Exception):
    """The configuration cannot be used; `problems` has one readable line per issue."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid configuration ({source}):\n  " + "\n  ".join(problems))


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> MaestroConfig:
    """Read `path` (YAML), apply `env` overrides, then `overrides` (dotted keys), and validate."""
    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(source, ["the top level must be a mapping of sections"])
        data = loaded
    for key, value in (env or {}).items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            # MAESTRO_SERVER__TLS__CERT_FILE sets server.tls.cert_file.
            _set_dotted(data, key[len(ENV_PREFIX) :].lower().replace("__", "."), value)
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    try:
        config = MaestroConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(error) for error in exc.errors()]) from exc
    unreadable = config.unreadable_files()
    if unreadable:
        raise ConfigError(source, unreadable)
    return config


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, field = dotted.split(".")
    target = data
    for depth, section in enumerate(sections):
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            where = ".".join(sections[: depth + 1])
            raise ConfigError("overrides", [f"{where}: must be a mapping to set {dotted}"])
    target[field] = value


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown setting; check the spelling against the README's reference"
    return f"{location}: {error['msg']}"
