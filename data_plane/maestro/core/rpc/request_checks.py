"""Reject well-formed requests whose well-known-type values no handler can use.

Protobuf happily carries a NaN or Infinity inside a `google.protobuf.Struct`/`Value` (JSON has
neither), a `Timestamp` in year 0 or with a negative nanos, a `Duration` of a million years. Deep
in a handler those become a `ValueError` from `json.dumps` or `ToDatetime`, i.e. INTERNAL. This
module checks them once, at the edge, for every method, and answers INVALID_ARGUMENT naming the
field instead.

The walk is compiled once per method, when its handler is wrapped: only the field paths that
can reach a Struct, Value, ListValue, Timestamp or Duration are visited per request (through
nested, repeated and map fields; recursive message types included), and a method whose request
can reach none gets no check at all. `Any` contents are opaque and not looked into.

A field path is the expression that reaches the value from the request in generated code:
`state_patch.fields["x"].list_value.values[2].number_value`, `observations[2].end_time.nanos`.

On a request stream a bad message ends the call, unless the method answers each message on the
stream (StreamChoose, InteractRun: "a rejected command does not end the stream"): those are
marked `@checks_each_request` and call `check_request` on each message themselves.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from maestro.core.errors import FieldViolation, InvalidArgument

RequestCheck = Callable[[Any], None]
"""Raises `InvalidArgument` for a request the method must not see; returns None otherwise."""

MAX_STRUCT_DEPTH = 64
"""Struct/ListValue nesting beyond this is a violation (and bounds the walk's recursion).

The protobuf parser already refuses messages nested deeper than 100 (about 33 Struct levels
in a request); this keeps the walk bounded if that limit is ever raised."""
MAX_VIOLATIONS = 10
"""The walk stops after this many: the status travels in trailers, which must stay small."""
MAX_KEY_CHARS = 40
"""Map keys longer than this are cut in paths, for the same reason."""

TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
DURATION_MAX_SECONDS = 315_576_000_000  # about 10,000 years, as google/protobuf/duration.proto
MAX_NANOS = 999_999_999

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"

Found = list[FieldViolation]
Inspect = Callable[[Any, str, Found], None]
"""Walks one value at a path, appending what is wrong with it to `found`."""


class _Enough(Exception):
    """Raised inside the walk once MAX_VIOLATIONS are found, to stop it."""


def _report(found: Found, path: str, description: str) -> None:
    found.append(FieldViolation(path, description))
    if len(found) >= MAX_VIOLATIONS:
        raise _Enough


# Leaf checks: the well-known types.


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_timestamp(value: Any, path: str, found: Found) -> None:
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        _report(found, _join(path, "seconds"), "must be within 0001-01-01 and 9999-12-31")
    if not 0 <= value.nanos <= MAX_NANOS:
        _report(found, _join(path, "nanos"), f"must be within 0 and {MAX_NANOS}")


def _check_duration(value: Any, path: str, found: Found) -> None:
    seconds, nanos = value.seconds, value.nanos
    if not -DURATION_MAX_SECONDS <= seconds <= DURATION_MAX_SECONDS:
        _report(
            found,
            _join(path, "seconds"),
            f"must be within -{DURATION_MAX_SECONDS} and {DURATION_MAX_SECONDS}",
        )
    if not -MAX_NANOS <= nanos <= MAX_NANOS:
        _report(found, _join(path, "nanos"), f"must be within -{MAX_NANOS} and {MAX_NANOS}")
    elif (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        _report(found, _join(path, "nanos"), "must have the same sign as seconds")


def _check_value(value: Any, path: str, found: Found, depth: int = 0) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            _report(
                found, _join(path, "number_value"), "must be a finite number, not NaN or Infinity"
            )
    elif kind == "struct_value":
        _check_struct(value.struct_value, _join(path, "struct_value"), found, depth + 1)
    elif kind == "list_value":
        _check_list(value.list_value, _join(path, "list_value"), found, depth + 1)


def _check_struct(value: Any, path: str, found: Found, depth: int = 0) -> None:
    if depth > MAX_STRUCT_DEPTH:
        _report(found, path, f"must not be nested more than {MAX_STRUCT_DEPTH} levels deep")
        return
    for key, item in value.fields.items():
        _check_value(item, f"{_join(path, 'fields')}[{_key(key)}]", found, depth)


def _check_list(value: Any, path: str, found: Found, depth: int = 0) -> None:
    if depth > MAX_STRUCT_DEPTH:
        _report(found, path, f"must not be nested more than {MAX_STRUCT_DEPTH} levels deep")
        return
    for index, item in enumerate(value.values):
        _check_value(item, f"{_join(path, 'values')}[{index}]", found, depth)


_LEAVES: dict[str, Inspect] = {
    _STRUCT: _check_struct,
    _VALUE: _check_value,
    _LIST_VALUE: _check_list,
    _TIMESTAMP: _check_timestamp,
    _DURATION: _check_duration,
}


def _key(key: object) -> str:
    """A map key as it appears in a path: strings JSON-quoted, long ones cut."""
    if not isinstance(key, str):
        return str(key)
    if len(key) > MAX_KEY_CHARS:
        key = key[:MAX_KEY_CHARS] + "…"
    return json.dumps(key, ensure_ascii=False)


# Compiling: which message types can reach a leaf, and the walk over them.


def _message_fields(message: Descriptor) -> list[tuple[FieldDescriptor, Descriptor, str]]:
    """Each field of `message` that holds messages: the field, the message type it holds (a map
    field's value type) and its shape: "single", "repeated" or "map". Maps of scalars hold none.
    """
    found = []
    for field in message.fields:
        held = field.message_type
        if held is None:
            continue
        shape = "repeated" if field.is_repeated else "single"
        if held.GetOptions().map_entry:
            held, shape = held.fields_by_name["value"].message_type, "map"
            if held is None:
                continue
        found.append((field, held, shape))
    return found


def _reaching(root: Descriptor) -> set[str]:
    """Full names of the message types, from `root` down, that can hold a leaf type.

    A fixed point over the type graph, so recursive message types are handled: a type reaches a
    leaf if one of its message fields is a leaf type or a type that reaches one.
    """
    types: dict[str, Descriptor] = {}
    pending = [root]
    while pending:
        message = pending.pop()
        if message.full_name in types or message.full_name in _LEAVES:
            continue
        types[message.full_name] = message
        pending.extend(held for _, held, _ in _message_fields(message))
    reaching: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, message in types.items():
            if name not in reaching and any(
                held.full_name in _LEAVES or held.full_name in reaching
                for _, held, _ in _message_fields(message)
            ):
                reaching.add(name)
                changed = True
    return reaching


def _compile(root: Descriptor) -> Inspect | None:
    if root.full_name in _LEAVES:
        return _LEAVES[root.full_name]
    reaching = _reaching(root)
    if root.full_name not in reaching:
        return None
    walks: dict[str, Inspect] = {}

    def walk_of(message: Descriptor) -> Inspect:
        name = message.full_name
        if name in _LEAVES:
            return _LEAVES[name]
        if name not in walks:
            # Registered before its fields are compiled, so a recursive type finds itself.
            fields: list[_FieldWalk] = []
            walks[name] = _message_walk(fields)
            fields.extend(
                _FieldWalk(field.name, shape, walk_of(held))
                for field, held, shape in _message_fields(message)
                if held.full_name in _LEAVES or held.full_name in reaching
            )
        return walks[name]

    return walk_of(root)


@dataclass(frozen=True, slots=True)
class _FieldWalk:
    name: str
    shape: str  # "single", "repeated" or "map"
    inspect: Inspect


def _message_walk(fields: list[_FieldWalk]) -> Inspect:
    def walk(message: Any, path: str, found: Found) -> None:
        prefix = f"{path}." if path else ""
        for field in fields:
            name = field.name
            if field.shape == "single":
                if message.HasField(name):
                    field.inspect(getattr(message, name), prefix + name, found)
            elif field.shape == "repeated":
                for index, item in enumerate(getattr(message, name)):
                    field.inspect(item, f"{prefix}{name}[{index}]", found)
            else:
                for key, item in getattr(message, name).items():
                    field.inspect(item, f"{prefix}{name}[{_key(key)}]", found)

    return walk


def compile_request_check(request_type: Descriptor) -> RequestCheck | None:
    """The check for requests of `request_type`, or None when it holds no checked field."""
    inspect = _compile(request_type)
    if inspect is None:
        return None

    def check(request: Any) -> None:
        found: Found = []
        with contextlib.suppress(_Enough):
            inspect(request, "", found)
        if found:
            raise InvalidArgument(found)

    return check


def check_for_handler(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> RequestCheck | None:
    """The check the interceptor runs on `handler`'s requests (`method` is its full name): none
    where the request type holds no checked field, or where the behaviour checks each message
    itself (`checks_each_request`)."""
    behaviors = (handler.stream_stream, handler.stream_unary)
    if any(getattr(b, "checks_each_request", False) for b in behaviors):
        return None
    request_type = request_type_of(method, handler.request_deserializer)
    return None if request_type is None else compile_request_check(request_type)


Behavior = TypeVar("Behavior", bound=Callable[..., Any])


def checks_each_request(behavior: Behavior) -> Behavior:
    """Mark a request-stream handler that answers a bad message on the stream and goes on: it
    calls `check_request` on every message, so the interceptor does not end the call on one."""
    behavior.checks_each_request = True  # type: ignore[attr-defined]
    return behavior


def check_request(message: Message) -> None:
    """Raise `InvalidArgument` if `message` holds a value the edge refuses (see the module)."""
    check = _check_for_type(message.DESCRIPTOR)
    if check is not None:
        check(message)


@functools.cache
def _check_for_type(request_type: Descriptor) -> RequestCheck | None:
    return compile_request_check(request_type)


def request_type_of(method: str, deserializer: Callable[[bytes], Any] | None) -> Descriptor | None:
    """The request message type of `method` (`/package.Service/Method`), if it can be known.

    Generated and `unimplemented` handlers deserialize with the bound `Message.FromString`, whose
    owner is the message class; otherwise the method is looked up in the default descriptor
    pool. A handler without a deserializer (raw bytes) has no known type.
    """
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, Message):
        descriptor = owner.DESCRIPTOR
        return descriptor if isinstance(descriptor, Descriptor) else None
    service_name, _, method_name = method.lstrip("/").partition("/")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return None
    found = service.methods_by_name.get(method_name)
    return None if found is None else found.input_type


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What `tolerant_deserializer` hands on for bytes that are not a valid request, so the call
    can be answered INVALID_ARGUMENT (after authentication) instead of grpc's UNKNOWN, which
    would also echo the parser's exception text."""

    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            [FieldViolation("request", f"cannot be decoded: {self.reason}")],
            reason="MALFORMED_REQUEST",
        )


def tolerant_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserializer`, returning an `UndecodableRequest` where it would raise `DecodeError`
    (corrupt bytes, or messages nested past the parser's depth limit of 100)."""

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            too_deep = "MaxDepth" in str(error)
            reason = "messages are nested too deeply" if too_deep else "the encoding is corrupt"
            return UndecodableRequest(reason)

    return deserialize
