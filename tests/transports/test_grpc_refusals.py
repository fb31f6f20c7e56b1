"""The gRPC mapping refuses what it cannot carry with ``ProtocolError`` only, naming the field, never the value."""

from __future__ import annotations

import pytest
import strategies
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.protocol import messages as m
from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH
from gtl_nb.protocol.errors import FrameTooLargeError, ProtocolError
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import from_proto, parse_frame, to_frame, to_proto


def nested_object(depth: int) -> dict:
    """A JSON object nested ``depth`` deep (itself counting as one)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def request(**fields) -> m.CompletionRequest:
    fields.setdefault("messages", [m.Message(role="user", content="hi")])
    return m.CompletionRequest(session_id="s", model="echo", **fields)


@pytest.mark.parametrize(
    ("message", "where"),
    [
        (m.Usage(session_id="s", tokens_in=2**63), "tokens_in: an integer outside the int64 range"),
        (m.Status(session_id="s", state="queued", attempt=-(2**63) - 1), "attempt: an integer outside the int64"),
        (m.Token(session_id="s", text="a\ud800"), "text: a lone surrogate"),
        (m.Token(session_id="s", text=None), "text: must not be None"),  # type: ignore[arg-type]
        (m.Token(session_id="s", text=5), "text: expected str, got int"),  # type: ignore[arg-type]
        (request(temperature=10**400), "temperature: an integer too large for a double"),
        (request(metadata=[1]), "metadata: expected a JSON object"),  # type: ignore[arg-type]
        (request(metadata={"a": object()}), "metadata: not representable as JSON"),
        (
            request(metadata=nested_object(DEFAULT_MAX_DEPTH + 1)),
            f"metadata: JSON nested deeper than {DEFAULT_MAX_DEPTH}",
        ),
        (request(tool_choice=["auto"]), "tool_choice: expected a JSON object"),  # type: ignore[arg-type]
        (request(stop="abc"), "stop: expected a list"),  # type: ignore[arg-type]
        (request(messages=[{"role": "user"}]), "messages[0]: expected Message, got dict"),  # type: ignore[list-item]
        (request(messages=[m.Message(role="robot")]), "messages[0].role: not one of the Role values"),  # type: ignore[arg-type]
        (
            m.ToolCallEvent(session_id="s", function=m.ToolCall(id="1", name="\udfff")),
            "function.name: a lone surrogate",
        ),
    ],
)
def test_values_the_proto_cannot_carry(message, where):
    with pytest.raises(ProtocolError, match="cannot convert") as caught:
        to_proto(message)
    assert where in str(caught.value)


def test_the_depth_limit_is_the_codecs_and_the_object_counts_as_one():
    to_proto(request(metadata=nested_object(DEFAULT_MAX_DEPTH)))
    proto = pb.CompletionRequest(session_id="s", model="m", metadata_json="[" * 2000 + "]" * 2000)
    with pytest.raises(ProtocolError, match="metadata: JSON nested deeper than 64"):
        from_proto(proto)
    deep = '{"a":' * (DEFAULT_MAX_DEPTH + 1) + "1" + "}" * (DEFAULT_MAX_DEPTH + 1)
    with pytest.raises(ProtocolError, match="nested deeper"):
        from_proto(pb.Done(session_id="s", provider_data_json=deep))
    assert from_proto(pb.Done(session_id="s", provider_data_json=deep[5:-1])).provider_data is not None


def test_the_size_limit_applies_both_ways():
    big = request(metadata={"k": "x" * 100})
    with pytest.raises(ProtocolError, match="larger than 50 bytes"):
        to_proto(big, max_json_bytes=50)
    with pytest.raises(ProtocolError, match="larger than 50 bytes"):
        from_proto(to_proto(big), max_json_bytes=50)
    with pytest.raises(ProtocolError, match="larger than 100 bytes"):
        from_proto(pb.Tool(name="t", parameters_json='{"k": "' + "é" * 60 + '"}'), max_json_bytes=100)


def test_a_credential_is_never_quoted():
    with pytest.raises(ProtocolError) as caught:
        to_proto(m.Hello(versions=["1.0"], token="sk-secret-\ud800"))
    assert "token: a lone surrogate" in str(caught.value) and "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("proto", "where"),
    [
        (pb.Frame(), "a Frame without a message"),
        (pb.ClientFrame(), "a ClientFrame without a message"),
        (pb.Status(session_id="s"), "state: is required but not set"),
        (pb.Done(session_id="s", finish_reason=99), "finish_reason: unknown FinishReason value 99"),  # a closed enum
        (pb.Error(session_id="s", message="m"), "code: is required but not set"),
        (pb.ToolCallEvent(session_id="s"), "function: is required but not set"),
        (pb.CompletionRequest(messages=[pb.ChatMessage(role=1), pb.ChatMessage()]), "messages[1].role: is required"),
        (pb.CompletionRequest(metadata_json="{"), "metadata: not the JSON text of an object"),
        (pb.CompletionRequest(metadata_json="[1]"), "metadata: not the JSON text of an object"),
        (pb.CompletionRequest(tool_choice_json="null"), "tool_choice: not the JSON text of an object"),
        (pb.CompletionRequest(tools=pb.ToolList(tools=[pb.Tool(parameters_json="")])), "tools[0].parameters: not the"),
        # the fields' own limits, which decoding a JSON frame checks and a Struct's constructor does not
        (pb.CompletionRequest(session_id="s", model="m", temperature=5.0), "temperature: must be at most 2, not 5.0"),
        (pb.CompletionRequest(session_id="s", model="m", top_p=-0.5), "top_p: must be at least 0, not -0.5"),
        (pb.CompletionRequest(session_id="s", model="m", max_tokens=0), "max_tokens: must be at least 1, not 0"),
        (pb.CompletionRequest(session_id="s" * 300, model="m"), "session_id: is longer than 256 characters"),
        (pb.StringList(), "gtl.v1.StringList is not a GTL message"),
        (pb.CompletionResult(), "gtl.v1.CompletionResult is not a GTL message"),
    ],
)
def test_protos_that_are_not_valid_gtl_messages(proto, where):
    with pytest.raises(ProtocolError) as caught:
        from_proto(proto)
    assert where in str(caught.value)


@pytest.mark.parametrize("thing", [None, {"type": "token"}, b"\x0a\x00", m.Token(session_id="s", text="t")])
def test_from_proto_refuses_what_is_not_a_protobuf_message(thing):
    with pytest.raises(ProtocolError, match="is not a protobuf message"):
        from_proto(thing)


def test_to_proto_and_to_frame_refuse_what_is_not_a_gtl_message():
    with pytest.raises(ProtocolError, match="not a GTL message"):
        to_proto({"type": "token"})
    with pytest.raises(ProtocolError, match="not a GTL wire message"):
        to_frame(m.ToolCall(id="1", name="f"))
    with pytest.raises(ProtocolError, match="not a GTL frame type"):
        to_frame(m.Cancel(session_id="s"), pb.Cancel)


@pytest.mark.parametrize(
    ("message", "frame_type"),
    [
        (m.Token(session_id="s", text="t"), pb.ClientFrame),
        (m.CompletionRequest(session_id="s", model="x", messages=[]), pb.ServerFrame),
        (m.Cancel(session_id="s"), pb.ServerFrame),
        (m.ProviderInfo(provider="p"), pb.ClientFrame),
        (m.Hello(), pb.StreamEvent),
    ],
)
def test_a_frame_carries_only_its_directions_messages(message, frame_type):
    with pytest.raises(ProtocolError, match=f"a {frame_type.DESCRIPTOR.name} does not carry"):
        to_frame(message, frame_type)


def test_parse_frame_refusals():
    with pytest.raises(FrameTooLargeError):
        parse_frame(b"\x00" * 11, max_bytes=10)
    with pytest.raises(ProtocolError, match="must be bytes"):
        parse_frame("text")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"malformed gtl\.v1\.Frame"):
        parse_frame(b"\x1a\x05\x12\x02\xff\xfe")  # a token whose text is not UTF-8
    with pytest.raises(ProtocolError, match="not a GTL frame type"):
        parse_frame(b"", pb.Token)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_a_message_or_a_protocol_error(data):
    try:
        parse_frame(data)
    except ProtocolError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The bytes of a good frame with some of them flipped, cut or inserted."""
    data = bytearray(to_frame(draw(strategies.any_message)).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "cut", "insert"]))
        if operation == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@given(mutated(), st.sampled_from([pb.Frame, pb.ClientFrame, pb.ServerFrame, pb.StreamEvent]))
def test_damaged_frames_give_a_message_or_a_protocol_error(data, frame_type):
    try:
        parse_frame(data, frame_type)
    except ProtocolError:
        pass
