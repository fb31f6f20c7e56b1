"""An incremental Server-Sent Events parser (the WHATWG event-stream grammar), sans-I/O.

``SSEDecoder.feed(bytes)`` returns the events completed by those bytes; lines may end in ``\\n``,
``\\r\\n`` or ``\\r`` (Gemini uses CRLF), and a chunk may split anywhere, even inside a multi-byte
character or between ``\\r`` and ``\\n``. Comment lines (``:``) are skipped. ``close()`` flushes
an event that the stream ended without a blank line after.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: ``event`` is ``"message"`` when the stream named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        data = self._buffer + chunk
        events: list[SSEEvent] = []
        start = 0
        length = len(data)
        while start < length:
            nl = data.find(b"\n", start)
            cr = data.find(b"\r", start)
            if cr >= 0 and (nl < 0 or cr < nl):
                if cr + 1 == length:
                    break  # a lone CR at the end: it may be the first half of CRLF
                end, nxt = cr, cr + (2 if data[cr + 1 : cr + 2] == b"\n" else 1)
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            self._line(data[start:end].decode("utf-8", "replace"), events)
            start = nxt
        self._buffer = data[start:]
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._has_fields:
                if self._data or self._event:
                    events.append(SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry))
                self._data = []
                self._event = ""
                self._retry = None
                self._has_fields = False
            return
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._has_fields = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch a final event that lacked its blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r").decode("utf-8", "replace"), events)
            self._buffer = b""
        self._line("", events)
        return events
