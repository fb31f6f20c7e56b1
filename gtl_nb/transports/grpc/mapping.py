"""Between the GTL msgspec messages and their protobuf messages of ``gtl.proto``, both ways.

    proto = to_proto(Token(session_id="s", text="hi"))        # a gtl_pb2.Token
    message = from_proto(proto)                                # Token(session_id='s', text='hi')
    frame = to_frame(message, gtl_pb2.ServerFrame)             # wrapped in the frame's oneof
    message = parse_frame(frame.SerializeToString(), gtl_pb2.ServerFrame)

The mapping is lossless for every value the msgspec types carry over the JSON codec: ``None``
differs from unset-to-default and from empty, integers keep their exact value (typed fields are
``int64``; free-form JSON integers any size), floats their bits (NaN and infinities included in
typed fields; free-form JSON follows the JSON codec, which has no NaN). The field rules are in
``fields.py``; ``PROTO_TYPES`` pairs every Struct of ``protocol/messages.py`` with its message.

Whatever it is given, each function here raises only ``ProtocolError`` (``FrameTooLargeError`` for
bytes over ``max_bytes``): for a value the proto cannot carry (an integer outside int64, a lone
surrogate, a free-form value that is not a JSON object or is nested deeper than ``max_depth`` or
larger than ``max_json_bytes``), for a proto that is not a valid GTL message (a required field or
the frame's message unset, an unknown value of a closed enum — a role, a finish reason —, bad JSON
text) and for bytes that do not parse. A status's state and an error's code are open (the spec closes
neither set): a value or number this side's enum lacks crosses as text (``fields.OPEN_ENUMS``).
The error names the field (``messages[0].role``), never its value: a value may be a credential.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from gtl_nb.protocol import messages as m
from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.errors import FrameTooLargeError, ProtocolError
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.fields import CodecTable, ConversionError, Limits

PROTO_TYPES: dict[type, type[ProtoMessage]] = {
    m.ToolCall: pb.ToolCall,
    m.Message: pb.ChatMessage,
    m.Part: pb.ContentPart,
    m.Tool: pb.Tool,
    m.ModelInfo: pb.ModelInfo,
    m.CompletionRequest: pb.CompletionRequest,
    m.Status: pb.Status,
    m.Token: pb.Token,
    m.Reasoning: pb.Reasoning,
    m.ToolCallEvent: pb.ToolCallEvent,
    m.Usage: pb.Usage,
    m.Done: pb.Done,
    m.Error: pb.Error,
    m.ProviderInfo: pb.ProviderInfo,
    m.Hello: pb.Hello,
    m.Cancel: pb.Cancel,
    m.Query: pb.Query,
    m.Answer: pb.Answer,
}
"""Every Struct of ``protocol/messages.py`` (wire messages and the values inside them) and its proto."""

FRAME_TYPES: tuple[type[ProtoMessage], ...] = (pb.Frame, pb.ClientFrame, pb.ServerFrame, pb.StreamEvent)
"""The wrappers whose ``oneof message`` holds one GTL message, its case named by the GTL ``type``."""

FRAME_ONEOF = "message"

CODECS = CodecTable(PROTO_TYPES)
"""The field converters of every pair of ``PROTO_TYPES`` (built, and checked against the proto, at import)."""
_FRAMES = {frame.DESCRIPTOR: frame for frame in FRAME_TYPES}


def to_proto(
    message: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> ProtoMessage:
    """The protobuf message carrying the GTL ``message`` (any Struct of ``PROTO_TYPES``)."""
    proto_cls = PROTO_TYPES.get(type(message))
    if proto_cls is None:
        raise ProtocolError(f"{type(message).__name__} is not a GTL message this mapping knows")
    proto = proto_cls()
    _fill(proto, message, Limits(max_depth, max_json_bytes))
    return proto


def to_frame(
    message: Any,
    frame_type: type[ProtoMessage] = pb.Frame,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> ProtoMessage:
    """``message`` in a ``frame_type`` (``Frame``, ``ClientFrame``, ``ServerFrame`` or ``StreamEvent``).

    A message that frame does not carry (a ``token`` in a ``ClientFrame``) is a ``ProtocolError``.
    """
    if frame_type.DESCRIPTOR not in _FRAMES:
        raise ProtocolError(f"{frame_type.__name__} is not a GTL frame type")
    config = getattr(type(message), "__struct_config__", None)
    case = getattr(config, "tag", None)
    if type(message) not in PROTO_TYPES or not isinstance(case, str):
        raise ProtocolError(f"{type(message).__name__} is not a GTL wire message")
    cases = frame_type.DESCRIPTOR.oneofs_by_name[FRAME_ONEOF].fields
    if case not in {fd.name for fd in cases}:
        raise ProtocolError(f"a {frame_type.DESCRIPTOR.name} does not carry {case!r} messages")
    frame = frame_type()
    inner = getattr(frame, case)
    inner.SetInParent()
    _fill(inner, message, Limits(max_depth, max_json_bytes))
    return frame


def from_proto(proto: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Any:
    """The GTL message a protobuf message carries; a frame (``FRAME_TYPES``) is unwrapped first."""
    descriptor = getattr(proto, "DESCRIPTOR", None)
    if not isinstance(proto, ProtoMessage) or descriptor is None:
        raise ProtocolError(f"{type(proto).__name__} is not a protobuf message")
    if descriptor in _FRAMES:
        case = proto.WhichOneof(FRAME_ONEOF)
        if case is None:
            raise ProtocolError(f"a {descriptor.name} without a message")
        proto = getattr(proto, case)
        descriptor = proto.DESCRIPTOR
    if descriptor not in CODECS.by_descriptor:
        raise ProtocolError(f"{descriptor.full_name} is not a GTL message")
    try:
        return CODECS.read(proto, Limits(max_depth, max_json_bytes))
    except ConversionError as exc:
        raise _refusal(f"invalid {descriptor.full_name}", exc) from None


def parse_frame(
    data: bytes,
    frame_type: type[ProtoMessage] = pb.Frame,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_json_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Any:
    """The GTL message in the serialized ``frame_type`` ``data``."""
    if frame_type.DESCRIPTOR not in _FRAMES:
        raise ProtocolError(f"{frame_type.__name__} is not a GTL frame type")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a frame must be bytes, not {type(data).__name__}")
    if len(data) > max_bytes:
        raise FrameTooLargeError(f"frame of {len(data)} bytes exceeds the maximum frame size of {max_bytes} bytes")
    try:
        frame = frame_type.FromString(bytes(data))
    except DecodeError as exc:
        raise ProtocolError(f"malformed {frame_type.DESCRIPTOR.full_name}: {exc}") from None
    return from_proto(frame, max_depth=max_depth, max_json_bytes=max_json_bytes)


def _fill(proto: ProtoMessage, message: Any, limits: Limits) -> None:
    try:
        CODECS.fill(proto, message, type(message), limits)
    except ConversionError as exc:
        raise _refusal(f"cannot convert {type(message).__name__} to {proto.DESCRIPTOR.full_name}", exc) from None


def _refusal(what: str, exc: ConversionError) -> ProtocolError:
    where = "".join(segment if segment.startswith("[") else f".{segment}" for segment in exc.path).lstrip(".")
    return ProtocolError(f"{what}: {where or 'the message'}: {exc.reason}")
