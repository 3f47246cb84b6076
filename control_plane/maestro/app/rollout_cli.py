"""`maestro version` and `maestro rollout`: artifact versions and their progressive delivery
(RolloutService) from the shell and from CI.

    maestro version push prompts/support.yaml --artifact projects/p/artifacts/support-answer
    maestro rollout start --artifact projects/p/artifacts/support-answer \\
        --stable v1 --candidate v2 --steps canary.yaml --watch
    maestro rollout rollback --artifact projects/p/artifacts/support-answer --to v1

Exit codes. Commands that wait for a rollout to end (`rollout watch`, `rollout start --watch`,
`rollout rollback`): 0 PROMOTED, 1 ROLLED_BACK, ABORTED or FAILED, 2 anything else (a refused
call, an unreachable server, the timeout). Other commands: 0 done, 1 the server refused the call
(or `rollout verify` found a broken audit chain), 64 usage (a bad option or strategy file).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
import yaml
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from maestro.app.eval_cli import UsageExit
from maestro.clients import MaestroClient, MaestroRpcError
from maestro.v1 import project_service_pb2 as project_pb
from maestro.v1 import rollout_service_pb2 as pb

EXIT_OK, EXIT_FAILED, EXIT_OTHER, EXIT_USAGE = 0, 1, 2, 64
R = pb.Rollout
E = pb.RolloutAuditEvent
V = pb.ArtifactVersion
ENDED = {R.STATE_PROMOTED, R.STATE_ROLLED_BACK, R.STATE_ABORTED, R.STATE_FAILED}
KINDS = {"prompt": V.KIND_PROMPT, "agent": V.KIND_AGENT, "recipe": V.KIND_RECIPE}
PAGE = 1000

ClientFor = Callable[[str, str | None], AbstractContextManager[MaestroClient]]

TargetOption = Annotated[
    str, typer.Option("--target", envvar="MAESTRO_TARGET", help="Server address host:port.")
]
KeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="MAESTRO_API_KEY", help="API key.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="Project id; default: the API key's project.")
]
RolloutName = Annotated[str, typer.Argument(help="projects/{project}/rollouts/{rollout}")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the audit log.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Most seconds to wait for the rollout to end.")
]
DEFAULT_TARGET = "127.0.0.1:50051"


# -- output and errors --------------------------------------------------------------------------


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _refused(error: grpc.RpcError, code: int = EXIT_FAILED) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code)


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _state(value: int) -> str:
    return R.State.Name(value).removeprefix("STATE_")  # type: ignore[arg-type]


def _action(value: int) -> str:
    return E.Action.Name(value).removeprefix("ACTION_")  # type: ignore[arg-type]


def _kind(value: int) -> str:
    return V.Kind.Name(value).removeprefix("KIND_").lower()  # type: ignore[arg-type]


def _short(name: str) -> str:
    """`projects/p/artifacts/a/versions/v3` -> `v3`."""
    return name.rsplit("/", 1)[-1]


def _event_line(event: pb.RolloutAuditEvent) -> str:
    line = f"{_when(event.create_time)}  {_action(event.action):<21}"
    weights = f"{event.weight_before_percent}% -> {event.weight_after_percent}%"
    line += f"  {weights:<11}  {_state(event.state_after):<11}"
    if event.analysis_template:
        line += f"  [{event.analysis_template}]"
    if event.reason:
        line += f"  {event.reason}"
    return line


def _rollout_line(rollout: pb.Rollout) -> str:
    steps = len(rollout.strategy.steps)
    line = (
        f"{rollout.name}: {_state(rollout.state)} at step "
        f"{min(rollout.current_step_index, steps)}/{steps}, {_short(rollout.candidate_version)} "
        f"at {rollout.canary_weight_percent}% over {_short(rollout.stable_version)}"
    )
    if rollout.state_reason:
        line += f" ({rollout.state_reason})"
    return line


def _project_of(client: MaestroClient, project: str | None) -> str:
    """`projects/{project}`: the option's, or the API key's own."""
    if project:
        return project if project.startswith("projects/") else f"projects/{project}"
    response = client.projects.ListProjects(project_pb.ListProjectsRequest(page_size=1))
    if not response.projects:
        raise _usage("the API key acts for no project; give --project")
    return str(response.projects[0].name)


def _version_name(artifact: str, version: str) -> str:
    return version if version.startswith("projects/") else f"{artifact}/versions/{version}"


def _artifact_project(artifact: str) -> str:
    parts = artifact.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "artifacts":
        raise _usage(
            f"{artifact!r} is not an artifact name like projects/{{project}}/artifacts/{{id}}"
        )
    return parts[1]


def _rollout_project(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "rollouts":
        raise _usage(f"{name!r} is not a rollout name like projects/{{project}}/rollouts/{{id}}")
    return parts[1]


# -- git provenance -----------------------------------------------------------------------------


def _git(folder: Path, *args: str) -> str:
    """`git -C folder args...`'s output, or "" when git fails, is missing or is slow."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass(frozen=True)
class GitSource:
    repository: str
    commit: str
    path: str
    dirty: bool


def git_source(file: Path) -> GitSource | None:
    """Where `file` sits in its git work tree (None outside one): the origin URL, HEAD and the
    path from the repository root; `dirty` when the file differs from HEAD."""
    folder = file.resolve().parent
    root = _git(folder, "rev-parse", "--show-toplevel")
    if not root:
        return None
    try:
        relative = file.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None
    return GitSource(
        repository=_git(folder, "config", "--get", "remote.origin.url"),
        commit=_git(folder, "rev-parse", "HEAD"),
        path=relative,
        dirty=bool(_git(folder, "status", "--porcelain", "--", relative)),
    )


# -- strategy files -----------------------------------------------------------------------------


class StrategyError(Exception):
    """A bad strategy file: the field (its path in the file) and the line it is on."""

    def __init__(self, field: str, line: int, message: str) -> None:
        self.field, self.line, self.message = field, line, message
        super().__init__(f"line {line}: {field}: {message}" if field else f"line {line}: {message}")


class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its line and the line of each value."""

    line = 0
    lines: dict[Any, int]


class _Seq(list[Any]):
    line = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line, out.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise StrategyError(str(key), key_node.start_mark.line + 1, "appears twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = value_node.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)

_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds in `30s`, `5m`, `1h`, `1h30m`, `500ms`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h or 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text or _DURATION.sub("", text):
            raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h or 1h30m")
        seconds = 0.0
        for part in _DURATION.findall(text):
            unit = "ms" if part.endswith("ms") else part[-1]
            seconds += float(part[: -len(unit)]) * _UNIT_S[unit]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration of 0 or more")
    return seconds


def _proto_duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


class _Reader:
    """Walks the loaded YAML, naming each bad field by its path and line."""

    def mapping(self, value: object, path: str, line: int, keys: set[str]) -> _Map:
        if not isinstance(value, _Map):
            raise StrategyError(path, line, f"must be a mapping with {', '.join(sorted(keys))}")
        for key in value:
            if key not in keys:
                raise StrategyError(
                    f"{path}.{key}" if path else str(key),
                    value.lines[key],
                    f"unknown field; expected one of {', '.join(sorted(keys))}",
                )
        return value

    def seq(self, value: object, path: str, line: int) -> _Seq:
        if not isinstance(value, _Seq):
            raise StrategyError(path, line, "must be a list")
        return value

    def field(self, body: _Map, key: str, path: str, kind: str, *, required: bool = False) -> Any:
        """`body[key]` as `kind` (text, int, number, duration), or None when absent."""
        at = f"{path}.{key}" if path else key
        if key not in body:
            if required:
                raise StrategyError(at, body.line, "required")
            return None
        value, line = body[key], body.lines[key]
        if kind == "duration":
            try:
                return _proto_duration(parse_duration(value))
            except ValueError as error:
                raise StrategyError(at, line, str(error)) from None
        if kind == "text":
            if not isinstance(value, str) or not value:
                raise StrategyError(at, line, "must be non-empty text")
            return value
        integer = kind == "int"
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            raise StrategyError(
                at, line, f"{value!r} is not {'an integer' if integer else 'a number'}"
            )
        return int(value) if integer else float(value)

    def template(self, value: object, path: str, line: int) -> pb.RolloutAnalysisTemplate:
        body = self.mapping(value, path, line, {"name", "evalGate", "sloBurn"})
        template = pb.RolloutAnalysisTemplate(
            name=self.field(body, "name", path, "text", required=True)
        )
        if ("evalGate" in body) == ("sloBurn" in body):
            raise StrategyError(path, body.line, "exactly one of evalGate and sloBurn is required")
        if "evalGate" in body:
            at = f"{path}.evalGate"
            keys = {"suite", "modelGroup", "repetitions", "maxScorecardAge", "budget"}
            gate = self.mapping(body["evalGate"], at, body.lines["evalGate"], keys)
            message = template.eval_gate
            message.suite = self.field(gate, "suite", at, "text", required=True)
            message.model_group = self.field(gate, "modelGroup", at, "text") or ""
            message.repetitions = self.field(gate, "repetitions", at, "int") or 0
            if (age := self.field(gate, "maxScorecardAge", at, "duration")) is not None:
                message.max_scorecard_age.CopyFrom(age)
            if "budget" in gate:
                b_at = f"{at}.budget"
                budget = self.mapping(
                    gate["budget"], b_at, gate.lines["budget"], {"maxCostUsd", "maxTokens"}
                )
                message.budget.max_cost_usd = (
                    self.field(budget, "maxCostUsd", b_at, "number") or 0.0
                )
                message.budget.max_tokens = self.field(budget, "maxTokens", b_at, "int") or 0
            return template
        at = f"{path}.sloBurn"
        keys = {"indicator", "objectiveRatio", "latencyThreshold", "windows", "minRequestCount"}
        burn = self.mapping(body["sloBurn"], at, body.lines["sloBurn"], keys)
        slo = template.slo_burn
        indicators = {
            "errors": pb.RolloutAnalysisTemplate.SloBurn.INDICATOR_ERRORS,
            "latency": pb.RolloutAnalysisTemplate.SloBurn.INDICATOR_LATENCY,
        }
        indicator = self.field(burn, "indicator", at, "text", required=True)
        if indicator not in indicators:
            raise StrategyError(
                f"{at}.indicator",
                burn.lines["indicator"],
                f"{indicator!r} is not errors or latency",
            )
        slo.indicator = indicators[indicator]
        slo.objective_ratio = self.field(burn, "objectiveRatio", at, "number", required=True)
        if (threshold := self.field(burn, "latencyThreshold", at, "duration")) is not None:
            slo.latency_threshold.CopyFrom(threshold)
        slo.min_request_count = self.field(burn, "minRequestCount", at, "int") or 0
        if "windows" not in burn:
            raise StrategyError(f"{at}.windows", burn.line, "required")
        windows = self.seq(burn["windows"], f"{at}.windows", burn.lines["windows"])
        for k, item in enumerate(windows):
            w_at = f"{at}.windows[{k}]"
            window = self.mapping(item, w_at, windows.lines[k], {"long", "short", "maxBurnRate"})
            slo.windows.add(
                long_window=self.field(window, "long", w_at, "duration", required=True),
                short_window=self.field(window, "short", w_at, "duration", required=True),
                max_burn_rate=self.field(window, "maxBurnRate", w_at, "number", required=True),
            )
        return template

    def templates(self, value: object, path: str, line: int) -> list[pb.RolloutAnalysisTemplate]:
        items = self.seq(value, path, line)
        if not items:
            raise StrategyError(path, line, "at least one template is required")
        return [self.template(t, f"{path}[{k}]", items.lines[k]) for k, t in enumerate(items)]

    def step(self, value: object, path: str, line: int) -> pb.RolloutStep:
        body = self.mapping(value, path, line, {"setWeight", "pause", "analysis"})
        if len(body) != 1:
            raise StrategyError(path, line, "exactly one of setWeight, pause and analysis")
        (which,) = body
        if which == "setWeight":
            weight = self.field(body, which, path, "int")
            if not 0 <= weight <= 100:
                raise StrategyError(
                    f"{path}.setWeight", body.lines[which], f"{weight} is not 0 to 100"
                )
            return pb.RolloutStep(set_weight=pb.RolloutStep.SetWeight(weight_percent=weight))
        at, at_line = f"{path}.{which}", body.lines[which]
        if which == "pause":
            step = pb.RolloutStep(pause=pb.RolloutStep.Pause())
            if body[which] is None:  # `pause:` with nothing: until resumed
                return step
            pause = self.mapping(body[which], at, at_line, {"duration"})
            if (duration := self.field(pause, "duration", at, "duration")) is not None:
                step.pause.duration.CopyFrom(duration)
            return step
        analysis = self.mapping(body[which], at, at_line, {"templates"})
        if "templates" not in analysis:
            raise StrategyError(f"{at}.templates", analysis.line, "required")
        templates = self.templates(
            analysis["templates"], f"{at}.templates", analysis.lines["templates"]
        )
        return pb.RolloutStep(analysis=pb.RolloutStep.Analysis(templates=templates))


@dataclass(frozen=True)
class StrategyFile:
    strategy: pb.RolloutStrategy
    rollback_revisions: int | None
    automated: bool | None
    step_lines: tuple[int, ...]
    """The line of each step, to point the server's field violations at the file."""


def parse_strategy(text: str) -> StrategyFile:
    """A strategy file in Argo's shape: `steps` (setWeight, pause, analysis), with optional
    `backgroundAnalysis`, `backgroundInterval`, `rollbackWindow: {revisions}` and `automated`.
    The same keys under `strategy.canary` (as in an Argo Rollout) are read too."""
    try:
        loaded = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise StrategyError("", line, f"not YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise StrategyError("", 0, f"not YAML: {error}") from None
    reader = _Reader()
    keys = {"steps", "backgroundAnalysis", "backgroundInterval", "rollbackWindow", "automated"}
    if isinstance(loaded, _Map) and set(loaded) == {"strategy"}:
        outer = reader.mapping(loaded["strategy"], "strategy", loaded.lines["strategy"], {"canary"})
        if "canary" not in outer:
            raise StrategyError("strategy.canary", outer.line, "required")
        root = "strategy.canary"
        body = reader.mapping(outer["canary"], root, outer.lines["canary"], keys)
    else:
        root = ""
        body = reader.mapping(loaded, root, 1, keys)

    def at(key: str) -> str:
        return f"{root}.{key}" if root else key

    if "steps" not in body:
        raise StrategyError(at("steps"), body.line, "required: the rollout's steps")
    steps = reader.seq(body["steps"], at("steps"), body.lines["steps"])
    if not steps:
        raise StrategyError(at("steps"), body.lines["steps"], "at least one step")
    strategy = pb.RolloutStrategy(
        steps=[reader.step(s, f"{at('steps')}[{i}]", steps.lines[i]) for i, s in enumerate(steps)]
    )
    if "backgroundAnalysis" in body:
        strategy.background_analysis.extend(
            reader.templates(
                body["backgroundAnalysis"],
                at("backgroundAnalysis"),
                body.lines["backgroundAnalysis"],
            )
        )
    if (interval := reader.field(body, "backgroundInterval", root, "duration")) is not None:
        strategy.background_interval.CopyFrom(interval)
    revisions: int | None = None
    if "rollbackWindow" in body:
        window = reader.mapping(
            body["rollbackWindow"],
            at("rollbackWindow"),
            body.lines["rollbackWindow"],
            {"revisions"},
        )
        revisions = reader.field(window, "revisions", at("rollbackWindow"), "int")
    automated: bool | None = None
    if "automated" in body:
        if not isinstance(body["automated"], bool):
            raise StrategyError(at("automated"), body.lines["automated"], "must be true or false")
        automated = body["automated"]
    return StrategyFile(strategy, revisions, automated, tuple(steps.lines))


def _strategy_violations(error: MaestroRpcError, source: Path, parsed: StrategyFile) -> bool:
    """Print the server's strategy violations against the file's lines; False if there were
    none (the error is about something else)."""
    found = False
    for violation in error.field_violations:
        match = re.match(r"rollout\.strategy\.steps\[(\d+)\]", violation.field)
        if match is None:
            continue
        index = int(match.group(1))
        line = parsed.step_lines[index] if index < len(parsed.step_lines) else 0
        typer.echo(f"error: {source}:{line}: {violation.field}: {violation.description}", err=True)
        found = True
    return found


# -- following a rollout ------------------------------------------------------------------------


def follow(
    client: MaestroClient,
    name: str,
    timeout_s: float,
    after_revision: int = 0,
) -> int:
    """Stream the rollout's events until it ends; print one line per event and the final state.
    Reconnects (from the last revision seen) when the stream drops. Returns the exit code:
    0 PROMOTED, 1 ROLLED_BACK / ABORTED / FAILED, 2 a refused call or the timeout."""
    deadline = time.monotonic() + timeout_s
    revision = after_revision
    last: pb.Rollout | None = None
    while (left := deadline - time.monotonic()) > 0:
        stream = client.rollouts.WatchRollout(
            pb.WatchRolloutRequest(name=name, after_revision=revision), timeout=left
        )
        try:
            for message in stream:
                for event in message.events:
                    typer.echo(_event_line(event))
                if last is None and not message.events:
                    typer.echo(_rollout_line(message.rollout))
                last = message.rollout
                revision = max(revision, last.revision)
                # The server ends the stream after an ended state: read on to its end.
        except MaestroRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                typer.echo(f"error: {error}", err=True)
                return EXIT_OTHER
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        finally:
            _stop(stream)
        if last is not None and last.state in ENDED:
            typer.echo(_rollout_line(last))
            return EXIT_OK if last.state == R.STATE_PROMOTED else EXIT_FAILED
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))  # ended early: reconnect
    state = f" (still {_state(last.state)})" if last is not None else ""
    typer.echo(f"error: {name} did not end within {timeout_s:g}s{state}", err=True)
    return EXIT_OTHER


def _stop(stream: Any) -> None:
    """Cancel the call (a no-op once it ended); the traced stream is a generator to close."""
    for method in ("cancel", "close"):
        stop = getattr(stream, method, None)
        if stop is not None:
            stop()
            return


# -- audit listing and verification -------------------------------------------------------------


def audit_events(client: MaestroClient, parent: str) -> Iterator[pb.RolloutAuditEvent]:
    """Every audit event under `parent`, oldest first, over every page."""
    request = pb.ListRolloutAuditEventsRequest(
        parent=parent, page_size=PAGE, order_by="create_time"
    )
    while True:
        response = client.rollouts.ListRolloutAuditEvents(request)
        yield from response.rollout_audit_events
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token


def verify_store(sqlite: Path | None, store_dsn: str | None, project: str | None) -> int:
    """Recompute the audit hash chains from the database's rows; print each problem naming its
    event. Over the API this cannot be done exactly: events are listed from their stored body
    while the chain also covers the row's columns (an edit to `actor` shows only there), and
    timestamps lose float precision in transit."""
    from maestro.control_plane.rollouts.audit import verify_chain
    from maestro.control_plane.rollouts.store import RolloutStore
    from maestro.control_plane.store.sql import Sql

    if (sqlite is None) == (store_dsn is None):
        raise _usage("give the database to read: --sqlite PATH or --store-dsn DSN")
    sql: Sql
    try:
        if sqlite is not None:
            if not sqlite.is_file():
                raise _usage(f"no SQLite database at {sqlite}")
            from maestro.control_plane.store.sqlite import SqliteSql

            sql = SqliteSql(sqlite, ())  # no migrations: verification only reads
        else:
            from maestro.control_plane.store.postgres import PostgresSql

            sql = PostgresSql(str(store_dsn), (), min_size=1, max_size=1)
    except typer.Exit:
        raise
    except Exception as error:  # the driver's own errors: the database could not be opened
        typer.echo(f"error: cannot open the store: {error}", err=True)
        raise typer.Exit(EXIT_OTHER) from None
    try:
        store = RolloutStore(sql)
        projects = [project.removeprefix("projects/")] if project else store.audit_projects()
        broken = False
        for project_id in sorted(projects):
            events = store.chain(project_id)
            problems = verify_chain(events, store.chain_head(project_id))
            if problems:
                broken = True
                for problem in problems:
                    typer.echo(f"event {problem.event} (seq {problem.seq}): {problem.problem}")
                typer.echo(
                    f"audit chain of projects/{project_id} is broken: {len(problems)} "
                    f"problem(s) in {len(events)} events"
                )
            else:
                typer.echo(f"audit chain of projects/{project_id} intact: {len(events)} events")
        if not projects:
            typer.echo("no audit events")
    finally:
        sql.close()
    return EXIT_FAILED if broken else EXIT_OK


# -- commands -----------------------------------------------------------------------------------


def _content_kind(file: Path, kind: str | None, media_type: str | None) -> tuple[int, str]:
    """The version's kind and media type ("" = the server's default for the kind)."""
    from maestro.core.errors import InvalidArgument
    from maestro.routing.artifacts import PROMPT_TEXT, kind_of

    if kind is not None and kind not in KINDS:
        raise _usage(f"--kind {kind!r}: prompt, agent or recipe")
    if media_type:
        try:
            declared = kind_of(media_type)
        except InvalidArgument:
            raise _usage(
                f"--media-type {media_type!r} is not a media type Maestro serves"
            ) from None
        if kind is not None and kind != declared:
            raise _usage(f"--media-type {media_type} holds a {declared}, not a {kind}")
        return KINDS[declared], media_type
    chosen = kind or "prompt"
    if chosen == "prompt" and file.suffix.lower() in (".txt", ".md", ".text"):
        return KINDS[chosen], PROMPT_TEXT
    return KINDS[chosen], ""


def register(app: typer.Typer, client_for: ClientFor) -> None:
    version = typer.Typer(
        help="Artifact versions: content-addressed prompts, agents and recipes.",
        no_args_is_help=True,
    )
    rollout = typer.Typer(
        help="Rollouts: move traffic from an artifact's stable version to a candidate in steps.",
        no_args_is_help=True,
    )
    app.add_typer(version, name="version")
    app.add_typer(rollout, name="rollout")

    def fail(error: grpc.RpcError) -> NoReturn:
        raise _refused(error)

    # -- versions ---------------------------------------------------------------------------------

    @version.command("push", cls=UsageExit)
    def version_push(
        file: Annotated[Path, typer.Argument(help="The content: prompt, agent or recipe file.")],
        artifact: Annotated[
            str, typer.Option("--artifact", help="projects/{project}/artifacts/{artifact}")
        ],
        kind: Annotated[
            str | None,
            typer.Option(
                "--kind", help="prompt, agent or recipe; default: from --media-type, else prompt."
            ),
        ] = None,
        media_type: Annotated[
            str | None,
            typer.Option(
                "--media-type",
                help="Default: application/vnd.maestro.<kind>.v1+yaml; a .txt prompt is "
                "application/vnd.maestro.prompt.v1+text.",
            ),
        ] = None,
        version_id: Annotated[
            str, typer.Option("--version-id", help="Default: v<N> (the server assigns it).")
        ] = "",
        description: Annotated[str, typer.Option("--description", help="What changed.")] = "",
        source_repo: Annotated[
            str | None, typer.Option("--source-repo", help="Default: git's remote.origin.url.")
        ] = None,
        source_commit: Annotated[
            str | None, typer.Option("--source-commit", help="Default: git's HEAD.")
        ] = None,
        source_path: Annotated[
            str | None,
            typer.Option("--source-path", help="Default: FILE's path in its git repository."),
        ] = None,
        builder: Annotated[
            str, typer.Option("--builder", help="What built it, such as a CI run URL.")
        ] = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Store FILE as a new version of an artifact; prints its name and digest.

        Inside a git work tree the source repository, commit and path come from git unless
        given."""
        try:
            content = file.read_bytes()
        except OSError as error:
            raise _usage(f"cannot read {file}: {error.strerror}") from None
        kind_value, media = _content_kind(file, kind, media_type)
        if source_repo is None or source_commit is None or source_path is None:
            found = git_source(file)
            if found is not None:
                source_repo = found.repository if source_repo is None else source_repo
                if source_commit is None:
                    source_commit = found.commit
                    if found.dirty and found.commit:
                        typer.echo(
                            f"warning: {file} has changes not committed to {found.commit[:12]}",
                            err=True,
                        )
                source_path = found.path if source_path is None else source_path
        request = pb.CreateArtifactVersionRequest(
            parent=artifact,
            artifact_version=pb.ArtifactVersion(
                kind=kind_value,  # type: ignore[arg-type]
                description=description,
                media_type=media,
                provenance=pb.ArtifactProvenance(
                    source_repository=source_repo or "",
                    source_commit=source_commit or "",
                    source_path=source_path or "",
                    builder=builder,
                ),
            ),
            version_id=version_id,
            content_bytes=content,
        )
        with client_for(target, api_key) as client:
            try:
                created = client.rollouts.CreateArtifactVersion(request).artifact_version
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json(_dict(created))
        else:
            typer.echo(f"{created.name} {created.digest}")

    @version.command("list", cls=UsageExit)
    def version_list(
        artifact: Annotated[
            str | None, typer.Option("--artifact", help="projects/{project}/artifacts/{artifact}")
        ] = None,
        project: ProjectOption = None,
        filter_text: Annotated[
            str,
            typer.Option("--filter", help="Such as `stable = true` or `kind = PROMPT`."),
        ] = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """List an artifact's versions (or every artifact's of the project), newest first."""
        if artifact and project:
            raise _usage("give --artifact or --project, not both")
        found: list[pb.ArtifactVersion] = []
        with client_for(target, api_key) as client:
            try:
                parent = artifact or f"{_project_of(client, project)}/artifacts/-"
                request = pb.ListArtifactVersionsRequest(
                    parent=parent, page_size=PAGE, filter=filter_text
                )
                while True:
                    response = client.rollouts.ListArtifactVersions(request)
                    found.extend(response.artifact_versions)
                    if not response.next_page_token:
                        break
                    request.page_token = response.next_page_token
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json([_dict(v) for v in found])
            return
        for v in found:
            marks = " stable" if v.stable else ""
            commit = v.provenance.source_commit[:12]
            typer.echo(
                f"{v.name}  {_kind(v.kind)}  {v.digest[:19]}  {v.traffic_weight_percent:>3}%"
                f"{marks}  {_when(v.create_time)}" + (f"  git {commit}" if commit else "")
            )

    @version.command("pull", cls=UsageExit)
    def version_pull(
        name: Annotated[
            str, typer.Argument(help="projects/{project}/artifacts/{artifact}/versions/{version}")
        ],
        registry: Annotated[str, typer.Option("--registry", help="The OCI registry, HOST:PORT.")],
        insecure: Annotated[
            bool, typer.Option("--insecure", help="Plain HTTP to the registry.")
        ] = False,
        out: Annotated[
            Path | None, typer.Option("--out", help="Write the content here; default: stdout.")
        ] = None,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Fetch a version's content from an OCI registry, checked against its digest."""
        from maestro.control_plane.rollouts import oci

        parts = name.split("/")
        if (
            len(parts) != 6
            or parts[0] != "projects"
            or parts[2] != "artifacts"
            or parts[4] != "versions"
        ):
            raise _usage(
                f"{name!r} is not a version name like "
                "projects/{project}/artifacts/{artifact}/versions/{version}"
            )
        project, artifact_id, version_id = parts[1], parts[3], parts[5]
        with client_for(target, api_key) as client:
            try:
                got = client.rollouts.GetArtifactVersion(
                    pb.GetArtifactVersionRequest(name=name)
                ).artifact_version
            except MaestroRpcError as error:
                fail(error)
        try:
            ref = (
                f"{registry.rstrip('/')}/{oci.repository(project, _kind(got.kind), artifact_id)}"
                f":{version_id}"
            )
            _, content = oci.pull(ref, expected_digest=got.digest, insecure=insecure)
        except oci.CorruptArtifact as error:
            typer.echo(f"error: {name}: the registry's copy is corrupt: {error}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        except oci.ArtifactMissing as error:
            typer.echo(f"error: {name}: not in the registry: {error}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        except (oci.RegistryError, ValueError) as error:
            typer.echo(f"error: {name}: {error}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        if out is not None:
            out.write_bytes(content)
            typer.echo(f"{name} {got.digest} -> {out}", err=True)
        else:
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()

    # -- rollouts ---------------------------------------------------------------------------------

    @rollout.command("start", cls=UsageExit)
    def rollout_start(
        artifact: Annotated[
            str, typer.Option("--artifact", help="projects/{project}/artifacts/{artifact}")
        ],
        stable: Annotated[
            str, typer.Option("--stable", help="The version serving now (id or full name).")
        ],
        candidate: Annotated[
            str, typer.Option("--candidate", help="The version to roll out (id or full name).")
        ],
        steps: Annotated[
            Path | None,
            typer.Option(
                "--steps", help="Strategy YAML in Argo's shape (steps: setWeight, pause, analysis)."
            ),
        ] = None,
        rollout_id: Annotated[str, typer.Option("--id", help="Default: the server's.")] = "",
        description: Annotated[
            str, typer.Option("--description", help="Why, for the audit log.")
        ] = "",
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate only: nothing starts.")
        ] = False,
        watch: Annotated[
            bool, typer.Option("--watch", help="Then follow it as `rollout watch` does.")
        ] = False,
        timeout: TimeoutOption = 3600.0,
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Start a rollout of CANDIDATE over STABLE with the steps of a strategy file."""
        if steps is None:
            raise _usage("--steps FILE is required: the rollout's strategy (YAML)")
        try:
            text = steps.read_text(encoding="utf-8")
        except OSError as error:
            raise _usage(f"cannot read {steps}: {error.strerror}") from None
        try:
            parsed = parse_strategy(text)
        except StrategyError as error:
            where = f"{steps}:{error.line}" if error.line else str(steps)
            field = f" {error.field}:" if error.field else ""
            raise _usage(f"{where}:{field} {error.message}") from None
        project = _artifact_project(artifact)
        message = pb.Rollout(
            artifact=artifact,
            description=description,
            stable_version=_version_name(artifact, stable),
            candidate_version=_version_name(artifact, candidate),
            strategy=parsed.strategy,
            automated=bool(parsed.automated),
        )
        if parsed.rollback_revisions is not None:
            message.rollback_window.revisions = parsed.rollback_revisions
        request = pb.CreateRolloutRequest(
            parent=f"projects/{project}",
            rollout=message,
            rollout_id=rollout_id,
            request_id=str(uuid.uuid4()),
            validate_only=dry_run,
        )
        with client_for(target, api_key) as client:
            try:
                created = client.rollouts.CreateRollout(request).rollout
            except MaestroRpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT and _strategy_violations(
                    error, steps, parsed
                ):
                    raise typer.Exit(EXIT_USAGE) from None
                raise _refused(error, EXIT_OTHER if watch else EXIT_FAILED) from None
            if as_json:
                _json(_dict(created))
            else:
                prefix = "valid (dry run): " if dry_run else ""
                typer.echo(prefix + _rollout_line(created))
            if watch and not dry_run:
                raise typer.Exit(follow(client, created.name, timeout, created.revision))

    @rollout.command("watch", cls=UsageExit)
    def rollout_watch(
        name: RolloutName,
        timeout: TimeoutOption = 3600.0,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Follow a rollout to its end, printing one line per event.

        Exit 0 PROMOTED; 1 ROLLED_BACK, ABORTED or FAILED; 2 any other error or the timeout."""
        with client_for(target, api_key) as client:
            raise typer.Exit(follow(client, name, timeout))

    def verb(
        name: str,
        call: Callable[[MaestroClient], pb.Rollout],
        as_json: bool,
        target: str,
        api_key: str | None,
    ) -> None:
        _rollout_project(name)
        with client_for(target, api_key) as client:
            try:
                changed = call(client)
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json(_dict(changed))
        else:
            typer.echo(_rollout_line(changed))

    @rollout.command("promote", cls=UsageExit)
    def rollout_promote(
        name: RolloutName,
        full: Annotated[
            bool, typer.Option("--full", help="Skip every remaining step: weight 100 at once.")
        ] = False,
        reason: ReasonOption = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Skip the current step without analysis (with --full, every remaining step)."""

        def call(client: MaestroClient) -> pb.Rollout:
            # Skipping one step sends the etag, so a retried call fails instead of skipping a
            # second step; skipping them all needs none.
            current = (
                client.rollouts.GetRollout(pb.GetRolloutRequest(name=name)).rollout
                if not full
                else pb.Rollout()
            )
            return client.rollouts.PromoteRollout(
                pb.PromoteRolloutRequest(
                    name=name,
                    full=full,
                    etag=current.etag,
                    reason=reason,
                    request_id=str(uuid.uuid4()),
                )
            ).rollout

        verb(name, call, as_json, target, api_key)

    @rollout.command("abort", cls=UsageExit)
    def rollout_abort(
        name: RolloutName,
        reason: Annotated[str, typer.Option("--reason", help="Why (required), for the audit log.")],
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Abort: the candidate's weight goes to 0 before the call returns."""
        if not reason.strip():
            raise _usage("--reason must say why")
        verb(
            name,
            lambda client: (
                client.rollouts.AbortRollout(
                    pb.AbortRolloutRequest(name=name, reason=reason, request_id=str(uuid.uuid4()))
                ).rollout
            ),
            as_json,
            target,
            api_key,
        )

    @rollout.command("pause", cls=UsageExit)
    def rollout_pause(
        name: RolloutName,
        reason: ReasonOption = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Hold the rollout at its current weight."""
        verb(
            name,
            lambda client: (
                client.rollouts.PauseRollout(
                    pb.PauseRolloutRequest(name=name, reason=reason, request_id=str(uuid.uuid4()))
                ).rollout
            ),
            as_json,
            target,
            api_key,
        )

    @rollout.command("resume", cls=UsageExit)
    def rollout_resume(
        name: RolloutName,
        reason: ReasonOption = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Resume a PAUSED rollout (an inconclusive analysis counts as passed)."""
        verb(
            name,
            lambda client: (
                client.rollouts.ResumeRollout(
                    pb.ResumeRolloutRequest(name=name, reason=reason, request_id=str(uuid.uuid4()))
                ).rollout
            ),
            as_json,
            target,
            api_key,
        )

    @rollout.command("retry", cls=UsageExit)
    def rollout_retry(
        name: RolloutName,
        reason: ReasonOption = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Restart a ROLLED_BACK, ABORTED or FAILED rollout from step 0."""
        verb(
            name,
            lambda client: (
                client.rollouts.RetryRollout(
                    pb.RetryRolloutRequest(name=name, reason=reason, request_id=str(uuid.uuid4()))
                ).rollout
            ),
            as_json,
            target,
            api_key,
        )

    @rollout.command("approve", cls=UsageExit)
    def rollout_approve(
        name: RolloutName,
        reason: Annotated[str, typer.Option("--reason", help="Why (required), for the audit log.")],
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Approve the rollout's promotion (dual control: two approvers, neither its creator)."""
        if not reason.strip():
            raise _usage("--reason must say why")
        verb(
            name,
            lambda client: (
                client.rollouts.ApproveRollout(
                    pb.ApproveRolloutRequest(name=name, reason=reason, request_id=str(uuid.uuid4()))
                ).rollout
            ),
            as_json,
            target,
            api_key,
        )

    @rollout.command("get", cls=UsageExit)
    def rollout_get(
        name: RolloutName,
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Print a rollout."""
        _rollout_project(name)
        with client_for(target, api_key) as client:
            try:
                got = client.rollouts.GetRollout(pb.GetRolloutRequest(name=name)).rollout
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json(_dict(got))
            return
        typer.echo(_rollout_line(got))
        typer.echo(f"  artifact:  {got.artifact}")
        typer.echo(f"  stable:    {got.stable_version}")
        typer.echo(f"  candidate: {got.candidate_version}")
        typer.echo(f"  created:   {_when(got.create_time)}  updated: {_when(got.update_time)}")
        if got.HasField("pause_end_time"):
            typer.echo(f"  paused until {_when(got.pause_end_time)}")
        if got.required_approvals:
            typer.echo(f"  approvals: {len(got.approvals)}/{got.required_approvals}")
        for result in got.analysis_results:
            outcome = pb.RolloutAnalysisResult.Outcome.Name(result.outcome).removeprefix("OUTCOME_")
            typer.echo(f"  step {result.step_index} {result.template}: {outcome} {result.message}")

    @rollout.command("list", cls=UsageExit)
    def rollout_list(
        project: ProjectOption = None,
        filter_text: Annotated[
            str, typer.Option("--filter", help="Such as `state = PAUSED`.")
        ] = "",
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """List the project's rollouts, newest first."""
        found: list[pb.Rollout] = []
        with client_for(target, api_key) as client:
            try:
                request = pb.ListRolloutsRequest(
                    parent=_project_of(client, project), page_size=PAGE, filter=filter_text
                )
                while True:
                    response = client.rollouts.ListRollouts(request)
                    found.extend(response.rollouts)
                    if not response.next_page_token:
                        break
                    request.page_token = response.next_page_token
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json([_dict(r) for r in found])
            return
        for r in found:
            typer.echo(_rollout_line(r))

    @rollout.command("rollback", cls=UsageExit)
    def rollout_rollback(
        artifact: Annotated[
            str, typer.Option("--artifact", help="projects/{project}/artifacts/{artifact}")
        ],
        to: Annotated[
            str, typer.Option("--to", help="The version to go back to (id or full name).")
        ],
        reason: ReasonOption = "",
        timeout: Annotated[
            float, typer.Option("--timeout", help="Most seconds to wait for the promotion.")
        ] = 300.0,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """Go back to a recent stable version at once, and wait until it is PROMOTED.

        It starts a rollout with a rollback window of 2, which the server promotes without steps
        when the version was one of the artifact's last two stable versions (else its one step
        sets weight 100)."""
        project = _artifact_project(artifact)
        candidate = _version_name(artifact, to)
        with client_for(target, api_key) as client:
            try:
                stable = client.rollouts.ListArtifactVersions(
                    pb.ListArtifactVersionsRequest(
                        parent=artifact, filter="stable = true", page_size=1
                    )
                ).artifact_versions
                if not stable:
                    typer.echo(
                        f"error: {artifact} has no stable version to roll back from", err=True
                    )
                    raise typer.Exit(EXIT_OTHER)
                if stable[0].name == candidate:
                    typer.echo(f"{candidate} is already the stable version")
                    return
                created = client.rollouts.CreateRollout(
                    pb.CreateRolloutRequest(
                        parent=f"projects/{project}",
                        rollout=pb.Rollout(
                            artifact=artifact,
                            description=reason or f"rollback to {_short(candidate)}",
                            stable_version=stable[0].name,
                            candidate_version=candidate,
                            strategy=pb.RolloutStrategy(
                                steps=[
                                    pb.RolloutStep(
                                        set_weight=pb.RolloutStep.SetWeight(weight_percent=100)
                                    )
                                ]
                            ),
                            rollback_window=pb.RolloutRollbackWindow(revisions=2),
                        ),
                        request_id=str(uuid.uuid4()),
                    )
                ).rollout
            except MaestroRpcError as error:
                if error.reason == "ROLLOUT_IN_PROGRESS":
                    typer.echo(
                        f"error: {error}\n"
                        "  abort it first: maestro rollout abort NAME --reason ...",
                        err=True,
                    )
                    raise typer.Exit(EXIT_OTHER) from None
                raise _refused(error, EXIT_OTHER) from None
            typer.echo(f"rolling back {artifact} to {_short(candidate)}: {created.name}")
            created_events = [
                e for e in audit_events(client, created.name) if e.revision <= created.revision
            ]
            for event in created_events:
                typer.echo(_event_line(event))
            raise typer.Exit(follow(client, created.name, timeout, created.revision))

    @rollout.command("audit", cls=UsageExit)
    def rollout_audit(
        name: Annotated[
            str | None,
            typer.Argument(help="projects/{project}/rollouts/{rollout}; default: every rollout."),
        ] = None,
        project: ProjectOption = None,
        as_json: JsonOption = False,
        target: TargetOption = DEFAULT_TARGET,
        api_key: KeyOption = None,
    ) -> None:
        """List audit events, oldest first: who did what, when and why."""
        if name and project:
            raise _usage("give a rollout NAME or --project, not both")
        with client_for(target, api_key) as client:
            try:
                parent = name or f"{_project_of(client, project)}/rollouts/-"
                events = list(audit_events(client, parent))
            except MaestroRpcError as error:
                fail(error)
        if as_json:
            _json([_dict(e) for e in events])
            return
        for event in events:
            typer.echo(f"{_event_line(event)}  ({event.actor}; {event.name})")

    @rollout.command("verify", cls=UsageExit)
    def rollout_verify(
        project: Annotated[
            str | None, typer.Option("--project", help="Project id; default: every project.")
        ] = None,
        sqlite: Annotated[
            Path | None, typer.Option("--sqlite", help="The control plane's SQLite database.")
        ] = None,
        store_dsn: Annotated[
            str | None,
            typer.Option("--store-dsn", help="The control plane's PostgreSQL DSN."),
        ] = None,
    ) -> None:
        """Check the rollout audit hash chain in the database: exit 1 naming each bad event.

        Reads the control plane's store (nothing is written) and recomputes each project's
        chain; an edited, deleted or reordered event is printed and the exit code is 1; 0 when
        every chain is intact."""
        raise typer.Exit(verify_store(sqlite, store_dsn, project))
