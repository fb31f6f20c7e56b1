"""The gRPC mapping is lossless, covers every GTL message and field, and its frames are wire-compatible.

Two sources of messages: the shared protocol strategies (``strategies.any_message``), and strategies
derived here from the msgspec types themselves, so every field of every Struct, a field added
tomorrow included, takes every kind of value its type accepts (None, empty, unicode, int64 bounds,
infinities and -0.0, free-form JSON with integers of any size).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import strategies
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.protocol import ProtocolError
from gtl_nb.protocol import messages as m
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import CODECS, FRAME_TYPES, PROTO_TYPES, from_proto, parse_frame, to_frame, to_proto

INT64 = st.integers(-(2**63), 2**63 - 1)
FREE_FORM = st.dictionaries(st.text(max_size=8), strategies.json_values | st.integers(), max_size=4)
WIRE_TYPES = sorted(m.MESSAGE_TYPES.values(), key=lambda cls: cls.__name__)
STRUCTS = sorted(
    (
        cls
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__module__ == m.__name__
    ),
    key=lambda cls: cls.__name__,
)
WRAPPERS = {"Frame", "ClientFrame", "ServerFrame", "StreamEvent", "CompletionResult", "StringList", "ToolList"}
WRAPPERS |= {"ListProvidersRequest", "ListProvidersResponse"}


def values_of(kind: mi.Type) -> st.SearchStrategy[Any]:
    """Every kind of value the msgspec type ``kind`` accepts, as the mapping must carry it."""
    if isinstance(kind, mi.UnionType):
        return st.one_of([values_of(member) for member in kind.types])
    if isinstance(kind, mi.NoneType):
        return st.none()
    if isinstance(kind, mi.StrType):
        return st.text(max_size=30) | st.sampled_from(["", "\x00", "ünï😀", "a\nb"])
    if isinstance(kind, mi.IntType) and kind.ge is not None:  # a field with limits of its own (max_tokens)
        greatest = 2**63 - 1 if kind.le is None else kind.le
        return st.integers(min_value=kind.ge, max_value=greatest) | st.sampled_from([kind.ge, greatest])
    if isinstance(kind, mi.IntType):
        return INT64 | st.sampled_from([0, -(2**63), 2**63 - 1])
    if isinstance(kind, mi.FloatType) and (kind.ge is not None or kind.le is not None):
        # a field with limits of its own (temperature, top_p): what it accepts, its ends included
        ends = [end for end in (kind.ge, kind.le) if end is not None]
        return st.floats(min_value=kind.ge, max_value=kind.le) | st.sampled_from(ends)
    if isinstance(kind, mi.FloatType):
        return st.floats(allow_nan=False) | st.sampled_from([-0.0, math.inf, -math.inf, 5e-324])
    if isinstance(kind, mi.BoolType):
        return st.booleans()
    if isinstance(kind, mi.LiteralType):
        return st.sampled_from(sorted(kind.values))
    if isinstance(kind, mi.DictType):
        return FREE_FORM
    if isinstance(kind, mi.ListType):
        return st.lists(values_of(kind.item_type), max_size=3)
    if isinstance(kind, mi.StructType):
        return structs_of(kind.cls)
    raise AssertionError(f"no strategy for {kind}: extend values_of")


def structs_of(cls: type) -> st.SearchStrategy[Any]:
    """Instances of the Struct ``cls``: required fields always given, the others given or left default —
    the combinations its ``__post_init__`` accepts (a message's parts and images must agree)."""
    info = mi.type_info(cls)
    required = {f.name: values_of(f.type) for f in info.fields if f.required}
    optional = {f.name: values_of(f.type) for f in info.fields if not f.required}
    return (
        st.fixed_dictionaries(required, optional=optional)
        .map(lambda kwargs: _built(cls, kwargs))
        .filter(lambda value: value is not None)
    )


def _built(cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except ValueError:  # a combination the Struct refuses: not a value the mapping must carry
        return None


every_struct = st.one_of([structs_of(cls) for cls in STRUCTS])
every_wire_message = st.one_of([structs_of(cls) for cls in WIRE_TYPES])


def cases_of(frame_type: type) -> dict[str, Any]:
    """The field descriptors of a frame's ``oneof message``, by name (the GTL ``type``)."""
    return {fd.name: fd for fd in frame_type.DESCRIPTOR.oneofs_by_name["message"].fields}


def assert_same(back: Any, message: Any) -> None:
    """Equal, and equal as JSON too: 1 and 1.0, True and 1, 0.0 and -0.0 are told apart there."""
    assert type(back) is type(message)
    assert back == message
    assert msgspec.json.encode(back) == msgspec.json.encode(message)


@given(strategies.any_message)
def test_shared_strategies_round_trip_through_bytes(message):
    frame = to_frame(message)
    assert_same(parse_frame(frame.SerializeToString()), message)


@given(every_struct)
def test_every_struct_round_trips(message):
    assert_same(from_proto(to_proto(message)), message)


@given(every_wire_message)
def test_every_wire_message_round_trips_through_bytes_and_its_directed_frame(message):
    assert_same(parse_frame(to_frame(message).SerializeToString()), message)
    tag = message.__struct_config__.tag
    for frame_type in (pb.ClientFrame, pb.ServerFrame, pb.StreamEvent):
        if tag in cases_of(frame_type):
            data = to_frame(message, frame_type).SerializeToString()
            assert_same(parse_frame(data, frame_type), message)
            assert_same(parse_frame(data, pb.Frame), message)  # a restricted frame reads as a Frame


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda cls: cls.__name__)
def test_unset_fields_read_as_the_gtl_defaults(cls):
    expected = cls(**{f.name: _minimal(f.type) for f in mi.type_info(cls).fields if f.required})
    proto = to_proto(expected)  # sets every field, defaults included
    for plan in CODECS.by_struct[cls].fields:
        if not plan.required:
            for name in plan.converter.proto_fields:
                proto.ClearField(name)
    assert_same(from_proto(proto), expected)


def _minimal(kind: mi.Type) -> Any:
    """A value for a required field."""
    if isinstance(kind, mi.LiteralType):
        return sorted(kind.values)[0]
    if isinstance(kind, mi.ListType):
        return []
    if isinstance(kind, mi.StructType):
        return kind.cls(**{f.name: _minimal(f.type) for f in kind.fields if f.required})
    assert isinstance(kind, mi.StrType), kind
    return "x"


def test_defaults_that_differ_from_the_proto_zero_values():
    request = from_proto(pb.CompletionRequest(session_id="s", model="echo"))
    assert request.stream is True and request.messages == [] and request.stop is None and request.tool_choice is None
    assert from_proto(pb.ModelInfo(name="x")).supports_streaming is True
    assert from_proto(pb.Done(session_id="s")).finish_reason == "stop"
    assert from_proto(pb.Done(session_id="s", finish_reason=pb.FINISH_REASON_UNSPECIFIED)).finish_reason == "stop"
    assert from_proto(pb.ToolCall(id="1", name="f")).arguments == "{}"
    assert from_proto(pb.Tool(name="t")).parameters == {"type": "object", "properties": {}}


def test_none_empty_and_choice_are_told_apart():
    base = {"session_id": "s", "model": "echo", "messages": [m.Message(role="user", content="")]}
    for variant in [
        {"stop": None},
        {"stop": []},
        {"stop": [""]},
        {"tools": []},
        {"providers": []},
        {"tool_choice": "auto"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"tool_choice": {}},
        {"metadata": {}},
        {"cache": False},
        {"max_tokens": 1},
        {"temperature": 0.0},
    ]:
        request = m.CompletionRequest(**base, **variant)
        assert_same(from_proto(to_proto(request)), request)
    assert from_proto(to_proto(m.Message(role="user", content=""))).content == ""
    assert from_proto(to_proto(m.Message(role="user"))).content is None
    assert from_proto(to_proto(m.Hello(versions=[]))).versions == []
    assert from_proto(to_proto(m.Hello())).versions is None


def test_floats_keep_their_bits_in_typed_fields():
    for value in [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]:
        back = from_proto(to_proto(m.Usage(session_id="s", cost=value))).cost
        assert (
            math.isnan(back)
            if math.isnan(value)
            else (back == value and math.copysign(1, back) == math.copysign(1, value))
        )


def test_free_form_integers_of_any_size_and_1_versus_1_0():
    metadata = {"big": 10**40, "neg": -(10**30), "one": 1, "float": 1.0, "t": True, "nested": {"x": [None, 2**64]}}
    request = m.CompletionRequest(session_id="s", model="echo", messages=[], metadata=metadata)
    assert_same(from_proto(to_proto(request)), request)


# --- coverage: a new message type or field cannot be forgotten ----------------------------------


def test_every_struct_of_messages_py_has_a_proto_type():
    assert set(PROTO_TYPES) == set(STRUCTS)


def test_every_wire_message_is_a_frame_case_named_by_its_type():
    cases = cases_of(pb.Frame)
    assert set(cases) == set(m.MESSAGE_TYPES)
    for tag, cls in m.MESSAGE_TYPES.items():
        assert cases[tag].message_type is PROTO_TYPES[cls].DESCRIPTOR


def test_every_message_type_of_the_proto_is_mapped_or_a_wrapper():
    mapped = {proto.DESCRIPTOR.name for proto in PROTO_TYPES.values()}
    assert set(pb.DESCRIPTOR.message_types_by_name) == mapped | WRAPPERS


def test_every_proto_field_carries_a_gtl_field():
    for cls, proto_cls in PROTO_TYPES.items():
        used = {name for plan in CODECS.by_struct[cls].fields for name in plan.converter.proto_fields}
        assert used == set(proto_cls.DESCRIPTOR.fields_by_name), cls.__name__


def test_enums_match_the_literals_exactly():
    for literal, enum in [(m.Role, pb.Role), (m.StatusState, pb.StatusState), (m.FinishReason, pb.FinishReason)]:
        prefix = enum.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")
        names = {value.name for value in enum.DESCRIPTOR.values if value.number}
        assert names == {prefix + value.upper() for value in literal.__args__}
    assert {v.name for v in pb.ErrorCode.DESCRIPTOR.values if v.number} == {
        f"ERROR_CODE_{c}" for c in m.ErrorCode.__args__
    }


def test_restricted_frames_are_subsets_of_frame_with_the_same_numbers():
    full = cases_of(pb.Frame)
    for frame_type in FRAME_TYPES:
        for case in frame_type.DESCRIPTOR.oneofs_by_name["message"].fields:
            assert case.number == full[case.name].number and case.message_type is full[case.name].message_type
        for field in frame_type.DESCRIPTOR.fields:  # outside the oneof too (ServerFrame.more)
            same = pb.Frame.DESCRIPTOR.fields_by_name.get(field.name)
            assert same is not None and same.number == field.number and same.type == field.type, field.name
    directions = {
        pb.ClientFrame: {"hello", "completion_request", "cancel", "error", "query"},
        pb.ServerFrame: {
            "hello",
            "status",
            "token",
            "reasoning",
            "tool_call",
            "usage",
            "done",
            "error",
            "provider_info",
            "answer",
        },
        pb.StreamEvent: {"status", "token", "reasoning", "tool_call", "usage", "done", "error"},
    }
    for frame_type, cases in directions.items():
        assert set(cases_of(frame_type)) == cases


def test_the_service_has_the_three_calls():
    service = pb.DESCRIPTOR.services_by_name["GTL"]
    calls = {
        method.name: (method.input_type.name, method.output_type.name, method.client_streaming, method.server_streaming)
        for method in service.methods
    }
    assert calls == {
        "Session": ("ClientFrame", "ServerFrame", True, True),
        "Complete": ("CompletionRequest", "CompletionResult", False, False),
        "ListProviders": ("ListProvidersRequest", "ListProvidersResponse", False, False),
    }


def test_reasoning_effort_and_budget_cross_grpc_as_they_cross_json() -> None:
    """gRPC carries the pair in its own enum and int64 (``gtl.proto``), and refuses what the codec refuses."""
    hello = [m.Message(role="user", content="hi")]
    for effort, budget in (("max", None), ("minimal", 1024), ("none", 0), (None, 0), (None, None)):
        request = m.CompletionRequest(
            session_id="s", model="m", messages=hello, reasoning_effort=effort, reasoning_budget=budget
        )
        proto = to_proto(request)
        assert proto.HasField("reasoning_effort") == (effort is not None)
        assert proto.HasField("reasoning_budget") == (budget is not None)
        assert from_proto(pb.CompletionRequest.FromString(proto.SerializeToString())) == request
    assert pb.ReasoningEffort.Name(to_proto(m.CompletionRequest(
        session_id="s", model="m", messages=hello, reasoning_effort="xhigh"
    )).reasoning_effort) == "REASONING_EFFORT_XHIGH"  # fmt: skip
    negative = to_proto(m.CompletionRequest(session_id="s", model="m", messages=hello))
    negative.reasoning_budget = -5
    with pytest.raises(ProtocolError, match="reasoning_budget: must be at least 0"):
        from_proto(negative)
    disagreeing = to_proto(m.CompletionRequest(session_id="s", model="m", messages=hello, reasoning_effort="none"))
    disagreeing.reasoning_budget = 100
    with pytest.raises(ProtocolError, match="disagree on whether to think"):
        from_proto(disagreeing)
