"""Every PromQL expression of the observability pack, and the metrics and labels they use.

The dashboards (grafana/*.json) and the rules (prometheus/maestro-*.yaml, the unit tests
excepted) query Maestro's metrics by name and label. `pack_uses()` lists each (metric, label
names) pair they use, so a test can scrape a running Maestro and check that every one exists
(tests/test_observability_live.py), and `pack_expressions()` lists the expressions themselves,
so a test can have promtool parse them (tests/test_observability_pack.py).

A metric is a name matching `maestro_...`, `gen_ai_...` or `rpc_...` (recording rules'
`level:metric:operation` names are not scraped and are skipped). Its labels are the label names
of its own matchers, of every `by (...)`/`without (...)` of an aggregation around it, and of the
`on (...)`/`ignoring (...)`/`group_left (...)`/`group_right (...)` modifiers in the same
parenthesised expression. Names keep their `_bucket`/`_sum`/`_count` suffix (what the scrape
shows); `histogram_base()` strips it where a histogram's family is looked up.

No third-party imports beyond PyYAML, so a test or a script can use it anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PACK = Path(__file__).resolve().parent
DASHBOARDS = PACK / "grafana"
RULE_FILES = (
    PACK / "prometheus" / "maestro-recording.yaml",
    PACK / "prometheus" / "maestro-alerts.yaml",
)

METRIC_NAME = re.compile(r"(?:maestro|gen_ai|rpc)_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
GROUPING = frozenset({"by", "without"})
VECTOR_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
MATCH_OPERATORS = frozenset({"=", "!=", "=~", "!~"})

GRAFANA_DURATIONS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}
"""Values Grafana's built-in variables take, for checking a panel's query outside Grafana."""


@dataclass(frozen=True, order=True)
class Use:
    """A metric and the label names an expression needs on it."""

    metric: str
    labels: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.metric}{{{','.join(self.labels)}}}"


@dataclass(frozen=True)
class Expression:
    """A PromQL expression of the pack and where it is."""

    source: str
    promql: str


def histogram_base(name: str) -> str:
    """The histogram family of a `_bucket`, `_sum` or `_count` series name; else the name."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


# --- where the expressions are ------------------------------------------------------------


def substitute_grafana_variables(expr: str) -> str:
    """`expr` with Grafana's variables replaced by values PromQL accepts: built-in intervals
    by durations, dashboard variables (used in regex matchers) by `.*`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return GRAFANA_DURATIONS.get(name, ".*")

    return re.sub(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)", value, expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.+)\)\s*$", re.S)


def variable_promql(query: str) -> str | None:
    """The PromQL a Prometheus template variable's query amounts to: `label_values(sel, l)`
    reads label `l` of the series `sel` selects, which is `group by (l) (sel)`;
    `query_result(q)` runs `q`. None for queries that are not PromQL (`label_names()`, a
    bare `label_values(l)` over every series)."""
    matched = _LABEL_VALUES.match(query)
    if matched:
        selector, label = matched.groups()
        return f"group by ({label}) ({selector})" if selector else None
    matched = _QUERY_RESULT.match(query)
    return matched.group(1) if matched else None


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row holds its panels


def dashboard_expressions(path: Path) -> list[Expression]:
    """The PromQL of every panel target and every query variable of a dashboard JSON file,
    Grafana variables substituted."""
    board = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for variable in (board.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        promql = variable_promql(text)
        if promql is not None:
            source = f"{path.name}: variable {variable['name']}"
            out.append(Expression(source, substitute_grafana_variables(promql)))
    for panel in _panels(board.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                source = f"{path.name}: panel {panel.get('title')!r} target {target.get('refId')}"
                out.append(Expression(source, substitute_grafana_variables(target["expr"])))
    return out


def rule_expressions(path: Path) -> list[Expression]:
    """The `expr` of every recording and alerting rule of a Prometheus rules file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for group in data.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            out.append(Expression(f"{path.name}: {name}", str(rule["expr"])))
    return out


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def pack_expressions() -> list[Expression]:
    """Every PromQL expression of the pack's dashboards and rules."""
    out: list[Expression] = []
    for board in dashboard_files():
        out.extend(dashboard_expressions(board))
    for rules in RULE_FILES:
        out.extend(rule_expressions(rules))
    return out


# --- what they use ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident", "string", "number", "op"
    text: str


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)[a-zA-Z0-9]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^(){}\[\],=<>@:])
    """,
    re.X,
)


def _tokens(expr: str) -> list[_Token]:
    out = []
    position = 0
    while position < len(expr):
        matched = _TOKEN.match(expr, position)
        if matched is None:
            raise ValueError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        kind = matched.lastgroup or ""
        if kind != "space":
            out.append(_Token(kind, matched.group()))
        position = matched.end()
    return out


def _closing(tokens: list[_Token], opening: int) -> int:
    """Index of the bracket closing the one at `opening`."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    want = pairs[tokens[opening].text]
    depth = 0
    for index in range(opening, len(tokens)):
        text = tokens[index].text if tokens[index].kind == "op" else ""
        if text == tokens[opening].text:
            depth += 1
        elif text == want:
            depth -= 1
            if depth == 0:
                return index
    raise ValueError("unbalanced brackets")


def _label_list(tokens: list[_Token], opening: int) -> tuple[set[str], int]:
    """The label names of `( a, b )` at `opening`, and the index after it."""
    closing = _closing(tokens, opening)
    names = {t.text for t in tokens[opening + 1 : closing] if t.kind == "ident"}
    return names, closing + 1


def _matcher_labels(tokens: list[_Token], opening: int) -> tuple[set[str], int]:
    """The label names of the matchers `{a="x", b=~"y"}` at `opening`, and the index after."""
    closing = _closing(tokens, opening)
    names = set()
    for index in range(opening + 1, closing - 1):
        if tokens[index].kind in ("ident", "string") and tokens[index + 1].text in MATCH_OPERATORS:
            names.add(tokens[index].text.strip("\"'`"))
    return names, closing + 1


def _is(tokens: list[_Token], index: int, end: int, text: str) -> bool:
    return index < end and tokens[index].kind == "op" and tokens[index].text == text


def _walk(tokens: list[_Token], start: int, end: int) -> list[tuple[str, set[str]]]:
    """(metric, label names) of every selector in tokens[start:end]."""
    found: list[tuple[str, set[str]]] = []
    matching: set[str] = set()
    index = start
    while index < end:
        token = tokens[index]
        if token.kind == "ident":
            name = token.text
            if name in AGGREGATIONS and (
                _is(tokens, index + 1, end, "(")
                or (index + 1 < end and tokens[index + 1].text in GROUPING)
            ):
                grouping: set[str] = set()
                index += 1
                if tokens[index].text in GROUPING:
                    grouping, index = _label_list(tokens, index + 1)
                closing = _closing(tokens, index)
                inner = _walk(tokens, index + 1, closing)
                index = closing + 1
                if index < end and tokens[index].text in GROUPING:
                    more, index = _label_list(tokens, index + 1)
                    grouping |= more
                for _, labels in inner:
                    labels |= grouping
                found.extend(inner)
                continue
            if name in VECTOR_MATCHING and _is(tokens, index + 1, end, "("):
                labels, index = _label_list(tokens, index + 1)
                matching |= labels
                continue
            if _is(tokens, index + 1, end, "("):  # a function call
                closing = _closing(tokens, index + 1)
                found.extend(_walk(tokens, index + 2, closing))
                index = closing + 1
                continue
            index += 1
            if METRIC_NAME.fullmatch(name):
                labels = set()
                if _is(tokens, index, end, "{"):
                    labels, index = _matcher_labels(tokens, index)
                found.append((name, labels))
            continue
        if _is(tokens, index, end, "("):
            closing = _closing(tokens, index)
            found.extend(_walk(tokens, index + 1, closing))
            index = closing + 1
            continue
        if _is(tokens, index, end, "{"):  # a selector without a name: {__name__=...}
            _, index = _matcher_labels(tokens, index)
            continue
        if _is(tokens, index, end, "["):  # a range or subquery: durations only
            index = _closing(tokens, index) + 1
            continue
        index += 1
    for _, labels in found:
        labels |= matching
    return found


def metric_uses(expr: str) -> set[Use]:
    """The (metric, label names) pairs a PromQL expression uses; `__name__` is not a label."""
    tokens = _tokens(expr)
    return {
        Use(metric, tuple(sorted(labels - {"__name__"})))
        for metric, labels in _walk(tokens, 0, len(tokens))
    }


def uses_of(expressions: Iterable[Expression]) -> dict[Use, list[str]]:
    """Each use, with the sources of the expressions that make it."""
    out: dict[Use, list[str]] = {}
    for expression in expressions:
        for use in metric_uses(expression.promql):
            out.setdefault(use, []).append(expression.source)
    return dict(sorted(out.items()))


LANE_ONLY = frozenset(
    {
        # Exported by the data plane from a serving lane's `/lane-status` (queue, running
        # batch, KV cache, saturated), so only once a routing config names a
        # `maestro_lane/...` deployment and its lane answers. `maestro up` starts no lane.
        "maestro_lane_batch_size",
        "maestro_lane_kv_cache_usage_ratio",
        "maestro_lane_queue_depth",
        "maestro_lane_saturated",
    }
)
"""Metrics the pack queries that only a running serving lane makes appear."""


def pack_uses() -> dict[Use, list[str]]:
    """Every (metric, label names) pair the pack's dashboards and rules use, with where."""
    return uses_of(pack_expressions())


# --- checking a scrape ----------------------------------------------------------------------


def scraped_series(exposition: str) -> dict[str, list[frozenset[str]]]:
    """Sample name -> the label-name sets of its series, from Prometheus text exposition."""
    out: dict[str, list[frozenset[str]]] = {}
    for line in exposition.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        matched = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s", line)
        if matched is None:
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', matched.group(2) or ""))
        out.setdefault(matched.group(1), []).append(labels)
    return out


TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every series it scrapes (and the collector's exporter from the
resource's service.instance.id and service.name): never in an exposition, always in a query."""


def missing_uses(uses: Iterable[Use], exposition: str) -> list[tuple[Use, str]]:
    """The uses a scrape does not satisfy, each with why: no series of that name, or none of
    its series carries every label used (the label sets seen are shown; `TARGET_LABELS` are
    the scraper's to add)."""
    series = scraped_series(exposition)
    out = []
    for use in uses:
        label_sets = series.get(use.metric)
        if not label_sets:
            family = histogram_base(use.metric)
            hint = (
                f" (the histogram {family} has no {use.metric[len(family) :]} series)"
                if family != use.metric and any(name.startswith(family) for name in series)
                else ""
            )
            out.append((use, f"no series named {use.metric}{hint}"))
        elif not any(set(use.labels) - TARGET_LABELS <= labels for labels in label_sets):
            seen = sorted({",".join(sorted(labels)) for labels in label_sets})
            out.append((use, f"no series with labels {list(use.labels)}; seen: {seen}"))
    return out


if __name__ == "__main__":  # pragma: no cover - a listing for people
    for use, sources in pack_uses().items():
        print(f"{use}  <- {sources[0]}" + (f" (+{len(sources) - 1})" if len(sources) > 1 else ""))
