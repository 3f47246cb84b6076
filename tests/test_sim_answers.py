"""Simulated quality: the simulated provider answering eval tasks from an answer key.

Every test runs a real `SimProvider` on 127.0.0.1:0 over a small synthetic key written to a temp
file. Which tasks are answered right is fixed by the documented draws (`answers.draw`), so most
tests compare with them exactly; rates are also checked against a binomial tolerance.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from structlog.testing import capture_logs

from maestro.data_plane.sim import (
    FaultProfile,
    Faults,
    ProfileError,
    SimProvider,
    completion_text,
    load_profile,
    parse_profile,
)
from maestro.data_plane.sim.answers import INVENTED_SOURCES, INVENTED_YEARS, draw
from maestro.data_plane.sim.profile import AnswerProfile, PromptQuality, Quality

LABELS = ("positive", "negative", "neutral", "mixed")
CITIES = ("Oslo", "Lima", "Quito", "Hanoi", "Accra", "Riga", "Bern", "Doha")
KINDS = ("arithmetic", "classification", "qa", "extraction")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
    for name in ("get_weather", "get_time")
]
DEMO_PROFILE = (
    Path(__file__).resolve().parents[1] / "data_plane/maestro/data_plane/sim/demo-profile.yaml"
)


def text_rows(n: int = 400) -> list[dict[str, Any]]:
    """Tasks of four kinds: numbers, labels, a choice between two cities and identifiers."""
    rows = []
    for i in range(n):
        kind = KINDS[i % 4]
        city, other = CITIES[(i // 4) % len(CITIES)], CITIES[(i // 4 + 3) % len(CITIES)]
        expected, prompt = {
            "arithmetic": (str(i * 7 + 3) if i % 8 else f"{i / 8 + 0.25:.2f}", "Compute it."),
            "classification": (LABELS[(i // 4) % len(LABELS)], "Classify the review."),
            "qa": (city, f"Which office opened first, {city} or {other}?"),
            "extraction": (f"INV-{i:05d}", "Which invoice was paid?"),
        }[kind]
        rows.append(
            {
                "id": f"t{i:04d}",
                "input": f"[{i}] {prompt}",
                "expected": expected,
                "context": f"The {city} office opened before the {other} office."
                if kind == "qa"
                else f"Invoice INV-{i:05d} was paid; INV-{i + 1:05d} was not."
                if kind == "extraction"
                else None,
                "tags": ["synthetic"],
                "slices": {"kind": kind, "difficulty": "easy"},
                "unknown_field": {"other_city": other},
            }
        )
    return rows


def names_invented(answer: str, row: dict[str, Any]) -> set[str]:
    """The capitalised words of `answer` that the row never uses, sentence-starting function
    words aside: what a lexical hallucination grader flags."""
    words = {word.casefold() for word in re.findall(r"[A-Za-z][A-Za-z'\-]*", json.dumps(row))}
    names = {name.casefold() for name in re.findall(r"\b[A-Z][A-Za-z'\-]+\b", answer)}
    return names - words - {"it", "the", "none"}


def tool_rows(n: int = 200) -> list[dict[str, Any]]:
    return [
        {
            "id": f"tool{i:04d}",
            "input": [
                {"role": "system", "content": "Use the tools."},
                {"role": "user", "content": f"What will the weather be in {CITIES[i % 8]}? ({i})"},
            ],
            "tools": TOOLS,
            "expected_tool_calls": [
                {"name": "get_weather", "arguments": {"city": CITIES[i % 8], "days": 1 + i % 5}}
            ],
            "slices": {"kind": "tool_use"},
        }
        for i in range(n)
    ]


def write_key(path: Path, rows: Sequence[object], extra_lines: Sequence[str] = ()) -> Path:
    lines = [json.dumps(row) for row in rows]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return path


def profile_for(
    *key_files: Path,
    prompts: Sequence[PromptQuality] = (),
    per_model: dict[str, Quality] | None = None,
    faults: Faults | None = None,
    **quality: float,
) -> FaultProfile:
    return FaultProfile(
        strict_models=False,
        default=faults or Faults(),
        answers=AnswerProfile(
            key_files=tuple(str(path) for path in key_files),
            default=Quality(**quality),
            per_model=per_model or {},
            prompts=tuple(prompts),
        ),
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_key(tmp_path / "golden.jsonl", [*text_rows(), *tool_rows()])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def messages_for(content: str, system: str | None = None) -> list[ChatCompletionMessageParam]:
    head: list[ChatCompletionMessageParam] = (
        [{"role": "system", "content": system}] if system is not None else []
    )
    return [*head, {"role": "user", "content": content}]


async def ask(
    http: aiohttp.ClientSession,
    sim: SimProvider,
    content: str,
    *,
    model: str = "sim-1",
    system: str | None = None,
    expect_status: int = 200,
    **extra: Any,
) -> dict[str, Any]:
    body = {"model": model, "messages": messages_for(content, system), **extra}
    async with http.post(f"{sim.base_url}/chat/completions", json=body) as response:
        assert response.status == expect_status, await response.text()
        reply: dict[str, Any] = await response.json()
        return reply


def content_of(reply: dict[str, Any]) -> str:
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


async def answers(
    http: aiohttp.ClientSession,
    sim: SimProvider,
    rows: Sequence[dict[str, Any]],
    **options: Any,
) -> dict[str, str]:
    """The text the simulator answers each row's input with, by task id."""
    return {row["id"]: content_of(await ask(http, sim, row["input"], **options)) for row in rows}


async def drain(
    stream: openai.AsyncStream[ChatCompletionChunk],
    received: list[str],
    finishes: list[str | None],
) -> None:
    """Read `stream` to its end (or its error), keeping the content and finish reasons seen."""
    async for chunk in stream:
        received.extend(choice.delta.content or "" for choice in chunk.choices)
        finishes.extend(choice.finish_reason for choice in chunk.choices)


def within_binomial(hits: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(hits / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


async def test_accuracy_over_many_tasks_matches_the_draws_and_the_configured_rate(
    key: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows()
    per_model = {"strong": Quality(accuracy=0.95)}
    async with SimProvider(profile_for(key, accuracy=0.8, per_model=per_model)) as sim:
        for model, accuracy in (("sim-1", 0.8), ("strong", 0.95)):
            got = await answers(http, sim, rows, model=model)
            right = {row["id"] for row in rows if got[row["id"]] == row["expected"]}

            assert right == {
                row["id"] for row in rows if draw(model, row["id"], "answer") < accuracy
            }
            assert within_binomial(len(right), len(rows), accuracy)


async def test_same_model_and_task_answer_the_same_across_requests_and_seeds(
    key: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows(60)
    async with SimProvider(profile_for(key, accuracy=0.5)) as sim:
        first = await answers(http, sim, rows)
        again = await answers(http, sim, rows)
        seeded = [await answers(http, sim, rows, seed=seed) for seed in (1, 2, 3)]

    assert first == again == seeded[0] == seeded[1] == seeded[2]
    assert {row["id"] for row in rows if first[row["id"]] != row["expected"]}  # some are wrong


async def test_prompt_version_delta_flips_exactly_the_tasks_drawn_between_new_and_old_accuracy(
    key: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows()
    regressed = PromptQuality(system_contains="[planted-regression]", accuracy_delta=-0.05)
    async with SimProvider(profile_for(key, accuracy=0.9, prompts=[regressed])) as sim:
        before = await answers(http, sim, rows, system="You answer. v1")
        after = await answers(http, sim, rows, system="You answer. v2 [planted-regression]")

    right_before = {row["id"] for row in rows if before[row["id"]] == row["expected"]}
    right_after = {row["id"] for row in rows if after[row["id"]] == row["expected"]}
    flipped = {row["id"] for row in rows if 0.85 <= draw("sim-1", row["id"], "answer") < 0.9}
    assert flipped  # the tolerance below would be vacuous otherwise
    assert right_before - right_after == flipped
    assert right_after <= right_before  # no wrong task turned right
    unchanged = [row["id"] for row in rows if row["id"] not in flipped]
    assert all(before[task] == after[task] for task in unchanged)  # same wrong answers too


async def test_first_matching_prompt_entry_applies_and_deltas_clamp(
    key: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows(80)
    prompts = [
        PromptQuality(system_contains="[broken]", accuracy_delta=-1.0),
        PromptQuality(system_contains="[broken", accuracy_delta=1.0),
    ]
    async with SimProvider(profile_for(key, accuracy=0.7, prompts=prompts)) as sim:
        broken = await answers(http, sim, rows, system="x [broken] y")
        boosted = await answers(http, sim, rows, system="x [broken-ish] y")

    assert all(broken[row["id"]] != row["expected"] for row in rows)
    assert all(boosted[row["id"]] == row["expected"] for row in rows)


async def test_wrong_answers_differ_from_expected_stay_numeric_and_invent_no_names(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows()
    lonely = {"id": "lonely", "input": "The only task of its kind", "expected": "Yes",
              "slices": {"kind": "singleton"}}  # fmt: skip
    key = write_key(tmp_path / "key.jsonl", [*rows, lonely])
    async with SimProvider(profile_for(key, accuracy=0.0)) as sim:
        got = await answers(http, sim, [*rows, lonely])
        other_model = await answers(http, sim, rows, model="sim-2")

    for row in rows:
        wrong, expected, kind = got[row["id"]], row["expected"], row["slices"]["kind"]
        assert wrong.casefold() != expected.casefold()
        assert not names_invented(wrong, row), (expected, wrong)  # an error, not a hallucination
        if NUMBER.fullmatch(expected):
            assert NUMBER.fullmatch(wrong), (expected, wrong)
            assert wrong.count(".") == expected.count(".")
            assert abs(float(wrong) - float(expected)) <= max(1.0, abs(float(expected)) / 10)
        elif kind == "qa":  # the other entity the task names
            assert wrong == row["unknown_field"]["other_city"]
        else:  # another task's answer of the same kind
            assert wrong in {r["expected"] for r in rows if r["slices"]["kind"] == kind}
    assert got["lonely"] != "Yes"
    assert got["lonely"] not in {row["expected"] for row in rows}  # a generic wrong phrase
    assert not names_invented(got["lonely"], lonely)
    assert any(got[row["id"]] != other_model[row["id"]] for row in rows)  # models err differently


async def test_hallucinated_answers_name_a_source_and_year_found_nowhere_in_the_task(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    rows = text_rows(120)
    # A task mentioning all but one invented source and year: only the last can be used.
    trap = {
        "id": "trap",
        "input": "Who wrote the report?",
        "expected": "Nobody",
        "context": " ".join([*INVENTED_SOURCES[:-1], *INVENTED_YEARS[:-1]]),
    }
    key = write_key(tmp_path / "key.jsonl", [*rows, trap])
    async with SimProvider(profile_for(key, accuracy=1.0, hallucination_rate=1.0)) as sim:
        got = await answers(http, sim, [*rows, trap])
    async with SimProvider(profile_for(key, accuracy=1.0, hallucination_rate=0.3)) as sim:
        some = await answers(http, sim, rows)

    for row in [*rows, trap]:
        answer, row_text = got[row["id"]], json.dumps(row)
        assert answer.startswith(row["expected"] + " ")
        claim = answer[len(row["expected"]) :]
        sources = [source for source in INVENTED_SOURCES if source in claim]
        years = [year for year in INVENTED_YEARS if year in claim]
        assert len(sources) == len(years) == 1, claim
        assert sources[0].split()[0] not in row_text
        assert years[0] not in row_text
        assert names_invented(claim, row)  # what a hallucination grader flags
    assert INVENTED_SOURCES[-1] in got["trap"]
    assert INVENTED_YEARS[-1] in got["trap"]
    hallucinated = {row["id"] for row in rows if some[row["id"]] != row["expected"]}
    assert hallucinated == {
        row["id"] for row in rows if draw("sim-1", row["id"], "hallucination") < 0.3
    }


async def test_tool_calls_are_exact_at_tool_accuracy_and_wrong_ones_differ(
    key: Path, http: aiohttp.ClientSession
) -> None:
    rows = tool_rows()
    async with SimProvider(profile_for(key, tool_accuracy=0.7)) as sim:
        replies = {
            row["id"]: await ask(
                http, sim, row["input"][-1]["content"], system="Use the tools.", tools=TOOLS
            )
            for row in rows
        }

    exact = set()
    for row in rows:
        choice = replies[row["id"]]["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        calls = [
            {
                "name": call["function"]["name"],
                "arguments": json.loads(call["function"]["arguments"]),
            }
            for call in choice["message"]["tool_calls"]
        ]
        assert len(calls) == 1
        if calls == row["expected_tool_calls"]:
            exact.add(row["id"])
        else:  # another offered tool, or one argument changed or dropped
            call, expected = calls[0], row["expected_tool_calls"][0]
            assert call["name"] in {"get_weather", "get_time"}
            changed = {
                name
                for name in {*call["arguments"], *expected["arguments"]}
                if call["arguments"].get(name) != expected["arguments"].get(name)
            }
            assert (call["name"] != expected["name"] and not changed) or len(changed) == 1
    assert exact == {row["id"] for row in rows if draw("sim-1", row["id"], "tool") < 0.7}
    assert within_binomial(len(exact), len(rows), 0.7)


async def test_streamed_tool_calls_match_the_non_streamed_ones(tmp_path: Path) -> None:
    two_calls = {
        "id": "two",
        "input": "Weather and time in Oslo",
        "expected_tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}},
            {"name": "get_time", "arguments": '{"city": "Oslo"}'},  # JSON text is read too
        ],
    }
    key = write_key(tmp_path / "key.jsonl", [two_calls])
    expected = [("get_weather", {"city": "Oslo", "days": 2}), ("get_time", {"city": "Oslo"})]
    messages = messages_for("Weather and time in Oslo")
    async with (
        SimProvider(profile_for(key)) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as api,
    ):
        whole = await api.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        stream = await api.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, stream=True
        )
        pieces: dict[int, list[str]] = {}
        finishes = []
        async for chunk in stream:
            for choice in chunk.choices:
                finishes.append(choice.finish_reason)
                for delta in choice.delta.tool_calls or []:
                    assert delta.function is not None
                    entry = pieces.setdefault(delta.index, ["", ""])
                    entry[0] += delta.function.name or ""
                    entry[1] += delta.function.arguments or ""
        refused = await api.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, tool_choice="none"
        )

    calls = [c for c in whole.choices[0].message.tool_calls or [] if c.type == "function"]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == expected
    assert [(name, json.loads(args)) for _, (name, args) in sorted(pieces.items())] == expected
    assert finishes[-1] == whole.choices[0].finish_reason == "tool_calls"
    # A task with only tool calls, asked without them, answers as if there were no key.
    assert refused.choices[0].message.content == completion_text("m", messages)


async def test_unmatched_prompts_keep_the_random_words(
    key: Path, http: aiohttp.ClientSession
) -> None:
    async with SimProvider(profile_for(key, accuracy=1.0)) as sim:
        reply = await ask(http, sim, "Say something about the sea", max_tokens=12, seed=4)
        near_miss = await ask(http, sim, text_rows(1)[0]["input"] + " ", max_tokens=5)

    messages = messages_for("Say something about the sea")
    assert content_of(reply) == completion_text("sim-1", messages, seed=4, max_tokens=12)
    assert reply["usage"]["completion_tokens"] == 12
    assert len(content_of(near_miss).split()) == 5  # matching is exact


async def test_streaming_and_non_streaming_give_the_same_answer_and_usage(
    key: Path, http: aiohttp.ClientSession
) -> None:
    row = next(r for r in text_rows() if r["slices"]["kind"] == "qa")
    long_row = {"id": "long", "input": "Tell the long one", "expected": "one two three four five"}
    key = write_key(key.parent / "more.jsonl", [row, long_row])
    async with (
        SimProvider(profile_for(key, accuracy=1.0, hallucination_rate=1.0)) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as api,
    ):
        whole = await ask(http, sim, row["input"])
        text, finishes, usages = "", [], []
        stream = await api.chat.completions.create(
            model="sim-1",
            messages=messages_for(row["input"]),
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes.append(choice.finish_reason)
            if chunk.usage is not None:
                usages.append(chunk.usage.completion_tokens)
        cut = await ask(http, sim, "Tell the long one", max_tokens=3)
        roomy = await ask(http, sim, "Tell the long one", max_tokens=500)

    assert text == content_of(whole)
    assert text.startswith(row["expected"] + " ")  # with its hallucination
    assert usages == [whole["usage"]["completion_tokens"]] == [len(text.split())]
    assert finishes[-1] == whole["choices"][0]["finish_reason"] == "stop"
    assert content_of(cut) == "one two three"
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    assert content_of(roomy).startswith("one two three four five ")
    assert roomy["choices"][0]["finish_reason"] == "stop"


async def test_injected_errors_and_cuts_still_apply_to_answered_tasks(
    key: Path, http: aiohttp.ClientSession
) -> None:
    row = text_rows()[2]
    failing = profile_for(key, accuracy=1.0, faults=Faults(error_rate=1.0, error_codes={503: 1}))
    async with SimProvider(failing) as sim:
        await ask(http, sim, row["input"], expect_status=503)
        assert sim.stats.failed_by_status == {503: 1}

    long_row = {"id": "long", "input": "Tell the long one", "expected": "a b c d e f g h"}
    cutting = profile_for(
        write_key(key.parent / "long.jsonl", [long_row]),
        faults=Faults(cut_rate=1.0, tokens_per_s=1000),
    )
    async with (
        SimProvider(cutting) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as api,
    ):
        stream = await api.chat.completions.create(
            model="sim-1", messages=messages_for("Tell the long one"), stream=True
        )
        received: list[str] = []
        finishes: list[str | None] = []
        with pytest.raises(openai.APIError):
            await drain(stream, received, finishes)
        assert sim.stats.streams_cut == 1

    assert "a b c d e f g h".startswith("".join(received))
    assert len("".join(received).split()) < 8  # the cut falls inside the answer
    assert all(reason is None for reason in finishes)


async def test_missing_key_file_is_logged_and_skipped(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    row = text_rows(1)[0]
    present = write_key(tmp_path / "present.jsonl", [row], extra_lines=["{not json", "[1, 2]"])
    missing = tmp_path / "absent.jsonl"
    with capture_logs() as logs:
        sim = SimProvider(profile_for(missing, present, accuracy=1.0))
    async with sim:
        reply = await ask(http, sim, row["input"])

    assert content_of(reply) == row["expected"]
    skipped = [entry for entry in logs if entry["event"] == "sim_provider.answer_key_skipped"]
    assert [entry["path"] for entry in skipped] == [str(missing)]
    assert skipped[0]["log_level"] == "warning"
    assert any(e["event"] == "sim_provider.answer_key_bad_lines" and e["lines"] == 1 for e in logs)
    loaded = next(entry for entry in logs if entry["event"] == "sim_provider.answer_key")
    assert loaded["tasks"] == 1


async def test_tolerant_rows_index_by_the_last_user_message(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    rows = [
        {"id": 7, "input": [{"role": "user", "content": "first"},
                            {"role": "assistant", "content": "ok"},
                            {"role": "user", "content": "second"}], "expected": 42},
        {"id": "no-input", "expected": "x"},
        {"input": "no id", "expected": "x"},
        {"id": "nothing-to-answer", "input": "blank", "expected": "  "},
        {"id": "dup", "input": "second", "expected": "shadowed"},
    ]  # fmt: skip
    key = write_key(tmp_path / "key.jsonl", rows)
    async with SimProvider(profile_for(key, accuracy=1.0)) as sim:
        second = await ask(http, sim, "second")
        blank = await ask(http, sim, "blank", max_tokens=4)

    assert content_of(second) == "42"
    assert len(content_of(blank).split()) == 4  # not a task: random words


async def test_admin_put_then_get_round_trips_the_answers_section(
    key: Path, http: aiohttp.ClientSession
) -> None:
    profile = {
        "strict_models": False,
        "answers": {
            "key_files": [str(key)],
            "default": {"accuracy": 0.0, "tool_accuracy": 0.9},
            "per_model": {"perfect": {"accuracy": 1.0}},
            "prompts": [{"system_contains": "[v2]", "accuracy_delta": -0.1}],
        },
    }
    row = text_rows(1)[0]
    async with SimProvider(FaultProfile(strict_models=False)) as sim:
        before = await ask(http, sim, row["input"], model="perfect")
        async with http.put(f"{sim.url}/admin/faults", json=profile) as response:
            assert response.status == 200
        async with http.get(f"{sim.url}/admin/faults") as response:
            shown = await response.json()
        async with http.put(f"{sim.url}/admin/faults", json=shown) as response:
            assert response.status == 200
        perfect = await ask(http, sim, row["input"], model="perfect")
        hopeless = await ask(http, sim, row["input"], model="other")

    assert content_of(before) != row["expected"]  # no answer key yet
    assert content_of(perfect) == row["expected"]
    assert content_of(hopeless) != row["expected"]
    assert sim.profile == FaultProfile.model_validate(profile)
    assert shown["answers"]["per_model"] == {"perfect": {"accuracy": 1.0}}  # a patch stays a patch
    assert shown["answers"]["default"]["hallucination_rate"] == 0.0
    assert parse_profile(json.dumps(shown)) == sim.profile


async def test_sampling_noise_varies_answers_across_seeds_and_repeats_for_a_seed(
    key: Path, http: aiohttp.ClientSession
) -> None:
    row = text_rows()[5]
    async with SimProvider(profile_for(key, accuracy=0.5, sampling_noise=1.0)) as sim:
        by_seed = [content_of(await ask(http, sim, row["input"], seed=seed)) for seed in range(40)]
        again = [content_of(await ask(http, sim, row["input"], seed=seed)) for seed in range(40)]
        unseeded = {content_of(await ask(http, sim, row["input"])) for _ in range(40)}

    assert by_seed == again
    assert row["expected"] in by_seed
    assert len(set(by_seed)) == 2  # right, or the task's one wrong answer
    assert len(unseeded) == 2


def test_profile_rejects_out_of_range_quality_naming_the_field() -> None:
    bad = {
        "answers": {
            "default": {"accuracy": 1.5},
            "per_model": {"m": {"sampling_noise": -0.1}},
            "prompts": [{"system_contains": "", "accuracy_delta": 2}],
            "surprise": 1,
        }
    }
    with pytest.raises(ProfileError) as caught:
        parse_profile(json.dumps(bad))

    assert sorted(field for field, _ in caught.value.fields) == [
        "answers.default.accuracy",
        "answers.per_model.m.sampling_noise",
        "answers.prompts[0].accuracy_delta",
        "answers.prompts[0].system_contains",
        "answers.surprise",
    ]


def test_demo_profile_answers_the_demo_models_by_the_model_strings_the_simulator_receives() -> None:
    answers = load_profile(DEMO_PROFILE).answers

    assert answers is not None
    assert answers.key_files == ("evals/tasks/golden.jsonl", "evals/tasks/critical_paths.jsonl")
    assert {name: q.accuracy for name, q in answers.per_model.items()} == {
        "openai/gpt-4o": 0.92,
        "anthropic/claude-3.7-sonnet": 0.91,
        "vllm/Meta-Llama-3.1-70B-Instruct": 0.88,
    }
    assert [(p.system_contains, p.accuracy_delta) for p in answers.prompts] == [
        ("[planted-regression]", -0.05),
        ("[planted-tiny-regression]", -0.001),
    ]
