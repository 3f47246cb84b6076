"""Secrets are never printed: `maestro check-config`, log lines and spans mask API keys and DSN
passwords, while the code that needs the real values still gets them."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.app.config import load_config
from maestro.clients import MaestroRpcError
from maestro.core.logs import configure_logging
from maestro.core.redact import redact, redact_dsn
from maestro.core.settings import LoggingConfig
from maestro.v1 import project_service_pb2
from tests.conftest import RunningServer

KEY = "mk_0123456789ab_c2VjcmV0LXBhcnQtb2YtdGhlLWtleS1ub2JvZHktc2hvdWxkLXNlZQ"
"""Shaped like a real key (`auth.new_key`): `mk_<id>_<secret>`."""
SECRET_PART = KEY.rsplit("_", 1)[1]


def test_dsn_passwords_are_masked_and_where_they_point_is_kept() -> None:
    assert redact_dsn("postgresql://maestro:hunter2@db.internal:5432/maestro?sslmode=require") == (
        "postgresql://maestro:***@db.internal:5432/maestro?sslmode=require"
    )
    assert redact_dsn("host=db.internal dbname=maestro user=maestro password=hunter2") == (
        "host=db.internal dbname=maestro user=maestro password=***"
    )
    assert redact_dsn("host=db dbname=m password='two words' user=u") == (
        "host=db dbname=m password=*** user=u"
    )
    assert redact_dsn("postgresql://db.internal/maestro") == "postgresql://db.internal/maestro"


def test_redact_masks_secret_keys_and_api_keys_in_any_text_but_not_token_counts() -> None:
    event = {
        "api_key": KEY,
        "authorization": f"Bearer {KEY}",
        "note": f"caller sent {KEY} as the model name",
        "completion_tokens": 12,
        "nested": {"client_secret": "s3cr3t", "items": [f"x {KEY}"]},
        "unset_password": None,
    }
    redacted = redact(event)
    assert SECRET_PART not in json.dumps(redacted)
    assert redacted["api_key"] == "***"
    assert redacted["note"] == "caller sent mk_0123456789ab_*** as the model name"
    assert redacted["completion_tokens"] == 12
    assert redacted["nested"] == {"client_secret": "***", "items": ["x mk_0123456789ab_***"]}
    assert redacted["unset_password"] is None


def test_check_config_prints_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "maestro.yaml"
    path.write_text(
        "store:\n"
        "  backend: postgres\n"
        "  postgres_dsn: postgresql://maestro:hunter2@db.internal:5432/maestro\n"
    )
    env = {"MAESTRO_DATA_PLANE__CONTROL_PLANE_API_KEY": KEY}
    result = CliRunner().invoke(app, ["check-config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert "hunter2" not in result.output
    assert SECRET_PART not in result.output
    assert printed["store"]["postgres_dsn"] == "postgresql://maestro:***@db.internal:5432/maestro"
    assert printed["data_plane"]["control_plane_api_key"] == "***"
    # The code that needs them still gets the real values.
    config = load_config(path, env=env)
    assert config.store.postgres_dsn.endswith(":hunter2@db.internal:5432/maestro")
    assert config.data_plane.control_plane_api_key == KEY


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What `configure_logging` writes to stderr, as JSON lines."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(LoggingConfig(level="info", format="json"))
    yield stream
    structlog.reset_defaults()


def test_log_lines_mask_keys_dsns_and_keys_inside_exceptions(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("tests.redaction")
    log.info(
        "store.opened",
        dsn="host=db.internal dbname=maestro password=hunter2",
        api_key=KEY,
        detail=f"key {KEY} rejected",
        completion_tokens=7,
    )
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        log.exception("call.failed")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert SECRET_PART not in json.dumps(lines)
    assert "hunter2" not in json.dumps(lines)
    opened, failed = lines
    assert opened["dsn"] == "host=db.internal dbname=maestro password=***"
    assert opened["api_key"] == "***"
    assert opened["detail"] == "key mk_0123456789ab_*** rejected"
    assert opened["completion_tokens"] == 7
    assert "ValueError: bad key mk_0123456789ab_***" in failed["exception"]


async def test_spans_carry_no_api_key(server: RunningServer) -> None:
    """Spans of calls with a valid key, a bad key, and a key sent as `authorization: Bearer`
    hold neither key anywhere: attributes, events or status."""
    async with server.client(server.alpha_key) as good:
        await good.get_project("projects/alpha")
        await good.projects.GetProject(
            project_service_pb2.GetProjectRequest(name="projects/alpha"),
            metadata=(("authorization", f"Bearer {server.alpha_key}"),),
        )
    async with server.client(KEY) as bad:
        with pytest.raises(MaestroRpcError):
            await bad.get_project("projects/alpha")
    spans = server.spans.get_finished_spans()
    assert spans
    printed = "\n".join(span.to_json() for span in spans)
    assert SECRET_PART not in printed
    assert server.alpha_key.rsplit("_", 1)[1] not in printed
