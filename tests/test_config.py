"""Configuration: file, then environment overrides, validated with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from maestro.app.config import ConfigError, load_config


def test_defaults_are_valid_and_secure() -> None:
    config = load_config(None, env={})
    assert config.auth.mode == "api_key"
    assert config.server.host == "127.0.0.1"


def test_file_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text("server:\n  port: 7001\nlogging:\n  format: console\n")
    config = load_config(path, env={})
    assert config.server.port == 7001
    assert config.logging.format == "console"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text("server:\n  port: 7001\n")
    config = load_config(path, env={"MAESTRO_SERVER__PORT": "7002", "UNRELATED": "x"})
    assert config.server.port == 7002


def test_bad_values_name_every_field(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text("server:\n  port: 99999\n  grace_period_s: -1\nlogging:\n  level: loud\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    fields = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert fields == ["logging.level", "server.grace_period_s", "server.port"]


def test_unknown_setting_is_rejected_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text("server:\n  prot: 7000\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == [
        "server.prot: unknown setting; check the spelling against the README's reference"
    ]


def test_insecure_mode_off_loopback_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"MAESTRO_AUTH__MODE": "insecure", "MAESTRO_SERVER__HOST": "0.0.0.0"})
    assert "loopback" in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.3.4.5"])
def test_insecure_mode_on_loopback_is_allowed(host: str) -> None:
    config = load_config(None, env={"MAESTRO_AUTH__MODE": "insecure", "MAESTRO_SERVER__HOST": host})
    assert config.auth.mode == "insecure"


def test_unreadable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})
