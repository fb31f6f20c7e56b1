"""Reading one session's events from a stream of NDJSON frames, checked: only that session's stream
events, in a legal order, each frame within the size limit (sans-I/O; the QUIC and HTTP clients).
"""

from __future__ import annotations

import msgspec

from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.connection import STREAM_EVENT_TYPES
from gtl_nb.protocol.errors import GTLError, InternalError, ProtocolError, SessionStateError
from gtl_nb.protocol.frames import BadFrame, FrameReader
from gtl_nb.protocol.messages import Error, StreamEvent, WireMessage
from gtl_nb.protocol.session import SessionStateMachine

__all__ = ["SessionStreamReader", "stream_fault"]


class SessionStreamReader:
    """The client's reading of one session stream: the gateway's events of ``session_id``, in a legal order.

    ``feed(data, end)`` returns the events so far and, once the stream broke the rules, the
    violation (after which nothing more is read): an undecodable frame, an event out of order or of
    another session, anything that is not a stream event, or the stream ending before ``done``/``error``.
    An ``error`` with an empty ``session_id`` (the gateway refusing the stream before reading its id)
    counts as this session's.
    """

    def __init__(self, session_id: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.session_id = session_id
        self._reader = FrameReader(max_frame_bytes)
        self._machine = SessionStateMachine(session_id)
        self.violation: ProtocolError | None = None

    @property
    def ended(self) -> bool:
        """Whether the terminal event was read."""
        return self._machine.ended

    def feed(self, data: bytes, end: bool = False) -> tuple[list[StreamEvent], ProtocolError | None]:
        events: list[StreamEvent] = []
        if self.violation is not None or self.ended:
            return events, None
        for item in [*(self._reader.feed(data) if data else []), *(self._reader.close() if end else [])]:
            event = self._check(item)
            if event is None:
                return events, self.violation
            events.append(event)
            if self.ended:
                return events, None
        if end and not self.ended:
            self.violation = SessionStateError(f"the gateway ended session {self.session_id!r}'s stream before its end")
        return events, self.violation

    def _check(self, item: WireMessage | BadFrame) -> StreamEvent | None:
        if isinstance(item, BadFrame):
            self.violation = item.error
            return None
        if not isinstance(item, STREAM_EVENT_TYPES):
            self.violation = ProtocolError(f"{_kind(item)} on a session stream (only stream events belong there)")
            return None
        event: StreamEvent = item  # type: ignore[assignment]
        if isinstance(event, Error) and not event.session_id:
            event = msgspec.structs.replace(event, session_id=self.session_id)
        if event.session_id != self.session_id:
            self.violation = ProtocolError(f"an event of session {event.session_id!r} on {self.session_id!r}'s stream")
            return None
        try:
            self._machine.advance(event)
        except SessionStateError as exc:
            self.violation = exc
            return None
        return event


def stream_fault(session_id: str, error: GTLError) -> Error:
    """The ``error`` a client's session ends with when the gateway broke the stream's rules."""
    return InternalError(f"the gateway broke the protocol: {error.message}").to_event(session_id)


def _kind(message: object) -> str:
    config = getattr(type(message), "__struct_config__", None)
    return str(getattr(config, "tag", None) or type(message).__name__)
