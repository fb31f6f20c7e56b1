"""The session state machine, used by both ends of every transport and by the engine.

Legal order of the events of one session (a ``status`` may appear anywhere before the end)::

    NEW --status--> OPEN --token|reasoning|tool_call--> OPEN
                    OPEN --usage--> USAGE_SEEN            (at most one usage, after the last token)
    any non-final --done|error--> ENDED                   (exactly one terminal event)
    OPEN|USAGE_SEEN --status(failover)--> OPEN            (discard text, tool calls and usage so far)

An ``error`` may also end a session in state ``NEW`` (a request refused before it started).
Content before the first status, a second usage, content after usage, anything after the end and
a stream that stops without a terminal event are ``SessionStateError``.

``SessionTracker`` multiplexes many sessions on one connection; ``Transcript`` accumulates what a
session produced, applying the failover reset, and is what ``Completion`` and every renderer read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gtl_nb.protocol.errors import SessionStateError
from gtl_nb.protocol.messages import (
    Done,
    Error,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)

_CONTENT_TYPES = frozenset((Token, Reasoning, ToolCallEvent))


class SessionState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    USAGE_SEEN = "usage_seen"
    ENDED = "ended"


class SessionStateMachine:
    """Validates the events of one session in order; ``advance(event)`` raises on an illegal one."""

    __slots__ = ("session_id", "state")

    def __init__(self, session_id: str = "") -> None:
        self.session_id = session_id
        self.state = SessionState.NEW

    @property
    def ended(self) -> bool:
        return self.state is SessionState.ENDED

    def advance(self, event: StreamEvent) -> SessionState:
        state = self.state
        if state is SessionState.OPEN and type(event) in _CONTENT_TYPES:
            return state  # the bulk of every stream, so asked first
        if state is SessionState.ENDED:
            raise SessionStateError(f"session {self.session_id!r}: {_kind(event)} after the terminal event")
        kind = type(event)
        if kind is Status:
            if event.state == "failover" or state is SessionState.NEW:
                self.state = SessionState.OPEN
            return self.state
        if kind is Done or kind is Error:
            if kind is Done and state is SessionState.NEW:
                raise SessionStateError(f"session {self.session_id!r}: done before any status")
            self.state = SessionState.ENDED
            return self.state
        if state is SessionState.NEW:
            raise SessionStateError(f"session {self.session_id!r}: {_kind(event)} before the first status")
        if isinstance(event, Usage):
            if state is SessionState.USAGE_SEEN:
                raise SessionStateError(f"session {self.session_id!r}: a second usage event")
            self.state = SessionState.USAGE_SEEN
            return self.state
        if state is SessionState.USAGE_SEEN:
            raise SessionStateError(f"session {self.session_id!r}: {_kind(event)} after usage")
        return state

    def end_of_stream(self) -> None:
        """The transport closed: raise unless the session saw its terminal event."""
        if self.state is not SessionState.ENDED:
            raise SessionStateError(f"session {self.session_id!r}: stream ended without done or error")


def _kind(event: object) -> str:
    config = getattr(type(event), "__struct_config__", None)
    return str(getattr(config, "tag", type(event).__name__))


class SessionTracker:
    """Many sessions multiplexed on one connection, each with its own state machine."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionStateMachine] = {}

    def open(self, session_id: str) -> SessionStateMachine:
        if session_id in self._sessions:
            raise SessionStateError(f"session {session_id!r} is already open on this connection")
        machine = self._sessions[session_id] = SessionStateMachine(session_id)
        return machine

    def advance(self, event: StreamEvent) -> bool:
        """Feed one event; returns True when it ended its session (which is then forgotten)."""
        machine = self._sessions.get(event.session_id)
        if machine is None:
            raise SessionStateError(f"{_kind(event)} for unknown session {event.session_id!r}")
        machine.advance(event)
        if machine.ended:
            del self._sessions[event.session_id]
            return True
        return False

    @property
    def open_sessions(self) -> list[str]:
        return list(self._sessions)

    def close(self) -> None:
        """The connection closed: every open session ended without a terminal event."""
        if self._sessions:
            names = ", ".join(sorted(self._sessions))
            self._sessions.clear()
            raise SessionStateError(f"connection closed with sessions still open: {names}")


def is_failover(event: StreamEvent) -> bool:
    """True for the ``status: failover`` that voids everything a session received before it (the
    protocol's failover reset; ``Transcript`` applies it, and every reader asks this one function)."""
    return isinstance(event, Status) and event.state == "failover"


@dataclass
class Transcript:
    """What one session produced so far, with the failover reset applied."""

    session_id: str = ""
    tokens: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    done: Done | None = None
    error: Error | None = None
    statuses: list[Status] = field(default_factory=list)
    failovers: list[Status] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)
    answer_events: list[StreamEvent] = field(default_factory=list)
    """The events of the answer that counts: everything but statuses since the last failover."""

    def add(self, event: StreamEvent) -> None:
        self.events.append(event)
        kind = type(event)  # event types are never subclassed (messages.py): exact tests, tokens first
        if kind is Token:
            self.answer_events.append(event)
            self.tokens.append(event.text)  # type: ignore[union-attr]
            return
        if kind is Status:
            self.statuses.append(event)  # type: ignore[arg-type]
            if is_failover(event):
                self.failovers.append(event)  # type: ignore[arg-type]
                self.answer_events.clear()
                self.tokens.clear()
                self.reasoning.clear()
                self.tool_calls.clear()
                self.usage = None
            return
        self.answer_events.append(event)
        if kind is Reasoning:
            self.reasoning.append(event.text)  # type: ignore[union-attr]
        elif kind is ToolCallEvent:
            self.tool_calls.append(event.function)  # type: ignore[union-attr]
        elif kind is Usage:
            self.usage = event  # type: ignore[assignment]
        elif kind is Done:
            self.done = event  # type: ignore[assignment]
        elif kind is Error:
            self.error = event  # type: ignore[assignment]

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None
