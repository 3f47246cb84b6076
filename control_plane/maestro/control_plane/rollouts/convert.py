"""The rollout slice's records to and from the API's messages: the only place that knows both."""

from __future__ import annotations

import math
import re

from google.protobuf import duration_pb2, timestamp_pb2

from maestro.control_plane.rollouts.records import (
    DEFAULT_BACKGROUND_INTERVAL_S,
    DEFAULT_MIN_REQUESTS,
    AnalysisResult,
    AuditEvent,
    EvalGateSpec,
    Kind,
    Measurement,
    Provenance,
    RolloutRecord,
    RolloutSpec,
    SloBurnSpec,
    SloWindow,
    Step,
    Strategy,
    TemplateSpec,
    VersionRecord,
)
from maestro.control_plane.rollouts.service import VersionView
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.v1 import common_pb2
from maestro.v1 import rollout_service_pb2 as pb

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ARTIFACT_ID = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
"""An artifact id ends with a letter or digit: it is a path component of the version's OCI
repository name, which allows no trailing hyphen."""
_ARTIFACT = re.compile(rf"^projects/([a-z][a-z0-9-]{{0,62}})/artifacts/({_ARTIFACT_ID})$")
_VERSION = re.compile(
    rf"^projects/([a-z][a-z0-9-]{{0,62}})/artifacts/({_ARTIFACT_ID})/versions/"
    r"([a-z0-9][a-z0-9-]{0,62})$"
)
_ROLLOUT = re.compile(r"^projects/([a-z][a-z0-9-]{0,62})/rollouts/([a-z0-9][a-z0-9-]{0,62})$")
_EVENT = re.compile(
    r"^projects/([a-z][a-z0-9-]{0,62})/rollouts/([a-z0-9][a-z0-9-]{0,62}|-)/auditEvents/"
    r"([a-z0-9][a-z0-9-]{0,62})$"
)
_KINDS = {
    pb.ArtifactVersion.KIND_PROMPT: Kind.PROMPT,
    pb.ArtifactVersion.KIND_AGENT: Kind.AGENT,
    pb.ArtifactVersion.KIND_RECIPE: Kind.RECIPE,
}
_INDICATORS = {
    pb.RolloutAnalysisTemplate.SloBurn.INDICATOR_ERRORS: "errors",
    pb.RolloutAnalysisTemplate.SloBurn.INDICATOR_LATENCY: "latency",
}


def _bad(field: str, value: str, pattern: str) -> InvalidArgument:
    shown = value if len(value) <= 80 else value[:77] + "..."
    what = f"{shown!r} is not" if value else "required:"
    return InvalidArgument(
        [FieldViolation(field, f"{what} a resource name like {pattern} (ids: a-z, 0-9, -)")]
    )


def parse_artifact(value: str, field: str) -> tuple[str, str]:
    match = _ARTIFACT.fullmatch(value)
    if match is None:
        raise _bad(field, value, "projects/{project}/artifacts/{artifact}")
    return match.group(1), match.group(2)


def parse_artifact_parent(value: str, field: str) -> tuple[str, str | None]:
    """`projects/{p}/artifacts/{a}`, or `.../artifacts/-` for every artifact (None)."""
    if value.endswith("/artifacts/-"):
        project, _ = parse_artifact(value[:-1] + "x", field)
        return project, None
    return parse_artifact(value, field)


def parse_version(value: str, field: str) -> tuple[str, str, str]:
    match = _VERSION.fullmatch(value)
    if match is None:
        raise _bad(field, value, "projects/{project}/artifacts/{artifact}/versions/{version}")
    return match.group(1), match.group(2), match.group(3)


def parse_rollout(value: str, field: str = "name") -> tuple[str, str]:
    match = _ROLLOUT.fullmatch(value)
    if match is None:
        raise _bad(field, value, "projects/{project}/rollouts/{rollout}")
    return match.group(1), match.group(2)


def parse_rollout_parent(value: str, field: str) -> tuple[str, str | None]:
    if value.endswith("/rollouts/-"):
        project, _ = parse_rollout(value[:-1] + "x", field)
        return project, None
    return parse_rollout(value, field)


def parse_event(value: str) -> tuple[str, str, str]:
    match = _EVENT.fullmatch(value)
    if match is None:
        raise _bad("name", value, "projects/{project}/rollouts/{rollout}/auditEvents/{event}")
    return match.group(1), match.group(2), match.group(3)


def check_id(value: str, field: str) -> None:
    if value and not _ID.fullmatch(value):
        raise InvalidArgument(
            [FieldViolation(field, "1-63 lower-case letters, digits and hyphens")]
        )


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


# -- versions -----------------------------------------------------------------------------------


def new_version(message: pb.ArtifactVersion) -> VersionRecord:
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(
            [FieldViolation("artifact_version.kind", "PROMPT, AGENT or RECIPE is required")]
        )
    from maestro.routing.artifacts import default_media_type

    source = message.provenance
    return VersionRecord(
        project="",
        artifact_id="",
        version_id="",
        kind=kind,
        description=message.description[:2000],
        media_type=message.media_type or default_media_type(kind.label),
        digest="",
        manifest_digest="",
        size_bytes=0,
        provenance=Provenance(
            source.source_repository[:500],
            source.source_commit[:64],
            source.source_path[:500],
            source.builder[:500],
        ),
        create_time=0.0,
    )


def version_message(view: VersionView) -> pb.ArtifactVersion:
    r = view.record
    kind = next(k for k, v in _KINDS.items() if v == r.kind)
    return pb.ArtifactVersion(
        name=r.name,
        kind=kind,
        description=r.description,
        media_type=r.media_type,
        digest=r.digest,
        manifest_digest=r.manifest_digest,
        size_bytes=r.size_bytes,
        provenance=pb.ArtifactProvenance(
            source_repository=r.provenance.source_repository,
            source_commit=r.provenance.source_commit,
            source_path=r.provenance.source_path,
            builder=r.provenance.builder,
            creator=r.provenance.creator,
            eval_runs=view.eval_runs,
            record=common_pb2.Provenance(
                id=r.provenance.provenance_id, producer=r.name, input_digests=[r.digest]
            ),
        ),
        stable=view.stable,
        traffic_weight_percent=view.weight,
        create_time=_time(r.create_time),
    )


# -- rollouts -----------------------------------------------------------------------------------


def _template(message: pb.RolloutAnalysisTemplate) -> TemplateSpec:
    which = message.WhichOneof("template")
    if which == "eval_gate":
        gate = message.eval_gate
        return TemplateSpec(
            message.name,
            eval_gate=EvalGateSpec(
                gate.suite,
                gate.model_group,
                gate.repetitions,
                _seconds(gate.max_scorecard_age),
                gate.budget.max_cost_usd,
                gate.budget.max_tokens,
            ),
        )
    if which == "slo_burn":
        burn = message.slo_burn
        threshold = _seconds(burn.latency_threshold) * 1000.0
        return TemplateSpec(
            message.name,
            slo_burn=SloBurnSpec(
                _INDICATORS.get(burn.indicator, ""),
                burn.objective_ratio,
                tuple(
                    SloWindow(_seconds(w.long_window), _seconds(w.short_window), w.max_burn_rate)
                    for w in burn.windows
                ),
                threshold,
                int(burn.min_request_count) or DEFAULT_MIN_REQUESTS,
            ),
        )
    return TemplateSpec(message.name)


def new_rollout(message: pb.Rollout, project: str) -> RolloutSpec:
    violations: list[FieldViolation] = []
    artifact_project, artifact_id = parse_artifact(message.artifact, "rollout.artifact")
    versions: dict[str, str] = {}
    for field in ("stable_version", "candidate_version"):
        value = getattr(message, field)
        v_project, v_artifact, v_id = parse_version(value, f"rollout.{field}")
        if (v_project, v_artifact) != (artifact_project, artifact_id):
            violations.append(
                FieldViolation(f"rollout.{field}", f"must be a version of {message.artifact}")
            )
        versions[field] = v_id
    if artifact_project != project:
        violations.append(
            FieldViolation("rollout.artifact", f"must be an artifact of projects/{project}")
        )
    if violations:
        raise InvalidArgument(violations)
    steps = []
    for step in message.strategy.steps:
        which = step.WhichOneof("step")
        if which == "set_weight":
            steps.append(Step(set_weight=step.set_weight.weight_percent))
        elif which == "pause":
            steps.append(Step(pause_s=_seconds(step.pause.duration)))
        elif which == "analysis":
            steps.append(Step(analysis=tuple(_template(tpl) for tpl in step.analysis.templates)))
        else:
            steps.append(Step())
    interval = message.strategy.background_interval
    return RolloutSpec(
        artifact_id,
        versions["stable_version"],
        versions["candidate_version"],
        Strategy(
            tuple(steps),
            tuple(_template(tpl) for tpl in message.strategy.background_analysis),
            _seconds(interval)
            if message.strategy.HasField("background_interval")
            else DEFAULT_BACKGROUND_INTERVAL_S,
        ),
        message.description[:2000],
        message.rollback_window.revisions,
        message.automated,
    )


def _template_message(spec: TemplateSpec) -> pb.RolloutAnalysisTemplate:
    message = pb.RolloutAnalysisTemplate(name=spec.name)
    if spec.eval_gate is not None:
        gate = spec.eval_gate
        message.eval_gate.suite = gate.suite
        message.eval_gate.model_group = gate.model_group
        message.eval_gate.repetitions = gate.repetitions
        if gate.max_scorecard_age_s:
            message.eval_gate.max_scorecard_age.CopyFrom(_duration(gate.max_scorecard_age_s))
        message.eval_gate.budget.max_cost_usd = gate.max_cost_usd
        message.eval_gate.budget.max_tokens = gate.max_tokens
    elif spec.slo_burn is not None:
        burn = spec.slo_burn
        indicator = next(k for k, v in _INDICATORS.items() if v == burn.indicator)
        message.slo_burn.indicator = indicator
        message.slo_burn.objective_ratio = burn.objective_ratio
        if burn.latency_threshold_ms:
            message.slo_burn.latency_threshold.CopyFrom(_duration(burn.latency_threshold_ms / 1000))
        message.slo_burn.min_request_count = burn.min_request_count
        for w in burn.windows:
            message.slo_burn.windows.add(
                long_window=_duration(w.long_s),
                short_window=_duration(w.short_s),
                max_burn_rate=w.max_burn_rate,
            )
    return message


def _measurement(m: Measurement) -> pb.RolloutMeasurement:
    def finite(x: float) -> float:
        return x if math.isfinite(x) else (1e308 if x > 0 else -1e308) if not math.isnan(x) else 0.0

    return pb.RolloutMeasurement(
        metric=m.metric, value=finite(m.value), limit=finite(m.limit), passed=m.passed
    )


def _analysis(a: AnalysisResult) -> pb.RolloutAnalysisResult:
    return pb.RolloutAnalysisResult(
        step_index=a.step_index,
        background=a.background,
        template=a.template,
        outcome=int(a.outcome),  # type: ignore[arg-type]
        measurements=[_measurement(m) for m in a.measurements],
        eval_run=a.eval_run,
        scorecard=a.scorecard,
        baseline_scorecard=a.baseline_scorecard,
        gate_decision_id=a.gate_decision_id,
        message=a.message,
        start_time=_time(a.start_time),
        end_time=_time(a.end_time),
    )


def rollout_message(r: RolloutRecord) -> pb.Rollout:
    spec = r.spec
    message = pb.Rollout(
        name=r.name,
        artifact=r.artifact,
        description=spec.description,
        stable_version=r.version_name(spec.stable_version),
        candidate_version=r.version_name(spec.candidate_version),
        state=int(r.state),  # type: ignore[arg-type]
        state_reason=r.state_reason,
        current_step_index=r.step_index,
        canary_weight_percent=r.weight,
        pause_end_time=_time(r.pause_end),
        analysis_results=[_analysis(a) for a in r.analyses],
        snapshot_version=r.snapshot_version,
        revision=r.revision,
        create_time=_time(r.create_time),
        update_time=_time(r.update_time),
        etag=r.etag,
        automated=spec.automated,
        required_approvals=spec.required_approvals,
        approvals=[
            pb.RolloutApproval(
                approver=a.approver, reason=a.reason, create_time=_time(a.create_time)
            )
            for a in r.approvals
        ],
    )
    if spec.rollback_revisions:
        message.rollback_window.revisions = spec.rollback_revisions
    for step in spec.strategy.steps:
        if step.set_weight is not None:
            message.strategy.steps.add().set_weight.weight_percent = step.set_weight
        elif step.pause_s is not None:
            added = message.strategy.steps.add()
            added.pause.SetInParent()
            if step.pause_s:
                added.pause.duration.CopyFrom(_duration(step.pause_s))
        else:
            message.strategy.steps.add().analysis.templates.extend(
                _template_message(tpl) for tpl in step.analysis
            )
    message.strategy.background_analysis.extend(
        _template_message(tpl) for tpl in spec.strategy.background
    )
    message.strategy.background_interval.CopyFrom(_duration(spec.strategy.background_interval_s))
    return message


def event_message(e: AuditEvent) -> pb.RolloutAuditEvent:
    return pb.RolloutAuditEvent(
        name=e.name,
        revision=e.revision,
        create_time=_time(e.create_time),
        actor=e.actor,
        action=int(e.action),  # type: ignore[arg-type]
        reason=e.reason,
        request_id=e.request_id,
        state_before=int(e.state_before),  # type: ignore[arg-type]
        state_after=int(e.state_after),  # type: ignore[arg-type]
        step_index=e.step_index,
        weight_before_percent=e.weight_before,
        weight_after_percent=e.weight_after,
        stable_version=e.stable_version,
        candidate_version=e.candidate_version,
        candidate_digest=e.candidate_digest,
        analysis_template=e.analysis_template,
        eval_run=e.eval_run,
        scorecard=e.scorecard,
        gate_decision_id=e.gate_decision_id,
        measurements=[_measurement(m) for m in e.measurements],
        snapshot_version=e.snapshot_version,
        previous_event_hash=e.previous_hash,
        event_hash=e.event_hash,
    )
