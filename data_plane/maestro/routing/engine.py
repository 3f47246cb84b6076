"""The routing decision: a pure function of (snapshot, request, live signals).

Everything that does not depend on the request is computed when the snapshot is built:
deployments are sorted by model group so each group is one contiguous slice; objective values sit
in one 5 x N matrix; the compiled policy is a table of allowed groups per tag set, expanded to a
per-deployment mask once per tag set and cached. A decision is then a few vector operations over
one slice: no I/O, no parsing, no per-candidate Python loop. Live signals (latency, errors,
breakers, saturation) are written in place into the snapshot's arrays by `update_signals`; a
decision reads whatever values are there, so no lock is taken on the hot path.

Semantics, which the property tests check:
- Eligible = allowed by policy (Rego table and `policies.content_tags`), breaker not open, not
  saturated, within jurisdiction constraints, within budget (unknown price with a budget is not
  eligible: fail closed), context window large enough, SLO forecast within target, not excluded.
- With a requested model group, the winner is the best-scoring eligible deployment of the first
  group in [requested, *its fallback chain] that has one. Without, the best eligible overall.
- Score = sum of normalised weights x objective values, each value in [0, 1], higher is better.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from maestro.routing.spec import OBJECTIVE_ALIASES, OBJECTIVES, RouteConfigSpec

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

QUALITY, LATENCY, COST, RELIABILITY, SOVEREIGNTY = range(5)


class PolicyView(Protocol):
    """A compiled policy as the engine reads it: `policy.PolicyTable`, or two of them layered
    (`layers.LayeredPolicy`)."""

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def row_count(self) -> int: ...

    def tag_key(self, tags: frozenset[str]) -> int: ...

    def allowed_row(self, key: int) -> BoolArray: ...

    def reasons(self, key: int, model_index: int) -> tuple[str, ...]: ...


DEFAULT_RELIABILITY = 0.99
# Step hints scale the weights before normalisation (seed A4: drafts favour cost and latency,
# finalisation favours quality).
HINT_MULTIPLIERS: dict[str, tuple[float, ...]] = {
    "": (1.0, 1.0, 1.0, 1.0, 1.0),
    "draft": (0.5, 2.0, 2.0, 1.0, 1.0),
    "finalization": (2.0, 0.5, 0.5, 1.0, 1.0),
}


class Exclusion(enum.IntEnum):
    """Why a deployment was not eligible; values match `RouteExclusionReason`."""

    POLICY_DENIED = 1
    JURISDICTION = 2
    BREAKER_OPEN = 3
    SATURATED = 4
    BUDGET_EXCEEDED = 5
    CONTEXT_WINDOW = 6
    EXCLUDED_BY_CALLER = 8
    SLO_FORECAST_MISS = 9


class UnknownModel(LookupError):
    """The request names a model group (or alias) the snapshot does not have."""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a decision depends on besides the snapshot. Zero values mean "no constraint"."""

    tags: frozenset[str] = frozenset()
    weights: tuple[float, float, float, float, float] | None = None
    hint: str = ""
    model: str = ""
    max_cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    allowed_jurisdictions: frozenset[str] = frozenset()
    require_in_house: bool = False
    excluded_ids: frozenset[str] = frozenset()
    max_p95_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: indices into the snapshot's deployment order (-1: nothing eligible)."""

    winner: int
    fallbacks: tuple[int, ...]
    weights: FloatArray
    snapshot: RoutingSnapshot
    request: RouteRequest


@dataclass(frozen=True, slots=True)
class LaneSaturation:
    """How busy a serving lane is (Ray Serve + vLLM), as its status application reports it."""

    running_requests: int
    """Requests the lane's replicas are generating."""
    queue_depth: int
    """Requests the replicas hold that wait for the engine's scheduler."""
    kv_cache_usage_ratio: float
    prefix_cache_hit_ratio: float
    max_ongoing_requests: int
    """Over all replicas; 0 when unknown."""
    max_queued_requests: int
    """Ray Serve's queue before it sheds; -1 unlimited."""
    shed_count: int = 0
    """Requests the lane refused (HTTP 503) recently, as this process saw them."""

    @property
    def load(self) -> float:
        """Ongoing requests over the lane's capacity to run them: 1 means every slot is busy
        and the next request queues."""
        if self.max_ongoing_requests <= 0:
            return 0.0
        return (self.running_requests + self.queue_depth) / self.max_ongoing_requests


@dataclass
class _Signals:
    """Live state of one deployment, kept across snapshots by deployment id."""

    p95_ms: float
    ttft_ms: float = 0.0
    error_rate: float = 1.0 - DEFAULT_RELIABILITY
    breaker_open: bool = False
    saturated: bool = False
    samples: int = 0
    lane: LaneSaturation | None = None
    """For serving lanes: their latest reported load."""

    @property
    def forecast_p95_ms(self) -> float:
        """Expected p95 latency: the observed p95, stretched by the lane's load (a lane with
        every slot busy roughly doubles it: a request waits about one request's time)."""
        if self.lane is None:
            return self.p95_ms
        return self.p95_ms * (1.0 + self.lane.load)


@dataclass
class SignalBoard:
    """Live signals by deployment id; survives snapshot swaps so a new config keeps history."""

    by_id: dict[str, _Signals] = field(default_factory=dict)


class RoutingSnapshot:
    """One compiled config version of one project. Build once; decide many times."""

    def __init__(
        self,
        spec: RouteConfigSpec,
        policy: PolicyView,
        version: str,
        board: SignalBoard | None = None,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.version = version
        self.board = board or SignalBoard()
        router = spec.document.router
        self._latency_ref = router.latency_reference_ms
        self.max_fallbacks = spec.max_fallbacks
        # Deployments sorted by group (stable), so each group is one slice.
        group_order = {name: i for i, name in enumerate(spec.model_names)}
        self.deployments = tuple(sorted(spec.deployments, key=lambda d: group_order[d.model_name]))
        n = len(self.deployments)
        self.index_of = {d.deployment_id: i for i, d in enumerate(self.deployments)}
        self.id_of_state = {d.state_key: d.deployment_id for d in self.deployments}
        """Deployment id by `DeploymentSpec.state_key`: how a breaker or lane reading, keyed by
        state key, finds its deployment here (a tenant's id means nothing in another project)."""
        self.group_names = spec.model_names
        self.group_of = np.fromiter(
            (group_order[d.model_name] for d in self.deployments), np.intp, n
        )
        starts = np.searchsorted(self.group_of, np.arange(len(self.group_names)))
        ends = np.append(starts[1:], n)
        self.group_slices = tuple(slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True))
        self.group_starts = starts.astype(np.intp)
        self._routes = self._build_routes(spec)
        # Static facts as arrays.
        self.price_in = np.array(
            [
                np.nan if d.input_cost_per_token is None else d.input_cost_per_token
                for d in self.deployments
            ]
        )
        self.price_out = np.array(
            [
                np.nan if d.output_cost_per_token is None else d.output_cost_per_token
                for d in self.deployments
            ]
        )
        self.max_input = np.array(
            [d.max_input_tokens or np.iinfo(np.int64).max for d in self.deployments], dtype=np.int64
        )
        self.in_house = np.array([d.in_house for d in self.deployments], dtype=bool)
        self.jurisdictions = tuple(d.jurisdiction for d in self.deployments)
        # Objective values, rows in OBJECTIVES order; latency and reliability rows are live.
        per_1k = (self.price_in + self.price_out) * 500.0  # blended USD per 1k tokens (1:1)
        cost_ref = router.cost_reference_per_1k
        cost_score = np.where(np.isnan(per_1k), 0.5, cost_ref / (cost_ref + np.nan_to_num(per_1k)))
        self.values = np.vstack(
            [
                np.array([d.quality for d in self.deployments]),
                np.zeros(n),
                cost_score,
                np.zeros(n),
                np.where(self.in_house, 1.0, 0.0),
            ]
        )
        self.breaker_open = np.zeros(n, dtype=bool)
        self.saturated = np.zeros(n, dtype=bool)
        self.healthy = np.ones(n, dtype=bool)
        self.p95_ms = np.zeros(n)
        for i, deployment in enumerate(self.deployments):
            signals = self.board.by_id.setdefault(
                deployment.deployment_id, _Signals(p95_ms=deployment.expected_p95_latency_ms)
            )
            self._write_signals(i, signals)
        self._default_tuple = tuple(spec.weights[o] for o in OBJECTIVES)
        self._hinted_defaults = {
            hint: _hinted_weights(self._default_tuple, hint) for hint in HINT_MULTIPLIERS
        }
        self._policy_masks: dict[int, BoolArray] = {}
        self._jurisdiction_masks: dict[frozenset[str], BoolArray] = {}
        self._content_tags = frozenset(spec.content_tags)
        self._content_tag_masks: dict[frozenset[str], BoolArray] = {}
        self._denied_counts: dict[int, int] = {}
        self._candidates: dict[str, IntArray] = {}

    # -- config-time helpers --------------------------------------------------------------

    def _build_routes(self, spec: RouteConfigSpec) -> dict[str, tuple[int, ...]]:
        """Model name or alias -> group indices to try in order: the group, then its chain."""
        index = {name: i for i, name in enumerate(spec.model_names)}
        routes = {
            name: tuple(index[g] for g in dict.fromkeys([name, *spec.fallbacks.get(name, ())]))
            for name in spec.model_names
        }
        for alias, target in spec.aliases.items():
            routes.setdefault(alias, routes[target])
        return routes

    def policy_mask(self, key: int) -> BoolArray:
        """Deployments allowed for a tag key: the Rego table and the YAML content-tag rule."""
        mask = self._policy_masks.get(key)
        if mask is None:
            mask = self.policy.allowed_row(key)[self.group_of]
            self._policy_masks[key] = mask
        return mask

    def denied_count(self, key: int) -> int:
        """How many deployments the policy table denies for a tag key (cached; for metrics)."""
        count = self._denied_counts.get(key)
        if count is None:
            count = int((~self.policy_mask(key)).sum())
            self._denied_counts[key] = count
        return count

    def content_tag_mask(self, tags: frozenset[str]) -> BoolArray | None:
        """`policies.content_tags`: a tag listed there confines the step to its models (to the
        intersection, when several listed tags apply). None when no listed tag applies."""
        relevant = tags & self._content_tags
        if not relevant:
            return None
        mask = self._content_tag_masks.get(relevant)
        if mask is None:
            allowed = frozenset.intersection(*(self.spec.content_tags[t] for t in relevant))
            groups = np.array([name in allowed for name in self.group_names], dtype=bool)
            mask = groups[self.group_of]
            self._content_tag_masks[relevant] = mask
        return mask

    def jurisdiction_mask(self, allowed: frozenset[str]) -> BoolArray:
        mask = self._jurisdiction_masks.get(allowed)
        if mask is None:
            mask = np.array([j in allowed for j in self.jurisdictions], dtype=bool)
            self._jurisdiction_masks[allowed] = mask
        return mask

    # -- live signals -----------------------------------------------------------------------

    def update_signals(
        self,
        deployment_id: str,
        *,
        p95_ms: float | None = None,
        ttft_ms: float | None = None,
        error_rate: float | None = None,
        breaker_open: bool | None = None,
        saturated: bool | None = None,
        lane: LaneSaturation | None = None,
        samples: int = 0,
    ) -> None:
        """Record live signals for a deployment; decisions see them immediately. A value that
        is not a finite number is ignored (NaN would otherwise score NaN, which argmax picks)."""
        signals = self.board.by_id.get(deployment_id)
        index = self.index_of.get(deployment_id)
        if signals is None or index is None:
            return
        if p95_ms is not None and math.isfinite(p95_ms):
            signals.p95_ms = p95_ms
        if ttft_ms is not None and math.isfinite(ttft_ms):
            signals.ttft_ms = ttft_ms
        if error_rate is not None and math.isfinite(error_rate):
            signals.error_rate = min(max(error_rate, 0.0), 1.0)
        if breaker_open is not None:
            signals.breaker_open = breaker_open
        if saturated is not None:
            signals.saturated = saturated
        if lane is not None:
            signals.lane = lane
        signals.samples += samples
        self._write_signals(index, signals)

    def _write_signals(self, i: int, signals: _Signals) -> None:
        forecast = signals.forecast_p95_ms
        self.p95_ms[i] = forecast
        self.values[LATENCY, i] = self._latency_ref / (self._latency_ref + forecast)
        self.values[RELIABILITY, i] = 1.0 - signals.error_rate
        self.breaker_open[i] = signals.breaker_open
        self.saturated[i] = signals.saturated
        self.healthy[i] = not (signals.breaker_open or signals.saturated)

    def signals(self, index: int) -> _Signals:
        return self.board.by_id[self.deployments[index].deployment_id]

    # -- the decision -----------------------------------------------------------------------

    def effective_weights(self, request: RouteRequest) -> FloatArray:
        """Normalised weights after the step hint; computed once per distinct input (cached)."""
        if request.weights is None:
            weights = self._hinted_defaults.get(request.hint)
            if weights is not None:
                return weights
        return _hinted_weights(request.weights or self._default_tuple, request.hint)

    def eligible(self, request: RouteRequest, span: slice) -> BoolArray:
        """Eligibility of the deployments in `span` (a fresh array)."""
        mask = self.policy_mask(self.policy.tag_key(request.tags))[span] & self.healthy[span]
        if request.tags:
            tag_mask = self.content_tag_mask(request.tags)
            if tag_mask is not None:
                mask &= tag_mask[span]
        if request.allowed_jurisdictions:
            mask &= self.jurisdiction_mask(request.allowed_jurisdictions)[span]
        if request.require_in_house:
            mask &= self.in_house[span]
        if request.max_cost_usd > 0:
            # NaN (unknown price) compares False: fail closed when a budget is set.
            mask &= self.projected_cost(request, span) <= request.max_cost_usd
        if request.prompt_tokens:
            mask &= self.max_input[span] >= request.prompt_tokens
        if request.max_p95_ms > 0:
            mask &= self.p95_ms[span] <= request.max_p95_ms
        if request.excluded_ids:
            for deployment_id in request.excluded_ids:
                index = self.index_of.get(deployment_id)
                if index is not None and span.start <= index < span.stop:
                    mask[index - span.start] = False
        return mask

    def projected_cost(self, request: RouteRequest, span: slice) -> FloatArray:
        cost: FloatArray = (
            self.price_in[span] * request.prompt_tokens
            + self.price_out[span] * request.completion_tokens
        )
        return cost

    def masked_scores(self, request: RouteRequest, weights: FloatArray, span: slice) -> FloatArray:
        scores: FloatArray = weights @ self.values[:, span]
        return np.where(self.eligible(request, span), scores, -np.inf)

    def decide(self, request: RouteRequest) -> Decision:
        weights = self.effective_weights(request)
        if request.model:
            route = self._routes.get(request.model)
            if route is None:
                raise UnknownModel(request.model)
            return self._decide_along(request, weights, route)
        return self._decide_overall(request, weights)

    def _decide_along(
        self, request: RouteRequest, weights: FloatArray, route: tuple[int, ...]
    ) -> Decision:
        winner = -1
        fallbacks: list[int] = []
        for group in route:
            span = self.group_slices[group]
            scores = self.masked_scores(request, weights, span)
            best = int(scores.argmax())
            if scores[best] == -np.inf:
                continue
            if winner < 0:
                winner = span.start + best
                # One more replica of the same group first, as LiteLLM retries within a group.
                scores[best] = -np.inf
                second = int(scores.argmax())
                if scores[second] > -np.inf:
                    fallbacks.append(span.start + second)
            else:
                fallbacks.append(span.start + best)
        return Decision(winner, tuple(fallbacks[: self.max_fallbacks]), weights, self, request)

    def _decide_overall(self, request: RouteRequest, weights: FloatArray) -> Decision:
        scores = self.masked_scores(request, weights, slice(0, len(self.deployments)))
        winner = int(scores.argmax()) if len(scores) else -1
        if winner < 0 or scores[winner] == -np.inf:
            return Decision(-1, (), weights, self, request)
        fallbacks: tuple[int, ...] = ()
        if self.max_fallbacks:
            # Fallbacks from other groups first (a different model survives what kills one),
            # best group first: per-group maxima, then each chosen group's best deployment.
            group_best = np.maximum.reduceat(scores, self.group_starts)
            group_best[self.group_of[winner]] = -np.inf
            # Stable, so groups tied on score keep the config's order on every CPU (the default
            # sort is not stable, and data planes on other hardware decide the same way).
            order = np.argsort(-group_best, kind="stable")[: self.max_fallbacks]
            fallbacks = tuple(
                self.group_slices[g].start + int(np.argmax(scores[self.group_slices[g]]))
                for g in order
                if group_best[g] > -np.inf
            )
        return Decision(winner, fallbacks, weights, self, request)

    # -- explanation ------------------------------------------------------------------------

    def exclusions(self, request: RouteRequest, index: int) -> list[Exclusion]:
        """Every reason deployment `index` is not eligible for `request` (empty if eligible)."""
        reasons: list[Exclusion] = []
        one = slice(index, index + 1)
        tag_mask = self.content_tag_mask(request.tags) if request.tags else None
        if not self.policy_mask(self.policy.tag_key(request.tags))[index] or (
            tag_mask is not None and not tag_mask[index]
        ):
            reasons.append(Exclusion.POLICY_DENIED)
        if (
            request.allowed_jurisdictions
            and self.jurisdictions[index] not in request.allowed_jurisdictions
        ) or (request.require_in_house and not self.in_house[index]):
            reasons.append(Exclusion.JURISDICTION)
        if self.breaker_open[index]:
            reasons.append(Exclusion.BREAKER_OPEN)
        if self.saturated[index]:
            reasons.append(Exclusion.SATURATED)
        if (
            request.max_cost_usd > 0
            and not self.projected_cost(request, one)[0] <= request.max_cost_usd
        ):
            reasons.append(Exclusion.BUDGET_EXCEEDED)
        if request.prompt_tokens and self.max_input[index] < request.prompt_tokens:
            reasons.append(Exclusion.CONTEXT_WINDOW)
        if request.max_p95_ms > 0 and self.p95_ms[index] > request.max_p95_ms:
            reasons.append(Exclusion.SLO_FORECAST_MISS)
        if self.deployments[index].deployment_id in request.excluded_ids:
            reasons.append(Exclusion.EXCLUDED_BY_CALLER)
        return reasons

    def routes_model(self, model: str) -> bool:
        """Whether `model` names a model group or alias of this snapshot."""
        return model in self._routes

    def candidate_indices(self, request: RouteRequest) -> IntArray:
        """The deployments a request considers, in route order (cached per route; read-only)."""
        indices = self._candidates.get(request.model)
        if indices is None:
            if request.model:
                route = self._routes.get(request.model)
                if route is None:
                    raise UnknownModel(request.model)
                slices = [self.group_slices[g] for g in route]
                indices = np.concatenate([np.arange(s.start, s.stop) for s in slices])
            else:
                indices = np.arange(len(self.deployments))
            indices.setflags(write=False)
            self._candidates[request.model] = indices
        return indices


@functools.lru_cache(maxsize=1024)
def _hinted_weights(weights: tuple[float, ...], hint: str) -> FloatArray:
    """Weights scaled by the step hint and normalised; read-only because it is shared."""
    multipliers = HINT_MULTIPLIERS.get(hint)
    if multipliers is None:
        raise ValueError(f"unknown step hint {hint!r}")
    base = _normalise(weights)
    result = _normalise(float(w) * m for w, m in zip(base, multipliers, strict=True))
    result.setflags(write=False)
    return result


def _normalise(weights: Iterable[float]) -> FloatArray:
    array = np.array(tuple(weights), dtype=np.float64)
    if (array < 0).any():
        raise ValueError("objective weights must not be negative")
    total = float(array.sum())
    if total == 0:
        return np.full(len(OBJECTIVES), 1.0 / len(OBJECTIVES))
    normalised: FloatArray = array / total
    return normalised


@functools.lru_cache(maxsize=256)
def parse_objectives_header(value: str) -> tuple[float, float, float, float, float]:
    """`x-maestro-objectives`: `quality,latency,cost` (listed objectives count equally, others
    not at all) or `quality=0.6,cost=0.4` (explicit weights). Raises ValueError when malformed.

    Callers repeat a handful of values, so each is parsed once (a bounded cache: a caller
    sending a new value on every request costs at most 256 entries; errors are not cached)."""
    weights = dict.fromkeys(OBJECTIVES, 0.0)
    for part in value.split(","):
        name, _, weight = part.strip().partition("=")
        objective = OBJECTIVE_ALIASES.get(name.strip().lower())
        if objective is None:
            raise ValueError(f"unknown objective {name.strip()!r}; known: {', '.join(OBJECTIVES)}")
        try:
            number = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"weight of {name.strip()!r} is not a number") from None
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"weight of {name.strip()!r} must be a finite number >= 0")
        weights[objective] += number
    return (
        weights["quality"],
        weights["latency"],
        weights["cost"],
        weights["reliability"],
        weights["sovereignty"],
    )
