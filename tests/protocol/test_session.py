"""The session state machine accepts exactly the legal event orders; the transcript applies failover."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.protocol import (
    Done,
    Error,
    Reasoning,
    SessionStateError,
    SessionStateMachine,
    SessionTracker,
    Status,
    Token,
    ToolCall,
    ToolCallEvent,
    Transcript,
    Usage,
)

SID = "s"
EVENTS = {
    "S": lambda: Status(session_id=SID, state="streaming"),
    "F": lambda: Status(session_id=SID, state="failover", from_provider="a", to_provider="b", reason="x"),
    "T": lambda: Token(session_id=SID, text="t"),
    "R": lambda: Reasoning(session_id=SID, text="r"),
    "C": lambda: ToolCallEvent(session_id=SID, function=ToolCall(id="c", name="f")),
    "U": lambda: Usage(session_id=SID, tokens_in=1, tokens_out=1),
    "D": lambda: Done(session_id=SID),
    "E": lambda: Error(session_id=SID, code="INTERNAL", message="m"),
}


def legal(symbols: str) -> bool:
    """An independent statement of the spec's order, as a regular language per failover segment."""
    if symbols == "E":
        return True  # refused before it started
    if len(symbols) < 2 or symbols[-1] not in "DE" or re.search("[DE]", symbols[:-1]):
        return False
    body = symbols[:-1]
    if body[0] not in "SF":
        return False
    return all(re.fullmatch(r"[STRC]*(US*)?", segment) for segment in body.split("F"))


def accepts(symbols: str) -> bool:
    machine = SessionStateMachine(SID)
    try:
        for symbol in symbols:
            machine.advance(EVENTS[symbol]())
        machine.end_of_stream()
    except SessionStateError:
        return False
    return True


@given(st.text(alphabet="SFTRCUDE", max_size=10))
def test_machine_accepts_exactly_the_legal_orders(symbols):
    assert accepts(symbols) == legal(symbols)


@pytest.mark.parametrize(
    "symbols",
    ["STTUD", "SD", "E", "SE", "STFTTUD", "STUFTUD", "SSTSTUSD", "SCCUD", "SRRTTUD", "FTD", "STTE", "STUSE"],
)
def test_legal_orders(symbols):
    assert accepts(symbols)


@pytest.mark.parametrize(
    ("symbols", "why"),
    [
        ("TD", "before the first status"),
        ("STUTD", "after usage"),
        ("STUUD", "a second usage"),
        ("STDT", "after the terminal event"),
        ("STDD", "after the terminal event"),
        ("STT", "without done or error"),
        ("D", "done before any status"),
    ],
)
def test_illegal_orders_say_why(symbols, why):
    machine = SessionStateMachine(SID)
    with pytest.raises(SessionStateError, match=why):
        for symbol in symbols:
            machine.advance(EVENTS[symbol]())
        machine.end_of_stream()


def test_tracker_multiplexes_sessions_on_one_connection():
    tracker = SessionTracker()
    tracker.open("a")
    tracker.open("b")
    assert not tracker.advance(Status(session_id="a", state="streaming"))
    assert not tracker.advance(Status(session_id="b", state="streaming"))
    assert not tracker.advance(Token(session_id="b", text="x"))
    assert tracker.advance(Done(session_id="a"))
    assert tracker.open_sessions == ["b"]
    with pytest.raises(SessionStateError, match="unknown session 'zzz'"):
        tracker.advance(Token(session_id="zzz", text="x"))
    with pytest.raises(SessionStateError, match="already open"):
        tracker.open("b")
    with pytest.raises(SessionStateError, match="sessions still open: b"):
        tracker.close()


def test_transcript_discards_everything_before_a_failover():
    transcript = Transcript(session_id=SID)
    for event in [
        Status(session_id=SID, state="streaming"),
        Token(session_id=SID, text="partial "),
        ToolCallEvent(session_id=SID, function=ToolCall(id="c1", name="f")),
        Usage(session_id=SID, tokens_in=3, tokens_out=2),
        Status(session_id=SID, state="failover", from_provider="a", to_provider="b", reason="OVERLOADED"),
        Token(session_id=SID, text="final"),
        Usage(session_id=SID, tokens_in=5, tokens_out=1),
        Done(session_id=SID),
    ]:
        transcript.add(event)
    assert transcript.text == "final"
    assert transcript.tool_calls == []
    assert transcript.usage == Usage(session_id=SID, tokens_in=5, tokens_out=1)
    assert [s.to_provider for s in transcript.failovers] == ["b"]
    assert transcript.finished
