"""Properties of the codec and the frame decoder on random, damaged and hostile input.

Only the documented errors (``ProtocolError`` and its subclasses) may come out, a bad frame never
costs a good one, and every run is quick: each example gets a deadline, so a super-linear path
fails here instead of hanging a transport.
"""

from __future__ import annotations

import itertools
import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    MAX_DEPTH,
    any_message,
    bad_frames,
    dumps,
    frame_streams,
    json_depth,
    json_values,
    mutated_frames,
    nested,
)

from gtl_nb.protocol import (
    DEFAULT_MAX_DEPTH,
    Cancel,
    FrameDecoder,
    FrameError,
    FrameTooLargeError,
    ProtocolError,
    decode,
    encode,
)
from gtl_nb.protocol.codec import FREE_FORM_MESSAGES, nesting_exceeds
from gtl_nb.protocol.messages import MESSAGE_TYPES

FAST = settings(
    max_examples=150, deadline=1000, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


def decode_or_error(data: object) -> object:
    """The message, or the ProtocolError; any other exception fails the test."""
    try:
        return decode(data)  # type: ignore[arg-type]
    except ProtocolError as exc:
        return exc


def test_the_strategies_restate_the_codecs_limit():
    assert MAX_DEPTH == DEFAULT_MAX_DEPTH


@FAST
@given(st.binary(max_size=200) | st.text(max_size=100) | st.text(alphabet=st.characters(), max_size=50))
def test_arbitrary_bytes_and_text_give_a_message_or_a_protocol_error(data):
    decode_or_error(data)


@FAST
@given(json_values)
def test_arbitrary_json_values_give_a_message_or_a_protocol_error(value):
    decode_or_error(dumps(value))
    decode_or_error(dumps({"type": "completion_request", "session_id": "s", "model": "m", "messages": value}))


@FAST
@given(mutated_frames())
def test_a_damaged_frame_decodes_to_a_message_that_round_trips_or_to_a_protocol_error(frame):
    result = decode_or_error(frame)
    if not isinstance(result, ProtocolError):
        assert decode(encode(result)) == result


@FAST
@given(bad_frames)
def test_bad_frames_are_protocol_errors(frame):
    assert isinstance(decode_or_error(frame), ProtocolError)


@FAST
@given(json_values, st.integers(1, 8))
def test_the_depth_scan_agrees_with_the_parsed_depth(value, limit):
    assert nesting_exceeds(dumps(value), limit) == (json_depth(value) > limit)
    assert nesting_exceeds(json.dumps(value).encode(), limit) == (json_depth(value) > limit)  # \\u escapes


@FAST
@given(st.integers(1, 3 * MAX_DEPTH), st.sampled_from(["[", "{"]), st.sampled_from(["done", "request", "alias"]))
def test_free_form_json_is_accepted_up_to_the_limit_and_refused_beyond(depth, kind, frame_kind):
    value = nested(depth, kind)
    frame = {
        "done": b'{"type":"done","session_id":"s","provider_data":{"x":' + value + b"}}",
        "request": b'{"type":"completion_request","session_id":"s","model":"m","messages":[],"metadata":{"x":'
        + value
        + b"}}",
        "alias": b'{"type":"done","sid":"s","provider_data":{"x":' + value + b"}}",  # the lenient path
    }[frame_kind]
    result = decode_or_error(frame)
    if depth + 2 <= MAX_DEPTH:
        assert not isinstance(result, ProtocolError)
    else:
        assert isinstance(result, ProtocolError) and "nested deeper" in str(result)


@FAST
@given(st.integers(1, 5000), st.sampled_from(["[", "{"]))
def test_unknown_fields_are_skipped_however_deep_or_refused_as_a_protocol_error(depth, kind):
    result = decode_or_error(b'{"type":"cancel","session_id":"s","x":' + nested(depth, kind) + b"}")
    assert isinstance(result, (Cancel, ProtocolError))


def test_the_free_form_messages_are_every_message_with_a_field_of_any_json():
    """The depth scan runs after the strict parse only for FREE_FORM_MESSAGES: the list must be complete."""

    def holds_any(info: object, seen: set[int]) -> bool:
        if id(info) in seen:
            return False
        seen.add(id(info))
        if isinstance(info, msgspec.inspect.AnyType):
            return True
        children = [getattr(info, name, None) for name in ("item_type", "key_type", "value_type", "types", "fields")]
        flat = [c for child in children if child is not None for c in (child if isinstance(child, tuple) else [child])]
        return any(holds_any(getattr(c, "type", c), seen) for c in flat)

    with_any = {kind for kind in MESSAGE_TYPES.values() if holds_any(msgspec.inspect.type_info(kind), set())}
    assert with_any == set(FREE_FORM_MESSAGES)


@FAST
@given(any_message, st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3))
def test_encode_of_a_message_with_a_lone_surrogate_is_a_protocol_error(message, surrogate):
    if not hasattr(message, "session_id"):
        return
    damaged = msgspec.structs.replace(message, session_id=message.session_id + surrogate)
    with pytest.raises(ProtocolError):
        encode(damaged)


@FAST
@given(frame_streams(max_frame_bytes=4096))
def test_the_frame_decoder_returns_every_good_frame_in_order_and_one_error_per_bad_frame(stream):
    expected, chunks = stream
    decoder = FrameDecoder(max_frame_bytes=4096)
    items = [item for chunk in chunks for item in decoder.feed(chunk)]
    items += decoder.close()
    assert len(items) == len(expected)
    for number, (item, want) in enumerate(zip(items, expected, strict=True), start=1):
        if want == "bad":
            assert isinstance(item, FrameError) and isinstance(item.error, ProtocolError)
            assert item.frame == number
        else:
            assert item == want
    assert decoder.pending_bytes == 0


@FAST
@given(st.lists(st.binary(max_size=300), max_size=10))
def test_the_frame_decoder_never_raises_on_arbitrary_bytes(chunks):
    decoder = FrameDecoder(max_frame_bytes=256)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, FrameError) or not isinstance(item, Exception)
    assert decoder.pending_bytes <= 256
    for item in decoder.close():
        assert isinstance(item, FrameError)


def test_a_frame_at_the_size_limit_is_decoded_and_one_byte_more_is_refused():
    frame = b'{"type":"token","session_id":"s","text":"' + b"x" * 57 + b'"}'
    assert len(frame) == 100
    assert not isinstance(FrameDecoder(max_frame_bytes=100).feed(frame + b"\n")[0], FrameError)
    [refused] = FrameDecoder(max_frame_bytes=99).feed(frame + b"\n")
    assert isinstance(refused.error, FrameTooLargeError)


@st.composite
def bad_frames_naming_a_session(draw: st.DrawFn, max_frame_bytes: int) -> tuple[bytes, str | None]:
    """A frame that does not decode but names its session in its first bytes (or does not), and the
    session ``FrameReader`` should read from it."""
    sid = draw(st.text(alphabet="abcdef0123456789_", min_size=1, max_size=12))
    kind = draw(st.sampled_from(["truncated", "oversized", "unknown type", "nameless"]))
    if kind == "truncated":
        frame = f'{{"type":"token","session_id":"{sid}","text":"abc'.encode()
    elif kind == "oversized":
        frame = f'{{"type":"token","session_id":"{sid}","text":"'.encode() + b"x" * max_frame_bytes + b'"}'
    elif kind == "unknown type":
        frame = f'{{"type":"telepathy","session_id":"{sid}"}}'.encode()
    else:
        return b'{"type":"token","text":', None
    return frame, sid


@FAST
@given(st.data())
def test_the_frame_reader_names_each_bad_frames_session_however_the_stream_is_cut(data):
    """Each refused frame's ``BadFrame`` carries the session and type its own first bytes name —
    the same whether the frames arrive whole, in one read, or cut anywhere (even one byte at a time)."""
    from gtl_nb.protocol.frames import BadFrame, FrameReader, string_field

    limit = 4096
    lines: list[bytes] = []
    expected: list[object] = []
    for _ in range(data.draw(st.integers(1, 8))):
        if data.draw(st.booleans()):
            message = data.draw(any_message)
            lines.append(encode(message))
            expected.append(message)
        else:
            frame, sid = data.draw(bad_frames_naming_a_session(limit))
            lines.append(frame)
            expected.append(("bad", sid, string_field(frame[:limit], b"type")))
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    edges = [0, *cuts, len(stream)]
    ways = {
        "whole": [stream],
        "cut": [stream[a:b] for a, b in itertools.pairwise(edges)],
        "bytes": [stream[i : i + 1] for i in range(len(stream))] if len(stream) < 3000 else [stream],
    }
    for way, chunks in ways.items():
        reader = FrameReader(limit)
        items = [item for chunk in chunks for item in reader.feed(chunk)] + reader.close()
        seen = [("bad", item.session_id, item.message_type) if isinstance(item, BadFrame) else item for item in items]
        assert seen == expected, way
