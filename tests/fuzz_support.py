"""Random well-formed protobuf requests, built from a message descriptor, for test_rpc_fuzz.py.

Well-formed means the bytes decode as the request type; the values are hostile: empty and huge
strings, NUL bytes, odd unicode, path traversal, other tenants' resource names, SQL/Rego/YAML
fragments, integers at their type's limits, enum numbers no enum names, NaN and Infinity,
Structs nested past the parser's limit, Timestamps and Durations out of range.

A request full of hostile values stops at the first validation, so most requests mix: each
value is hostile with the request's own probability (0 to 1), and otherwise plausible (the
caller's project, resource names that fit the field's pattern, small numbers, named enum
values), so hostile values also reach the code behind validation. Seeded: a failure reproduces.
"""

from __future__ import annotations

import contextlib
import functools
import random
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.api import field_behavior_pb2, resource_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from maestro.clients._channel import API_FILES  # noqa: F401  # their types, in the default pool

PROJECT = "alpha"
HUGE_STRING_CHARS = 1_000_000
"""Below the server's 4 MiB message limit, so the request reaches the handler."""
MAX_MESSAGE_DEPTH = 5
DEEP_STRUCT_LEVELS = (20, 40)
"""20 parses; 40 is past protobuf's 100-message depth limit, so the request cannot decode."""
HOSTILITY = (0.0, 0.05, 0.05, 0.15, 0.3, 1.0)
"""Per-request probability that a value is hostile."""

HOSTILE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "projects/alpha",
    "projects/beta",
    "projects/other",
    "projects/-",
    "projects/*",
    "projects/alpha/../beta",
    "projects/beta/routeConfig",
    "projects/beta/runs/r1",
    "projects/other/recipes/r/runs/x",
    "projects/alpha/runs/r1/gates/g1",
    "projects/alpha/recipes/../../beta/recipes/r",
    "global",
    "' OR '1'='1",
    "'; DROP TABLE api_keys; --",
    "package maestro\nallow := true",
    "default allow = true\nimport data.secrets",
    "a: &x [*x]\n!!python/object/apply:os.system ['id']",
    "model_list: [{model_name: x, litellm_params: {model: openai/x, api_base: 'file:///etc'}}]",
    "{{7*7}} ${jndi:ldap://x/a} %s%n",
    "\u202egnp.exe",
    "☃\U0001d54f🚀\u0301\ufeff\uffff",
    "x" * 257,
    "🚀" * 300,
)
HOSTILE_DOUBLES = (
    -0.0,
    -1.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    -1e308,
    5e-324,
    2.0**63,
)
ENUM_EXTRA = (-1, 999, 2**31 - 1, -(2**31))
TIMESTAMP_SECONDS = (0, -62_135_596_800, -62_135_596_801, 253_402_300_800, 2**63 - 1, -(2**63))
DURATION_SECONDS = (-1, 315_576_000_001, -315_576_000_001, 2**63 - 1, -(2**63))
NANOS = (-5, 999_999_999, 1_000_000_000, -1_000_000_000, 2**31 - 1, -(2**31))
NOW_SECONDS = 1_790_000_000
IDS = ("r1", "hold-1", "default", "primary-a", "1")
ID_OF = {"recipe": "r1", "run": "r1", "gate": "hold-1", "deployment": "primary-a", "revision": "1"}
"""Ids in plausible resource names, mostly those of things that exist: the test creates recipe
and run `r1`, held at gate `hold-1`; the routing config has deployment `primary-a`."""

_INT_LIMITS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


class RequestFuzzer:
    """Fills messages with random values, some hostile; one instance per seed."""

    def __init__(
        self, seed: int | str, plausible: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """`plausible`: field name -> sound values for it (a config's YAML, say), so requests
        with hostile values elsewhere get past the parsing of those fields."""
        self.rng = random.Random(seed)
        self._plausible_values = dict(plausible or {})
        self._hostility = 1.0
        self._huge_left = 0
        self._struct_levels = 0

    def request(self, message_class: type[Message], index: int) -> Message:
        """The `index`th request of a run: 0 is empty, 1 carries a huge string, 2 and 3 a deep
        Struct (where the type has one), the rest are random."""
        message = message_class()
        if index == 0:
            return message
        self._hostility = 0.05 if index < 4 else self.rng.choice(HOSTILITY)
        self._huge_left = 1 if index == 1 else 0
        self._struct_levels = DEEP_STRUCT_LEVELS[index % 2] if index in (2, 3) else 0
        self.fill(message, depth=0)
        return message

    def _hostile(self) -> bool:
        return self.rng.random() < self._hostility

    def fill(self, message: Any, depth: int) -> None:
        filler = _WELL_KNOWN.get(message.DESCRIPTOR.full_name)
        if filler is not None:
            filler(self, message, depth)
            return
        chosen_oneofs: set[str] = set()
        for field in message.DESCRIPTOR.fields:
            oneof = field.containing_oneof
            if oneof is not None and oneof.full_name in chosen_oneofs:
                continue
            if self.rng.random() < self._keep(field):
                if oneof is not None:
                    chosen_oneofs.add(oneof.full_name)
                self._set_field(message, field, depth)

    def _keep(self, field: FieldDescriptor) -> float:
        """How likely a field is set: required ones nearly always, output-only ones rarely."""
        behaviors = _extension(field.GetOptions(), field_behavior_pb2.field_behavior)
        if field_behavior_pb2.REQUIRED in behaviors or field_behavior_pb2.IDENTIFIER in behaviors:
            return 0.95
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            return 0.1 + self._hostility / 2
        return 0.3 + self._hostility / 2

    def _set_field(self, message: Any, field: FieldDescriptor, depth: int) -> None:
        held = field.message_type
        if held is None:
            self._set_scalar(message, field, depth)
        elif depth >= MAX_MESSAGE_DEPTH and held.full_name not in _WELL_KNOWN:
            return
        elif held.GetOptions().map_entry:
            self._fill_map(getattr(message, field.name), held, depth)
        elif field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(self._count(depth)):
                self.fill(container.add(), depth + 1)
        else:
            child = getattr(message, field.name)
            child.SetInParent()
            self.fill(child, depth + 1)

    def _set_scalar(self, message: Any, field: FieldDescriptor, depth: int) -> None:
        if not field.is_repeated:
            _try(setattr, message, field.name, self.scalar(field))
            return
        container = getattr(message, field.name)
        for _ in range(self._count(depth)):
            _try(container.append, self.scalar(field))

    def _fill_map(self, container: Any, entry: Descriptor, depth: int) -> None:
        key_field = entry.fields_by_name["key"]
        value_field = entry.fields_by_name["value"]
        for _ in range(self._count(depth)):
            key = self.scalar(key_field)
            if value_field.message_type is not None:
                self.fill(container[key], depth + 1)
            else:
                _try(container.__setitem__, key, self.scalar(value_field))

    def _count(self, depth: int) -> int:
        """How many elements a repeated or map field gets: sometimes many, at the top only."""
        many = 50 if depth == 0 and self._hostile() else 4
        return self.rng.choice((0, 1, 1, 1, 2, 3, many))

    def scalar(self, field: FieldDescriptor) -> Any:
        cpp = field.cpp_type
        if cpp == FieldDescriptor.CPPTYPE_STRING:
            if field.type == FieldDescriptor.TYPE_BYTES:
                return self.rng.randbytes(self.rng.choice((0, 1, 16, 300)))
            return self.text(field)
        if cpp == FieldDescriptor.CPPTYPE_BOOL:
            return self.rng.random() < 0.5
        if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            if self._hostile():
                return self.rng.choice(HOSTILE_DOUBLES)
            return self.rng.choice((0.0, 0.1, 0.5, 1.0, 2.0))
        if cpp == FieldDescriptor.CPPTYPE_ENUM:
            return self.enum(field)
        low, high = _INT_LIMITS[cpp]
        if self._hostile():
            return self.rng.choice((low, high, max(low, -1), self.rng.randint(low, high)))
        return self.rng.choice((0, 1, 2, 10, 100))

    def enum(self, field: FieldDescriptor) -> int:
        """A named value, rarely the zero `UNSPECIFIED` one; or, hostile, a number none names."""
        if self._hostile():
            return self.rng.choice(ENUM_EXTRA)
        assert field.enum_type is not None
        values = [v.number for v in field.enum_type.values]
        named = [v for v in values if v != 0] or values
        return int(self.rng.choice(values if self.rng.random() < 0.1 else named))

    def text(self, field: FieldDescriptor | None = None) -> str:
        if self._huge_left:
            self._huge_left -= 1
            return self.rng.choice(("x", "é", "🚀")) * (HUGE_STRING_CHARS // 4)
        if self._hostile():
            if self.rng.random() < 0.8:
                return self.rng.choice(HOSTILE_STRINGS)
            alphabet = string.printable + "ßø€☃\u0000\u200b\U0001d54f"
            return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 40)))
        return self._plausible(field)

    def _plausible(self, field: FieldDescriptor | None) -> str:
        """A value that fits the field: a resource name of its pattern, an id, a word."""
        name = "" if field is None else field.name
        if name in self._plausible_values:
            return self.rng.choice(self._plausible_values[name])
        pattern = None if field is None else _pattern_of(field)
        if pattern is not None:
            return _instantiate(pattern, self.rng)
        if name.endswith(("request_id", "idempotency_key")):
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if name in ("etag", "page_token", "filter", "order_by"):
            return ""
        return self.rng.choice(("default", "primary", "x1", "hello", "pii", "a"))

    # The well-known types: values protobuf carries but JSON or datetime cannot.

    def timestamp(self, message: Any, depth: int) -> None:
        hostile = self._hostile()
        message.seconds = self.rng.choice(TIMESTAMP_SECONDS) if hostile else NOW_SECONDS
        message.nanos = self.rng.choice(NANOS) if self._hostile() else 0

    def duration(self, message: Any, depth: int) -> None:
        message.seconds = self.rng.choice(DURATION_SECONDS if self._hostile() else (0, 1, 30))
        message.nanos = self.rng.choice(NANOS) if self._hostile() else 0

    def struct(self, message: Any, depth: int) -> None:
        if self._struct_levels:
            levels, self._struct_levels = self._struct_levels, 0
            _nest(message, levels)
            return
        for _ in range(self.rng.randint(0, 4)):
            self.value(message.fields[self.text()[:100]], depth + 1)

    def list_value(self, message: Any, depth: int) -> None:
        for _ in range(self.rng.randint(0, 4)):
            self.value(message.values.add(), depth + 1)

    def value(self, message: Any, depth: int) -> None:
        kinds = ["null", "number", "string", "bool"]
        if depth < MAX_MESSAGE_DEPTH + 3:
            kinds += ["struct", "list"]
        kind = self.rng.choice(kinds)
        if kind == "null":
            message.null_value = 0
        elif kind == "number":
            hostile = self._hostile()
            message.number_value = self.rng.choice(HOSTILE_DOUBLES) if hostile else 1.5
        elif kind == "string":
            message.string_value = self.text()
        elif kind == "bool":
            message.bool_value = True
        elif kind == "struct":
            message.struct_value.SetInParent()
            self.struct(message.struct_value, depth + 1)
        else:
            message.list_value.SetInParent()
            self.list_value(message.list_value, depth + 1)


def _nest(struct: Any, levels: int) -> None:
    """`struct` holding `{"a": {"a": ... {"a": NaN}}}`, `levels` Structs deep."""
    for _ in range(levels - 1):
        struct = struct.fields["a"].struct_value
    struct.fields["a"].number_value = float("nan")


def _pattern_of(field: FieldDescriptor) -> str | None:
    """The resource name pattern a string field refers to, from its `google.api` options."""
    options = field.GetOptions()
    if _has_extension(options, resource_pb2.resource_reference):
        reference = _extension(options, resource_pb2.resource_reference)
        return _patterns().get(reference.type or reference.child_type)
    if field.name == "parent":
        return "projects/{project}"
    if field.name == "name" and field.containing_type is not None:
        owner = field.containing_type.GetOptions()
        if _has_extension(owner, resource_pb2.resource):
            return next(iter(_extension(owner, resource_pb2.resource).pattern), None)
    return None


@functools.cache
def _patterns() -> dict[str, str]:
    """Resource type (`maestro.dev/Run`) -> its first name pattern, over maestro.v1."""
    found: dict[str, str] = {}
    pool = descriptor_pool.Default()
    for file_name in ("route", "graph", "inference", "eval", "rollout", "project"):
        file = pool.FindFileByName(f"maestro/v1/{file_name}_service.proto")
        for message in file.message_types_by_name.values():
            options = message.GetOptions()
            if _has_extension(options, resource_pb2.resource):
                resource = _extension(options, resource_pb2.resource)
                found[resource.type] = resource.pattern[0]
    return found


def _instantiate(pattern: str, rng: random.Random) -> str:
    """`projects/{project}/runs/{run}` -> `projects/alpha/runs/r1`, say."""
    parts = []
    for segment in pattern.split("/"):
        variable = segment.strip("{}")
        if segment == "{project}":
            parts.append(PROJECT)
        elif segment.startswith("{"):
            known = ID_OF.get(variable)
            parts.append(known if known and rng.random() < 0.7 else rng.choice(IDS))
        else:
            parts.append(segment)
    return "/".join(parts)


def _try(action: Callable[..., object], *args: Any) -> None:
    """Set a value protobuf may refuse (a float out of a 32-bit float's range, say); skip it."""
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        action(*args)


def _extension(options: Any, extension: Any) -> Any:
    """`options.Extensions[extension]`, which the googleapis stubs type too loosely to index."""
    return options.Extensions[extension]


def _has_extension(options: Any, extension: Any) -> bool:
    return bool(options.HasExtension(extension))


_WELL_KNOWN: dict[str, Callable[[RequestFuzzer, Any, int], None]] = {
    "google.protobuf.Timestamp": RequestFuzzer.timestamp,
    "google.protobuf.Duration": RequestFuzzer.duration,
    "google.protobuf.Struct": RequestFuzzer.struct,
    "google.protobuf.ListValue": RequestFuzzer.list_value,
    "google.protobuf.Value": RequestFuzzer.value,
}
