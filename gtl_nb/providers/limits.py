"""Limits on what the dialects parse from a provider, and the one JSON parser they all use. Sans-I/O.

A provider's response is outside input: a proxy may answer with an HTML page, a broken server with
a megabyte of ``<`` or JSON nested a hundred thousand levels deep. Whatever it sends, a dialect must
answer in bounded time and memory with GTL events, never with a foreign exception. So:

* every JSON document a dialect reads goes through :func:`parse_json`, which refuses documents
  larger than a limit or nested deeper than ``MAX_JSON_DEPTH`` *before* parsing (Python's parser
  recurses), and turns every failure into a :class:`MalformedResponseError`;
* framing layers refuse a unit larger than ``MAX_EVENT_BYTES`` (an SSE event, an NDJSON line; an
  event-stream frame has the same 16 MiB limit from its protocol) and buffered bodies larger than
  ``MAX_BODY_BYTES`` (:func:`append_capped`), so no buffer grows without bound, and each scans a
  byte for a line end once, so splitting stays linear however the network cuts the body;
* error bodies are examined only up to ``MAX_ERROR_BODY_BYTES`` (:func:`error_body_prefix`), and the
  words of an HTML error page are found by a linear scan (:func:`snippet`), never by a regex.

Each layer raises ``MalformedResponseError``; the dialect decoders' base (``GuardedDecoder`` in
``gtl_nb.providers.base``) turns it, or any other failure, into one ``error`` event. It is a
``ProviderUnavailableError`` (retryable): a garbled body is the provider's fault, so the engine may
retry or fail over. It is also a ``ValueError``, the type ``parse_models`` promises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.protocol.errors import ProviderUnavailableError

Label = str | Callable[[], str]  # an error's subject, or a function that words it on demand

MAX_JSON_DEPTH = 64  # nesting of arrays and objects in one JSON document
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one SSE event, NDJSON line or event-stream frame
MAX_BODY_BYTES = 32 * 1024 * 1024  # a whole buffered (non-streaming) JSON body
MAX_ERROR_BODY_BYTES = 256 * 1024  # the prefix of a non-2xx body that is parsed or shown
MAX_ERROR_MESSAGE_CHARS = 4000  # the message of an ``error`` event built from provider text

_FAST_JSON = msgspec.json.Decoder()
# JSON escapes of UTF-16 surrogates: a lone one parses to a str that cannot be encoded as UTF-8
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# the structural bytes of JSON: brackets, and quotes to find the strings they may hide in
_SKELETON_BYTES = frozenset(b'[]{}"')
_NOT_SKELETON = bytes(b for b in range(256) if b not in _SKELETON_BYTES)
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


class MalformedResponseError(ProviderUnavailableError, ValueError):
    """A provider's bytes are not what its wire format promises (retryable: fail over)."""


def parse_json(data: bytes | str, what: Label = "response body", *, limit: int = MAX_EVENT_BYTES) -> Any:
    """``data`` as JSON, or ``MalformedResponseError`` naming ``what`` and the problem.

    Refused before parsing: more than ``limit`` bytes, nesting deeper than ``MAX_JSON_DEPTH``.
    Invalid UTF-8 becomes U+FFFD, and so do lone surrogates (``"\\ud800"``), which no GTL frame
    could carry. ``what`` may be a callable, called only to word an error (so a per-chunk label
    that quotes the chunk costs nothing on the good path).
    """
    if isinstance(data, str):
        # characters <= UTF-8 bytes <= 4 * characters: encode only when the count cannot decide
        if len(data) > limit or (4 * len(data) > limit and len(data.encode("utf-8", "surrogatepass")) > limit):
            raise MalformedResponseError(f"{_label(what)} (not JSON: larger than {limit} bytes)")
        brackets = data.count("[") + data.count("{")
        text = data
    else:
        if len(data) > limit:
            raise MalformedResponseError(f"{_label(what)} (not JSON: larger than {limit} bytes)")
        brackets = data.count(b"[") + data.count(b"{")
        text = None
    if brackets > MAX_JSON_DEPTH:  # else it cannot nest that deep: skip the scan (the common case)
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if nesting_exceeds(raw, MAX_JSON_DEPTH):
            raise MalformedResponseError(f"{_label(what)} (not JSON: nested deeper than {MAX_JSON_DEPTH} levels)")
    if not isinstance(data, str) and data.find(b"\\u") < 0:  # find: ``in`` on bytes formats an error first
        # the fast path: msgspec's parser is several times faster than json.loads on the small objects
        # of a stream. It refuses everything json.loads would repair or read differently (invalid UTF-8,
        # a BOM, NaN, 1e400, escaped surrogates), and those take the exact path below
        try:
            return _FAST_JSON.decode(data)
        except msgspec.DecodeError:
            pass
    try:
        if text is None:
            text = bytes(data).decode("utf-8-sig", "replace")
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, a C-stack guard
        raise MalformedResponseError(f"{_label(what)} (not JSON: {_short(str(exc))})") from None
    # a lone surrogate comes from a \uD8xx escape, or was in the text already: rare, so look cheaply first
    if "\\u" in text or not text.isascii():
        return _scrub(value) if _SURROGATE.search(text) or _SURROGATE_ESCAPE_TEXT.search(text) else value
    return value


def _label(what: Label) -> str:
    return what() if callable(what) else what


def parse_json_object(data: bytes | str, what: Label = "response body", *, limit: int = MAX_EVENT_BYTES) -> dict:
    """Like :func:`parse_json`, for a document that must be a JSON object."""
    value = parse_json(data, what, limit=limit)
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{_label(what)} (not a JSON object)")
    return value


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """True when arrays and objects in ``data`` (JSON text) nest deeper than ``limit``.

    Linear and in C: string literals are cut out, each bracket becomes ``(`` or ``)``, and every
    pass removes the innermost ``()`` pairs, so ``limit`` passes empty a document no deeper than
    ``limit``. Unbalanced brackets (a truncated document) count by the opens left unclosed.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")  # escaped quotes end no string
    parens = _outside_strings(unescaped.translate(None, _NOT_SKELETON)).translate(_AS_PARENS)
    for _ in range(limit + 1):
        if b"()" not in parens:
            return parens.count(b"(") > limit  # what is left is ")))(((": the unclosed opens
        parens = parens.replace(b"()", b"")
    return True


def _outside_strings(skeleton: bytes) -> bytes:
    """The brackets of ``skeleton`` (brackets and unescaped quotes) that are not inside strings."""
    # Two adjacent quotes enclose either an empty string or nothing outside one: drop them first,
    # so the split below makes one piece per remaining bracket at most.
    skeleton = skeleton.replace(b'""', b"")
    return b"".join(skeleton.split(b'"')[::2]) if b'"' in skeleton else skeleton


def append_capped(buffer: bytearray, chunk: bytes, limit: int = MAX_BODY_BYTES) -> None:
    """Add ``chunk`` to a buffered body; ``MalformedResponseError`` once it would pass ``limit`` bytes."""
    if len(buffer) + len(chunk) > limit:
        raise MalformedResponseError(f"response body larger than {limit} bytes")
    buffer += chunk


def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {_scrub(key): _scrub(item) for key, item in value.items()}
    return value


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# Error bodies


def error_body_prefix(body: bytes) -> bytes:
    """The part of a non-2xx body that is examined at all: its first ``MAX_ERROR_BODY_BYTES``."""
    return bytes(body[:MAX_ERROR_BODY_BYTES])


def error_body_json(body: bytes) -> Any:
    """An error body as JSON; ``None`` when it is not JSON or longer than ``MAX_ERROR_BODY_BYTES``."""
    try:
        return parse_json(body, "error body", limit=MAX_ERROR_BODY_BYTES)
    except MalformedResponseError:
        return None


def error_body_text(body: bytes, limit: int = 500) -> str:
    """The first ``limit`` characters of a body, decoded from a bounded prefix and stripped."""
    return body[: limit * 4].decode("utf-8", "replace").strip()[:limit]  # 4 bytes per character at most


def strip_tags(text: str) -> str:
    """``text`` with every ``<…>`` tag replaced by a space: the words of an HTML page.

    A linear scan: a ``<`` with no ``>`` after it is not a tag, and neither is any later ``<``, so
    the rest of the text is kept as it is.
    """
    words: list[str] = []
    pos = 0
    while True:
        opening = text.find("<", pos)
        closing = text.find(">", opening + 1) if opening >= 0 else -1
        if closing < 0:
            words.append(text[pos:])
            return " ".join(words)
        words.append(text[pos:opening])
        pos = closing + 1


def snippet(body: bytes, limit: int = 200) -> str:
    """A one-line excerpt of a body (an HTML page's words), at most ``limit`` characters.

    Only a bounded prefix is decoded: a tag may hide many words, so that prefix is generous, but it
    does not grow with the body.
    """
    text = strip_tags(error_body_prefix(body).decode("utf-8", "replace"))
    text = " ".join(text.split())
    return _short(text, limit)


def bounded_message(text: str) -> str:
    """Provider text for an ``error`` event's message, cut at ``MAX_ERROR_MESSAGE_CHARS``."""
    return _short(text, MAX_ERROR_MESSAGE_CHARS)
