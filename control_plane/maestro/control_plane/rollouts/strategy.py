"""What makes a rollout strategy valid: field violations named by their API paths.

Argo's semantics where ours match: steps run in order, a set-weight step moves traffic and goes
on at once, a pause holds, an analysis gates. Weights only grow through a rollout (a shrinking
weight is a rollback, which is AbortRollout's job), and an automated rollout may not pause
without an end, since nobody is there to resume it.
"""

from __future__ import annotations

import math

from maestro.control_plane.rollouts.judges import DEFAULT_HORIZON_S
from maestro.control_plane.rollouts.records import (
    MAX_STEPS,
    MAX_TEMPLATES,
    MIN_BACKGROUND_INTERVAL_S,
    SloBurnSpec,
    Strategy,
    TemplateSpec,
)
from maestro.core.errors import FieldViolation

MAX_WINDOWS = 4
MAX_WINDOW_S = DEFAULT_HORIZON_S
"""The longest SLO window: what the per-version series keeps of live traffic."""
MAX_DURATION_S = 30 * 24 * 3600.0
"""The longest pause, interval, latency threshold or scorecard age (30 days)."""


def strategy_violations(
    strategy: Strategy, project: str, field: str, *, automated: bool
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not 1 <= len(strategy.steps) <= MAX_STEPS:
        found.append(FieldViolation(f"{field}.steps", f"1 to {MAX_STEPS} steps"))
    last_weight = -1
    last_weight_index = -1
    for i, step in enumerate(strategy.steps):
        at = f"{field}.steps[{i}]"
        kinds = sum((step.set_weight is not None, step.pause_s is not None, bool(step.analysis)))
        if kinds != 1:
            found.append(
                FieldViolation(
                    at,
                    "exactly one of set_weight, pause and analysis (with 1 to "
                    f"{MAX_TEMPLATES} templates) is required",
                )
            )
            continue
        if step.set_weight is not None:
            weight = step.set_weight
            if not 0 <= weight <= 100:
                found.append(
                    FieldViolation(f"{at}.set_weight.weight_percent", f"{weight} is not 0 to 100")
                )
            elif weight <= last_weight:
                found.append(
                    FieldViolation(
                        f"{at}.set_weight.weight_percent",
                        f"{weight} does not increase on step {last_weight_index}'s "
                        f"{last_weight}: weights only grow in a rollout (AbortRollout rolls back)",
                    )
                )
            else:
                last_weight, last_weight_index = weight, i
        elif step.pause_s is not None:
            if not math.isfinite(step.pause_s) or not 0 <= step.pause_s <= MAX_DURATION_S:
                found.append(FieldViolation(f"{at}.pause.duration", "0 to 30 days"))
            elif step.pause_s == 0 and automated:
                found.append(
                    FieldViolation(
                        f"{at}.pause.duration",
                        "an automated rollout cannot pause without an end: nobody would "
                        "resume it; give the pause a duration",
                    )
                )
        else:
            found += _templates(step.analysis, project, f"{at}.analysis.templates")
    if strategy.background:
        found += _templates(strategy.background, project, f"{field}.background_analysis")
        for j, template in enumerate(strategy.background):
            if template.slo_burn is None:
                found.append(
                    FieldViolation(
                        f"{field}.background_analysis[{j}]",
                        "only slo_burn templates run in the background",
                    )
                )
    interval = strategy.background_interval_s
    if not math.isfinite(interval) or not MIN_BACKGROUND_INTERVAL_S <= interval <= MAX_DURATION_S:
        found.append(
            FieldViolation(
                f"{field}.background_interval",
                f"{MIN_BACKGROUND_INTERVAL_S:g} seconds to 30 days",
            )
        )
    return found


def _templates(
    templates: tuple[TemplateSpec, ...], project: str, field: str
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not 1 <= len(templates) <= MAX_TEMPLATES:
        found.append(FieldViolation(field, f"1 to {MAX_TEMPLATES} templates"))
    names: set[str] = set()
    for k, template in enumerate(templates):
        at = f"{field}[{k}]"
        if not template.name or len(template.name) > 63:
            found.append(FieldViolation(f"{at}.name", "required, at most 63 characters"))
        elif template.name in names:
            found.append(FieldViolation(f"{at}.name", f"{template.name!r} is used twice"))
        names.add(template.name)
        if (template.eval_gate is None) == (template.slo_burn is None):
            found.append(
                FieldViolation(
                    at,
                    "unknown template: exactly one of eval_gate and slo_burn is required",
                )
            )
        elif template.eval_gate is not None:
            gate = template.eval_gate
            prefix = f"projects/{project}/evalSuites/"
            suite_id = gate.suite.removeprefix(prefix)
            if not gate.suite.startswith(prefix) or not suite_id or "/" in suite_id:
                found.append(
                    FieldViolation(
                        f"{at}.eval_gate.suite",
                        f"{gate.suite[:80]!r} is not a suite of this project ({prefix}{{suite}})",
                    )
                )
            if not 0 <= gate.repetitions <= 10:
                found.append(FieldViolation(f"{at}.eval_gate.repetitions", "0 to 10"))
            for name, value in (
                ("max_scorecard_age", gate.max_scorecard_age_s),
                ("budget.max_cost_usd", gate.max_cost_usd),
            ):
                if not math.isfinite(value) or not 0 <= value <= MAX_DURATION_S:
                    found.append(
                        FieldViolation(f"{at}.eval_gate.{name}", "a finite value, 0 to 2,592,000")
                    )
            if gate.max_tokens < 0:
                found.append(FieldViolation(f"{at}.eval_gate.budget.max_tokens", "not negative"))
        elif template.slo_burn is not None:
            found += _slo_burn(template.slo_burn, f"{at}.slo_burn")
    return found


def _slo_burn(burn: SloBurnSpec, at: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if burn.indicator not in ("errors", "latency"):
        found.append(FieldViolation(f"{at}.indicator", "ERRORS or LATENCY is required"))
    if not (math.isfinite(burn.objective_ratio) and 0 < burn.objective_ratio < 1):
        found.append(FieldViolation(f"{at}.objective_ratio", "above 0 and below 1, such as 0.995"))
    if burn.indicator == "latency" and not (
        math.isfinite(burn.latency_threshold_ms) and burn.latency_threshold_ms > 0
    ):
        found.append(FieldViolation(f"{at}.latency_threshold", "required (above 0) for LATENCY"))
    if not math.isfinite(burn.latency_threshold_ms) or not (
        0 <= burn.latency_threshold_ms <= MAX_DURATION_S * 1000
    ):
        found.append(FieldViolation(f"{at}.latency_threshold", "0 to 30 days"))
    if burn.min_request_count > 10**12:
        found.append(FieldViolation(f"{at}.min_request_count", "at most 10^12"))
    if burn.min_request_count < 0:
        found.append(FieldViolation(f"{at}.min_request_count", "must not be negative"))
    if not 1 <= len(burn.windows) <= MAX_WINDOWS:
        found.append(FieldViolation(f"{at}.windows", f"1 to {MAX_WINDOWS} window pairs"))
    for w, window in enumerate(burn.windows):
        where = f"{at}.windows[{w}]"
        if not (0 < window.long_s <= MAX_WINDOW_S):
            found.append(
                FieldViolation(
                    f"{where}.long_window",
                    f"above 0 and at most {MAX_WINDOW_S / 3600:g} hours (the live traffic kept "
                    "per version)",
                )
            )
        if not (0 < window.short_s < window.long_s):
            found.append(
                FieldViolation(f"{where}.short_window", "above 0 and shorter than long_window")
            )
        if not (math.isfinite(window.max_burn_rate) and window.max_burn_rate > 0):
            found.append(FieldViolation(f"{where}.max_burn_rate", "a finite value above 0"))
    return found
