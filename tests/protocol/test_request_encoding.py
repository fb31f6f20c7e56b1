"""How a ``completion_request`` is written on the wire: ``stream`` always, unset optional fields never."""

from __future__ import annotations

import json

from gtl_nb.protocol import CompletionRequest, Message, decode, encode


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
