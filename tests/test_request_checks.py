"""The edge checks of `core/rpc/request_checks.py`, without a server: which fields a request
type gets checked on, the paths violations name, the bounds. Over the wire: test_rpc_fuzz.py."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor

from maestro.core.errors import InvalidArgument
from maestro.core.rpc.request_checks import (
    MAX_STRUCT_DEPTH,
    MAX_VIOLATIONS,
    UndecodableRequest,
    check_for_handler,
    check_request,
    checks_each_request,
    compile_request_check,
    request_type_of,
    tolerant_deserializer,
)
from maestro.v1 import graph_service_pb2, project_service_pb2, route_service_pb2


def _violations(request: Any) -> dict[str, str]:
    check = compile_request_check(request.DESCRIPTOR)
    assert check is not None
    with pytest.raises(InvalidArgument) as caught:
        check(request)
    return {v.field: v.description for v in caught.value.violations}


def _passes(request: Any) -> None:
    check = compile_request_check(request.DESCRIPTOR)
    assert check is not None
    check(request)


def _recursive_types() -> dict[str, Descriptor]:
    """`A {B b; Timestamp t; map<string, A> by_key}` and `B {A a}`: B reaches a Timestamp only
    through A, which a depth-first walk that treats "in progress" as "no" gets wrong."""
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    file = descriptor_pb2.FileDescriptorProto(
        name="recursive.proto",
        package="t",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    a = file.message_type.add(name="A")
    a.field.add(name="b", number=1, type=message, label=optional, type_name=".t.B")
    a.field.add(
        name="t", number=2, type=message, label=optional, type_name=".google.protobuf.Timestamp"
    )
    a.field.add(name="by_key", number=3, type=message, label=repeated, type_name=".t.A.ByKeyEntry")
    entry = a.nested_type.add(name="ByKeyEntry")
    entry.options.map_entry = True
    entry.field.add(
        name="key", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING, label=optional
    )
    entry.field.add(name="value", number=2, type=message, label=optional, type_name=".t.A")
    b = file.message_type.add(name="B")
    b.field.add(name="a", number=1, type=message, label=optional, type_name=".t.A")
    pool.Add(file)
    return {name: pool.FindMessageTypeByName(f"t.{name}") for name in ("A", "B")}


def test_a_request_without_checked_types_gets_no_check() -> None:
    assert compile_request_check(project_service_pb2.GetProjectRequest.DESCRIPTOR) is None


def test_recursive_types_are_walked_through_each_other_and_maps() -> None:
    types = _recursive_types()
    b_class = message_factory.GetMessageClass(types["B"])
    request: Any = b_class()
    request.a.by_key["k"].b.a.t.nanos = -1
    assert _violations(request) == {'a.by_key["k"].b.a.t.nanos': "must be within 0 and 999999999"}


def test_nan_and_infinity_anywhere_in_a_struct_name_their_path() -> None:
    request = graph_service_pb2.SubmitGateDecisionRequest()
    request.state_patch.update({"fine": [1, "x", {"ok": True}]})
    request.state_patch.get_or_create_struct("s")["inf"] = float("inf")
    request.edited_action.get_or_create_list("l").extend([0, float("-inf")])
    assert set(_violations(request)) == {
        'state_patch.fields["s"].struct_value.fields["inf"].number_value',
        'edited_action.fields["l"].list_value.values[1].number_value',
    }


def test_struct_nesting_past_the_limit_is_a_violation() -> None:
    request = graph_service_pb2.SubmitGateDecisionRequest()
    level = request.state_patch
    for _ in range(MAX_STRUCT_DEPTH + 1):
        level = level.fields["a"].struct_value
    level["x"] = 1
    [(path, description)] = _violations(request).items()
    assert path.count('fields["a"]') == MAX_STRUCT_DEPTH + 1
    assert "nested" in description


def test_long_and_odd_keys_are_quoted_and_cut_in_paths() -> None:
    request = graph_service_pb2.SubmitGateDecisionRequest()
    request.state_patch['"q"' + "k" * 100] = float("nan")
    [path] = _violations(request)
    assert path.startswith('state_patch.fields["\\"q\\"kkk')
    assert path.endswith('…"].number_value')
    assert len(path) < 100


def test_violations_stop_at_the_cap() -> None:
    request = graph_service_pb2.SubmitGateDecisionRequest()
    request.state_patch.update({f"k{i}": float("nan") for i in range(100)})
    assert len(_violations(request)) == MAX_VIOLATIONS


@pytest.mark.parametrize(
    ("seconds", "nanos", "bad"),
    [
        (-62_135_596_800, 0, set()),
        (253_402_300_799, 999_999_999, set()),
        (-62_135_596_801, 0, {"seconds"}),
        (253_402_300_800, 0, {"seconds"}),
        (0, -1, {"nanos"}),
        (0, 1_000_000_000, {"nanos"}),
    ],
)
def test_timestamps_outside_years_1_to_9999_or_nanos_outside_a_second_are_refused(
    seconds: int, nanos: int, bad: set[str]
) -> None:
    observation = route_service_pb2.DeploymentObservation(
        start_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    )
    request = route_service_pb2.ReportObservationsRequest(observations=[observation])
    if not bad:
        _passes(request)
        return
    assert set(_violations(request)) == {f"observations[0].start_time.{field}" for field in bad}


@pytest.mark.parametrize(
    ("seconds", "nanos", "bad"),
    [
        (315_576_000_000, 999_999_999, None),
        (-315_576_000_000, -999_999_999, None),
        (0, -5, None),
        (315_576_000_001, 0, "seconds"),
        (0, 1_000_000_000, "nanos"),
        (1, -1, "nanos"),
        (-1, 1, "nanos"),
    ],
)
def test_durations_beyond_ten_thousand_years_or_with_mixed_signs_are_refused(
    seconds: int, nanos: int, bad: str | None
) -> None:
    request = graph_service_pb2.CreateRecipeRequest()
    request.recipe.nodes.add().timeout.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    if bad is None:
        _passes(request)
        return
    assert list(_violations(request)) == [f"recipe.nodes[0].timeout.{bad}"]


def test_the_request_type_comes_from_the_deserializer_or_the_method_name() -> None:
    choose = route_service_pb2.ChooseRequest
    assert request_type_of("/any/Method", choose.FromString) is choose.DESCRIPTOR
    assert (
        request_type_of("/maestro.v1.RouteService/Choose", lambda raw: choose.FromString(raw))
        is choose.DESCRIPTOR
    )
    assert request_type_of("/maestro.v1.RouteService/Choose", None) is None
    assert request_type_of("/no.Such/Method", lambda raw: raw) is None


def test_a_stream_that_answers_each_bad_message_itself_gets_no_check_from_the_edge() -> None:
    async def behavior(requests: Any, context: Any) -> Any:
        yield  # pragma: no cover

    request = graph_service_pb2.InteractRunRequest
    path = "/maestro.v1.GraphService/InteractRun"
    plain = grpc.stream_stream_rpc_method_handler(behavior, request.FromString)
    assert check_for_handler(path, plain) is not None
    marked = grpc.stream_stream_rpc_method_handler(
        checks_each_request(behavior), request.FromString
    )
    assert check_for_handler(path, marked) is None
    bad = request(request_id="x")
    bad.decide.state_patch["x"] = float("nan")
    with pytest.raises(InvalidArgument):
        check_request(bad)


def test_bytes_that_do_not_decode_become_an_undecodable_request() -> None:
    deserialize = tolerant_deserializer(struct_pb2.Struct.FromString)
    assert deserialize(b"") == struct_pb2.Struct()
    undecodable = deserialize(b"\xff\xff")
    assert isinstance(undecodable, UndecodableRequest)
    [violation] = undecodable.error().violations
    assert violation.field == "request"
    assert "corrupt" in violation.description
