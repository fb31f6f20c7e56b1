"""The one codec: round trips, strictness, aliases, limits, and the incremental frame decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import any_message

from gtl_nb.protocol import (
    Cancel,
    CompletionRequest,
    Error,
    FrameDecoder,
    FrameError,
    FrameTooLargeError,
    InternalError,
    Message,
    ProtocolError,
    Status,
    Token,
    Tool,
    UnknownMessageTypeError,
    Usage,
    decode,
    encode,
    encode_frame,
    error_from_event,
)
from gtl_nb.protocol.messages import MESSAGE_TYPES


@given(any_message)
def test_every_message_type_round_trips_through_the_codec(message):
    assert decode(encode(message)) == message


@given(st.lists(any_message, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_frame_decoder_reassembles_frames_split_at_arbitrary_points(messages, rnd):
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(rnd.sample(range(len(stream) + 1), k=min(len(stream), rnd.randint(0, 12))))
    decoder = FrameDecoder()
    out = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    assert decoder.close() == []
    assert out == messages


def test_frame_decoder_fed_one_byte_at_a_time():
    messages = [Token(session_id="s", text="héllo\nworld"), Usage(session_id="s", tokens_in=1, tokens_out=2)]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = [m for i in range(len(stream)) for m in decoder.feed(stream[i : i + 1])]
    assert out == messages


def test_wire_names_are_the_specs():
    frame = json.loads(encode(Usage(session_id="sess_abc123", tokens_in=10, tokens_out=50, cost=0.001)))
    assert frame == {
        "type": "usage",
        "session_id": "sess_abc123",
        "tokens_in": 10,
        "tokens_out": 50,
        "cached_tokens_in": None,
        "reasoning_tokens_out": None,
        "cost": 0.001,
        "cache_hit": False,
        "cache_write_tokens_in": None,
        "cache_write_1h_tokens_in": None,
    }
    assert set(MESSAGE_TYPES) == {
        "completion_request",
        "status",
        "token",
        "reasoning",
        "tool_call",
        "usage",
        "done",
        "error",
        "provider_info",
        "hello",
        "cancel",
        "query",  # an extension of the spec (feature "query"), docs/transports.md
        "answer",
    }


def test_spec_examples_decode():
    request = decode(
        b'{"type": "completion_request", "session_id": "sess_abc123", "provider": "openai", "model": "gpt-4",'
        b' "messages": [{"role": "user", "content": "Hello AI!"}], "stream": true, "max_tokens": 1000,'
        b' "temperature": 0.7}'
    )
    assert isinstance(request, CompletionRequest)
    assert request.messages == [Message(role="user", content="Hello AI!")]
    assert request.max_tokens == 1000 and request.temperature == 0.7
    error = decode(b'{"type": "error", "session_id": "sess_abc123", "code": "RATE_LIMIT", "message": "..."}')
    assert error == Error(session_id="sess_abc123", code="RATE_LIMIT", message="...")


def test_unknown_extra_fields_are_ignored():
    assert decode(b'{"type":"token","session_id":"s","text":"x","future_field":[1,2]}') == Token(
        session_id="s", text="x"
    )


@pytest.mark.parametrize(
    ("frame", "error", "needle"),
    [
        (
            b'{"type":"telepathy","session_id":"s"}',
            UnknownMessageTypeError,
            "unknown message type 'telepathy'",
        ),
        (b'{"session_id":"s","text":"x"}', ProtocolError, "missing field 'type'"),
        (b'{"type":"token","session_id":"s"}', ProtocolError, "text"),
        (b'{"type":"token","session_id":"s","text":5}', ProtocolError, "$.text"),
        (b'{"type":"status","session_id":"s","state":7}', ProtocolError, "$.state"),  # (an unknown name: below)
        (b'{"type":"error","session_id":"s","code":7,"message":"m"}', ProtocolError, "$.code"),
        (b'{"type":"token",', ProtocolError, "not JSON"),
        (b"[1, 2]", ProtocolError, "JSON object"),
        (b"\xff\xfe", ProtocolError, "not JSON"),
        # msgspec calls a lone high surrogate "truncated" input: said as what it is
        (b'{"type":"token","session_id":"s","text":"\\ud800"}', ProtocolError, "lone UTF-16 surrogate"),
        (b'{"type":"token","session_id":"s","text":"\\uDBFFx"}', ProtocolError, "lone UTF-16 surrogate"),
        # an escaped backslash before the letters: text, so a frame cut after it is truly truncated
        (b'{"type":"token","session_id":"s","text":"\\\\ud800', ProtocolError, "truncated"),
        # three backslashes: an escaped one, then a lone surrogate's escape
        (b'{"type":"token","session_id":"s","text":"\\\\\\ud800"}', ProtocolError, "lone UTF-16 surrogate"),
        (b'{"type":"token","session_id":"s","text":"x', ProtocolError, "truncated"),  # truly cut: its own words
    ],
)
def test_malformed_frames_give_a_clear_protocol_error(frame, error, needle):
    with pytest.raises(error) as info:
        decode(frame)
    assert needle in str(info.value)


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        decode(data)
    except ProtocolError:
        pass


def test_aliases_are_accepted_and_output_is_canonical():
    error = decode(b'{"type":"error","sid":"s1","code":"TIMEOUT","msg":"slow"}')
    assert error == Error(session_id="s1", code="TIMEOUT", message="slow")
    assert json.loads(encode(error))["session_id"] == "s1"
    assert "msg" not in json.loads(encode(error))
    assert decode(b'{"type":"token","sid":"s2","text":"t"}') == Token(session_id="s2", text="t")


def test_openai_tool_wrapper_is_accepted_on_input():
    frame = json.dumps(
        {
            "type": "completion_request",
            "session_id": "s",
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
                }
            ],
        }
    )
    request = decode(frame)
    assert request.tools == [Tool(name="f", description="d", parameters={"type": "object"})]


def test_oversized_frame_is_refused_before_buffering_more():
    decoder = FrameDecoder(max_frame_bytes=100)
    assert decoder.feed(b'{"type":"token","session_id":"s","text":"' + b"x" * 50) == []
    [refused] = decoder.feed(b"x" * 60)
    assert isinstance(refused, FrameError) and isinstance(refused.error, FrameTooLargeError)
    assert "maximum frame size of 100 bytes" in str(refused)
    assert decoder.pending_bytes == 0
    assert decoder.feed(b"y" * 1000) == []  # the rest of the refused frame is skipped, not buffered
    assert decoder.pending_bytes == 0
    [small] = FrameDecoder(max_frame_bytes=10).feed(b"y" * 11)
    assert isinstance(small.error, FrameTooLargeError)


def test_frame_decoder_recovers_after_an_oversized_frame_is_refused():
    decoder = FrameDecoder(max_frame_bytes=60)
    good = encode_frame(Token(session_id="s", text="ok"))
    [refused] = decoder.feed(b"z" * 61)
    assert isinstance(refused.error, FrameTooLargeError)
    assert decoder.feed(b"zz\n" + good) == [Token(session_id="s", text="ok")]
    # in one chunk too: the frames after an oversized one are not lost
    items = FrameDecoder(max_frame_bytes=60).feed(good + b"z" * 200 + b"\n" + good)
    assert [type(item) for item in items] == [Token, FrameError, Token]


def test_stream_ending_inside_a_frame_is_an_error_item():
    decoder = FrameDecoder()
    decoder.feed(b'{"type":"token"')
    [truncated] = decoder.close()
    assert isinstance(truncated.error, ProtocolError) and "ended inside a frame" in str(truncated)
    assert decoder.close() == []  # the decoder is empty again


def test_blank_lines_between_frames_are_keepalives():
    decoder = FrameDecoder()
    frames = decoder.feed(b"\n\n" + encode_frame(Token(session_id="s", text="a")) + b"\r\n\n")
    assert frames == [Token(session_id="s", text="a")]


def test_a_byte_order_mark_that_starts_the_stream_is_skipped_once():
    """A file saved as "UTF-8 with BOM" is read (RFC 8259 lets a parser ignore the mark); a mark anywhere
    else is refused in words that name it, and a decoder reused after close skips one again."""
    token = encode_frame(Token(session_id="s", text="a"))
    decoder = FrameDecoder()
    assert decoder.feed(b"\xef\xbb\xbf" + token) == [Token(session_id="s", text="a")]
    [refused] = decoder.feed(b"\xef\xbb\xbf" + token)
    assert isinstance(refused, FrameError) and "byte-order mark" in str(refused.error)
    assert "invalid character" not in str(refused.error)
    decoder.close()
    assert decoder.feed(b"\xef\xbb\xbf" + token) == [Token(session_id="s", text="a")]


def test_utf16_frames_are_refused_in_words_that_name_the_encoding():
    decoder = FrameDecoder()
    text = '{"type": "token", "session_id": "s", "text": "a"}'
    for data in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32-be")):
        with pytest.raises(ProtocolError, match="UTF-16 or UTF-32") as refused:
            decode(data)
        assert "invalid character" not in str(refused.value)
    [refused_frame] = decoder.feed(text.encode("utf-16") + b"\n")
    assert isinstance(refused_frame, FrameError) and "UTF-8" in str(refused_frame.error)


SPEC_CALL = {"name": "get_weather", "arguments": '{"city":"Paris"}'}


@pytest.mark.parametrize(
    ("outside", "function"),
    [
        ({"id": "call_1"}, SPEC_CALL),  # OpenAI's function object, its id beside it
        ({}, {"id": "call_1", "type": "function", "function": SPEC_CALL}),  # OpenAI's whole tool call
        ({}, {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}),  # arguments as an object
        ({"id": "call_1"}, {"name": "get_weather", "arguments": {"city": "Paris"}}),
    ],
)
def test_a_tool_call_event_in_openais_shapes_is_read(outside, function):
    from gtl_nb.protocol import ToolCall, ToolCallEvent

    event = decode(json.dumps({"type": "tool_call", "session_id": "s", **outside, "function": function}))
    assert event == ToolCallEvent(session_id="s", function=ToolCall(id="call_1", **SPEC_CALL))
    assert json.loads(encode(event))["function"] == {"id": "call_1", **SPEC_CALL}


def test_arguments_given_as_an_object_become_canonical_json_text():
    frame = {"type": "tool_call", "session_id": "s", "function": {"id": "c", "name": "f"}}
    spaced = decode(json.dumps({**frame, "function": {**frame["function"], "arguments": {"b": [1, 2], "a": "é"}}}))
    assert spaced.function.arguments == '{"a":"é","b":[1,2]}' and spaced.arguments == {"a": "é", "b": [1, 2]}


def test_each_tool_call_event_without_an_id_gets_an_id_of_its_own():
    """The spec's ``tool_call`` shows ``function: {...}`` only: a call with no id gets one made up — and an
    answer that makes the same call twice (two alike events of one session) gets two ids, so that each
    result can answer its own call (providers refuse a turn that repeats an id)."""

    def frame(session: str = "sess_abc123", **function: object) -> str:
        return json.dumps({"type": "tool_call", "session_id": session, "function": {**SPEC_CALL, **function}})

    first, again = decode(frame()), decode(frame())
    assert first.function.id.startswith("call_") and again.function.id.startswith("call_")
    assert first.function.id != again.function.id
    assert first.function.name == again.function.name == "get_weather" and first.arguments == again.arguments
    as_object = decode(frame(arguments={"city": "Paris"}))
    assert as_object.arguments == {"city": "Paris"} and as_object.function.arguments == '{"city":"Paris"}'


def test_an_assistant_messages_tool_calls_in_openais_shapes_are_read():
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
        {"type": "function", "function": {"name": "g", "arguments": "{}"}},
        {"name": "h", "arguments": {}},
    ]
    frame = {
        "type": "completion_request",
        "session_id": "s",
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            {"role": "tool", "content": "2"},  # no id to name: the earliest call whose id was made up
            {"role": "tool", "content": "3"},
        ],
    }
    request = decode(json.dumps(frame))
    first, second, third = request.messages[1].tool_calls
    assert [message.tool_call_id for message in request.messages[2:]] == ["call_1", second.id, third.id]
    assert (first.id, first.name, first.arguments) == ("call_1", "f", '{"x":1}')
    assert (second.name, second.arguments, third.name, third.arguments) == ("g", "{}", "h", "{}")
    assert second.id.startswith("call_") and third.id.startswith("call_") and second.id != third.id
    assert decode(json.dumps(frame)) == request  # made up the same way each time


def test_tool_results_that_name_their_tool_answer_that_tools_call_whatever_their_order():
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]
    frame = {
        "type": "completion_request",
        "session_id": "s",
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "name": "get_time", "content": "12:00"},  # the second call's result, first
            {"role": "tool", "name": "get_weather", "content": "sunny"},
        ],
    }
    request = decode(json.dumps(frame))
    weather, time_of_day = request.messages[1].tool_calls
    assert [message.tool_call_id for message in request.messages[2:]] == [time_of_day.id, weather.id]
    unnamed = {**frame, "messages": [{k: v for k, v in m.items() if k != "name"} for m in frame["messages"]]}
    by_order = decode(json.dumps(unnamed))  # results that say nothing of their tool: by order, as before
    assert [message.tool_call_id for message in by_order.messages[2:]] == [weather.id, time_of_day.id]


@pytest.mark.parametrize(
    ("function", "needle"),
    [
        ({"id": "c", "name": "f", "arguments": [1, 2]}, "Expected `str`, got `array`"),
        ({"id": "c", "arguments": "{}"}, "missing required field `name`"),
        ({"arguments": "{}"}, "missing required field"),
        ({"id": 7, "name": "f"}, "Expected `str`, got `int`"),
    ],
)
def test_tool_calls_the_lenient_path_cannot_read_keep_the_strict_error(function, needle):
    with pytest.raises(ProtocolError) as refused:
        decode(json.dumps({"type": "tool_call", "session_id": "s", "function": function}))
    assert needle in str(refused.value)


def test_tool_call_event_offers_parsed_arguments():
    from gtl_nb.protocol import ToolCall, ToolCallEvent

    event = decode(
        b'{"type":"tool_call","session_id":"s","function":{"id":"c1","name":"f","arguments":"{\\"a\\": 1}"}}'
    )
    assert isinstance(event, ToolCallEvent)
    assert event.arguments == {"a": 1}
    assert ToolCall(id="c", name="f", arguments="").parsed_arguments == {}


def test_random_garbage_between_valid_frames_reports_the_bad_frame():
    decoder = FrameDecoder()
    good = encode_frame(Token(session_id="s", text="a"))
    items = decoder.feed(good + b"garbage\n" + good)
    assert items[0] == items[2] == Token(session_id="s", text="a")
    assert isinstance(items[1], FrameError) and "not JSON" in str(items[1].error)


# --- regressions: a bad frame cost its neighbours; foreign exceptions escaped ------------------


def test_a_bad_frame_loses_none_of_the_good_frames_around_it():
    good = encode_frame(Token(session_id="s", text="a"))
    decoder = FrameDecoder()
    items = decoder.feed(good + b"garbage\n" + good + good)
    assert len(items) == 4
    assert [item for i, item in enumerate(items) if i != 1] == [Token(session_id="s", text="a")] * 3
    assert items[1] == FrameError(items[1].error, frame=2)
    assert str(items[1]).startswith("frame 2: ")
    assert decoder.frames_decoded == 3 and decoder.frames_refused == 1
    assert decoder.close() == []


@pytest.mark.parametrize(
    "chunk", [bytearray(b'{"type":"cancel","session_id":"s"}\n'), memoryview(b'{"type":"cancel","session_id":"s"}\n')]
)
def test_frame_decoder_accepts_bytes_likes(chunk):
    assert FrameDecoder().feed(chunk) == [Cancel(session_id="s")]


@pytest.mark.parametrize("chunk", ['{"type":"cancel","session_id":"s"}\n', None, 42, ["x"]])
def test_frame_decoder_refuses_other_values_with_a_library_error(chunk):
    with pytest.raises(ProtocolError, match="takes bytes, bytearray or memoryview"):
        FrameDecoder().feed(chunk)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b'{"type": {}}', "'type' is not a string"),
        (b'{"type": ["token"]}', "'type' is not a string"),
        ('{"type":"token","session_id":"s","text":"\udc80"}', "lone surrogate"),
        (b'{"type":"token","session_id":"s","text":"\\udc80"}', "not JSON"),
        (b"[" * 1000 + b"]" * 1000, "nested deeper than 64"),
        (b"[" * 100_000, "nested deeper than 64"),
        (b'{"type":"completion_request","session_id":"s","model":"m","messages":[],"metadata":{"a":'
         + b"[" * 1000 + b"]" * 1000 + b"}}", "nested deeper than 64"),
        (None, "must be bytes"),
    ],
)  # fmt: skip
def test_decode_raises_only_library_errors(frame, needle):
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert needle in str(info.value)


def test_the_depth_limit_counts_arrays_and_objects_but_not_brackets_in_strings():
    def request(metadata: bytes) -> bytes:
        return b'{"type":"completion_request","session_id":"s","model":"m","messages":[],"metadata":' + metadata + b"}"

    deepest = b'{"a":' * 62 + b"1" + b"}" * 62  # 62 + the metadata object's frame = 63 + the frame itself = 64
    assert isinstance(decode(request(b'{"x":' + deepest + b"}")), CompletionRequest)
    with pytest.raises(ProtocolError, match="nested deeper than 64"):
        decode(request(b'{"x":[' + deepest + b"]}"))
    brackets = b'"' + b"[{" * 5000 + b'\\"' + b"]" * 100 + b'"'
    assert decode(request(b'{"x":' + brackets + b"}")).metadata["x"].startswith("[{[{")
    assert isinstance(decode(request(b'{"x":[[1]]}'), max_depth=4), CompletionRequest)
    with pytest.raises(ProtocolError):
        decode(request(b'{"x":[[1]]}'), max_depth=3)


def test_decode_refuses_a_frame_over_max_bytes():
    frame = encode(Token(session_id="s", text="x" * 100))
    with pytest.raises(FrameTooLargeError, match="maximum frame size of 50 bytes"):
        decode(frame, max_bytes=50)


def test_encode_of_a_lone_surrogate_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="lone surrogate"):
        encode(Token(session_id="s", text="a\ud800b"))
    with pytest.raises(ProtocolError, match="lone surrogate"):
        encode_frame(Message(role="user", content="\udfff"))  # type: ignore[arg-type]


def test_ids_and_names_have_a_length_limit():
    """An 8 MB session id would be copied into every event and the ledger row: ids and names are bounded."""
    long_id = "s" * 257
    frame = json.dumps({"type": "completion_request", "session_id": long_id, "model": "echo", "messages": []})
    with pytest.raises(ProtocolError, match="length"):
        decode(frame.encode())
    with pytest.raises(ProtocolError, match="length"):
        decode(json.dumps({"type": "cancel", "session_id": long_id}).encode())
    with pytest.raises(ProtocolError, match="length"):
        decode(
            json.dumps({"type": "completion_request", "session_id": "s", "model": "m" * 513, "messages": []}).encode()
        )
    assert decode(json.dumps({"type": "cancel", "session_id": "s" * 256}).encode())


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_a_request_for_fewer_than_one_token_is_refused(max_tokens):
    """``max_tokens`` counts tokens to generate: the client and the compatible endpoints refuse less than one,
    and so must a frame from any other peer (it was answered with an empty ``length`` answer)."""
    frame = {"type": "completion_request", "session_id": "s", "model": "echo", "messages": [], "max_tokens": max_tokens}
    with pytest.raises(ProtocolError, match="max_tokens"):
        decode(json.dumps(frame).encode())
    assert decode(json.dumps({**frame, "max_tokens": 1}).encode()).max_tokens == 1


def test_every_message_says_its_wire_type():
    """``message.type`` is the spec's message type, the tag the codec writes and reads."""
    from gtl_nb.protocol.messages import MESSAGE_TYPES

    for tag, kind in MESSAGE_TYPES.items():
        assert kind.type == tag  # type: ignore[attr-defined]
        assert "type" not in kind.__struct_fields__  # a class attribute, not a field of its own
    token = decode(b'{"type":"token","session_id":"s","text":"hi"}')
    assert token.type == "token" and encode(token) == b'{"type":"token","session_id":"s","text":"hi"}'


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"hello","versions":"1.0","token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnLWNhbmFyeQ"}',
        '{"type":"hello","token": "opaque-canary-token-9f2e", "versions": 7}',
        '{"type":"hello","token":"opaque-canary-token-9f2e' + "x" * 500,  # cut off: not even JSON
        '{"type":"nonsense","note":"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnLWNhbmFyeQ"}',
    ],
)
def test_a_bad_frames_error_quotes_no_token(frame):
    """The error for a malformed frame quotes its start, to say what was wrong — never a token in it
    (a malformed hello carries the client's)."""
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    message = str(caught.value)
    assert "canary" not in message and "eyJzdWIi" not in message and "c2lnLWNhbmFyeQ" not in message, message
    assert '"type":' in message  # still says what the frame was


def test_a_decoder_gives_up_the_stream_at_its_max_refused_frame():
    """Past ``max_refused`` bad frames nothing more is decoded — the rest of the chunk, later chunks, a
    partial frame at the end: a connection closing at its ``max_bad_frames`` pays for no more lines."""
    hello = b'{"type":"hello","versions":["1.0"]}\n'
    decoder = FrameDecoder(max_refused=3)
    items = decoder.feed(hello + b"x\n" * 1_000_000 + b'{"type":"ca')
    assert [type(item).__name__ for item in items] == ["Hello", "FrameError", "FrameError", "FrameError"]
    assert decoder.given_up and decoder.frames_refused == 3 and decoder.pending_bytes == 0
    assert decoder.feed(hello) == [] and decoder.close() == []
    unbounded = FrameDecoder()  # (the default: every frame, as before)
    assert len(unbounded.feed(b"x\n" * 10)) == 10 and not unbounded.given_up


def test_an_unknown_status_state_is_kept_as_an_informational_status():
    """The spec shows ``streaming`` and closes no set: a newer peer's state is read, not refused."""
    status = decode(b'{"type":"status","session_id":"s","state":"thinking","reason":"planning"}')
    assert status == Status(session_id="s", state="thinking", reason="planning")
    assert decode(encode(status)) == status


def test_an_unknown_error_code_is_an_internal_error_keeping_the_peers_code_and_message():
    frame = b'{"type":"error","session_id":"s","code":"QUOTA_EXCEEDED","message":"monthly quota used up"}'
    error = decode(frame)
    assert error == Error(session_id="s", code="INTERNAL", message="monthly quota used up", peer_code="QUOTA_EXCEEDED")
    exc = error_from_event(error)
    assert type(exc) is InternalError and not exc.retryable  # acted on as any error, never retried blindly
    assert (exc.peer_code, exc.message, exc.session_id) == ("QUOTA_EXCEEDED", "monthly quota used up", "s")
    assert str(exc) == "INTERNAL (the peer's code QUOTA_EXCEEDED): monthly quota used up"
    assert exc.to_event() == Error(
        session_id="s", code="INTERNAL", message="monthly quota used up", peer_code="QUOTA_EXCEEDED"
    )
    said_retryable = decode(b'{"type":"error","session_id":"s","code":"BUSY","message":"m","retryable":true}')
    assert error_from_event(said_retryable).retryable  # the frame's own word counts
    aliased = decode(b'{"type":"error","sid":"s","code":"NEW","msg":"m"}')  # with the aliases the slow path reads
    assert (aliased.session_id, aliased.code, aliased.peer_code, aliased.message) == ("s", "INTERNAL", "NEW", "m")
