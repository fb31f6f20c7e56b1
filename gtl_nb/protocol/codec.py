"""One codec for every transport: ``encode(message) -> bytes`` and ``decode(bytes) -> message``.

Decoding is strict and typed (msgspec validates while it parses): a missing or mistyped field is a
``ProtocolError`` that names the field and quotes the frame, an unknown ``type`` is an
``UnknownMessageTypeError``, unknown extra fields are ignored for forward compatibility.

Only when strict decoding fails does ``decode`` take a slow path that accepts the aliases other
implementations of the spec use (``sid`` for ``session_id``, ``msg`` for an error's ``message``)
and the OpenAI ``{"type": "function", "function": {...}}`` tool wrapper. Output always uses the
canonical names.

``FrameDecoder`` splits a byte stream into newline-delimited frames and refuses a frame larger
than ``max_frame_bytes`` before buffering more of it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gtl_nb.protocol.errors import FrameTooLargeError, ProtocolError, UnknownMessageTypeError
from gtl_nb.protocol.messages import MESSAGE_TYPES, Tool, WireMessage

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[WireMessage] = msgspec.json.Decoder(WireMessage)

_FIELD_ALIASES = {"sid": "session_id"}
_ERROR_ALIASES = {"msg": "message"}


def encode(message: WireMessage) -> bytes:
    """Serialise one GTL message to compact JSON bytes (no trailing newline)."""
    return _encoder.encode(message)


def encode_frame(message: WireMessage) -> bytes:
    """Serialise one GTL message as a newline-terminated frame."""
    return _encoder.encode(message) + b"\n"


def _snippet(data: bytes | str, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray, memoryview)) else data
    return text if len(text) <= limit else text[:limit] + "…"


def decode(data: bytes | str) -> WireMessage:
    """Parse and validate one GTL message.

    Raises ``ProtocolError`` (or its ``UnknownMessageTypeError`` subclass) with the bad field and
    the frame in the message.
    """
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as strict_error:
        return _decode_slow(data, strict_error)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame (not JSON: {exc}): {_snippet(data)!r}") from None


def _decode_slow(data: bytes | str, strict_error: msgspec.ValidationError) -> WireMessage:
    """Accept the spec's aliases; otherwise re-raise the strict error in GTL terms."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame (not JSON: {exc}): {_snippet(data)!r}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed frame (expected a JSON object): {_snippet(data)!r}")
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(f"malformed frame (missing field 'type'): {_snippet(data)!r}")
    if kind not in MESSAGE_TYPES:
        known = ", ".join(sorted(MESSAGE_TYPES))
        raise UnknownMessageTypeError(f"unknown message type {kind!r} (known: {known}): {_snippet(data)!r}")
    normalised = normalise_aliases(obj)
    if normalised == obj:
        raise ProtocolError(f"invalid {kind!r} frame: {strict_error}: {_snippet(data)!r}") from None
    try:
        return msgspec.convert(normalised, MESSAGE_TYPES[kind])
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid {kind!r} frame: {exc}: {_snippet(data)!r}") from None


def normalise_aliases(obj: dict[str, Any]) -> dict[str, Any]:
    """Rename alias fields to canonical ones and unwrap OpenAI-style tool definitions."""
    out = {
        _FIELD_ALIASES.get(k, k): v for k, v in obj.items() if not (k in _FIELD_ALIASES and _FIELD_ALIASES[k] in obj)
    }
    if out.get("type") == "error":
        out = {_ERROR_ALIASES.get(k, k): v for k, v in out.items() if not (k in _ERROR_ALIASES and "message" in out)}
    tools = out.get("tools")
    if isinstance(tools, list):
        out["tools"] = [normalise_tool(t) if isinstance(t, dict) else t for t in tools]
    return out


def normalise_tool(tool: dict[str, Any] | Tool) -> dict[str, Any] | Tool:
    """Accept ``{"type": "function", "function": {...}}`` as well as the flat GTL tool shape."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    return tool


class FrameDecoder:
    """Incremental decoder of newline-delimited GTL frames.

    ``feed(chunk)`` returns the messages completed by ``chunk``. A frame longer than
    ``max_frame_bytes`` raises ``FrameTooLargeError`` as soon as that is known, without buffering
    the rest of it. ``close()`` raises if a partial frame is left over. Blank lines (keep-alives)
    are skipped.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self.frames_decoded = 0

    def feed(self, chunk: bytes) -> list[WireMessage]:
        out: list[WireMessage] = []
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            piece = chunk[start:newline]
            if self._buffer:
                self._check_size(len(self._buffer) + len(piece))
                self._buffer += piece
                frame = bytes(self._buffer)
                self._buffer.clear()
            else:
                self._check_size(len(piece))
                frame = piece
            start = newline + 1
            if frame.strip():
                out.append(decode(frame))
                self.frames_decoded += 1
        rest = len(chunk) - start
        if rest:
            self._check_size(len(self._buffer) + rest)
            self._buffer += chunk[start:]
        return out

    def _check_size(self, size: int) -> None:
        if size > self.max_frame_bytes:
            self._buffer.clear()
            raise FrameTooLargeError(
                f"frame {self.frames_decoded + 1} exceeds the maximum frame size of {self.max_frame_bytes} bytes"
            )

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def close(self) -> None:
        """Declare the end of the stream; a leftover partial frame is an error."""
        if self._buffer.strip():
            leftover = bytes(self._buffer)
            self._buffer.clear()
            raise ProtocolError(f"stream ended inside a frame: {_snippet(leftover)!r}")
        self._buffer.clear()
