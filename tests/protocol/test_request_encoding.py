"""How a ``completion_request`` is written on the wire: ``stream`` always, unset optional fields never."""

from __future__ import annotations

import json

import pytest

from gtl_nb.protocol import CompletionRequest, Message, ProtocolError, decode, encode


def _frame(request: CompletionRequest) -> dict[str, object]:
    return json.loads(encode(request))


def test_stream_is_written_whether_true_or_false() -> None:
    hello = [Message(role="user", content="hi")]
    assert _frame(CompletionRequest(session_id="s", model="echo", messages=hello))["stream"] is True
    assert _frame(CompletionRequest(session_id="s", model="echo", messages=hello, stream=False))["stream"] is False


def test_unset_optional_fields_are_left_out_rather_than_written_as_null() -> None:
    frame = _frame(CompletionRequest(session_id="s", model="echo", messages=[Message(role="user", content="hi")]))
    assert set(frame) == {"type", "session_id", "model", "messages", "stream"}
    assert None not in frame.values()


def test_a_request_without_stream_still_decodes_as_streamed() -> None:
    frame = '{"type":"completion_request","session_id":"s","model":"echo","messages":[]}'
    assert decode(frame).stream is True


def test_reasoning_effort_and_budget_round_trip_and_are_checked_by_the_codec() -> None:
    """Both fields travel as written (``none`` and ``0`` too: no thinking is a value asked for); an effort
    no API knows, a negative budget or a pair that disagrees on thinking at all is the codec's refusal."""
    hello = [Message(role="user", content="hi")]
    for effort, budget in (("high", None), (None, 4096), ("xhigh", 30000), ("none", 0), ("none", None), (None, 0)):
        request = CompletionRequest(
            session_id="s", model="m", messages=hello, reasoning_effort=effort, reasoning_budget=budget
        )
        frame = _frame(request)
        assert frame.get("reasoning_effort") == effort and frame.get("reasoning_budget") == budget
        assert decode(encode(request)) == request
    base = '{"type":"completion_request","session_id":"s","model":"m","messages":[],'
    for tail, needle in (
        ('"reasoning_effort":"huge"}', "reasoning_effort"),
        ('"reasoning_budget":-1}', "reasoning_budget"),
        ('"reasoning_budget":4.5}', "reasoning_budget"),
        ('"reasoning_effort":"none","reasoning_budget":2048}', "disagree on whether to think"),
        ('"reasoning_effort":"low","reasoning_budget":0}', "disagree on whether to think"),
    ):
        with pytest.raises(ProtocolError, match=needle):
            decode(base + tail)
