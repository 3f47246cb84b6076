"""Prompt, agent and recipe artifacts: parse, validate and compile their content; render it.

Pure: no I/O. The control plane compiles a version's content to refuse a bad one at
CreateArtifactVersion; the data plane compiles each version once, when its traffic split is
published (`SnapshotRegistry.publish_traffic`), and only renders on the request path. Nothing here
parses YAML or Jinja while a call waits.

Media types (ArtifactVersion.media_type) and what they hold:

- `application/vnd.maestro.prompt.v1+yaml`, a prompt::

      messages:                      # at least one; prepended to the caller's messages
        - role: system               # system | user | assistant
          content: |
            You answer questions about {{ product }} in {{ tone }} words.
      variables:                     # every name a template uses must be declared here
        product: {description: The product asked about}      # required (no default)
        tone: {default: plain, description: Register}          # optional: it has a default
      model: gpt-4o                  # optional: a model group, for calls that name none
      temperature: 0.2               # optional, 0 to 2 \\
      top_p: 0.9                     # optional, 0 to 1  | for calls that leave them unset
      max_tokens: 512                # optional, >= 1    /

  A variable is required unless it has a `default` (`required: false` without a default makes it
  optional and empty). Templates are Jinja2, run in Jinja's immutable sandbox with undefined
  names an error, no autoescaping, and names starting with `_` refused.
- `application/vnd.maestro.prompt.v1+text`: the whole text is one system message template; every
  name it uses is a required variable.
- `application/vnd.maestro.agent.v1+yaml`, an agent: `instructions` (a template: the system
  message), `tools` (OpenAI function definitions: `name`, `description`, `parameters` as a JSON
  schema object), `variables`, `model`, `temperature`, `top_p` and `max_tokens` as for a prompt.
  Its tools are offered on calls that bring none of their own.
- `application/vnd.maestro.recipe.v1+yaml`, an agent-graph recipe: only checked here to be a YAML
  mapping with `nodes` (GraphService's recipe parser validates the rest); it runs as a graph run,
  never as a chat call, so rendering one is refused.

Every problem with content is INVALID_ARGUMENT on `content`, "line N: ..." first; a problem
with a call's variables is INVALID_ARGUMENT on `artifact_variables[<name>]`.

Bounds: content at most 4 MiB, 64 variables, 64 messages, 128 tools, and 1 MiB of rendered text
per call. A template is tenant code run on a shared data plane's event loop, so what it may do is
cut down at compile time and bounded while it runs:

- refused at compile time (on `content`, with the line): a loop inside a loop, `recursive` loops,
  `namespace` and `{% set x.attr = ... %}` (no state carried from one loop pass to the next),
  macros, call blocks, blocks, `extends`, `include` and `import`, and filters other than
  abs, attr, capitalize, count, d, default, first, float, int, items, join, last, length, list,
  lower, map, max, min, reject, rejectattr, replace, reverse, round, select, selectattr, sort,
  string, title, trim, truncate, unique, upper and wordcount;
- `range` stops at 1,000 items; string methods other than the plain ones (case, strip, split,
  find, replace, join, padding...) are refused, as are `format`, `format_map`, `translate`,
  `encode` and `%` string formatting;
- no single value a template builds (`*`, `+`, `~`, `replace`, `join`, padding, a value printed
  or converted to text) may pass 1 MiB: its size is worked out before it is built, and passing
  it fails the call as the output bound does;
- a call does at most 100,000 steps of work (each template node run, each loop pass counting its
  body's nodes, each call, filter and operator) and builds at most 16 MiB of intermediate text.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
    ValuesView,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_replace, make_attrgetter, sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.core.yaml_input import reject_aliases

__all__ = [
    "AGENT_YAML",
    "KINDS",
    "MAX_CONTENT_BYTES",
    "MAX_RENDERED_CHARS",
    "MAX_VARIABLES",
    "PROMPT_TEXT",
    "PROMPT_YAML",
    "RECIPE_YAML",
    "CompiledArtifact",
    "Rendered",
    "Variable",
    "compile_artifact",
    "default_media_type",
    "kind_of",
]

PROMPT_YAML: Final = "application/vnd.maestro.prompt.v1+yaml"
PROMPT_TEXT: Final = "application/vnd.maestro.prompt.v1+text"
AGENT_YAML: Final = "application/vnd.maestro.agent.v1+yaml"
RECIPE_YAML: Final = "application/vnd.maestro.recipe.v1+yaml"
_KIND_OF: Final[Mapping[str, str]] = {
    PROMPT_YAML: "prompt",
    PROMPT_TEXT: "prompt",
    AGENT_YAML: "agent",
    RECIPE_YAML: "recipe",
}
KINDS: Final = ("prompt", "agent", "recipe")

MAX_CONTENT_BYTES: Final = 4 * 1024 * 1024
MAX_VARIABLES: Final = 64
MAX_MESSAGES: Final = 64
MAX_TOOLS: Final = 128
MAX_RENDERED_CHARS: Final = 1024 * 1024
MAX_RANGE: Final = 1_000
MAX_STEPS: Final = 100_000
"""Steps of work one call's templates may do (see the module docstring's Bounds)."""
MAX_WORK_CHARS: Final = 16 * MAX_RENDERED_CHARS
"""Characters of intermediate text one call's templates may build, all values together."""
MAX_INT_BITS: Final = 4096
MAX_MODEL_CHARS: Final = 256
_ROLES: Final = frozenset({"system", "user", "assistant"})
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_Loader: Final[type[yaml.SafeLoader]] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONTENT = "content"


def default_media_type(kind: str) -> str:
    """`application/vnd.maestro.<kind>.v1+yaml` for `prompt`, `agent` or `recipe`."""
    if kind not in KINDS:
        raise InvalidArgument([FieldViolation("kind", "must be prompt, agent or recipe")])
    return f"application/vnd.maestro.{kind}.v1+yaml"


def kind_of(media_type: str) -> str:
    """The kind (`prompt`, `agent`, `recipe`) a media type holds; INVALID_ARGUMENT on
    `media_type` for one Maestro does not know."""
    kind = _KIND_OF.get(media_type)
    if kind is None:
        raise InvalidArgument(
            [FieldViolation("media_type", f"must be one of {', '.join(sorted(_KIND_OF))}")]
        )
    return kind


# -- compiled form --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variable:
    """A template variable as the artifact declares it."""

    name: str
    required: bool = True
    default: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Rendered:
    """What a call gets from its artifact version: messages to prepend to its own, and the
    settings to use where the call set none."""

    messages: tuple[tuple[str, str], ...]
    """(role, text) in order."""
    model: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 0
    tools: tuple[Mapping[str, Any], ...] = ()
    """OpenAI wire form: `{"type": "function", "function": {...}}`."""


@dataclass(frozen=True, slots=True)
class _Settings:
    model: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CompiledArtifact:
    """A version's content, parsed and its templates compiled: `render` only runs them."""

    media_type: str
    kind: str
    variables: Mapping[str, Variable] = field(default_factory=dict)
    templates: tuple[tuple[str, Callable[[Mapping[str, str]], Iterator[str]]], ...] = ()
    """(role, the compiled template's `generate`) per message."""
    settings: _Settings = _Settings()
    tools: tuple[Mapping[str, Any], ...] = ()
    autonomy: str = ""
    """An agent's autonomy level (`L1`..`L4`, its `autonomy` key): promoting a version at L3 or
    above to all traffic needs two approvers."""

    def render(self, variables: Mapping[str, str]) -> Rendered:
        """The messages with `variables` filled in. INVALID_ARGUMENT for a recipe (field
        `artifact`), a required variable missing or one not declared (field
        `artifact_variables[<name>]`), or a template that fails or outgrows the bound."""
        if self.kind == "recipe":
            raise InvalidArgument(
                [
                    FieldViolation(
                        "artifact",
                        "a recipe artifact runs as a graph run (GraphService.CreateRun), not a "
                        "chat call",
                    )
                ]
            )
        values = self._values(variables)
        budget = MAX_RENDERED_CHARS
        messages = []
        token = _WORK.set(_Work())
        try:
            for index, (role, generate) in enumerate(self.templates):
                text = _bounded(generate, values, budget, index)
                budget -= len(text)
                messages.append((role, text))
        finally:
            _WORK.reset(token)
        settings = self.settings
        return Rendered(
            tuple(messages),
            settings.model,
            settings.temperature,
            settings.top_p,
            settings.max_tokens,
            self.tools,
        )

    def _values(self, given: Mapping[str, str]) -> dict[str, str]:
        violations = [
            FieldViolation(
                f"artifact_variables[{name}]", "not a variable of the artifact's templates"
            )
            for name in sorted(given)
            if name not in self.variables
        ]
        values: dict[str, str] = {}
        for name, variable in self.variables.items():
            value = given.get(name)
            if value is None:
                if variable.required:
                    violations.append(
                        FieldViolation(f"artifact_variables[{name}]", "required by the artifact")
                    )
                    continue
                value = variable.default
            values[name] = value
        if violations:
            raise InvalidArgument(violations)
        return values


_RECIPE = CompiledArtifact(RECIPE_YAML, "recipe")


def recipe_placeholder() -> CompiledArtifact:
    """A recipe version as the data plane holds it: its content stays with the control plane
    (graph runs are the control plane's), and rendering it is refused."""
    return _RECIPE


def _bounded(
    generate: Callable[[Mapping[str, str]], Iterator[str]],
    values: Mapping[str, str],
    budget: int,
    index: int,
) -> str:
    """Run a template, stopping as soon as its output passes `budget` characters: a loop
    never gets to build a gigabyte first. Any failure inside the template is the artifact's,
    reported as INVALID_ARGUMENT, never INTERNAL: templates are tenant code."""
    parts: list[str] = []
    size = 0
    try:
        for part in generate(values):
            size += len(part)
            if size > budget:
                raise _TooLarge
            parts.append(part)
    except _TooLarge as error:
        raise InvalidArgument([FieldViolation("artifact_variables", error.description)]) from None
    except Exception as error:  # the sandbox's boundary: see the docstring
        raise InvalidArgument(
            [
                FieldViolation(
                    "artifact",
                    f"message {index} of the artifact failed to render: "
                    f"{type(error).__name__}: {str(error)[:200]}",
                )
            ]
        ) from None
    return "".join(parts)


_TOO_LARGE: Final = f"the rendered prompt passes {MAX_RENDERED_CHARS:,} characters"


class _TooLarge(Exception):
    """A template outgrew a bound: its output, one value it builds, or the call's work."""

    def __init__(self, description: str = _TOO_LARGE) -> None:
        super().__init__(description)
        self.description = description


# -- the sandbox ----------------------------------------------------------------------------------


class _Work:
    """What one call's templates may still do: steps and characters of intermediate text."""

    __slots__ = ("chars", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.chars = MAX_WORK_CHARS


_WORK: Final[ContextVar[_Work | None]] = ContextVar("maestro_artifact_work", default=None)
"""Set by `CompiledArtifact.render` around its templates (they run synchronously inside it)."""


def _charge(steps: int = 1, chars: int = 0) -> None:
    work = _WORK.get()
    if work is None:
        return
    work.steps -= steps
    work.chars -= chars
    if work.steps < 0:
        raise _TooLarge(f"the artifact's templates take more than {MAX_STEPS:,} steps")
    if work.chars < 0:
        raise _TooLarge(
            f"the artifact's templates build more than {MAX_WORK_CHARS:,} characters of text"
        )


def _check(size: int) -> None:
    """Refuse a value of `size` characters (or items) before it is built."""
    if size > MAX_RENDERED_CHARS:
        raise _TooLarge


def _text_size(value: Any, limit: int = MAX_RENDERED_CHARS) -> int:
    """The length of `str(value)`, or some number past `limit` once it is known to pass it:
    worked out without building the text (a list of a million references to one long string
    is cheap to hold and a terabyte to print)."""
    if isinstance(value, str):
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            # repr inside a container: quotes, and escapes of up to 10 characters a character
            total += len(item) + 2 if len(item) + 2 > limit - total else len(repr(item))
        elif isinstance(item, list | tuple | set | frozenset | KeysView | ValuesView | ItemsView):
            total += 16 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 2
        else:
            total += len(repr(item))
    return total


def _text(value: Any) -> str:
    """`str(value)`, refused before it is built if it would pass the bound."""
    _check(_text_size(value))
    return str(value)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise OverflowError(f"range of more than {MAX_RANGE:,} items")
    return numbers


def _loop_items(iterable: Iterable[Any], cost: int = 1) -> Iterator[Any]:
    """Wraps every loop's iterable (put there at compile time): each pass costs its body."""
    for item in iterable:
        _charge(cost)
        yield item


def _bounded_join(parts: Iterable[Any]) -> str:
    """`~` and the environment's `concat` (`{% set x %}...{% endset %}`): refused before the
    joined text is built if it would pass the bound."""
    items = list(parts)
    size = 0
    for item in items:
        size += _text_size(item, MAX_RENDERED_CHARS - size)
        _check(size)
    _charge(1, size)
    return "".join(map(str, items))


@pass_eval_context
def _replace_filter(
    eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None
) -> str:
    text, old_text, new_text = _text(s), _text(old), _text(new)
    times = text.count(old_text) if old_text else len(text) + 1
    if count is not None and count >= 0:
        times = min(times, count)
    size = len(text) + times * max(0, len(new_text) - len(old_text))
    _check(size)
    _charge(1, size)
    return str(do_replace(eval_ctx, text, old_text, new_text, count))


@pass_eval_context
def _join_filter(
    eval_ctx: EvalContext, value: Iterable[Any], d: Any = "", attribute: Any = None
) -> str:
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    items = list(value)
    separator = _text(d)
    size = len(separator) * max(0, len(items) - 1)
    _check(size)
    for item in items:
        size += _text_size(item, MAX_RENDERED_CHARS - size)
        _check(size)
    _charge(1, size)
    return sync_do_join(eval_ctx, items, separator)


def _string_filter(value: Any) -> str:
    text = _text(value)
    _charge(1, len(text))
    return text


def _charged(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that cannot grow its input, charged a step and the text it returns."""

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_environment marks
    def charged(*args: Any, **kwargs: Any) -> Any:
        _charge()
        result = function(*args, **kwargs)
        if isinstance(result, str):
            _charge(0, len(result))
        return result

    return charged


_FILTERS: Final = frozenset(
    {
        "abs", "attr", "capitalize", "count", "d", "default", "first", "float", "int", "items",
        "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
        "replace", "reverse", "round", "select", "selectattr", "sort", "string", "title", "trim",
        "truncate", "unique", "upper", "wordcount",
    }
)  # fmt: skip
"""The filters a template may use; the others pad, format or serialise without bound."""

_METHODS: Final = frozenset(
    {
        # str
        "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find", "index",
        "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
        "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
        "lstrip", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex",
        "rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip",
        "swapcase", "title", "upper", "zfill",
        # dict (list and tuple: count, index)
        "get", "items", "keys", "values",
    }
)  # fmt: skip
"""Methods of built-in values a template may call; `format`, `translate`, `encode`,
`int.to_bytes` and the like build text of a size no one checks, so they are refused."""

_VALUE_TYPES: Final = (str, bytes, int, float, complex, list, tuple, dict, set, frozenset)


def _projected_size(text: str, method: str, args: tuple[Any, ...]) -> int:
    """How long `text.<method>(*args)` will be, for the str methods that can grow it."""
    if method == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str):
            times = text.count(old) if old else len(text) + 1
            if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                times = min(times, args[2])
            return len(text) + times * max(0, len(new) - len(old))
    elif method in ("center", "ljust", "rjust", "zfill") and args:
        if isinstance(args[0], int):
            return max(len(text), args[0])
    elif method == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        return len(text) + text.count("\t") * max(tab, 0)
    return len(text)


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` joined by `environment.bounded_concat`, which refuses a
    result past the bound before building it (Jinja's own `str_join` cannot be intercepted)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no attribute starting with `_`, no mutating methods), with
    every operation that can build a large value bounded by the size of its result before it
    is built (`{{ x * 100000 }}` would otherwise build its whole result before the output bound
    could stop it), only plain methods of built-in values callable, and each call, operator and
    loop pass charged to the call's work (`_charge`)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_bounded_join)  # `{% set %}` blocks
    bounded_concat = staticmethod(_bounded_join)  # `~`, see _CodeGenerator

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _charge()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _check(len(seq) * max(times, 0))
                    _charge(0, len(seq) * max(times, 0))
            if (
                _is_int(left)
                and _is_int(right)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise OverflowError(f"product past {MAX_INT_BITS} bits")
            return left * right
        if operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _check(len(left) + len(right))
                _charge(0, len(left) + len(right))
            return left + right
        if operator == "%":
            if isinstance(left, str | bytes):
                raise TypeError("string formatting with % is not available; use {{ }}")
            return left % right
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * math.log2(abs(left)) > MAX_INT_BITS
        ):
            raise OverflowError(f"power past {MAX_INT_BITS} bits")
        return left**right

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _charge()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(obj, "__name__", "")
            if method == "join" and args:
                items = list(args[0])  # may be a generator: look at it once
                size = len(owner) * max(0, len(items) - 1)
                _check(size)
                for item in items:
                    size += len(item) if isinstance(item, str) else 0
                    _check(size)
                args = (items, *args[1:])
            else:
                _check(_projected_size(owner, method, args))
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            _charge(0, len(result))
        return result

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        return not (isinstance(obj, _VALUE_TYPES) and callable(value) and attr not in _METHODS)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # `format` and `format_map` are refused (is_safe_attribute), never wrapped

    def getitem(self, obj: Any, argument: Any) -> Any:
        _charge()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(result, str | list | tuple):
            _charge(0, len(result))
        return result


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finalize(value: Any) -> Any:
    """Every `{{ value }}` printed: refused before a large value is turned into text."""
    if not isinstance(value, str):
        _check(_text_size(value))
    return value


def _environment() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
        optimized=False,  # nothing of a template runs at compile time, outside the bounds
    )
    env.globals.clear()
    env.globals.update(range=_bounded_range, dict=dict)
    filters = {name: _charged(env.filters[name]) for name in _FILTERS}
    filters.update(replace=_replace_filter, join=_join_filter, string=_string_filter)
    filters["_loop_items"] = _loop_items
    env.filters.clear()
    env.filters.update(filters)
    return env


_ENV: Final = _environment()


# -- parsing --------------------------------------------------------------------------------------


def compile_artifact(media_type: str, content: bytes) -> CompiledArtifact:
    """Parse and check `content` of `media_type` and compile its templates.

    Raises InvalidArgument on `content` ("line N: ...") for anything wrong with it, or on
    `media_type` for a type Maestro does not know."""
    kind = kind_of(media_type)
    if len(content) > MAX_CONTENT_BYTES:
        raise _content_error(f"at most {MAX_CONTENT_BYTES // (1024 * 1024)} MiB")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _content_error(f"not UTF-8 (byte {error.start})") from None
    if media_type == PROMPT_TEXT:
        return _text_prompt(text)
    root, data = _load(text)
    if kind == "recipe":
        if not isinstance(data.get("nodes"), list) or not data["nodes"]:
            raise _content_error(f"line {_line(root, ('nodes',))}: a recipe needs `nodes`")
        return _RECIPE
    problems = _Problems(root)
    variables = _variables(data, problems)
    settings = _settings(data, problems)
    if kind == "prompt":
        problems.unknown(data, ("messages", "variables", *_SETTINGS))
        sources = _messages(data, problems)
        tools: tuple[Mapping[str, Any], ...] = ()
    else:
        problems.unknown(data, ("instructions", "tools", "variables", "autonomy", *_SETTINGS))
        sources = _instructions(data, problems)
        tools = _tools(data, problems)
    templates = tuple(
        (role, _compile(source, path, variables, problems)) for role, source, path in sources
    )
    autonomy = data.get("autonomy", "") if kind == "agent" else ""
    if autonomy not in ("", "L1", "L2", "L3", "L4"):
        problems.add(("autonomy",), "one of L1, L2, L3, L4")
    problems.raise_any()
    return CompiledArtifact(
        media_type,
        kind,
        variables,
        tuple((role, t) for role, t in templates if t is not None),
        settings,
        tools,
        str(autonomy),
    )


def _content_error(description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(_CONTENT, description)])


def _load(text: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    reject_aliases(text, _CONTENT)
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a safe loader: plain data only
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise _content_error(f"{where}not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise _content_error("line 1: the top level must be a mapping")
    return root, data


_Path = tuple[str | int, ...]


def _node_at(root: yaml.Node | None, path: _Path) -> yaml.Node | None:
    """The YAML node at `path`, or the deepest one on the way (for a missing key)."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == part), None)
            if found is None:
                return node
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _line(root: yaml.Node | None, path: _Path) -> int:
    node = _node_at(root, path)
    return node.start_mark.line + 1 if node is not None else 1


def _where(path: _Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Problems:
    """Violations of one content, each "line N: path: problem", all reported at once."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root
        self.found: list[FieldViolation] = []

    def add(self, path: _Path, problem: str, line: int | None = None) -> None:
        where = f"{_where(path)}: " if path else ""
        line = _line(self.root, path) if line is None else line
        self.found.append(FieldViolation(_CONTENT, f"line {line}: {where}{problem}"))

    def unknown(self, data: Mapping[str, Any], known: Sequence[str]) -> None:
        for key in data:
            if key not in known:
                self.add((str(key),), f"unknown key; expected one of {', '.join(known)}")

    def raise_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)


_SETTINGS = ("model", "temperature", "top_p", "max_tokens")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _settings(data: Mapping[str, Any], problems: _Problems) -> _Settings:
    model = data.get("model", "")
    if not isinstance(model, str) or len(model) > MAX_MODEL_CHARS:
        problems.add(("model",), f"must be a model group name, at most {MAX_MODEL_CHARS} chars")
        model = ""
    ranges = {"temperature": 2.0, "top_p": 1.0}
    floats: dict[str, float | None] = {}
    for name, high in ranges.items():
        value = data.get(name)
        if value is not None and not (_number(value) and 0 <= value <= high):
            problems.add((name,), f"must be a number from 0 to {high:g}")
            value = None
        floats[name] = float(value) if value is not None else None
    max_tokens = data.get("max_tokens", 0)
    if "max_tokens" in data and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        problems.add(("max_tokens",), "must be a whole number of at least 1")
        max_tokens = 0
    return _Settings(model, floats["temperature"], floats["top_p"], max_tokens)


def _variables(data: Mapping[str, Any], problems: _Problems) -> dict[str, Variable]:
    raw = data.get("variables")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(("variables",), "must be a mapping of variable names to their settings")
        return {}
    if len(raw) > MAX_VARIABLES:
        problems.add(("variables",), f"at most {MAX_VARIABLES} variables")
    out: dict[str, Variable] = {}
    for name, spec in raw.items():
        path: _Path = ("variables", str(name))
        if not isinstance(name, str) or not _VARIABLE_NAME.fullmatch(name):
            problems.add(path, "a name is a letter, then letters, digits or _ (at most 64)")
            continue
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            problems.add(path, "must be a mapping with required, default or description")
            continue
        for key in spec:
            if key not in ("required", "default", "description"):
                problems.add(
                    (*path, str(key)), "unknown key; expected required, default or description"
                )
        default, description = spec.get("default"), spec.get("description", "")
        required = spec.get("required", default is None)
        if default is not None and not isinstance(default, str):
            problems.add((*path, "default"), "must be a string")
        if not isinstance(description, str):
            problems.add((*path, "description"), "must be a string")
        if not isinstance(required, bool):
            problems.add((*path, "required"), "must be true or false")
        elif required and default is not None:
            problems.add((*path, "required"), "a variable with a default is not required")
        out[name] = Variable(
            name,
            required is True and default is None,
            default if isinstance(default, str) else "",
            description if isinstance(description, str) else "",
        )
    return out


_Source = tuple[str, str, _Path]
"""(role, template source, where it is)."""


def _messages(data: Mapping[str, Any], problems: _Problems) -> list[_Source]:
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        problems.add(("messages",), "a prompt needs a list of at least one message")
        return []
    if len(raw) > MAX_MESSAGES:
        problems.add(("messages",), f"at most {MAX_MESSAGES} messages")
    out = []
    for index, message in enumerate(raw):
        path: _Path = ("messages", index)
        if not isinstance(message, dict):
            problems.add(path, "must be a mapping with role and content")
            continue
        for key in message:
            if key not in ("role", "content"):
                problems.add((*path, str(key)), "unknown key; expected role or content")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            problems.add((*path, "role"), "must be system, user or assistant")
        if not isinstance(content, str):
            problems.add((*path, "content"), "must be a string (a template)")
        elif role in _ROLES:
            out.append((str(role), content, (*path, "content")))
    return out


def _instructions(data: Mapping[str, Any], problems: _Problems) -> list[_Source]:
    instructions = data.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        problems.add(("instructions",), "an agent needs `instructions` (a template)")
        return []
    return [("system", instructions, ("instructions",))]


def _tools(data: Mapping[str, Any], problems: _Problems) -> tuple[Mapping[str, Any], ...]:
    raw = data.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(("tools",), "must be a list of function definitions")
        return ()
    if len(raw) > MAX_TOOLS:
        problems.add(("tools",), f"at most {MAX_TOOLS} tools")
    seen: set[str] = set()
    out = []
    for index, tool in enumerate(raw):
        path: _Path = ("tools", index)
        if not isinstance(tool, dict):
            problems.add(path, "must be a mapping with name, description and parameters")
            continue
        for key in tool:
            if key not in ("name", "description", "parameters"):
                problems.add(
                    (*path, str(key)), "unknown key; expected name, description or parameters"
                )
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            problems.add((*path, "name"), "1 to 64 letters, digits, _ or -")
            continue
        if name in seen:
            problems.add((*path, "name"), "duplicate tool name")
        seen.add(name)
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                problems.add((*path, "description"), "must be a string")
            else:
                function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                problems.add((*path, "parameters"), "must be a JSON schema of type object")
            else:
                function["parameters"] = parameters
        out.append({"type": "function", "function": function})
    return tuple(out)


def _first_line(root: yaml.Node | None, path: _Path) -> int:
    """The line of a scalar's first character: a block scalar (`|`, `>`) starts on the line
    after its indicator."""
    node = _node_at(root, path)
    if node is None:
        return 1
    block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
    return node.start_mark.line + (2 if block else 1)


def _compile(
    source: str, path: _Path, variables: Mapping[str, Variable], problems: _Problems
) -> Callable[[Mapping[str, str]], Iterator[str]] | None:
    """Compile one template; refuse a syntax error, a name not declared in `variables` and
    an attribute starting with `_`, at their lines."""
    first = _first_line(problems.root, path)
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as error:
        problems.add(path, f"template syntax: {error.message}", first + (error.lineno or 1) - 1)
        return None
    ok = True
    for name in sorted(_undeclared(tree) - set(variables) - _REFUSED_NAMES):
        line = next(
            (n.lineno for n in tree.find_all(nodes.Name) if n.name == name and n.ctx == "load"),
            1,
        )
        problems.add(path, f"`{name}` is not declared in `variables`", first + line - 1)
        ok = False
    for attr, line in _private_attributes(tree):
        problems.add(path, f"`{attr}`: names starting with _ are not accessible", first + line - 1)
        ok = False
    for problem, line in _refusals(tree):
        problems.add(path, problem, first + line - 1)
        ok = False
    if not ok:
        return None
    try:
        return _runnable(tree)
    except TemplateSyntaxError as error:
        problems.add(path, f"template: {error.message}", first + (error.lineno or 1) - 1)
        return None


def _private_attributes(tree: nodes.Template) -> Iterator[tuple[str, int]]:
    """(name, line) of each `x._name` or `x['_name']`: refused at compile time, with its line,
    rather than left to the sandbox to refuse per call."""
    for node in tree.find_all(nodes.Getattr):
        if node.attr.startswith("_"):
            yield node.attr, node.lineno
    for item in tree.find_all(nodes.Getitem):
        key = item.arg
        if (
            isinstance(key, nodes.Const)
            and isinstance(key.value, str)
            and key.value.startswith("_")
        ):
            yield key.value, item.lineno


def _text_prompt(text: str) -> CompiledArtifact:
    """A plain-text prompt: one system message; every name it uses is a required variable."""
    try:
        tree = _ENV.parse(text)
    except TemplateSyntaxError as error:
        raise _content_error(f"line {error.lineno}: template syntax: {error.message}") from None
    names = sorted(_undeclared(tree))
    if len(names) > MAX_VARIABLES:
        raise _content_error(f"line 1: at most {MAX_VARIABLES} variables")
    problems = _Problems(None)
    for name in names:
        if not _VARIABLE_NAME.fullmatch(name):
            problems.add((), f"`{name}`: a variable name is a letter, then letters, digits or _")
    for attr, line in _private_attributes(tree):
        problems.add((), f"`{attr}`: names starting with _ are not accessible", line)
    for problem, line in _refusals(tree):
        problems.add((), problem, line)
    problems.raise_any()
    variables = {name: Variable(name) for name in names if name not in _REFUSED_NAMES}
    try:
        generate = _runnable(tree)
    except TemplateSyntaxError as error:
        raise _content_error(f"line {error.lineno}: template: {error.message}") from None
    return CompiledArtifact(PROMPT_TEXT, "prompt", variables, (("system", generate),))


def _undeclared(tree: nodes.Template) -> set[str]:
    """The names a template uses without setting them; none where Jinja cannot work them out
    (a filter that does not exist: `_refusals` reports it, and `_runnable` anything else)."""
    try:
        return meta.find_undeclared_variables(tree)
    except TemplateSyntaxError:
        return set()


_REFUSED_NAMES: Final = frozenset({"namespace"})
"""Jinja globals the sandbox leaves out, refused by name rather than taken for variables."""

_REFUSED_STATEMENTS: Final[Mapping[type[nodes.Node], str]] = {
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Block: "block",
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


def _refusals(tree: nodes.Template) -> Iterator[tuple[str, int]]:
    """(problem, line) for each construct refused at compile time: those that keep state from
    one loop pass to the next, loop inside a loop or recurse (see the module's Bounds)."""
    for name in tree.find_all(nodes.Name):
        if name.name in _REFUSED_NAMES:
            yield f"`{name.name}` is not available in templates", name.lineno
    for ref in tree.find_all(nodes.NSRef):
        yield (
            f"`{{% set {ref.name}.{ref.attr} %}}`: setting an attribute is not available",
            (ref.lineno),
        )
    for kind, word in _REFUSED_STATEMENTS.items():
        for node in tree.find_all(kind):
            yield f"`{{% {word} %}}` is not available in templates", node.lineno
    nested: dict[int, nodes.For] = {}
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            yield "a recursive loop is not available in templates", loop.lineno
        for part in _loop_body(loop):
            inner = [part] if isinstance(part, nodes.For) else []
            nested.update((id(n), n) for n in (*inner, *part.find_all(nodes.For)))
    for loop in nested.values():
        yield "a loop inside a loop is not available in templates", loop.lineno
    for used in tree.find_all(nodes.Filter):
        if used.name not in _FILTERS:
            yield f"the filter `{used.name}` is not available in templates", used.lineno
    cost = _cost(tree)
    if cost > MAX_STEPS:
        yield f"more than {MAX_STEPS:,} template steps", 1


def _loop_body(loop: nodes.For) -> Iterator[nodes.Node]:
    yield from loop.body
    yield from loop.else_
    if loop.test is not None:
        yield loop.test


def _cost(node: nodes.Node) -> int:
    """Steps to run `node` once, loops counted once: the nodes it holds, text aside."""
    return sum(1 for n in node.find_all(nodes.Node) if not isinstance(n, nodes.TemplateData))


def _runnable(tree: nodes.Template) -> Callable[[Mapping[str, str]], Iterator[str]]:
    """Compile a checked tree: each loop's iterable wrapped to charge a pass its body's steps,
    the whole template charged its own steps when it starts."""
    for loop in tree.find_all(nodes.For):
        body_cost = 1 + sum(_cost(n) for n in loop.body)
        loop.iter = nodes.Filter(
            loop.iter,
            "_loop_items",
            [nodes.Const(body_cost, lineno=loop.lineno)],
            [],
            None,
            None,
            lineno=loop.lineno,
        )
    tree.set_environment(_ENV)
    template = _ENV.from_string(tree)
    return functools.partial(_charged_run, template.generate, _cost(tree))


def _charged_run(
    generate: Callable[[Mapping[str, str]], Iterator[str]], cost: int, values: Mapping[str, str]
) -> Iterator[str]:
    _charge(cost)
    yield from generate(values)
