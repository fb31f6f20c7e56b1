"""Tokens that arrive in one read leave a decoder as one token (``GuardedDecoder._accepted``).

They came together, so no reader could have seen them apart; joining them means every level above
(the engine, the transcript, a gateway's encoder, a widget) handles one event where it handled many.
Nothing but the number of tokens changes: the text, its order against every other event, and the
events themselves are what they were.
"""

from __future__ import annotations

import itertools
import json

import provider_strategies as ps
import wire
from hypothesis import given, settings
from hypothesis import strategies as st

from gtl_nb.protocol.messages import CompletionRequest, Done, Reasoning, StreamEvent, Token, ToolCall, ToolCallEvent
from gtl_nb.providers import get_provider
from gtl_nb.providers.base import MERGED_TEXT_LIMIT, Deployment, GuardedDecoder

SESSION = "s-1"


class _Scripted(GuardedDecoder):
    """A decoder whose reads give the events a test scripts (the joining is the base class's)."""

    def __init__(self, reads: list[list[StreamEvent]]) -> None:
        super().__init__(CompletionRequest(session_id=SESSION, model="m", messages=[]), Deployment(name="d", type="t"))
        self._reads = iter(reads)

    def _feed(self, chunk: bytes) -> list[StreamEvent]:
        return next(self._reads)

    def _close(self) -> list[StreamEvent]:
        return [Done(session_id=SESSION)]


def _token(text: str) -> Token:
    return Token(session_id=SESSION, text=text)


def _fed(*reads: list[StreamEvent]) -> list[list[StreamEvent]]:
    decoder = _Scripted(list(reads))
    return [decoder.feed(b"x") for _ in reads]


def test_a_reads_tokens_are_one_token_and_a_lone_token_is_the_same_event() -> None:
    lone = _token("a")
    assert _fed([_token("He"), _token("llo"), _token(" there")], [lone]) == [[_token("Hello there")], [lone]]
    assert _fed([lone])[0][0] is lone  # nothing built for a read of one token


def test_tokens_are_not_joined_across_another_event_and_keep_their_place() -> None:
    call = ToolCallEvent(session_id=SESSION, function=ToolCall(id="c1", name="f", arguments="{}"))
    thought = Reasoning(session_id=SESSION, text="hm")
    read = [_token("a"), _token("b"), thought, _token("c"), call, _token("d"), _token("e")]
    assert _fed(read) == [[_token("ab"), thought, _token("c"), call, _token("de")]]


def test_nothing_after_the_terminal_event_and_the_tokens_before_it_joined() -> None:
    read = [_token("a"), _token("b"), Done(session_id=SESSION), _token("late")]
    assert _fed(read) == [[_token("ab"), Done(session_id=SESSION)]]


def test_a_join_stops_at_the_limit_and_a_longer_token_passes_alone() -> None:
    half = "x" * (MERGED_TEXT_LIMIT // 2)
    long = "y" * (MERGED_TEXT_LIMIT + 1)
    read = [_token(half), _token(half), _token("z"), _token(long), _token("w")]
    assert [event.text for event in _fed(read)[0]] == [half + half, "z", long, "w"]  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["tok", "tok", "tok", "think", "call"]), max_size=30), st.integers(0, 3))
def test_joined_tokens_carry_the_same_text_in_the_same_order(kinds: list[str], seed: int) -> None:
    events: list[StreamEvent] = []
    for index, kind in enumerate(kinds):
        if kind == "tok":
            events.append(_token(f"t{index}-{seed} "))
        elif kind == "think":
            events.append(Reasoning(session_id=SESSION, text=f"r{index}"))
        else:
            call = ToolCall(id=f"c{index}", name="f", arguments="{}")
            events.append(ToolCallEvent(session_id=SESSION, function=call))
    (out,) = _fed(events)
    assert out == wire.joined_tokens(events)
    assert not any(type(a) is Token and type(b) is Token for a, b in itertools.pairwise(out))


def test_every_dialect_joins_a_burst_and_gives_the_same_text_as_one_chunk_a_read() -> None:
    """A provider's streamed answer read all at once and one unit at a time: the same events, tokens joined."""
    for dialect_type in ps.DIALECT_TYPES:
        request = ps.request(stream=True)
        body = _burst(dialect_type)
        if body is None:
            continue
        dialect = get_provider(dialect_type)
        at_once = wire.feed_all(dialect.response_decoder(request, ps.deployment(dialect_type)), [body])
        by_byte = wire.feed_all(dialect.response_decoder(request, ps.deployment(dialect_type)), wire.byte_by_byte(body))
        assert at_once == wire.joined_tokens(by_byte), dialect_type
        assert sum(isinstance(event, Token) for event in at_once) == 1, dialect_type
        assert "".join(e.text for e in at_once if isinstance(e, Token)) == "one two three", dialect_type


def _burst(dialect_type: str) -> bytes | None:
    """Three tokens' worth of ``dialect_type``'s streamed wire format, with its ending."""
    words = ["one", " two", " three"]
    if dialect_type in ("openai", "azure", "openai_compatible"):
        chunks = [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in words]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return b"".join(f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks) + b"data: [DONE]\n\n"
    if dialect_type == "ollama":
        lines = [{"message": {"role": "assistant", "content": word}, "done": False} for word in words]
        lines.append({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"})
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    if dialect_type == "anthropic":
        text = {"type": "text", "text": ""}
        events = [
            {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": text},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}} for w in words),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
            {"type": "message_stop"},
        ]
        return b"".join(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode() for data in events)
    if dialect_type == "gemini":
        chunks = [{"candidates": [{"content": {"role": "model", "parts": [{"text": word}]}}]} for word in words]
        chunks[-1]["candidates"][0]["finishReason"] = "STOP"
        return b"".join(f"data: {json.dumps(chunk)}\r\n\r\n".encode() for chunk in chunks)
    return None  # Bedrock's binary event stream: its own tests
