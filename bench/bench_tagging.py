"""Content tagging cost per KB of prompt (issue 3, scope 4).

Run by explicit path (the repo's testpaths is tests/):

    .venv/bin/pytest bench/bench_tagging.py --benchmark-only -q -p no:cacheprovider

Cases: (a) clean English prose, 1 KB / 8 KB / 64 KB; (b) prose with a few PII items; (c)
digit-heavy text (log lines, a numeric table), 8 KB; and, as the baseline the detectors replaced,
`phonenumbers.PhoneNumberMatcher` over the same 8 KB of logs for the four default regions. After
the run a table of microseconds per KB (median and min over rounds) is printed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import phonenumbers
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from maestro.routing.tagging import ContentTagger

KB = 1024
TAGGER = ContentTagger()

_SENTENCES = (
    "Routing decisions weigh quality, latency, cost, reliability and data sovereignty together.",
    "The committee reviewed the proposal on Tuesday and asked for a clearer rationale.",
    "Meanwhile the team kept shipping small improvements, measured their effect and wrote it down.",
    "A draft step favours cheap and fast models; the final answer favours the best one.",
    "In 2023 the platform served 12 regions, and by spring it had grown to 31 of them.",
    "Nobody wants a fallback chain that silently sends confidential text to the wrong place.",
    "She summarised the meeting: three risks, two open questions and one firm decision.",
    "Please rewrite the introduction so that it reads well for a non-technical audience.",
    "The old router picked one strategy at a time; this one explains every choice it makes.",
    "Latency budgets are tight, so every microsecond spent before the model call matters.",
)
_PII_ITEMS = (
    "You can reach me at maria.gonzalez@example.com if anything changes.",
    "My direct line is +44 20 7946 0958 during office hours.",
    "Please refund the card 4111 1111 1111 1111 that I used last week.",
    "Wire it to DE89 3704 0044 0532 0130 00 by the end of the month.",
    "The VPN gateway at 203.0.113.42 dropped my session twice.",
)


def _prose(size: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(_SENTENCES)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


def _prose_with_pii(size: int) -> str:
    """Prose with the five PII items spread through it (at least one of them for 1 KB)."""
    text = _prose(size)
    count = max(1, min(len(_PII_ITEMS), size // 1600))
    step = len(text) // (count + 1)
    pieces: list[str] = []
    at = 0
    for index in range(count):
        cut = text.find(". ", at + step) + 2  # after a sentence
        pieces += [text[at:cut], _PII_ITEMS[index], " "]
        at = cut
    pieces.append(text[at:])
    return "".join(pieces)[: size + 100]


def _logs(size: int, seed: int = 11) -> str:
    rng = random.Random(seed)
    lines: list[str] = []
    length = 0
    while length < size:
        line = (
            f"2024-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z INFO route.choose "
            f"req={rng.randint(10**9, 10**10)} latency_us={rng.randint(5, 900)} "
            f"bytes={rng.randint(100, 10**6)} status=200 peer=10.{rng.randint(0, 255)}."
            f"{rng.randint(0, 255)}.{rng.randint(1, 254)}\n"
        )
        lines.append(line)
        length += len(line)
    return "".join(lines)[:size]


def _table(size: int, seed: int = 13) -> str:
    rng = random.Random(seed)
    rows = ["| id | qty | unit price | total | sku | updated |\n"]
    length = len(rows[0])
    while length < size:
        qty = rng.randint(1, 500)
        price = rng.randint(100, 99999) / 100
        row = (
            f"| {rng.randint(10000, 99999)} | {qty} | {price:.2f} | {qty * price:.2f} | "
            f"{rng.randint(10**11, 10**12)} | "
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} |\n"
        )
        rows.append(row)
        length += len(row)
    return "".join(rows)[:size]


CASES: dict[str, str] = {
    "a_prose_clean_1kb": _prose(1 * KB),
    "a_prose_clean_8kb": _prose(8 * KB),
    "a_prose_clean_64kb": _prose(64 * KB),
    "b_prose_with_pii_1kb": _prose_with_pii(1 * KB),
    "b_prose_with_pii_8kb": _prose_with_pii(8 * KB),
    "b_prose_with_pii_64kb": _prose_with_pii(64 * KB),
    "c_digit_heavy_logs_8kb": _logs(8 * KB),
    "c_digit_heavy_table_8kb": _table(8 * KB),
}


@pytest.fixture(scope="module")
def per_kb(request: pytest.FixtureRequest) -> Iterator[dict[str, tuple[float, float]]]:
    """Collects (median, min) microseconds per KB per case and prints them after the module."""
    results: dict[str, tuple[float, float]] = {}
    yield results
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not results:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("-", "content tagging: microseconds per KB of prompt")
        reporter.write_line(f"{'case':<44}{'median':>12}{'min':>12}")
        for name, (median, minimum) in results.items():
            reporter.write_line(f"{name:<44}{median:>9.2f} us{minimum:>9.2f} us")


def _measure(
    benchmark: BenchmarkFixture,
    per_kb: dict[str, tuple[float, float]],
    name: str,
    text: str,
    run: Callable[[], object],
) -> object:
    benchmark.extra_info["kb"] = len(text) / KB
    result = benchmark(run)
    stats = getattr(benchmark.stats, "stats", None)  # None when benchmarks are disabled
    if stats is not None:
        kb = len(text) / KB
        per_kb[name] = (stats.median * 1e6 / kb, stats.min * 1e6 / kb)
    return result


@pytest.mark.parametrize("case", [name for name in CASES if name.startswith("a_")])
def test_tags_clean_prose(
    benchmark: BenchmarkFixture, per_kb: dict[str, tuple[float, float]], case: str
) -> None:
    text = CASES[case]
    result = _measure(benchmark, per_kb, f"tags {case}", text, lambda: TAGGER.tags([text]))
    assert result == frozenset()


@pytest.mark.parametrize("case", [name for name in CASES if name.startswith("b_")])
def test_tags_prose_with_pii(
    benchmark: BenchmarkFixture, per_kb: dict[str, tuple[float, float]], case: str
) -> None:
    text = CASES[case]
    result = _measure(benchmark, per_kb, f"tags {case}", text, lambda: TAGGER.tags([text]))
    assert isinstance(result, frozenset)
    assert "pii" in result


@pytest.mark.parametrize("case", [name for name in CASES if name.startswith("c_")])
def test_tags_digit_heavy(
    benchmark: BenchmarkFixture, per_kb: dict[str, tuple[float, float]], case: str
) -> None:
    text = CASES[case]
    _measure(benchmark, per_kb, f"tags {case}", text, lambda: TAGGER.tags([text]))


@pytest.mark.parametrize("case", ["b_prose_with_pii_8kb", "c_digit_heavy_logs_8kb"])
def test_findings_full_scan(
    benchmark: BenchmarkFixture, per_kb: dict[str, tuple[float, float]], case: str
) -> None:
    """`findings` validates every candidate (`tags` stops once a kind is found)."""
    text = CASES[case]
    _measure(benchmark, per_kb, f"findings {case}", text, lambda: TAGGER.findings(text))


def test_baseline_phonenumbers_matcher_logs(
    benchmark: BenchmarkFixture, per_kb: dict[str, tuple[float, float]]
) -> None:
    """The library's own matcher (phones only) on the same logs, for the four default regions."""
    text = CASES["c_digit_heavy_logs_8kb"]

    def match_all() -> int:
        return sum(
            1
            for region in ("US", "GB", "DE", "FR")
            for _ in phonenumbers.PhoneNumberMatcher(text, region)
        )

    _measure(benchmark, per_kb, "baseline PhoneNumberMatcher logs_8kb", text, match_all)
