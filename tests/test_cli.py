"""The `maestro` CLI: client commands against a real server, operator commands on the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from maestro.app.cli import app
from tests.conftest import RunningServer

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


async def _invoke(*args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(runner.invoke, app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def test_get_project_prints_the_project_as_json(server: RunningServer) -> None:
    code, out, _ = await _invoke(
        "get-project", "projects/alpha", "--target", server.target, "--api-key", server.alpha_key
    )
    assert code == 0
    assert json.loads(out)["name"] == "projects/alpha"


async def test_client_command_reports_rpc_errors_readably(server: RunningServer) -> None:
    code, _, err = await _invoke(
        "get-project", "projects/beta", "--target", server.target, "--api-key", server.alpha_key
    )
    assert code == 1
    assert err.startswith("error: PERMISSION_DENIED: ")


async def test_keys_create_then_list_shows_the_new_key(server: RunningServer) -> None:
    common = ("--target", server.target, "--api-key", server.alpha_key)
    code, out, _ = await _invoke(
        "keys", "create", "projects/alpha", "--display-name", "cli", *common
    )
    assert code == 0
    created = json.loads(out)
    assert created["secret"].startswith("mk_")
    code, out, _ = await _invoke("keys", "list", "projects/alpha", *common)
    assert code == 0
    assert created["apiKey"]["name"] in out


def test_admin_create_project_mints_a_working_key(tmp_path: Path) -> None:
    config = tmp_path / "maestro.yaml"
    config.write_text(f"store:\n  sqlite_path: {tmp_path / 'maestro.db'}\n")
    result = runner.invoke(app, ["admin", "create-project", "gamma", "--config", str(config)])
    assert result.exit_code == 0
    assert "project: projects/gamma" in result.stdout
    assert "api key: mk_" in result.stdout


def test_admin_cannot_create_a_reserved_project(tmp_path: Path) -> None:
    config = tmp_path / "maestro.yaml"
    config.write_text(f"store:\n  sqlite_path: {tmp_path / 'maestro.db'}\n")
    result = runner.invoke(app, ["admin", "create-project", "global", "--config", str(config)])
    assert result.exit_code == 2
    assert "reserved" in result.stderr


def test_check_config_names_the_bad_field(tmp_path: Path) -> None:
    config = tmp_path / "maestro.yaml"
    config.write_text("server:\n  port: -5\n")
    result = runner.invoke(app, ["check-config", str(config)])
    assert result.exit_code == 2
    assert "server.port" in result.stderr


async def test_route_apply_then_choose_routes_pii_in_house(server: RunningServer) -> None:
    common = ("--project", "alpha", "--target", server.target, "--api-key", server.alpha_key)
    code, out, _ = await _invoke(
        "route", "apply", str(ROOT / "deploy/router/litellm.yaml"),
        "--policy", str(ROOT / "deploy/router/policies/routing.rego"), *common,
    )  # fmt: skip
    assert code == 0
    assert "revision: 1" in out
    code, out, _ = await _invoke("route", "choose", "--model", "gpt-4o", "--tag", "pii", *common)
    assert code == 0
    assert json.loads(out)["deployment"]["modelGroup"] == "ig-local-70b"
