"""An incremental Server-Sent Events parser (the WHATWG event-stream grammar), sans-I/O.

``SSEDecoder.feed(bytes)`` returns the events completed by those bytes; lines may end in ``\\n``,
``\\r\\n`` or ``\\r`` (Gemini uses CRLF), and a chunk may split anywhere, even inside a multi-byte
character or between ``\\r`` and ``\\n``. Comment lines (``:``) are skipped. ``close()`` flushes
an event that the stream ended without a blank line after.

Linear in the bytes fed, however they are split: each byte is scanned for a line end once. Bytes are
searched with ``find``, not ``in``: CPython's ``x in some_bytes`` first tries ``x`` as an integer and
formats, then discards, the ``TypeError`` (twice the time of the search, on every chunk). An
event whose lines add up to more than ``max_event_bytes`` (a line that never ends included)
raises ``SSEError`` instead of growing a buffer without bound.
"""

from __future__ import annotations

import re

import msgspec

from gtl_nb.providers.limits import MAX_EVENT_BYTES, MalformedResponseError

_LINE_END = re.compile(rb"\r\n?|\n")


class SSEError(MalformedResponseError):
    """The stream breaks a limit of this parser (an event larger than ``max_event_bytes``)."""


class SSEEvent(msgspec.Struct, frozen=True):
    """One dispatched event: ``event`` is ``"message"`` when the stream named none. (A msgspec
    ``Struct`` rather than a frozen dataclass: one is made per chunk, in a quarter of the time.)"""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = bytearray()  # the unfinished line
        self._scanned = 0  # bytes of the buffer known to hold no line end
        self._size = 0  # bytes of the current event's lines so far
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if (
            chunk[:6] == b"data: "
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1:] == b"\n"
            and chunk.find(b"\r") < 0
            and not self._buffer
            and not self._has_fields
        ):
            # the commonest chunk of all: one whole "data: …\n\n" event and nothing before it (each
            # token of an OpenAI stream) — the event ``_line`` and ``_dispatch`` would make, made at once
            if len(chunk) - 1 > self._max:
                raise SSEError(f"server-sent event larger than {self._max} bytes")
            return [SSEEvent(chunk[6:-2].decode("utf-8", "replace"), "message", self._id, None)]
        burst = self._data_only_events(chunk)
        if burst is not None:
            return burst
        events: list[SSEEvent] = []
        if not self._buffer and chunk.find(b"\r") < 0:
            # the common case (whole "data: ...\n\n" chunks, LF only): split in C, keep the tail
            *lines, tail = chunk.split(b"\n")
            for line in lines:
                self._line(line, events)
            self._buffer += tail
            self._scanned = len(self._buffer)
            self._check_size(len(self._buffer))
            return events
        self._buffer += chunk
        start = 0
        for match in _LINE_END.finditer(self._buffer, self._scanned):
            if match.end() == len(self._buffer) and match.group() == b"\r":
                break  # a CR at the end may be the first half of a CRLF: wait for the next byte
            self._line(self._buffer[start : match.start()], events)
            start = match.end()
        del self._buffer[:start]
        self._scanned = max(len(self._buffer) - 1, 0)  # a held-back CR is scanned again
        self._check_size(len(self._buffer))
        return events

    @property
    def last_event_id(self) -> str | None:
        """The ``id`` the stream set last (what a data-only event carries as its ``id``)."""
        return self._id

    def data_payloads(self, chunk: bytes) -> list[bytes] | None:
        """The ``data`` of each event of ``chunk``, as bytes, when ``chunk`` is nothing but whole
        ``data: …\\n\\n`` events (LF only, one line each, each within the size limit) and the parser
        holds nothing unfinished; else ``None``, and nothing was consumed (``feed`` reads the chunk).

        For a decoder that reads each payload's JSON straight from its bytes: one token of a stream
        per chunk, or a burst of them in one read (a fast upstream, a busy connection), without an
        ``SSEEvent`` or a ``str`` per event. The events it stands for are complete, so the parser's
        state is as ``feed`` would leave it (the last event ``id`` is unchanged: no ``id:`` line)."""
        if (
            self._buffer
            or self._has_fields
            or chunk[:6] != b"data: "
            or chunk[-2:] != b"\n\n"
            or chunk.find(b"\r") >= 0
        ):
            return None
        if chunk.find(b"\n") == len(chunk) - 2:  # one event (a stream's usual read): no split, no count
            return [chunk[6:-2]] if len(chunk) <= self._max else None
        payloads = chunk[6:-2].split(b"\n\ndata: ")
        # a line end left in a piece is inside an event (another field, a second data line, a comment,
        # a blank line too many). (Joined and found: memchr, where ``chunk.count`` walks byte by byte,
        # ~5 instructions a byte; ``find``, as ``b"\n" in`` first tries its operand as an int and
        # formats the TypeError it then swallows.)
        if b"".join(payloads).find(b"\n") >= 0 or max(map(len, payloads)) + 8 > self._max:
            return None
        return payloads

    def _data_only_events(self, chunk: bytes) -> list[SSEEvent] | None:
        """The events of a burst of whole ``data: …\\n\\n`` events (``data_payloads``), or ``None``.
        Split in C, one event per piece: what ``_line`` and ``_dispatch`` would make, without a Python
        call per line."""
        payloads = self.data_payloads(chunk)
        if payloads is None:
            return None
        identifier = self._id
        return [SSEEvent(payload.decode("utf-8", "replace"), "message", identifier, None) for payload in payloads]

    def _check_size(self, pending: int) -> None:
        if self._size + pending > self._max:
            raise SSEError(f"server-sent event larger than {self._max} bytes")

    def _line(self, raw: bytes | bytearray, events: list[SSEEvent]) -> None:
        line = raw.decode("utf-8", "replace")
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return  # a comment (keep-alive): not part of any event
        self._size += len(raw) + 1
        self._check_size(0)
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

    def _dispatch(self, events: list[SSEEvent]) -> None:
        """A blank line: the fields collected so far make an event (if any data or name came)."""
        if self._has_fields and (self._data or self._event):
            events.append(SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry))
        self._data = []
        self._event = ""
        self._retry = None
        self._has_fields = False
        self._size = 0

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch a final event that lacked its blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer.clear()
            self._scanned = 0
        self._line(b"", events)
        return events
