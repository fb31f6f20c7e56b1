"""Regressions of hostile provider input: bodies that froze the process, escaped as foreign exceptions or skipped
failover. Each test names the defect; timings have wide margins (the defects took seconds to minutes).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import provider_strategies as ps
import pytest
import wire

from gtl_nb.protocol.codec import decode as decode_frame
from gtl_nb.protocol.codec import encode as encode_frame
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import CompletionRequest, Error, Message, StreamEvent, Token, Tool, ToolCall
from gtl_nb.providers import get_provider
from gtl_nb.providers.base import retry_after_seconds
from gtl_nb.providers.gemini import classify_error as gemini_classify
from gtl_nb.providers.limits import (
    MAX_BODY_BYTES,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    MalformedResponseError,
    parse_json,
    snippet,
    strip_tags,
)
from gtl_nb.providers.openai_chat import _go_duration
from gtl_nb.providers.sse import SSEDecoder, SSEError

SSE_DIALECTS = ("openai", "azure", "openai_compatible", "anthropic", "gemini")
SNIFFING_DIALECTS = ("openai", "anthropic", "gemini")  # they tell SSE from JSON by the first byte
DEEP = ps.nested_json(100_000)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail when the block spends more than ``seconds`` of this thread's CPU: a bound on the work (a parse
    gone quadratic), not a timing — a loaded machine stretches the wall clock, not the CPU spent."""
    start = time.thread_time()
    yield
    spent = time.thread_time() - start
    assert spent < seconds, f"spent {spent:.2f} s of CPU (limit {seconds} s)"


def decode(dialect_type: str, pieces: list[bytes], *, stream: bool = True) -> list[StreamEvent]:
    """Every event of ``pieces`` fed to a fresh decoder of ``dialect_type``, checked against the contract."""
    decoder = get_provider(dialect_type).response_decoder(ps.request(stream=stream), ps.deployment(dialect_type))
    events = wire.feed_all(decoder, pieces)
    wire.check_sequence(events, ps.SESSION_ID)
    return events


def assert_retryable_provider_fault(events: list[StreamEvent]) -> None:
    error = events[-1]
    assert isinstance(error, Error)
    assert (error.code, error.retryable) == ("PROVIDER_UNAVAILABLE", True), error


def stream_of(dialect_type: str, payload: bytes) -> bytes:
    """``payload`` as one unit of ``dialect_type``'s streaming wire (SSE event, NDJSON line, event-stream frame)."""
    if dialect_type == "ollama":
        return payload + b"\n"
    if dialect_type == "bedrock":
        headers = {":event-type": "contentBlockDelta", ":content-type": "application/json", ":message-type": "event"}
        return ps.encode_frame(headers, payload)
    return b"data: " + payload + b"\n\n"


# ----------------------------------------------------------------------------------------------
# (1) an HTML error page of "<" without ">" held the thread for seconds (a quadratic tag-stripping regex)


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
def test_an_error_page_of_a_megabyte_of_angle_brackets_is_mapped_at_once(dialect_type: str) -> None:
    dialect = get_provider(dialect_type)
    with within(1.0):
        error = dialect.decode_error(ps.request(stream=True), ps.deployment(dialect_type), 500, {}, b"<" * 1_000_000)
    assert isinstance(error, Error) and error.http_status == 500
    assert len(error.message) <= MAX_ERROR_MESSAGE_CHARS + 200


def test_an_error_body_is_examined_only_up_to_a_bounded_prefix() -> None:
    page = b"<html><title>502 Bad Gateway</title>" + b"<" * 60_000_000
    with within(1.0):
        text = snippet(page)
    assert text.startswith("502 Bad Gateway") and len(text) <= 200


@pytest.mark.parametrize("text", ["<p>Bad <b>Gateway</b></p>", "a < b and c<d", "x<y>z<w", "<<>>", "", "<", ">"])
def test_tags_are_stripped_as_the_old_regex_did(text: str) -> None:
    assert strip_tags(text) == re.sub(r"<[^>]*>", " ", text)  # on short input the regex is harmless


def test_tags_are_stripped_by_a_linear_scan() -> None:
    with within(1.0):
        assert strip_tags("<" * 1_000_000) == "<" * 1_000_000


# ----------------------------------------------------------------------------------------------
# (4) deeply nested JSON in a stream chunk raised RecursionError: INTERNAL, and no failover


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
@pytest.mark.parametrize("payload", [DEEP, ps.nested_json(100_000, opening=b'{"a":')], ids=["arrays", "objects"])
def test_deeply_nested_json_in_a_stream_is_a_retryable_provider_fault(dialect_type: str, payload: bytes) -> None:
    with within(2.0):
        events = decode(dialect_type, [stream_of(dialect_type, payload)])
    assert_retryable_provider_fault(events)


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
def test_deeply_nested_json_as_a_whole_body_is_a_retryable_provider_fault(dialect_type: str) -> None:
    with within(2.0):
        events = decode(dialect_type, [ps.nested_json(100_000, opening=b'{"a":')], stream=False)
    assert_retryable_provider_fault(events)


def test_json_nested_to_the_limit_parses_and_one_level_more_is_refused() -> None:
    assert parse_json(ps.nested_json(MAX_JSON_DEPTH)) is not None
    with pytest.raises(MalformedResponseError, match="nested deeper"):
        parse_json(ps.nested_json(MAX_JSON_DEPTH + 1))
    with pytest.raises(MalformedResponseError, match="nested deeper"):  # brackets in strings do not count
        parse_json(b'["' + b"[" * 100 + b'", ' + ps.nested_json(MAX_JSON_DEPTH) + b"]")
    assert parse_json(b'["' + b"[" * 100 + b'\\"[", ' + ps.nested_json(MAX_JSON_DEPTH - 1) + b"]")


def test_a_chunk_within_the_depth_limit_still_decodes() -> None:
    padding = ps.nested_json(MAX_JSON_DEPTH - 1)  # with the chunk object itself: exactly the limit
    chunk = b'{"x": ' + padding + b', "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
    events = decode("openai", [b"data: " + chunk + b"\n\ndata: [DONE]\n\n"])
    assert [e.text for e in events if isinstance(e, Token)] == ["hi"]


def test_a_malformed_body_is_a_provider_error_the_engine_can_fail_over_from() -> None:
    error = MalformedResponseError("garbled")
    assert error.retryable and error.code == "PROVIDER_UNAVAILABLE" and isinstance(error, ValueError)


# ----------------------------------------------------------------------------------------------
# (6b) Gemini's error classifier ran a quadratic regex over the message (170,000 characters: 15 s)


def test_gemini_classifies_a_huge_error_message_at_once() -> None:
    message = "input token count " * 10_000
    with within(0.5):
        assert gemini_classify(400, {"message": message}) == ("INVALID_REQUEST", False)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "CONTEXT_LENGTH_EXCEEDED",
        ),
        ("INPUT TOKEN COUNT 5 EXCEEDS 4", "CONTEXT_LENGTH_EXCEEDED"),
        ("request exceeds the maximum number of tokens", "CONTEXT_LENGTH_EXCEEDED"),
        ("input token count is 5\nwhich exceeds nothing", "INVALID_REQUEST"),  # the phrases on different lines
        ("exceeds before input token count", "INVALID_REQUEST"),
    ],
)
def test_gemini_context_length_wording_is_still_recognised(message: str, code: str) -> None:
    assert gemini_classify(400, {"message": message})[0] == code


# ----------------------------------------------------------------------------------------------
# found while hardening: other super-linear paths over outside input


def test_a_long_rate_limit_reset_header_is_read_at_once() -> None:
    with within(0.5):
        assert _go_duration("1" * 20_000) is None
    assert _go_duration("6m0s") == 360.0 and _go_duration("1.5s") == 1.5 and _go_duration("20ms") == 0.02


def test_sse_lines_are_split_in_linear_time() -> None:
    decoder = SSEDecoder()
    with within(3.0):
        events = decoder.feed(b"data: x\n\n" * 200_000)  # every "\r" search used to scan to the end
    assert len(events) == 200_000


def test_a_long_sse_line_arriving_in_small_chunks_is_buffered_in_linear_time() -> None:
    decoder = SSEDecoder()
    with within(2.0):
        for _ in range(8_192):
            assert decoder.feed(b"data: " + b"x" * 1_018) == []
        events = decoder.feed(b"\n\n")
    assert len(events) == 1 and len(events[0].data) == 8_192 * 1_018 + 8_191 * 6


def test_an_sse_event_over_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=1_000)
    decoder.feed(b"data: " + b"x" * 500 + b"\n")
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 500 + b"\n")
    with pytest.raises(SSEError):
        SSEDecoder(max_event_bytes=1_000).feed(b"y" * 1_001)  # a line that never ends


def test_sse_comments_do_not_count_towards_an_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(b": keep-alive\n" * 1_000 + b"data: ok\n\n")[0].data == "ok"


@pytest.mark.parametrize("dialect_type", SNIFFING_DIALECTS)
def test_a_body_of_whitespace_in_small_chunks_is_sniffed_in_linear_time(dialect_type: str) -> None:
    with within(2.0):
        events = decode(dialect_type, [b" " * 1_024] * 8_192)
    assert_retryable_provider_fault(events)


def test_ndjson_lines_are_split_in_linear_time() -> None:
    lines = b'{"message": {"content": "x"}, "done": false}\n' * 50_000
    with within(3.0):
        events = decode("ollama", [lines, b'{"done": true}\n'])
    assert len(events) == 50_002


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
def test_a_non_streaming_body_arriving_in_small_chunks_is_buffered_in_linear_time(dialect_type: str) -> None:
    with within(2.0):
        events = decode(dialect_type, [b" " * 1_024] * 8_192, stream=False)
    assert_retryable_provider_fault(events)


def fed(dialect_type: str, pieces: list[bytes], *, stream: bool) -> list[StreamEvent]:
    """The events of feeding ``pieces`` to a fresh decoder, without closing it."""
    decoder = get_provider(dialect_type).response_decoder(ps.request(stream=stream), ps.deployment(dialect_type))
    return [event for piece in pieces for event in decoder.feed(piece)]


MEGABYTE = 1 << 20


@pytest.mark.parametrize("dialect_type", ps.DIALECT_TYPES)
def test_a_non_streaming_body_over_the_limit_is_refused_as_it_arrives(dialect_type: str) -> None:
    pieces = [b"{" + b" " * MEGABYTE] * (MAX_BODY_BYTES // MEGABYTE + 1)
    with within(2.0):
        events = fed(dialect_type, pieces, stream=False)  # not buffered to the end: refused while arriving
    assert_retryable_provider_fault(events)


@pytest.mark.parametrize("dialect_type", [*SSE_DIALECTS, "ollama"])
def test_a_stream_line_that_never_ends_is_refused_as_it_arrives(dialect_type: str) -> None:
    start = b"{" if dialect_type == "ollama" else b"data: "
    pieces = [start] + [b"x" * MEGABYTE] * (MAX_EVENT_BYTES // MEGABYTE + 1)
    with within(2.0):
        events = fed(dialect_type, pieces, stream=True)
    assert_retryable_provider_fault(events)


# ----------------------------------------------------------------------------------------------
# found by fuzzing: values no GTL frame can carry


@pytest.mark.parametrize("dialect_type", ["openai", "ollama"])
def test_a_lone_surrogate_escape_becomes_a_replacement_character(dialect_type: str) -> None:
    if dialect_type == "ollama":
        body = b'{"message": {"content": "a\\ud800b"}, "done": false}\n{"done": true}\n'
    else:
        body = b'data: {"choices": [{"delta": {"content": "a\\ud800b"}, "finish_reason": "stop"}]}\n\n'
    events = decode(dialect_type, [body])
    assert [e.text for e in events if isinstance(e, Token)] == ["a\ufffdb"]
    assert all(decode_frame(encode_frame(e)) == e for e in events)


@pytest.mark.parametrize("value", ["inf", "1e999", "nan", "-inf", "1" * 400])
def test_a_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    for name in ("retry-after", "retry-after-ms"):
        wait = retry_after_seconds({name: value})
        assert wait is None or math.isfinite(wait)


# ----------------------------------------------------------------------------------------------
# found while hardening: a model's deeply nested tool arguments crashed the next request's builder


@pytest.mark.parametrize("dialect_type", ["anthropic", "bedrock", "gemini", "ollama"])
def test_deeply_nested_tool_arguments_in_the_history_are_an_invalid_request(dialect_type: str) -> None:
    call = ToolCall(id="call_1", name="lookup", arguments=DEEP.decode())
    history = [Message(role="user", content="hi"), Message(role="assistant", tool_calls=[call])]
    tools = [Tool(name="lookup")]  # (the tool loop's tools: without them a history is sent as text, unparsed)
    request = CompletionRequest(session_id=ps.SESSION_ID, model="fuzz-model", messages=history, tools=tools)
    with pytest.raises(InvalidRequestError):
        get_provider(dialect_type).build_request(request, ps.deployment(dialect_type), now=0.0)


def test_a_deeply_nested_tool_result_is_sent_to_gemini_as_text() -> None:
    call = ToolCall(id="call_1", name="lookup", arguments="{}")
    history = [
        Message(role="user", content="hi"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="call_1", content=DEEP.decode()),
    ]
    request = CompletionRequest(session_id=ps.SESSION_ID, model="fuzz-model", messages=history)
    built = get_provider("gemini").build_request(request, ps.deployment("gemini"), now=0.0)
    assert b'"result":"[[[' in built.body


# -- a model name in an upstream path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect_type", "options", "model"),
    [
        ("gemini", {}, "gemini-2.5-flash/../../v1beta/models/gemini-2.5-pro"),
        ("gemini", {}, "../../../admin?x=1#"),
        ("gemini", {}, "tunedModels/./x"),
        ("azure", {"api_version": "2024-10-21"}, ".."),
        ("bedrock", {"region": "us-east-1", "aws_access_key_id": "AKID", "aws_secret_access_key": "s"}, ".."),
    ],
)
def test_a_model_name_cannot_walk_the_upstream_path(dialect_type, options, model):
    """A model reaches the path of some APIs; a ``..`` segment would make the deployment's key call a
    resource other than the one a token's allow-list checked (``gem:gemini-2.5-flash*`` reaching pro)."""
    from gtl_nb.providers.base import Deployment

    deployment = Deployment(name="d", type=dialect_type, api_key="k", base_url="http://127.0.0.1:9/", **options)
    request = CompletionRequest(session_id="s", model=model, messages=[Message(role="user", content="hi")])
    with pytest.raises(InvalidRequestError, match="cannot name a resource"):
        get_provider(dialect_type).build_request(request, deployment, now=0.0)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
        ("tunedModels/my-model", "/v1beta/tunedModels/my-model:streamGenerateContent"),
        ("gemini-2.5-flash?alt=x#y", "/v1beta/models/gemini-2.5-flash%3Falt%3Dx%23y:streamGenerateContent"),
    ],
)
def test_a_gemini_model_stays_in_its_segments(model, path):
    from urllib.parse import urlsplit

    from gtl_nb.providers.base import Deployment

    deployment = Deployment(name="g", type="gemini", api_key="k", base_url="http://127.0.0.1:9")
    request = CompletionRequest(session_id="s", model=model, messages=[Message(role="user", content="hi")])
    assert urlsplit(get_provider("gemini").build_request(request, deployment, now=0.0).url).path == path
