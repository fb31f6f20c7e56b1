"""An incremental decoder of AWS's binary ``application/vnd.amazon.eventstream`` framing, sans-I/O.

Each message (frame) is::

    total_len:u32be | headers_len:u32be | prelude_crc:u32be | headers | payload | message_crc:u32be

``prelude_crc`` is the CRC-32 of the first 8 bytes, ``message_crc`` the CRC-32 of everything before
it. A header is ``name_len:u8 | name (UTF-8) | type:u8 | value``, the value's encoding set by the type:

==== ========== ==============================
type name       value
==== ========== ==============================
0    bool true  (no bytes)
1    bool false (no bytes)
2    byte       int8
3    short      int16be
4    integer    int32be
5    long       int64be
6    bytes      u16be length + bytes
7    string     u16be length + UTF-8
8    timestamp  int64be milliseconds since the epoch
9    uuid       16 bytes
==== ========== ==============================

``EventStreamDecoder.feed(bytes)`` returns the frames completed by those bytes, however the bytes
were split; ``close()`` raises when the body ended inside a frame. A CRC mismatch, an impossible
length or a malformed header raises ``EventStreamError``, a ``MalformedResponseError`` (the caller turns it
into an ``error`` event). No buffer outgrows one frame: a prelude announcing more than
``MAX_FRAME_LENGTH`` bytes is refused before they arrive.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from gtl_nb.providers.limits import MalformedResponseError

PRELUDE_LENGTH = 8
MIN_FRAME_LENGTH = PRELUDE_LENGTH + 4 + 4  # prelude, its CRC, the message CRC
MAX_FRAME_LENGTH = 16 * 1024 * 1024  # the protocol's limit on one message
MAX_HEADERS_LENGTH = 128 * 1024

# type id -> fixed value width (None: u16 length-prefixed)
_FIXED_WIDTH: dict[int, int | None] = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 6: None, 7: None, 8: 8, 9: 16}
_INT_FORMATS = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


class EventStreamError(MalformedResponseError):
    """The bytes are not a valid event stream (bad CRC, bad length, bad header, truncated frame).

    ``frames`` holds the valid frames the same ``feed`` call decoded before the bad one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames: list[EventStreamMessage] = []


@dataclass(frozen=True)
class EventStreamMessage:
    """One decoded frame: headers by name (values typed per the table above) and the raw payload."""

    headers: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def header(self, name: str) -> Any:
        """A header's value, or ``None`` when absent."""
        return self.headers.get(name)


def decode_headers(data: bytes) -> dict[str, Any]:
    """Decode a frame's header block."""
    headers: dict[str, Any] = {}
    pos = 0
    end = len(data)
    while pos < end:
        name_len = data[pos]
        pos += 1
        if name_len == 0 or pos + name_len + 1 > end:
            raise EventStreamError("malformed event-stream header: bad name length")
        name = data[pos : pos + name_len].decode("utf-8", "replace")
        pos += name_len
        kind = data[pos]
        pos += 1
        if kind not in _FIXED_WIDTH:
            raise EventStreamError(f"malformed event-stream header {name!r}: unknown value type {kind}")
        width = _FIXED_WIDTH[kind]
        if width is None:
            if pos + 2 > end:
                raise EventStreamError(f"malformed event-stream header {name!r}: truncated length")
            (width,) = struct.unpack_from(">H", data, pos)
            pos += 2
        if pos + width > end:
            raise EventStreamError(f"malformed event-stream header {name!r}: value runs past the header block")
        raw = data[pos : pos + width]
        pos += width
        headers[name] = _header_value(kind, raw)
    return headers


def _header_value(kind: int, raw: bytes) -> Any:
    if kind in (0, 1):
        return kind == 0
    if kind in _INT_FORMATS:
        return struct.unpack(_INT_FORMATS[kind], raw)[0]
    if kind == 7:
        return raw.decode("utf-8", "replace")
    return bytes(raw)  # bytes (6) and uuid (9)


class EventStreamDecoder:
    """Incremental frame decoder: ``feed`` bytes split anywhere, get whole messages back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[EventStreamMessage]:
        """The frames completed by ``chunk``; raises ``EventStreamError`` (with the good frames before
        the bad one in its ``frames``) on corrupt input."""
        self._buffer += chunk
        messages: list[EventStreamMessage] = []
        try:
            self._decode_into(messages)
        except EventStreamError as exc:
            exc.frames = messages
            raise
        return messages

    def _decode_into(self, messages: list[EventStreamMessage]) -> None:
        while len(self._buffer) >= PRELUDE_LENGTH + 4:
            total_len, headers_len, prelude_crc = struct.unpack_from(">III", self._buffer, 0)
            if zlib.crc32(bytes(self._buffer[:PRELUDE_LENGTH])) != prelude_crc:
                raise EventStreamError("event-stream prelude CRC mismatch (corrupt or misaligned frame)")
            if not MIN_FRAME_LENGTH <= total_len <= MAX_FRAME_LENGTH:
                raise EventStreamError(f"event-stream frame length {total_len} is out of range")
            if headers_len > min(MAX_HEADERS_LENGTH, total_len - MIN_FRAME_LENGTH):
                raise EventStreamError(f"event-stream headers length {headers_len} is out of range")
            if len(self._buffer) < total_len:
                break
            frame = bytes(self._buffer[:total_len])
            del self._buffer[:total_len]
            messages.append(_decode_frame(frame, headers_len))

    def close(self) -> None:
        """Raise ``EventStreamError`` when the body ended inside a frame."""
        if self._buffer:
            size = len(self._buffer)
            self._buffer.clear()
            raise EventStreamError(f"event stream ended inside a frame ({size} bytes of an incomplete frame)")


def _decode_frame(frame: bytes, headers_len: int) -> EventStreamMessage:
    (message_crc,) = struct.unpack_from(">I", frame, len(frame) - 4)
    if zlib.crc32(frame[:-4]) != message_crc:
        raise EventStreamError("event-stream message CRC mismatch (corrupt frame)")
    start = PRELUDE_LENGTH + 4
    headers = decode_headers(frame[start : start + headers_len])
    return EventStreamMessage(headers=headers, payload=frame[start + headers_len : -4])
