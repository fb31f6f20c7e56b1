"""Frames in, messages out — and, for a frame that does not decode, what it was about.

``FrameReader`` wraps ``FrameDecoder`` (which does all the splitting, limits and decoding), asking
it to keep the first ``HEAD_BYTES`` (at most ``max_frame_bytes``) of each frame it refuses
(``FrameError.head``). When the decoder refuses a frame, the reader looks in that head for the
frame's ``"session_id"`` (or its alias ``"sid"``) and ``"type"`` with a plain linear scan — no JSON
parse, so a truncated, oversized or corrupted frame still names its session when the key and its
string value survived in the first bytes. The result is a ``BadFrame``, which lets a connection end
just that session instead of guessing. Because an oversized frame is refused once more than
``max_frame_bytes`` of it arrived, the head is always complete when it is read: what a bad frame
reveals does not depend on how the stream was cut.

The scan is a heuristic: it takes the first ``"key": "value"`` pair whose key is not inside a
string, at any depth. GTL encoders write ``type`` and ``session_id`` first, so for frames from this
package (and any encoder that keeps the spec's field order) it finds the right one.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gtl_nb.protocol.codec import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError
from gtl_nb.protocol.errors import ProtocolError
from gtl_nb.protocol.messages import WireMessage

HEAD_BYTES = 16 * 1024
_BLANK = b" \t\r\n"
REFUSED_START = b'{"transport_refused":'
"""How a frame a transport refused before it was JSON (a gRPC message that is no valid protobuf) begins:
``refused_frame``."""


def refused_frame(reason: str, message_type: str | None = None, session_id: str | None = None) -> bytes:
    """A bad frame standing for a message the transport itself refused (a gRPC message that does not parse
    or map): a deliberately unterminated JSON object, so the connection counts and answers it as any bad
    frame, whose ``type`` and ``session_id`` stand where this module looks for them. ``FrameReader`` gives
    it ``reason`` as its error's words — the transport's own terms, nothing of JSON or of this stand-in."""
    data = REFUSED_START + msgspec.json.encode(reason)
    if message_type:
        data += b',"type":' + msgspec.json.encode(message_type)
    if session_id:
        data += b',"session_id":' + msgspec.json.encode(session_id)
    return data + b"\n"  # no closing brace: never valid JSON, whatever the reason says


@dataclass(frozen=True)
class BadFrame:
    """A frame that did not decode: the decoder's error and what its first bytes reveal.

    ``session_id`` and ``message_type`` are ``None`` when they could not be read from the head; then
    ``session_id_fault`` says what was wrong with the id (``session_id_fault()``), for an error to say it.
    """

    error: ProtocolError
    frame: int
    session_id: str | None = None
    message_type: str | None = None
    session_id_fault: str | None = None


ReadFrame = WireMessage | BadFrame
"""What ``FrameReader.feed`` returns per frame: its message, or a ``BadFrame``."""


class FrameReader:
    """``FrameDecoder`` plus recovery of the session of each bad frame (see the module docstring);
    ``max_refused`` as the decoder's: the stream is given up after that many bad frames."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_refused: int | None = None,
    ) -> None:
        # the decoder keeps each refused frame's first bytes: the head this reader looks in
        head_bytes = min(HEAD_BYTES, max_frame_bytes)
        self._decoder = FrameDecoder(
            max_frame_bytes, max_depth=max_depth, head_bytes=head_bytes, max_refused=max_refused
        )

    def feed(self, data: bytes) -> list[ReadFrame]:
        """The messages and ``BadFrame`` items of the frames that ``data`` completes (or refuses)."""
        decoder = self._decoder
        refused = decoder.frames_refused
        items = decoder.feed(data)
        if decoder.frames_refused == refused:  # every frame decoded: the list as it is
            return items  # type: ignore[return-value]
        return [_bad(item, decoder.head_bytes) if type(item) is FrameError else item for item in items]

    def close(self) -> list[BadFrame]:
        """End of stream: a ``BadFrame`` for a partial frame left over, else nothing."""
        return [_bad(item, self._decoder.head_bytes) for item in self._decoder.close()]

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return self._decoder.pending_bytes


def _bad(item: FrameError, head_bytes: int) -> BadFrame:
    head = item.head
    error = item.error
    if head.startswith(REFUSED_START) and (reason := string_field(head, b"transport_refused")):
        error = ProtocolError(reason)  # the transport's words, not the JSON decoder's about the stand-in
    session_id = string_field(head, b"session_id") or string_field(head, b"sid")
    fault = None if session_id else session_id_fault(head, cut=len(head) >= head_bytes)
    return BadFrame(error, item.frame, session_id, string_field(head, b"type"), fault)


_JSON_KINDS = {
    ord("{"): "an object",
    ord("["): "an array",
    ord("n"): "null",
    ord("t"): "a boolean",
    ord("f"): "a boolean",
}


def session_id_fault(head: bytes, *, cut: bool = False) -> str:
    """What is wrong with the ``session_id`` of a frame whose id ``string_field`` could not read, as an
    error says it after "a completion_request ": ``has no session_id``, ``has an empty session_id ("")``,
    ``has a session_id that is not a string (a number)``, ``has a session_id that is not valid text (…)``.
    ``cut``: ``head`` is only the frame's first bytes (an id missing from them may come later)."""
    at = _value_at(head, b"session_id")
    if at is None:
        at = _value_at(head, b"sid")
    if at is None:
        return f"has no session_id in its first {len(head)} bytes" if cut else "has no session_id"
    first = head[at] if at < len(head) else None
    if first == 0x22:  # a string: empty, or not one msgspec reads (a lone surrogate, a broken escape, cut)
        if head[at : at + 2] == b'""':
            return 'has an empty session_id ("")'
        return "has a session_id that is not valid text (a lone surrogate, a broken escape, or a string not closed)"
    if first is None:
        return "has a session_id with no value"
    kind = _JSON_KINDS.get(first, "a number" if first in b"-0123456789" else "not JSON")
    return f"has a session_id that is not a string ({kind})"


def _value_at(data: bytes, key: bytes) -> int | None:
    """Where the value of the first ``"key":`` pair in ``data`` begins (blanks skipped), as ``string_field``
    finds it; ``None`` when there is none."""
    quoted = b'"' + key + b'"'
    start = 0
    while (at := data.find(quoted, start)) >= 0:
        start = at + len(quoted)
        if at and data[at - 1] == 0x5C:  # \"key\" is text inside a string, not a key
            continue
        colon = _skip_blank(data, start)
        if data[colon : colon + 1] != b":":
            continue  # a string value that happens to equal the key
        return _skip_blank(data, colon + 1)
    return None


def string_field(data: bytes, key: bytes) -> str | None:
    """The string value of the first ``"key": "..."`` pair in ``data`` (JSON text, perhaps broken).

    ``None`` when the key is missing, its value is not a complete string, or the string is empty.
    Linear in ``len(data)``.
    """
    opening = _value_at(data, key)
    if opening is None or data[opening : opening + 1] != b'"':
        return None
    closing = _string_end(data, opening)
    if closing < 0:
        return None
    try:
        value = msgspec.json.decode(data[opening : closing + 1], type=str)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return value or None


def _skip_blank(data: bytes, at: int) -> int:
    while at < len(data) and data[at] in _BLANK:
        at += 1
    return at


def _string_end(data: bytes, opening: int) -> int:
    """The index of the quote closing the string opened at ``opening``, or -1."""
    at = opening + 1
    while (quote := data.find(b'"', at)) >= 0:
        backslashes = 0
        while data[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote
        at = quote + 1
    return -1
