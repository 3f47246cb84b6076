"""Gate decisions from a scorecard and SLO burn forecasts: CI, autonomy promotion, rollout step.

Pure: `decide` turns a scorecard, the gate's kind and its inputs into checks; the service records
the decision. A gate passes only when every check passes, and the checks say why, failed first.
INCONCLUSIVE is not a pass: a gate that cannot tell a change from noise keeps the status quo.

Autonomy promotion is the seed's gate for raising an agent or recipe from L2 to L3 and above:
a PASS verdict with no threshold skipped (so regressions were measured against a baseline),
a fresh scorecard, and every SLO burn forecast within the allowed rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maestro.control_plane.evals.records import Scorecard

CI = "CI"
AUTONOMY_PROMOTION = "AUTONOMY_PROMOTION"
ROLLOUT_ANALYSIS = "ROLLOUT_ANALYSIS"
KINDS = (CI, AUTONOMY_PROMOTION, ROLLOUT_ANALYSIS)
DEFAULT_MAX_BURN_RATE = 1.0
DEFAULT_AUTONOMY_MAX_AGE_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SloForecast:
    slo: str
    forecast_burn_rate: float
    horizon_s: float = 0.0
    error_budget_remaining: float | None = None


@dataclass(frozen=True, slots=True)
class GateCheck:
    check: str
    passed: bool
    measured: float
    limit: float
    message: str


@dataclass(frozen=True, slots=True)
class GateInputs:
    kind: str
    forecasts: tuple[SloForecast, ...] = ()
    max_burn_rate: float = 0.0
    """0: the default (1.0)."""
    max_age_s: float | None = None
    """None: the kind's default (7 days for autonomy promotion, no limit otherwise)."""
    strict: bool = False


def decide(card: Scorecard, inputs: GateInputs, now: float) -> tuple[bool, list[GateCheck]]:
    """Every check the gate makes, failed ones first, and whether all passed."""
    checks: list[GateCheck] = []
    checks.append(
        GateCheck(
            "verdict",
            card.verdict == "PASS",
            0.0,
            0.0,
            f"scorecard verdict {card.verdict}"
            + ("" if card.verdict == "PASS" else ": only PASS passes a gate"),
        )
    )
    skipped_fail = inputs.kind != CI or inputs.strict
    for result in card.thresholds:
        if result.outcome == "SKIPPED":
            passed = not skipped_fail
            why = "skipped (no baseline)" + (": not measured, so not a pass" if not passed else "")
        else:
            passed = result.outcome == "PASSED"
            why = result.message
        checks.append(
            GateCheck(f"threshold:{result.threshold}", passed, result.measured, result.limit, why)
        )
    if inputs.kind == AUTONOMY_PROMOTION and not card.baseline:
        checks.append(
            GateCheck(
                "baseline",
                False,
                0.0,
                0.0,
                "an autonomy promotion needs a scorecard measured against a baseline",
            )
        )
    max_age = inputs.max_age_s
    if max_age is None and inputs.kind == AUTONOMY_PROMOTION:
        max_age = DEFAULT_AUTONOMY_MAX_AGE_S
    if max_age is not None:
        age = max(0.0, now - card.create_time)
        checks.append(
            GateCheck(
                "scorecard_age",
                age <= max_age,
                age,
                max_age,
                f"scorecard is {age / 3600:.1f} h old (at most {max_age / 3600:.1f} h)",
            )
        )
    if inputs.kind != CI:
        checks += _burn_checks(inputs.forecasts, inputs.max_burn_rate or DEFAULT_MAX_BURN_RATE)
    checks.sort(key=lambda c: c.passed)
    return all(c.passed for c in checks), checks


def _burn_checks(forecasts: Sequence[SloForecast], limit: float) -> list[GateCheck]:
    out = []
    for forecast in forecasts:
        spent = forecast.error_budget_remaining is not None and forecast.error_budget_remaining <= 0
        passed = forecast.forecast_burn_rate <= limit and not spent
        message = f"slo {forecast.slo}: forecast burn {forecast.forecast_burn_rate:g}" + (
            f" <= {limit:g}" if forecast.forecast_burn_rate <= limit else f" > {limit:g}"
        )
        if spent:
            message += "; its error budget is spent"
        out.append(
            GateCheck(
                f"slo_burn:{forecast.slo}", passed, forecast.forecast_burn_rate, limit, message
            )
        )
    return out
