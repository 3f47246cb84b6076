"""`maestro version` and `maestro rollout` against a real server: pushing versions with their git
provenance, starting and following rollouts, aborting, fast rollback, strategy file errors, and
verifying the audit hash chain from the database."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maestro.app.cli import app
from maestro.clients import AsyncMaestroClient
from maestro.control_plane.rollouts.oci import OciLayout, push, repository
from maestro.v1 import rollout_service_pb2 as rpb
from tests.conftest import RunningServer
from tests.registry_support import RunningRegistry, registry_server
from tests.rollout_support import ARTIFACT, prompt, wait_for_state

R = rpb.Rollout
runner = CliRunner()

CANARY = """\
steps:
  - setWeight: 10
  - pause: {duration: 0.1s}
  - setWeight: 50
  - pause:
      duration: 100ms
"""


async def _cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    """Run `maestro ARGS` against the test server: (exit code, stdout, stderr)."""
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        list(args),
        env={"MAESTRO_TARGET": server.target, "MAESTRO_API_KEY": server.alpha_key},
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        traceback.print_exception(result.exception)  # what went wrong, in the test's output
    return result.exit_code, _without_logs(result.stdout), result.stderr


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\w+ *\] ")


def _without_logs(out: str) -> str:
    """The CLI's own output: the in-process server logs to the same (captured) stdout."""
    return "".join(line for line in out.splitlines(keepends=True) if not _LOG_LINE.match(line))


async def _push(server: RunningServer, folder: Path, marker: str, *more: str) -> str:
    """Push a prompt version through the CLI; its name."""
    file = folder / f"{marker}.yaml"
    file.write_text(prompt(marker))
    code, out, err = await _cli(server, "version", "push", str(file), "--artifact", ARTIFACT, *more)
    assert code == 0, err
    return out.split()[0]


def _steps(folder: Path, text: str = CANARY) -> str:
    path = folder / "steps.yaml"
    path.write_text(text)
    return str(path)


async def _promoted(server: RunningServer, folder: Path, stable: str, candidate: str) -> str:
    """Start `candidate` over `stable` with the canary steps and follow it to PROMOTED."""
    code, out, err = await _cli(
        server,
        "rollout",
        "start",
        "--artifact",
        ARTIFACT,
        "--stable",
        stable,
        "--candidate",
        candidate,
        "--steps",
        _steps(folder),
        "--watch",
        "--timeout",
        "30",
    )
    assert code == 0, out + err
    return out.split(":", 1)[0]


async def test_pushing_the_same_file_twice_exits_1_with_already_exists(
    server: RunningServer, tmp_path: Path
) -> None:
    first = await _push(server, tmp_path, "one")
    assert first == f"{ARTIFACT}/versions/v1"
    code, _out, err = await _cli(
        server, "version", "push", str(tmp_path / "one.yaml"), "--artifact", ARTIFACT
    )
    assert code == 1
    assert "ALREADY_EXISTS" in err
    assert first in err
    listed = json.loads(
        (await _cli(server, "version", "list", "--artifact", ARTIFACT, "--json"))[1]
    )
    assert [v["name"] for v in listed] == [first]


async def test_push_inside_a_git_work_tree_records_commit_repository_and_path(
    server: RunningServer, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "prompts").mkdir(parents=True)
    file = repo / "prompts" / "support.yaml"
    file.write_text(prompt("from git"))

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    git("init", "-q")
    git("remote", "add", "origin", "https://git.example.com/acme/prompts.git")
    git("add", "prompts/support.yaml")
    git("commit", "-q", "-m", "support prompt")
    head = git("rev-parse", "HEAD")

    code, out, err = await _cli(
        server, "version", "push", str(file), "--artifact", ARTIFACT, "--json"
    )
    assert code == 0, err
    provenance = json.loads(out)["provenance"]
    assert provenance["sourceCommit"] == head
    assert provenance["sourceRepository"] == "https://git.example.com/acme/prompts.git"
    assert provenance["sourcePath"] == "prompts/support.yaml"


async def test_start_with_a_steps_file_walks_to_promoted_and_watch_exits_0(
    server: RunningServer, tmp_path: Path
) -> None:
    v1 = await _push(server, tmp_path, "one")
    v2 = await _push(server, tmp_path, "two")
    code, out, err = await _cli(
        server,
        "rollout",
        "start",
        "--artifact",
        ARTIFACT,
        "--stable",
        "v1",
        "--candidate",
        "v2",
        "--steps",
        _steps(tmp_path),
        "--id",
        "canary-1",
        "--watch",
        "--timeout",
        "30",
    )
    assert code == 0, out + err
    name = "projects/alpha/rollouts/canary-1"
    assert f"{name}: PROMOTED" in out
    assert "0% -> 10%" in out
    assert "10% -> 50%" in out
    code, out, _ = await _cli(server, "rollout", "watch", name, "--timeout", "10")
    assert code == 0
    assert "PROMOTED" in out
    got = json.loads((await _cli(server, "rollout", "get", name, "--json"))[1])
    assert (got["stableVersion"], got["candidateVersion"]) == (v1, v2)
    assert got["canaryWeightPercent"] == 100


async def test_abort_exits_0_with_weight_0_and_watch_then_exits_1(
    server: RunningServer, alpha: AsyncMaestroClient, tmp_path: Path
) -> None:
    await _push(server, tmp_path, "one")
    await _push(server, tmp_path, "two")
    steps = _steps(tmp_path, "steps:\n  - setWeight: 30\n  - pause: {}\n")
    code, out, err = await _cli(
        server,
        "rollout",
        "start",
        "--artifact",
        ARTIFACT,
        "--stable",
        "v1",
        "--candidate",
        "v2",
        "--steps",
        steps,
        "--id",
        "held",
    )
    assert code == 0, err
    name = "projects/alpha/rollouts/held"
    await wait_for_state(alpha, name, R.STATE_PAUSED)
    code, _, err = await _cli(server, "rollout", "watch", name, "--timeout", "0.5")
    assert code == 2
    assert "did not end within 0.5s (still PAUSED)" in err
    code, _, err = await _cli(server, "rollout", "abort", name)
    assert code == 64
    assert "--reason" in err
    code, out, err = await _cli(
        server, "rollout", "abort", name, "--reason", "bad answers", "--json"
    )
    assert code == 0, err
    aborted = json.loads(out)
    assert aborted["state"] == "STATE_ABORTED"
    assert aborted.get("canaryWeightPercent", 0) == 0
    code, out, _ = await _cli(server, "rollout", "watch", name, "--timeout", "10")
    assert code == 1
    assert "ABORTED" in out


async def test_rollback_to_the_previous_stable_version_promotes_at_once_by_rollback_window(
    server: RunningServer, tmp_path: Path
) -> None:
    v1 = await _push(server, tmp_path, "one")
    await _push(server, tmp_path, "two")
    await _promoted(server, tmp_path, "v1", "v2")
    code, out, err = await _cli(
        server, "rollout", "rollback", "--artifact", ARTIFACT, "--to", "v1", "--timeout", "30"
    )
    assert code == 0, out + err
    assert "rollbackWindow" in out
    assert "PROMOTED" in out
    stable = json.loads(
        (
            await _cli(
                server,
                "version",
                "list",
                "--artifact",
                ARTIFACT,
                "--filter",
                "stable = true",
                "--json",
            )
        )[1]
    )
    assert [v["name"] for v in stable] == [v1]
    code, out, _ = await _cli(server, "rollout", "audit", "--project", "alpha")
    assert code == 0
    created = [line for line in out.splitlines() if " CREATED " in line]
    assert len(created) == 2
    assert "rollbackWindow" in created[1]


async def test_bad_steps_yaml_exits_64_naming_the_line_and_field(
    server: RunningServer, tmp_path: Path
) -> None:
    await _push(server, tmp_path, "one")
    await _push(server, tmp_path, "two")
    start = ("rollout", "start", "--artifact", ARTIFACT, "--stable", "v1", "--candidate", "v2")
    code, _, err = await _cli(server, *start)
    assert code == 64
    assert "--steps" in err
    steps = _steps(tmp_path, "steps:\n  - setWeight: 10\n  - pause: {duration: soon}\n")
    code, _, err = await _cli(server, *start, "--steps", steps)
    assert code == 64
    assert f"{steps}:3: steps[1].pause.duration: 'soon' is not a duration" in err
    # What only the server checks is pointed at the file's line too.
    steps = _steps(tmp_path, "steps:\n  - setWeight: 50\n  - setWeight: 20\n")
    code, _, err = await _cli(server, *start, "--steps", steps)
    assert code == 64
    assert f"{steps}:3: rollout.strategy.steps[1].set_weight.weight_percent" in err
    listed = await _cli(server, "rollout", "list", "--json")
    assert json.loads(listed[1]) == []


def _store_options(server: RunningServer) -> list[str]:
    store = server.plane.config.store
    if store.backend == "postgres":
        return ["--store-dsn", store.postgres_dsn]
    return ["--sqlite", str(store.sqlite_path)]


async def test_verify_exits_0_on_an_intact_chain_and_1_naming_an_edited_event(
    server: RunningServer, tmp_path: Path
) -> None:
    await _push(server, tmp_path, "one")
    await _push(server, tmp_path, "two")
    name = await _promoted(server, tmp_path, "v1", "v2")
    verify = ("rollout", "verify", "--project", "alpha", *_store_options(server))
    code, out, err = await _cli(server, *verify)
    assert code == 0, out + err
    assert out.startswith("audit chain of projects/alpha intact: ")
    with server.plane.store.write() as tx:
        second = tx.one(
            "SELECT seq FROM rollout_audit WHERE project = ? AND rollout_id = ? "
            "ORDER BY seq LIMIT 1 OFFSET 1",
            ("alpha", name.rpartition("/")[2]),
        )
        assert second is not None
        tx.run(
            "UPDATE rollout_audit SET actor = ? WHERE project = ? AND seq = ?",
            ("projects/alpha/apiKeys/someone-else", "alpha", second["seq"]),
        )
    code, out, _ = await _cli(server, *verify)
    seq = second["seq"]
    assert code == 1
    assert f"event {name}/auditEvents/{seq:010d} (seq {seq}): content does not match" in out
    assert "audit chain of projects/alpha is broken" in out


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    with registry_server() as running:
        yield running


async def test_pull_returns_the_exact_bytes_and_exits_1_when_the_registry_copy_is_corrupt(
    server: RunningServer, alpha: AsyncMaestroClient, tmp_path: Path, registry: RunningRegistry
) -> None:
    name = await _push(server, tmp_path, "one")
    version = (
        await alpha.rollouts.GetArtifactVersion(rpb.GetArtifactVersionRequest(name=name))
    ).artifact_version
    config = server.plane.config
    layout = OciLayout(config.rollouts.oci_dir or config.store.sqlite_path.parent / "oci")
    ref = f"{registry.address}/{repository('alpha', 'prompt', 'support-answer')}:v1"
    await asyncio.to_thread(push, layout, version.manifest_digest, ref, insecure=True)
    out = tmp_path / "pulled.yaml"
    pull = ("version", "pull", name, "--registry", registry.address, "--insecure", "--out")
    code, _, err = await _cli(server, *pull, str(out))
    assert code == 0, err
    assert out.read_bytes() == (tmp_path / "one.yaml").read_bytes()
    registry.blob_path(version.digest).write_bytes(b"messages: []\n")
    code, _, err = await _cli(server, *pull, str(tmp_path / "again.yaml"))
    assert code == 1
    assert "corrupt" in err
    assert version.digest in err


async def test_verbs_pause_resume_promote_full_then_retry_of_a_promoted_rollout_exits_1(
    server: RunningServer, alpha: AsyncMaestroClient, tmp_path: Path
) -> None:
    await _push(server, tmp_path, "one")
    await _push(server, tmp_path, "two")
    hour = "  - pause: {duration: 1h}\n"
    steps = _steps(tmp_path, f"steps:\n  - setWeight: 10\n{hour}  - setWeight: 50\n{hour}")
    start = ("rollout", "start", "--artifact", ARTIFACT, "--stable", "v1", "--candidate", "v2")
    code, _, err = await _cli(server, *start, "--steps", steps, "--id", "verbs")
    assert code == 0, err
    name = "projects/alpha/rollouts/verbs"
    await wait_for_state(alpha, name, R.STATE_PAUSED)
    code, out, err = await _cli(server, "rollout", "pause", name, "--reason", "hold on")
    assert code == 0, err
    assert "PAUSED" in out
    code, out, err = await _cli(server, "rollout", "resume", name)
    assert code == 0, err
    paused = await wait_for_state(alpha, name, R.STATE_PAUSED)
    assert paused.current_step_index == 3
    code, out, err = await _cli(server, "rollout", "promote", name, "--full", "--reason", "ok")
    assert code == 0, err
    assert f"{name}: PROMOTED" in out
    code, _, err = await _cli(server, "rollout", "retry", name)
    assert code == 1
    assert "FAILED_PRECONDITION" in err
    code, out, _ = await _cli(server, "rollout", "audit", name)
    last = out.splitlines()[-1].split()
    assert last[1] == "PROMOTED"
    assert last[6] == "ok"  # the promoter's reason, and the promoter's key
    assert last[7].startswith("(projects/alpha/apiKeys/")
