"""One codec for every transport: ``encode(message) -> bytes`` and ``decode(bytes) -> message``.

Decoding is strict and typed (msgspec validates while it parses): a missing or mistyped field is a
``ProtocolError`` that names the field and quotes the frame, an unknown ``type`` is an
``UnknownMessageTypeError``, unknown extra fields are ignored for forward compatibility. A key given
twice in one object is read last-wins, as msgspec reads it: a typed struct keeps no trace of the
repeat, and finding it would take a second parse of every frame (docs/security.md, "Frames"; the
compatible endpoints, whose bodies are plain values, refuse it: ``gateway.compat.duplicates``).

Only when strict decoding fails does ``decode`` take a slow path that accepts the aliases other
implementations of the spec use (``sid`` for ``session_id``, ``msg`` for an error's ``message``)
and the OpenAI ``{"type": "function", "function": {...}}`` tool wrapper, and tool calls (a
``tool_call`` event's ``function``, an assistant message's ``tool_calls``) in OpenAI's shapes, with
``arguments`` as an object or no id (``normalise_tool_call``). Output always uses the canonical names.
The same path keeps the protocol open where the spec closes no set: a ``status`` whose ``state`` is a
string this side does not know is that status, its state as written (informational), and an
``error`` whose ``code`` is one is an ``INTERNAL`` error with the peer's code in ``peer_code``
(``known_code``) — neither is a bad frame.

``FrameDecoder`` splits a byte stream into newline-delimited frames. A bad frame does not stop the
stream: ``feed`` returns the good messages and a ``FrameError`` in place of each bad frame, in order.

Limits. ``decode`` and ``FrameDecoder`` refuse a frame larger than ``max_bytes`` /
``max_frame_bytes`` (default ``DEFAULT_MAX_FRAME_BYTES``, 8 MiB) with ``FrameTooLargeError``
(``FrameDecoder`` before buffering more of it), and a message whose arrays and objects nest deeper
than ``max_depth`` (default ``DEFAULT_MAX_DEPTH``, 64, the frame's own object counting as one) with
``ProtocolError``. The depth is measured by a linear scan of the bytes, never by recursion: before
the lenient path parses a frame generically, and after the strict parse for the messages that carry
free-form JSON (``FREE_FORM_MESSAGES``: ``completion_request``, ``done``, ``query``, ``answer``); the
others have a fixed shallow shape, so the stream's hot path pays no scan. Unknown fields are skipped, however deep,
up to the parser's own recursion limit (about 1,000), beyond which the frame is a ``ProtocolError``
too. Whatever the input, ``decode``, ``encode`` and ``FrameDecoder`` raise only errors of
``gtl_nb.protocol.errors`` (a text that is not valid UTF-8, or holds a lone surrogate, is a
``ProtocolError``).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gtl_nb.protocol.errors import FrameTooLargeError, ProtocolError, UnknownMessageTypeError
from gtl_nb.protocol.messages import (
    ERROR_CODES,
    MESSAGE_TYPES,
    STATUS_STATES,
    Answer,
    CompletionRequest,
    Done,
    Query,
    Reasoning,
    Status,
    Token,
    Tool,
    WireMessage,
)

DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64
# The messages with fields that hold any JSON (metadata, tool parameters, provider_data): only their
# depth can exceed the limit once decoded; every other message has a fixed, shallow shape.
FREE_FORM_MESSAGES = frozenset({CompletionRequest, Done, Query, Answer})

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[WireMessage] = msgspec.json.Decoder(WireMessage)

_FIELD_ALIASES = {"sid": "session_id"}
_ERROR_ALIASES = {"msg": "message"}


def encode(message: WireMessage) -> bytes:
    """Serialise one GTL message to compact JSON bytes (no trailing newline).

    A message that cannot be written as JSON (a lone surrogate in a string, a value of a type JSON
    has no form for, nesting too deep for the encoder) is a ``ProtocolError``.
    """
    try:
        return _encoder.encode(message)
    except (UnicodeEncodeError, msgspec.EncodeError, TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"cannot encode the {_tag(message)!r} message as JSON: {_reason(exc)}") from None


def encode_frame(message: WireMessage) -> bytes:
    """Serialise one GTL message as a newline-terminated frame."""
    return encode(message) + b"\n"


def frames_within(message: WireMessage, max_bytes: int) -> bytes:
    """``message`` as newline-terminated frames of at most ``max_bytes`` each (the newlines aside).

    A ``token`` or ``reasoning`` whose text makes its frame too long goes as several of the same
    event, their texts in order: the protocol says nothing of how an answer's text is cut into events,
    and a peer's frame limit must not end an answer a smaller cut carries (a long answer not streamed
    arrives as one token). Anything else over the limit is a ``FrameTooLargeError``."""
    data = encode(message)
    if len(data) <= max_bytes:
        return data + b"\n"
    text = getattr(message, "text", None)
    if type(message) in CUT_EVENTS and isinstance(text, str) and len(text) > 1:
        half = len(text) // 2  # halves until each fits: a few encodes, once in a long while
        first = msgspec.structs.replace(message, text=text[:half])  # type: ignore[type-var]
        if type(message) is Reasoning:  # a block's end mark belongs to its last piece only
            first = msgspec.structs.replace(first, signature=None, redacted=None)  # type: ignore[type-var]
        rest = msgspec.structs.replace(message, text=text[half:])  # type: ignore[type-var]
        return frames_within(first, max_bytes) + frames_within(rest, max_bytes)
    raise FrameTooLargeError(
        f"{_tag(message)} frame of {len(data)} bytes exceeds the maximum frame size of {max_bytes} bytes"
    )


CUT_EVENTS = (Token, Reasoning)
"""The events whose text ``frames_within`` cuts into several when one is longer than a frame."""


def _tag(message: object) -> str:
    """A message's type as the wire names it (``token``, ``done`` …)."""
    config = getattr(type(message), "__struct_config__", None)
    return str(getattr(config, "tag", None) or type(message).__name__)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeError):
        return "a string holds a lone surrogate, which UTF-8 cannot carry"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for an error message (never the value: it may be anything)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return "an object"


def _snippet(data: bytes | str, limit: int = 120) -> str:
    """The start of a bad frame, to quote in its error, with any token in it masked: an error names no
    secret, and a malformed ``hello`` carries the client's token."""
    head = data[: limit * 4]
    text = head.decode("utf-8", "replace") if isinstance(head, (bytes, bytearray, memoryview)) else head
    text = _JWT_LIKE.sub("…", _TOKEN_FIELD.sub(r'\1"…"', text))
    return text if len(text) <= limit else text[:limit] + "…"


# a "token" field's value (closed or cut off), and anything shaped like a JWT wherever it stands;
# both linear: one bounded prefix, then a character class
_TOKEN_FIELD = re.compile(r'("token"\s{0,8}:\s{0,8})"[^"]*"?')
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")


# Only brackets and quotes matter to the depth scan; every other byte is deleted first.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests arrays/objects deeper than ``limit``, without parsing it.

    Linear and recursion-free: escapes are removed, string contents dropped, and matched bracket
    pairs removed innermost first, one level per pass, for at most ``limit`` passes.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the fast path: too few brackets to nest that deep
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = unescaped.translate(_TO_PARENS, _NOT_STRUCTURE)
    outside = b"".join(skeleton.split(b'"')[::2])  # the even pieces lie outside strings
    for _ in range(limit):
        reduced = outside.replace(b"()", b"")
        if len(reduced) == len(outside):
            # No pairs left: what remains is unbalanced (not JSON), but deep openers would still recurse.
            return outside.count(b"(") > limit
        outside = reduced
    return b"()" in outside


def _as_bytes(data: object) -> bytes:
    """The frame as bytes: ``str`` is encoded, bytes-likes copied; anything else is refused."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"malformed frame (a lone surrogate in the text): {_snippet(data)!r}") from None
    raise ProtocolError(f"a frame must be bytes, a bytes-like object or str, not {type(data).__name__}")


def decode(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> WireMessage:
    """Parse and validate one GTL message.

    Raises ``ProtocolError`` (or its ``UnknownMessageTypeError`` subclass) with the bad field and
    the frame in the message, ``FrameTooLargeError`` for a frame over ``max_bytes``, and nothing
    else, whatever ``data`` holds (see the module docstring for the limits).
    """
    frame = data if type(data) is bytes else _as_bytes(data)
    if len(frame) > max_bytes:
        raise FrameTooLargeError(f"frame of {len(frame)} bytes exceeds the maximum frame size of {max_bytes} bytes")
    try:
        try:
            message = _decoder.decode(frame)
        except msgspec.ValidationError as strict_error:
            _check_depth(frame, max_depth)  # before the generic parse builds every nested value
            return _decode_slow(frame, strict_error)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame (not JSON: {json_problem(exc, frame)}): {_snippet(frame)!r}") from None
    except RecursionError:  # the one boundary: deeper than the parser can go is deeper than the limit
        raise _too_deep(frame, max_depth) from None
    if type(message) in FREE_FORM_MESSAGES:
        _check_depth(frame, max_depth)
    return message


# a high surrogate's escape not followed by another escape: msgspec says "truncated" for it (linear: no
# nested repetition, one fixed-width look ahead)
_LONE_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u)")


def json_problem(exc: msgspec.DecodeError, data: bytes) -> str:
    """What is wrong with JSON text ``data`` that msgspec refused with ``exc``, in words a user can act on:
    its own words, except for a lone high surrogate escape (``"\\ud800"`` without its pair), which it calls
    truncated input although nothing was cut."""
    said = str(exc)
    if "truncated" in said and _has_lone_high_surrogate(data):
        return "a \\u escape of a lone UTF-16 surrogate (\\ud800-\\udbff without its pair), which is no character"
    return _encoding_problem(data) or said


UTF8_BOM = b"\xef\xbb\xbf"


def _encoding_problem(data: bytes) -> str | None:
    """What is wrong with ``data``'s encoding when it is not UTF-8 text as JSON needs — a byte-order mark
    ("UTF-8 with BOM", as some editors save) or UTF-16/32, which the parser calls an invalid character —
    else ``None``. Looks at the first bytes only."""
    if data.startswith(UTF8_BOM):
        return (
            "it starts with a UTF-8 byte-order mark (U+FEFF, as 'UTF-8 with BOM' is saved), which is no JSON; "
            "save the text as UTF-8 without a BOM"
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4]:
        return "the text is UTF-16 or UTF-32 (it holds zero bytes), and GTL frames are UTF-8: save or send it as UTF-8"
    return None


def _has_lone_high_surrogate(data: bytes) -> bool:
    """Whether ``data`` holds a lone high surrogate's escape. A match after an odd number of backslashes
    (``\\\\ud800``: an escaped backslash, then the letters ``ud800``) is text, not an escape."""
    for match in _LONE_HIGH_SURROGATE.finditer(data):
        start = match.start()
        before = start
        while before > 0 and data[before - 1] == 0x5C:  # the backslashes just before: each run is walked once
            before -= 1
        if (start - before) % 2 == 0:
            return True
    return False


def _check_depth(frame: bytes, max_depth: int) -> None:
    if nesting_exceeds(frame, max_depth):
        raise _too_deep(frame, max_depth)


def _too_deep(frame: bytes, max_depth: int) -> ProtocolError:
    return ProtocolError(f"malformed frame (arrays/objects nested deeper than {max_depth}): {_snippet(frame)!r}")


def _decode_slow(data: bytes, strict_error: msgspec.ValidationError) -> WireMessage:
    """Accept the spec's aliases; otherwise re-raise the strict error in GTL terms."""
    obj = msgspec.json.decode(data)
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed frame (expected a JSON object): {_snippet(data)!r}")
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(f"malformed frame (missing field 'type'): {_snippet(data)!r}")
    if not isinstance(kind, str):
        raise ProtocolError(f"malformed frame (field 'type' is not a string): {_snippet(data)!r}")
    if kind not in MESSAGE_TYPES:
        known = ", ".join(sorted(MESSAGE_TYPES))
        raise UnknownMessageTypeError(f"unknown message type {kind!r} (known: {known}): {_snippet(data)!r}")
    normalised = normalise_aliases(obj)
    if kind == "error":
        normalised = known_code(normalised)
    elif kind == "status":
        state = normalised.get("state")
        if isinstance(state, str) and state not in STATUS_STATES:  # a newer peer's state: kept, informational
            try:
                known = msgspec.convert({**normalised, "state": "streaming"}, Status)
            except msgspec.ValidationError as exc:
                raise ProtocolError(f"invalid {kind!r} frame: {exc}: {_snippet(data)!r}") from None
            return msgspec.structs.replace(known, state=state)  # type: ignore[arg-type]
    if normalised == obj:
        raise ProtocolError(f"invalid {kind!r} frame: {strict_error}: {_snippet(data)!r}") from None
    try:
        return msgspec.convert(normalised, MESSAGE_TYPES[kind])
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid {kind!r} frame: {exc}: {_snippet(data)!r}") from None


_PEER_CODE_CHARACTERS = 100  # of an unknown error code kept (codes are short names; the message is whole)


def known_code(obj: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` frame whose ``code`` is a string this side does not know, as ``INTERNAL`` with the
    peer's code in ``peer_code``: the spec gives no closed set of codes, and a newer peer's must reach
    the application as an error it can act on, never as a broken frame."""
    code = obj.get("code")
    if not isinstance(code, str) or code in ERROR_CODES:
        return obj
    return {**obj, "code": "INTERNAL", "peer_code": code[:_PEER_CODE_CHARACTERS]}


_EVENT_CALLS = itertools.count()  # numbers the tool_call events read without an id (``normalise_aliases``)


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
    sid = out.get("session_id")
    where = sid if isinstance(sid, str) else ""
    if out.get("type") == "tool_call" and isinstance(out.get("function"), dict):
        # OpenAI keeps a call's id beside its function object, not in it. An event's made-up id is numbered
        # too: an answer may make the same call twice, and each result must answer its own call
        outer_id = out.get("id") if isinstance(out.get("id"), str) else None
        out["function"] = normalise_tool_call(out["function"], f"{where}#{next(_EVENT_CALLS)}", outer_id)
    messages = out.get("messages")
    if out.get("type") == "completion_request" and isinstance(messages, list):
        out["messages"] = normalise_message_calls(messages, where)
    return out


def normalise_message_calls(messages: list[Any], where: str = "") -> list[Any]:
    """``messages`` with each assistant message's tool calls read by ``normalise_tool_call`` (``where``
    and the positions of the message and the call make each made-up id). A ``tool`` message without a
    ``tool_call_id`` answers the earliest call before it whose id was made up and not yet answered — of the
    tool its ``name`` says, when it says one: a sender that gave its calls no ids cannot name them either,
    and pairs calls and results by order (``_answered_call``)."""
    out: list[Any] = []
    unanswered: list[tuple[str, Any]] = []  # (made-up id, name) of the calls no tool message answered yet
    for at, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            if message.get("role") == "assistant":
                unanswered = []
            flat = []
            for place, call in enumerate(calls):
                read = normalise_tool_call(call, f"{where}/{at}/{place}") if isinstance(call, dict) else call
                if isinstance(call, dict) and call.get("id") is None and isinstance(read, dict) and "id" in read:
                    unanswered.append((read["id"], read.get("name")))
                flat.append(read)
            message = {**message, "tool_calls": flat}
        elif message.get("role") == "tool" and message.get("tool_call_id") is None and unanswered:
            message = {**message, "tool_call_id": _answered_call(unanswered, message.get("name"))}
        out.append(message)
    return out


def _answered_call(unanswered: list[tuple[str, Any]], name: Any) -> str:
    """The made-up id a tool result without ``tool_call_id`` answers, taken off ``unanswered``: the earliest
    call of the tool it names (a ``name`` field, as OpenAI's legacy results and many peers send), else the
    earliest call — results that say which tool they come from are never paired across tools by order."""
    at = next((index for index, (_, called) in enumerate(unanswered) if called == name), 0) if name else 0
    return unanswered.pop(at)[0]


def normalise_tool_call(call: dict[str, Any], where: str = "", outer_id: str | None = None) -> dict[str, Any]:
    """A tool call in GTL's flat shape ``{"id", "name", "arguments"}`` from the shapes other peers send.

    * OpenAI's tool call ``{"id", "type": "function", "function": {"name", "arguments"}}`` is unwrapped;
      a bare function object ``{"name", "arguments"}`` takes ``outer_id`` (the id OpenAI keeps beside it).
    * ``arguments`` given as a JSON object is written as its canonical JSON text (keys sorted, no spaces).
    * A call with a name and no id gets ``made_up_call_id(where, name, arguments)``: in a request, the same
      call at the same place always gets the same id (``where`` is the session and the message's and the
      call's positions), so a request decoded twice is the same request; a ``tool_call`` event's ``where``
      also numbers the event, so two alike calls of one answer get two ids.

    Anything else is returned as it is, for the strict decoder to refuse in its own words."""
    flat = call
    inner = call.get("function")
    if isinstance(inner, dict):
        flat = {"id": call.get("id"), **{key: inner[key] for key in ("name", "arguments") if key in inner}}
    if flat.get("id") is None and outer_id is not None:
        flat = {**flat, "id": outer_id}
    arguments = flat.get("arguments")
    if isinstance(arguments, dict):
        try:
            flat = {**flat, "arguments": canonical_json(arguments)}
        except (TypeError, ValueError, RecursionError, UnicodeEncodeError, msgspec.EncodeError):
            pass  # (a caller's dict holding what JSON cannot say: the strict decoder refuses it)
    name = flat.get("name")
    if flat.get("id") is None and isinstance(name, str):
        text = flat.get("arguments", "{}")
        flat = {**flat, "id": made_up_call_id(where, name, text if isinstance(text, str) else "")}
    return flat


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON text with every object's keys sorted (the same object, the same text)."""
    return msgspec.json.encode(value, order="sorted").decode()


def made_up_call_id(where: str, name: str, arguments: str) -> str:
    """The id a tool call sent without one gets: ``call_`` and 24 hex digits of a SHA-256 over where it
    stands, its name and its arguments (deterministic: the same call at the same place, the same id)."""
    digest = hashlib.sha256(msgspec.json.encode([where, name, arguments])).hexdigest()
    return f"call_{digest[:24]}"


def normalise_tool(tool: dict[str, Any] | Tool) -> dict[str, Any] | Tool:
    """Accept ``{"type": "function", "function": {...}}`` as well as the flat GTL tool shape."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool["function"]
    return tool


@dataclass(frozen=True)
class FrameError:
    """A frame ``FrameDecoder`` could not decode, standing where its message would have been.

    ``error`` is the library error that ``decode`` raised for it (a ``ProtocolError``: an
    ``UnknownMessageTypeError``, a ``FrameTooLargeError``, ...); ``frame`` is the frame's 1-based
    number in the stream (blank keep-alive lines are not counted); ``head`` is the frame's first
    bytes, as many as the decoder's ``head_bytes`` (none by default).
    """

    error: ProtocolError
    frame: int
    head: bytes = field(default=b"", repr=False, compare=False)

    def __str__(self) -> str:
        return f"frame {self.frame}: {self.error}"


DecodedFrame = WireMessage | FrameError
"""What ``FrameDecoder.feed`` returns for each frame: its message, or a ``FrameError``."""


class FrameDecoder:
    """Incremental decoder of newline-delimited GTL frames that never stops at a bad frame.

    ``feed(chunk)`` returns one item per frame completed by ``chunk``, in stream order: the decoded
    message, or a ``FrameError`` for a frame that is not a valid GTL message. A frame longer than
    ``max_frame_bytes`` becomes a ``FrameError`` carrying ``FrameTooLargeError`` as soon as that is
    known; the rest of it is skipped, not buffered, up to the next newline. Blank lines (keep-alives)
    are skipped, and so is a UTF-8 byte-order mark that starts the stream. ``feed`` takes ``bytes``,
    ``bytearray`` or ``memoryview``; any other value (``str`` included: a stream is bytes) is a
    ``ProtocolError``, the only thing ``feed`` raises.

    ``close()`` ends the stream and returns a ``FrameError`` for a partial frame left over (or
    nothing); the decoder is then empty and may be reused. ``head_bytes``: how many of a refused
    frame's first bytes its ``FrameError`` carries (``FrameReader`` reads its session from them).
    ``max_refused``: after that many refused frames the stream is given up — the rest of the chunk
    and every later one are dropped undecoded (a connection that closes at its ``max_bad_frames``
    would otherwise pay for every line of a message of a million bad ones before it could close).

    A line that arrives whole, with nothing of an earlier frame held back (the usual case: a
    WebSocket message, a read of several frames), is decoded straight from the chunk, never copied
    into the buffer.
    """

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        head_bytes: int = 0,
        max_refused: int | None = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_depth = max_depth
        self.head_bytes = max(0, head_bytes)
        self.max_refused = max_refused
        self._buffer = bytearray()
        self._skipping = False  # inside an oversized frame, already reported: drop bytes up to the newline
        self.given_up = False  # ``max_refused`` frames were refused: nothing more is decoded
        self.frames_decoded = 0
        self.frames_refused = 0
        self._at_start = True  # nothing fed yet: a UTF-8 byte-order mark there is skipped

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[DecodedFrame]:
        """The messages (and ``FrameError`` items) of the frames that ``chunk`` completes."""
        data = chunk if type(chunk) is bytes else _chunk_bytes(chunk)
        out: list[DecodedFrame] = []
        if self.given_up:
            return out
        if self._at_start and data:
            # RFC 8259 (8.1) lets a parser ignore a byte-order mark: a file saved as "UTF-8 with BOM"
            # (Windows' editors) is read, its mark skipped once, at the stream's start only
            self._at_start = False
            if data.startswith(UTF8_BOM):
                data = data[len(UTF8_BOM) :]
        start = 0
        if self._buffer or self._skipping:  # first the end of a frame begun in an earlier chunk
            newline = data.find(b"\n")
            if newline < 0:
                self._take(data, out, complete=False)
                return out
            self._take(data[:newline], out, complete=True)
            start = newline + 1
        limit = self.max_frame_bytes
        while (newline := data.find(b"\n", start)) >= 0:
            if self.given_up:
                return out
            if newline - start > limit:
                self._take(data[start:newline], out, complete=True)  # refused there
            # a frame starts with "{"; anything else may be a blank keep-alive line
            elif data[start] == 123 or data[start:newline].strip():
                out.append(self._decode(data[start:newline]))
            start = newline + 1
        if start < len(data) and not self.given_up:
            self._take(data[start:], out, complete=False)
        return out

    def _take(self, piece: bytes, out: list[DecodedFrame], *, complete: bool) -> None:
        """Add ``piece`` to the current frame; ``complete`` when a newline ended it."""
        if self._skipping:
            self._skipping = not complete
            return
        if len(self._buffer) + len(piece) > self.max_frame_bytes:
            head = self._head_of(piece)
            self._buffer.clear()
            self._skipping = not complete
            limit = self.max_frame_bytes
            error = FrameTooLargeError(f"frame exceeds the maximum frame size of {limit} bytes")
            out.append(self._refuse(error, head))
            return
        self._buffer += piece
        if not complete:
            return
        frame = bytes(self._buffer)
        self._buffer.clear()
        if frame.strip():
            out.append(self._decode(frame))

    def _decode(self, frame: bytes) -> DecodedFrame:
        try:
            message = decode(frame, max_bytes=self.max_frame_bytes, max_depth=self.max_depth)
        except ProtocolError as exc:
            return self._refuse(exc, frame[: self.head_bytes])
        self.frames_decoded += 1
        return message

    def _head_of(self, piece: bytes) -> bytes:
        """The first ``head_bytes`` of the frame held in the buffer with ``piece`` after it."""
        wanted = self.head_bytes
        if not wanted:
            return b""
        held = bytes(self._buffer[:wanted])
        return held + piece[: wanted - len(held)]

    def _refuse(self, error: ProtocolError, head: bytes = b"") -> FrameError:
        self.frames_refused += 1
        if self.max_refused is not None and self.frames_refused >= self.max_refused:
            self.given_up = True
            self._buffer.clear()
        return FrameError(error, self.frames_decoded + self.frames_refused, head)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def close(self) -> list[FrameError]:
        """Declare the end of the stream: a ``FrameError`` for a partial frame left over, else nothing."""
        leftover = bytes(self._buffer)
        self._buffer.clear()
        self._skipping = False
        self._at_start = True
        if self.given_up or not leftover.strip():
            return []
        error = ProtocolError(f"stream ended inside a frame: {_snippet(leftover)!r}")
        return [self._refuse(error, leftover[: self.head_bytes])]


def _chunk_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise ProtocolError(f"FrameDecoder.feed() takes bytes, bytearray or memoryview, not {type(chunk).__name__}")
