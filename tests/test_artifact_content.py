"""Artifact content: parsing, compile-time checks and rendering of prompt, agent and recipe
versions (`maestro.routing.artifacts`), pure, no server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maestro.core.errors import InvalidArgument
from maestro.routing.artifacts import (
    AGENT_YAML,
    MAX_RENDERED_CHARS,
    PROMPT_TEXT,
    PROMPT_YAML,
    RECIPE_YAML,
    compile_artifact,
    default_media_type,
    kind_of,
)

PROMPT = b"""\
messages:
  - role: system
    content: |
      You answer questions about {{ product }}
      in {{ tone }} words.
  - role: user
    content: "Question: {{ question }}"
variables:
  product: {description: The product asked about}
  tone: {default: plain}
  question: {}
model: support-model
temperature: 0.2
max_tokens: 300
"""


def _violations(error: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.value.violations]


def test_media_types_name_their_kind_and_each_kind_has_a_default() -> None:
    assert default_media_type("prompt") == PROMPT_YAML
    assert default_media_type("agent") == AGENT_YAML
    assert default_media_type("recipe") == RECIPE_YAML
    assert kind_of(PROMPT_TEXT) == "prompt"
    with pytest.raises(InvalidArgument) as error:
        kind_of("text/plain")
    assert _violations(error)[0][0] == "media_type"


def test_valid_prompt_renders_messages_defaults_and_settings() -> None:
    rendered = compile_artifact(PROMPT_YAML, PROMPT).render(
        {"product": "Maestro", "question": "What is a rollout?"}
    )
    assert rendered.messages == (
        ("system", "You answer questions about Maestro\nin plain words.\n"),
        ("user", "Question: What is a rollout?"),
    )
    assert (rendered.model, rendered.temperature, rendered.top_p, rendered.max_tokens) == (
        "support-model",
        0.2,
        None,
        300,
    )
    assert rendered.tools == ()


def test_undeclared_variable_in_a_template_is_refused_at_compile_with_its_line() -> None:
    content = b"""\
messages:
  - role: system
    content: |
      First line.
      Hello {{ customer }}.
"""
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_YAML, content)
    assert _violations(error) == [
        ("content", "line 5: messages[0].content: `customer` is not declared in `variables`")
    ]


def test_bad_yaml_and_bad_shapes_are_refused_with_lines() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_YAML, b"messages: [\n")
    assert _violations(error)[0][1].startswith("line 2: not valid YAML")
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_YAML, b"messages:\n  - role: robot\n    content: hi\n")
    assert _violations(error) == [
        ("content", "line 2: messages[0].role: must be system, user or assistant")
    ]


def test_missing_required_variable_at_render_is_a_field_violation() -> None:
    compiled = compile_artifact(PROMPT_YAML, PROMPT)
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"product": "Maestro"})
    assert _violations(error) == [("artifact_variables[question]", "required by the artifact")]


def test_extra_variable_at_render_is_a_field_violation() -> None:
    compiled = compile_artifact(PROMPT_YAML, PROMPT)
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"product": "a", "question": "b", "shoe_size": "44"})
    assert _violations(error) == [
        ("artifact_variables[shoe_size]", "not a variable of the artifact's templates")
    ]


def test_sandbox_blocks_attribute_access_like_dunder_class() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_TEXT, b"Hi.\n{{ ''.__class__.__mro__ }}")
    assert "line 2: `__class__`: names starting with _ are not accessible" in str(error.value)
    # What the compile-time check cannot see (an attribute named by a variable) the sandbox
    # refuses when the template runs.
    compiled = compile_artifact(PROMPT_TEXT, b"{{ x | attr(name) }}")
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"x": "s", "name": "__class__"})
    assert _violations(error)[0][0] == "artifact"


def test_rendered_output_past_the_bound_is_refused() -> None:
    compiled = compile_artifact(PROMPT_TEXT, b"{% for i in range(1000) %}{{ v }}{% endfor %}")
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"v": "x" * 2000})
    assert f"{MAX_RENDERED_CHARS:,}" in _violations(error)[0][1]
    repeat = compile_artifact(PROMPT_TEXT, b"{{ v * 1000000000 }}")
    with pytest.raises(InvalidArgument):
        repeat.render({"v": "xy"})


def test_text_prompt_is_one_system_message_whose_names_are_required() -> None:
    compiled = compile_artifact(PROMPT_TEXT, b"You are {{ role }}. Answer in {{ language }}.")
    assert sorted(compiled.variables) == ["language", "role"]
    rendered = compiled.render({"role": "a tutor", "language": "French"})
    assert rendered.messages == (("system", "You are a tutor. Answer in French."),)
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"role": "a tutor"})
    assert _violations(error) == [("artifact_variables[language]", "required by the artifact")]


def test_agent_renders_instructions_and_offers_its_tools() -> None:
    content = b"""\
instructions: You help with {{ topic }}. Use the tools.
variables:
  topic: {default: billing}
tools:
  - name: lookup_invoice
    description: Find an invoice by number.
    parameters:
      type: object
      properties: {number: {type: string}}
      required: [number]
model: agent-model
top_p: 0.5
"""
    rendered = compile_artifact(AGENT_YAML, content).render({})
    assert rendered.messages == (("system", "You help with billing. Use the tools."),)
    assert rendered.tools == (
        {
            "type": "function",
            "function": {
                "name": "lookup_invoice",
                "description": "Find an invoice by number.",
                "parameters": {
                    "type": "object",
                    "properties": {"number": {"type": "string"}},
                    "required": ["number"],
                },
            },
        },
    )
    assert (rendered.model, rendered.top_p) == ("agent-model", 0.5)


def test_agent_tools_are_checked() -> None:
    content = b"""\
instructions: hi
tools:
  - {name: a, parameters: {type: array}}
  - {name: a}
"""
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(AGENT_YAML, content)
    assert _violations(error) == [
        ("content", "line 3: tools[0].parameters: must be a JSON schema of type object"),
        ("content", "line 4: tools[1].name: duplicate tool name"),
    ]


def test_recipe_render_is_refused_it_runs_as_a_graph_run() -> None:
    compiled = compile_artifact(RECIPE_YAML, b"nodes:\n  - {id: draft, kind: llm}\n")
    with pytest.raises(InvalidArgument) as error:
        compiled.render({})
    assert _violations(error) == [
        (
            "artifact",
            "a recipe artifact runs as a graph run (GraphService.CreateRun), not a chat call",
        )
    ]
    with pytest.raises(InvalidArgument):
        compile_artifact(RECIPE_YAML, b"edges: []\n")


def test_content_limits_are_enforced() -> None:
    with pytest.raises(InvalidArgument):
        compile_artifact(PROMPT_TEXT, b"x" * (4 * 1024 * 1024 + 1))
    many = "".join(f"  v{i}: {{}}\n" for i in range(65))
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(
            PROMPT_YAML, f"messages: [{{role: user, content: hi}}]\nvariables:\n{many}".encode()
        )
    assert "at most 64 variables" in str(error.value)


_SANDBOXED = compile_artifact(
    PROMPT_YAML,
    b"""\
messages:
  - role: system
    content: "{{ a }}|{{ a | upper }}|{{ b * 3 }}|{{ a[0] if a else '' }}|{{ b | length }}"
variables:
  a: {}
  b: {default: "-"}
""",
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "__class__", ""]), st.text(max_size=200), max_size=4
    )
)
def test_render_raises_nothing_but_invalid_argument_for_any_variables(
    variables: dict[str, str],
) -> None:
    try:
        rendered = _SANDBOXED.render(variables)
    except InvalidArgument:
        return
    assert rendered.messages[0][0] == "system"


def test_replace_whose_result_passes_the_bound_is_refused_before_it_is_built() -> None:
    compiled = compile_artifact(PROMPT_TEXT, b"{{ ('x'*10000)|replace('x','y'*20000) }}")
    with pytest.raises(InvalidArgument) as error:
        compiled.render({})
    assert _violations(error) == [
        ("artifact_variables", f"the rendered prompt passes {MAX_RENDERED_CHARS:,} characters")
    ]


def test_str_methods_that_grow_text_are_bounded_by_their_result() -> None:
    for source in (
        b"{{ ('x'*10000).replace('x', 'y'*20000) }}",
        b"{{ 'a'.center(1000000000) }}",
        b"{{ ''.join([v]*1000) }}",
    ):
        compiled = compile_artifact(PROMPT_TEXT, source)
        with pytest.raises(InvalidArgument) as error:
            compiled.render({name: "x" * 100_000 for name in compiled.variables})
        assert f"{MAX_RENDERED_CHARS:,}" in _violations(error)[0][1], source


def test_concatenation_whose_result_passes_the_bound_is_refused() -> None:
    for operator in (b"~", b"+"):
        source = b"{% set a = 'x'*1000000 %}{% set b = a " + operator + b" a %}"
        with pytest.raises(InvalidArgument) as error:
            compile_artifact(PROMPT_TEXT, source).render({})
        assert f"{MAX_RENDERED_CHARS:,}" in _violations(error)[0][1], operator


def test_printing_a_list_of_long_strings_is_refused_before_it_is_turned_into_text() -> None:
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_TEXT, b"{{ [v] * 1000 }}").render({"v": "x" * 100_000})
    assert f"{MAX_RENDERED_CHARS:,}" in _violations(error)[0][1]


def test_namespace_is_refused_at_compile_time_with_its_line() -> None:
    content = b"""\
messages:
  - role: system
    content: |
      Hello.
      {% set ns = namespace(a='') %}
      {% for i in range(300) %}{% set ns.a = ns.a ~ ('x'*1000000) %}{% endfor %}
"""
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_YAML, content)
    assert _violations(error) == [
        ("content", "line 5: messages[0].content: `namespace` is not available in templates"),
        (
            "content",
            "line 6: messages[0].content: `{% set ns.a %}`: setting an attribute is not available",
        ),
    ]


def test_a_loop_inside_a_loop_is_refused_at_compile_time_with_its_line() -> None:
    source = b"{% for i in range(1000) %}\n{% for j in range(1000) %}{% endfor %}{% endfor %}"
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_TEXT, source)
    assert _violations(error) == [
        ("content", "line 2: a loop inside a loop is not available in templates")
    ]


def test_range_stops_at_a_thousand() -> None:
    assert len(compile_artifact(PROMPT_TEXT, b"{% for i in range(1000) %}.{% endfor %}")
               .render({}).messages[0][1]) == 1000  # fmt: skip
    with pytest.raises(InvalidArgument) as error:
        compile_artifact(PROMPT_TEXT, b"{% for i in range(1001) %}{% endfor %}").render({})
    assert "range of more than 1,000 items" in _violations(error)[0][1]


def test_a_loop_with_no_output_is_cut_off_by_the_step_bound() -> None:
    compiled = compile_artifact(
        PROMPT_TEXT, b"{% for w in v %}{% if w == 'a' %}{% endif %}{% endfor %}"
    )
    with pytest.raises(InvalidArgument) as error:
        compiled.render({"v": "x" * 1_000_000})
    assert _violations(error) == [
        ("artifact_variables", "the artifact's templates take more than 100,000 steps")
    ]


def test_macros_formatting_and_unlisted_filters_are_refused() -> None:
    for source, problem in (
        (b"{% macro f() %}{% endmacro %}", "line 1: `{% macro %}` is not available in templates"),
        (b"{{ v | tojson }}", "line 1: the filter `tojson` is not available in templates"),
    ):
        with pytest.raises(InvalidArgument) as error:
            compile_artifact(PROMPT_TEXT, source)
        assert _violations(error) == [("content", problem)]
    for source in (b"{{ '{:>1000000000}'.format(1) }}", b"{{ '%*d' % (100000000, 1) }}"):
        with pytest.raises(InvalidArgument) as error:
            compile_artifact(PROMPT_TEXT, source).render({})
        assert _violations(error)[0][0] == "artifact", source


def test_a_prompt_with_a_loop_over_a_split_variable_and_filters_renders() -> None:
    content = b"""\
messages:
  - role: system
    content: |
      {{ name | default('friend') | trim | title }}: {{ topic | upper }}, {{ topic | lower }}
      {% for w in words.split() %}{{ loop.index }}.{{ w | capitalize }} {% endfor %}
      {{ words.split() | length }} {{ words.split() | first }} {{ words.split() | last }}
      {{ words.split() | join('-') }} {{ long | truncate(9) }} {{ 'a' ~ topic ~ 'b' }}
      {% if words %}{{ words | replace('a', 'A') }}{% endif %}
variables:
  name: {default: ''}
  topic: {}
  words: {}
  long: {default: "a long sentence here"}
"""
    rendered = compile_artifact(PROMPT_YAML, content).render(
        {"name": "  ada lovelace ", "topic": "Maths", "words": "alpha beta gamma"}
    )
    assert rendered.messages == (
        (
            "system",
            "Ada Lovelace: MATHS, maths\n"
            "1.Alpha 2.Beta 3.Gamma \n"
            "3 alpha gamma\n"
            "alpha-beta-gamma a... aMathsb\n"
            "AlphA betA gAmmA\n",
        ),
    )
