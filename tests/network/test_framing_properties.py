"""Hypothesis over the protobuf mapping and each transport's framing, without a network.

The message strategies are the hardening issue's (``tests/protocol/strategies.py``: ``any_message``,
``good_frames``, ``bad_frames``, ``mutated_frames``, ``frame_streams``, ``json_values``, ``nested``); this
module adds only the layers between them and a socket:

* gRPC: arbitrary bytes and protobuf nested 100,000 deep given to ``parse_frame``; hostile JSON text in
  every ``*_json`` field; what ``GrpcStreamChannel`` hands its connection for any message it receives;
* HTTP and SSE (the client's reading of an NDJSON or event-stream answer);
* WebSocket (``MessageChannel``: one message, one frame);
* QUIC (``RequestStream``, the gateway's reading of a session stream; ``EventStream``, the client's).

Each either yields what was sent or a clear error, and nothing else: no other exception, no hang.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import msgspec
import pytest
import strategies
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.protocol import messages as m
from gtl_nb.protocol.connection import STREAM_EVENT_TYPES
from gtl_nb.protocol.errors import ProtocolError
from gtl_nb.protocol.frames import BadFrame, FrameReader
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.mapping import FRAME_TYPES, from_proto, parse_frame, to_frame, to_proto
from gtl_nb.transports.grpc.stream import GrpcStreamChannel
from gtl_nb.transports.http import HttpBackend
from gtl_nb.transports.messages import JOIN_BYTES, MessageChannel
from gtl_nb.transports.quic.wire import EventStream, RequestStream, StreamViolation

SID = "s1"
frame_types = st.sampled_from(FRAME_TYPES)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def nested_groups(depth: int) -> bytes:
    """Field 1 as a start-group ``depth`` times, then as many end-groups: protobuf nested ``depth`` deep."""
    return b"\x0b" * depth + b"\x0c" * depth


def nested_messages(depth: int) -> bytes:
    """Field 1 as a length-delimited message inside itself, ``depth`` deep."""
    data = b""
    for _ in range(depth):
        data = b"\x0a" + _varint(len(data)) + data
    return data


# -- gRPC: the protobuf mapping ----------------------------------------------------------------------------------


@given(st.binary(max_size=600), frame_types)
def test_arbitrary_bytes_are_a_message_or_a_protocol_error(data, frame_type):
    try:
        message = parse_frame(data, frame_type)
    except ProtocolError:
        return
    assert type(message) in m.MESSAGE_TYPES.values()
    # what was read is what the frame says: written back, it reads the same (compared as bytes: NaN != NaN)
    again = to_frame(message).SerializeToString()
    assert to_frame(parse_frame(again)).SerializeToString() == again


@pytest.mark.parametrize("depth", [101, 1_000, 100_000])
@pytest.mark.parametrize("build", [nested_groups, nested_messages], ids=["groups", "messages"])
def test_protobuf_nested_deep_is_refused_at_once(build, depth):
    data = build(min(depth, 5_000) if build is nested_messages else depth)  # (a 100,000-deep message is 10 GB)
    started = time.monotonic()
    for frame_type in FRAME_TYPES:
        with pytest.raises(ProtocolError):
            parse_frame(data, frame_type)
    assert time.monotonic() - started < 5


JSON_FIELDS = {
    proto.DESCRIPTOR.name: [f.name for f in proto.DESCRIPTOR.fields if f.name.endswith("_json")]
    for proto in (pb.ChatMessage, pb.Tool, pb.CompletionRequest, pb.Done, pb.Query, pb.Answer)
}
hostile_json = st.one_of(
    strategies.json_values.map(lambda value: json.dumps(value, ensure_ascii=False)),
    strategies.bad_frames.map(lambda data: data.decode("utf-8", "replace")),
    st.integers(60, 100_000).map(lambda depth: strategies.nested(depth, "{").decode()),
    st.text(max_size=30),
)
json_carriers = st.one_of(
    strategies.requests, strategies.dones, st.builds(m.Query, query_id=strategies.ident, name=strategies.ident)
)


@given(json_carriers, st.data())
def test_hostile_json_text_in_any_json_field_is_refused_or_read_exactly(message, data):
    proto = to_proto(message)
    holders = [proto, *getattr(proto, "messages", [])]
    holder = data.draw(st.sampled_from([h for h in holders if JSON_FIELDS.get(h.DESCRIPTOR.name)]))
    name = data.draw(st.sampled_from(JSON_FIELDS[holder.DESCRIPTOR.name]))
    text = data.draw(hostile_json)
    setattr(holder, name, text)
    try:
        read = from_proto(proto)
    except ProtocolError as exc:
        assert text[:40] not in exc.message or len(text) < 12  # the field is named, its value not quoted
        return
    value = json.loads(text)
    assert isinstance(value, dict) and strategies.json_depth(value) < 64
    assert type(read) is type(message)


async def _channel_reads(messages: list[bytes]) -> list[bytes]:
    """What a gateway's ``GrpcStreamChannel`` hands its connection for each of ``messages``."""
    pending = list(messages)

    async def receive() -> Any:
        return pending.pop(0) if pending else None

    async def send(data: bytes) -> None:
        return None

    channel = GrpcStreamChannel(receive, send, role="server", max_json_bytes=64 * 1024)
    reads = []
    while piece := await channel.read():
        reads.append(piece)
    await channel.aclose()
    return reads


def _client_frame(message: Any) -> bytes:
    try:
        return to_frame(message, pb.ClientFrame).SerializeToString()
    except ProtocolError:
        return b""  # a value the proto cannot carry: sent as a frame without a message, a bad frame too


grpc_messages = st.one_of(
    st.one_of(strategies.requests, strategies.cancels, strategies.hellos).map(_client_frame),
    st.binary(max_size=200),
    st.integers(1, 3_000).map(nested_groups),
)


@given(st.lists(grpc_messages, max_size=8))
def test_each_grpc_message_becomes_one_frame_or_one_bad_frame(messages):
    reads = asyncio.run(_channel_reads(messages))
    assert len(reads) == len(messages)
    for data, piece in zip(messages, reads, strict=True):
        assert piece.endswith(b"\n") and piece.count(b"\n") == 1  # exactly one line per message
        items = FrameReader(64 * 1024).feed(piece)
        assert len(items) == 1
        try:
            expected = parse_frame(data, pb.ClientFrame, max_json_bytes=64 * 1024)
        except ProtocolError:
            assert isinstance(items[0], BadFrame)
        else:  # the same message (as JSON: a NaN the proto carried is null in a JSON frame)
            assert msgspec.json.encode(items[0]) == msgspec.json.encode(expected)


# -- HTTP and SSE: the client reading an answer ------------------------------------------------------------------


def _events(session_id: str = SID) -> st.SearchStrategy[list[Any]]:
    """A legal event sequence of one session: status, tokens, then done or error."""
    tokens = st.lists(st.builds(m.Token, session_id=st.just(session_id), text=strategies.text), max_size=4)
    end = st.sampled_from([m.Done(session_id=session_id), m.Error(session_id=session_id, code="INTERNAL", message="x")])
    first = m.Status(session_id=session_id, state="streaming")
    return st.tuples(tokens, end).map(lambda parts: [first, *parts[0], parts[1]])


@st.composite
def answers(draw: st.DrawFn, *, sse: bool) -> bytes:
    """An answer body: a session's frames with bad frames, mutated frames and stray messages mixed in."""
    lines: list[bytes] = [msgspec.json.encode(event) for event in draw(_events())]
    for _ in range(draw(st.integers(0, 3))):
        hostile = draw(st.one_of(strategies.bad_frames, strategies.mutated_frames(), strategies.good_frames))
        lines.insert(draw(st.integers(0, len(lines))), hostile.replace(b"\n", b" "))
    if draw(st.booleans()):
        lines = lines[: draw(st.integers(0, len(lines)))]  # cut short
    if sse:
        return b"".join(b"event: x\ndata: " + line + b"\n\n" for line in lines)
    return b"".join(line + b"\n" for line in lines)


async def _deliveries(body: bytes, *, sse: bool) -> list[Any]:
    backend = HttpBackend("http://gateway", sse=sse)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    backend._http = httpx.AsyncClient(base_url="http://gateway", transport=transport)
    delivered: list[Any] = []
    request = m.CompletionRequest(session_id=SID, model="echo", messages=[m.Message(role="user", content="x")])
    await asyncio.wait_for(backend.session(request, delivered.append), 10)
    await backend.aclose()
    return delivered


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
@given(data=st.data())
def test_a_hostile_answer_ends_the_session_once_and_raises_nothing(sse, data):
    delivered = asyncio.run(_deliveries(data.draw(answers(sse=sse)), sse=sse))
    ends = [event for event in delivered if isinstance(event, (m.Done, m.Error))]
    assert len(ends) == 1 and delivered[-1] is ends[0]


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
@given(data=st.data())
def test_a_hostile_answer_delivers_only_this_sessions_events(sse, data):
    delivered = asyncio.run(_deliveries(data.draw(answers(sse=sse)), sse=sse))
    assert all(isinstance(event, STREAM_EVENT_TYPES) and event.session_id == SID for event in delivered)


# -- WebSocket: one message, one frame ------------------------------------------------------------------------


pretty_frames = strategies.good_frames.map(lambda frame: json.dumps(json.loads(frame), indent=2))
"""A good frame pretty-printed, as the spec writes its examples: one message, many lines."""
payloads = st.one_of(
    strategies.good_frames.map(bytes.decode),
    strategies.good_frames,
    strategies.bad_frames,
    strategies.mutated_frames(),
    st.text(max_size=40),
)


def one_json_value(raw: bytes) -> bool:
    try:
        msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return False
    return True


@given(st.lists(payloads | pretty_frames, max_size=10), st.booleans())
def test_each_websocket_message_is_read_as_one_frame_or_its_lines(messages, joins):
    """With ``gtl.ndjson`` (``joins``) a message's lines are its frames; without it a message that is one
    JSON value is one frame, however it is broken into lines (the spec's examples are pretty-printed)."""

    async def main() -> list[bytes]:
        pending = list(messages)

        async def recv() -> str | bytes | None:
            return pending.pop(0) if pending else None

        async def nothing(*_: Any) -> None:
            return None

        channel = MessageChannel(recv, nothing, nothing, joins_frames=joins)
        reads = []
        while piece := await channel.read():
            reads.append(piece)
        return reads

    reads = asyncio.run(main())
    assert len(reads) == len(messages)
    for message, piece in zip(messages, reads, strict=True):
        raw = message.encode() if isinstance(message, str) else message
        items = FrameReader(64 * 1024).feed(piece)
        if not joins and b"\n" in raw and one_json_value(raw):
            assert piece == raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"  # breaks were whitespace
            assert len(items) == 1
        else:
            assert piece == raw + b"\n"  # a newline inside a message splits it: each line is a frame of its own
            assert len(items) == len([line for line in raw.split(b"\n") if line.strip()])


frame_texts = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1, max_size=30),
    st.integers(JOIN_BYTES // 3, JOIN_BYTES + 10).map(lambda size: "x" * size),  # a few fill a message, or one alone
)


@given(st.lists(frame_texts, max_size=12), st.lists(st.integers(1, 8), max_size=6), st.booleans())
def test_written_frames_go_out_whole_and_in_order_one_or_several_a_message(frames, cuts, joins):
    """However the connection's bytes are cut into writes, every frame is sent once, whole, in order:
    alone in a message, or — when the peer agreed (``gtl.ndjson``) — joined by newlines with the frames
    waiting behind it, a message holding at most ``JOIN_BYTES`` of them unless one frame is longer."""
    data = b"".join(frame.encode() + b"\n" for frame in frames)

    async def main() -> list[str]:
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def nothing(*_: Any) -> None:
            return None

        async def never() -> str | bytes | None:
            return None

        channel = MessageChannel(never, send, nothing, joins_frames=joins)
        position = 0
        for cut in cuts:  # some writes in one loop turn, then the sender gets a turn
            channel.write(data[position : position + cut * 7])
            position += cut * 7
            await asyncio.sleep(0)
        channel.write(data[position:])
        await channel.aclose()
        assert channel.queued_bytes == 0
        return sent

    sent = asyncio.run(main())
    assert [line for message in sent for line in message.split("\n")] == frames
    for message in sent:
        lines = message.split("\n")
        if not joins:
            assert len(lines) == 1
        elif len(lines) > 1:
            assert len(message.encode()) <= JOIN_BYTES


# -- QUIC: the stream framing ------------------------------------------------------------------------------------


@given(strategies.frame_streams(max_frame_bytes=2048), st.booleans())
def test_a_session_stream_yields_one_request_then_one_cancel_or_one_violation(stream, end):
    _, chunks = stream
    reader = RequestStream(max_frame_bytes=2048)
    items: list[Any] = []
    for chunk in chunks:
        items += reader.feed(chunk)
    items += reader.feed(b"", end=end)
    assert all(isinstance(item, (m.CompletionRequest, m.Cancel, StreamViolation)) for item in items)
    violations = [item for item in items if isinstance(item, StreamViolation)]
    assert len(violations) <= 1 and (not violations or items[-1] is violations[0])  # then the stream is done
    requests = [item for item in items if isinstance(item, m.CompletionRequest)]
    assert len(requests) <= 1 and (not requests or items[0] is requests[0])
    assert len([item for item in items if isinstance(item, m.Cancel)]) <= 1
    if end and not requests:
        assert violations  # a stream that ended before its request says so
    for violation in violations:
        assert isinstance(violation.error, ProtocolError)


@st.composite
def event_streams(draw: st.DrawFn) -> list[bytes]:
    """A session's frames (legal, then perhaps damaged or foreign ones) cut where a network might."""
    lines = [msgspec.json.encode(event) for event in draw(_events())]
    for _ in range(draw(st.integers(0, 2))):
        stray = draw(st.one_of(strategies.bad_frames, strategies.mutated_frames(), strategies.good_frames))
        lines.insert(draw(st.integers(0, len(lines))), stray.replace(b"\n", b" "))
    data = b"".join(line + b"\n" for line in lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@given(event_streams())
def test_an_event_stream_yields_this_sessions_events_in_order_or_a_violation(chunks):
    reader = EventStream(SID, max_frame_bytes=4096)
    events: list[Any] = []
    violation = None
    for index, chunk in enumerate(chunks):
        got, violation = reader.feed(chunk, end=index == len(chunks) - 1)
        events += got
        if violation is not None:
            break
    if not chunks:
        events, violation = reader.feed(b"", end=True)
    assert all(isinstance(event, STREAM_EVENT_TYPES) and event.session_id == SID for event in events)
    terminal = [event for event in events if isinstance(event, (m.Done, m.Error))]
    assert len(terminal) <= 1 and (not terminal or events[-1] is terminal[0])
    assert (violation is None) == bool(terminal)  # it ends with its terminal event, or says why not
    assert violation is None or isinstance(violation, ProtocolError)


def test_a_websocket_channel_takes_any_bytes_like_write():
    """A whole frame as ``bytes`` takes the channel's fast path; a ``bytearray`` or ``memoryview`` (and
    pieces of frames) the general one, with the same messages."""
    from gtl_nb.transports.messages import MessageChannel

    async def main() -> list[str]:
        sent: list[str] = []

        async def send(text: str) -> None:
            sent.append(text)

        async def nothing(*_: Any) -> None:
            return None

        channel = MessageChannel(nothing, send, nothing)
        channel.write(b'{"a":1}\n')
        channel.write(memoryview(b'{"b":2}\n'))
        channel.write(bytearray(b'{"c":3}\n{"d":'))
        channel.write(b"4}\n")
        await channel.aclose()
        return sent

    assert asyncio.run(main()) == ['{"a":1}', '{"b":2}', '{"c":3}', '{"d":4}']
