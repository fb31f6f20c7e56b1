"""Hypothesis strategies for hostile provider responses, reusable by any test that feeds outside bytes to a dialect.

What a provider (or a proxy in front of it) may send, from worst to most plausible:

* :data:`garbage` — random bytes, and random sequences of the wire formats' own tokens (``data: ``, ``[DONE]``,
  CRLF, braces) so the fuzz reaches past the framing;
* :func:`mutated` — a recorded body (:func:`recorded_bodies`) with a few mutations: byte flips, truncation,
  duplication, deletion, insertion of a :data:`HOSTILE` piece (JSON nested 100,000 deep, a megabyte token,
  invalid UTF-8, a lone surrogate escape…), or a JSON value replaced by one of another type
  (:func:`retyped`); Bedrock event-stream bodies are mutated inside their frames and re-framed with valid
  CRCs (:func:`mutated_frames`), or the CRC would stop every mutation at the door;
* :func:`splits` — the body cut into the pieces a network might deliver;
* :data:`statuses`, :data:`error_headers`, :func:`error_bodies` — the inputs of ``decode_error``.

:func:`deployment` and :func:`request` make the dialect side. Loading: ``tests/providers/conftest.py`` registers
this file as the module ``provider_strategies`` (a bare ``strategies`` is ``tests/protocol``'s); from another
folder, load it by path with ``importlib.util.spec_from_file_location`` under that same name.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from gtl_nb.protocol.messages import CompletionRequest, Message
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.eventstream import EventStreamDecoder, EventStreamError

FIXTURES_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "wire"
DIALECT_TYPES = ("openai", "azure", "openai_compatible", "anthropic", "gemini", "ollama", "bedrock")
SESSION_ID = "fuzz-session"

# The recordings each dialect's wire shares (Azure and compatible servers speak OpenAI's wire).
_FOLDERS: dict[str, tuple[str, ...]] = {
    "openai": ("openai",),
    "azure": ("azure", "openai"),
    "openai_compatible": ("openai", "ollama/openai-compat-v1-tool-call.json"),
    "anthropic": ("anthropic",),
    "gemini": ("gemini",),
    "ollama": ("ollama",),
    "bedrock": ("bedrock",),
}
_NOT_BODIES = (".expected.json", ".request.json", ".response-headers.json", ".jsonl", "models-list.json", "tags.json")
_STREAM_SUFFIXES = (".sse", ".ndjson", ".eventstream")


# ----------------------------------------------------------------------------------------------
# the dialect side


def deployment(dialect_type: str) -> Deployment:
    """A deployment of ``dialect_type`` with every setting a dialect may need."""
    return Deployment(
        name=f"fuzz-{dialect_type}",
        type=dialect_type,
        api_key="test-key",
        base_url="https://provider.example",
        region="us-east-1",
        model="fuzz-model",
    )


def request(*, stream: bool, reasoning: bool = True) -> CompletionRequest:
    """The request whose answer is being decoded (reasoning asked, so reasoning paths run too)."""
    return CompletionRequest(
        session_id=SESSION_ID,
        model="fuzz-model",
        messages=[Message(role="user", content="hi")],
        stream=stream,
        reasoning=reasoning,
    )


# ----------------------------------------------------------------------------------------------
# recorded bodies


@dataclass(frozen=True)
class Body:
    """One recorded response body and whether the request that got it was streaming."""

    name: str
    data: bytes
    stream: bool


def _fixture_files(dialect_type: str) -> list[Path]:
    files: list[Path] = []
    for entry in _FOLDERS[dialect_type]:
        path = FIXTURES_ROOT / entry
        files.extend(sorted(path.iterdir()) if path.is_dir() else [path])
    return [f for f in files if not f.name.endswith(_NOT_BODIES)]


def _chunks_as_sse(path: Path) -> bytes:
    """A ``.chunks.json`` recording (parsed chunks) back into the SSE body it came as."""
    chunks = json.loads(path.read_text())
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def recorded_bodies(dialect_type: str) -> list[Body]:
    """The recorded 2xx bodies (and mid-stream errors) ``dialect_type`` decodes."""
    bodies: list[Body] = []
    for path in _fixture_files(dialect_type):
        if path.name.endswith(".chunks.json"):
            bodies.append(Body(path.name, _chunks_as_sse(path), True))
        elif path.name.endswith(_STREAM_SUFFIXES):
            bodies.append(Body(path.name, path.read_bytes(), True))
        elif path.suffix == ".json" and not path.name.startswith("error-"):
            bodies.append(Body(path.name, path.read_bytes(), path.name.startswith("stream-")))
    return bodies


def recorded_error_bodies(dialect_type: str) -> list[bytes]:
    """The recorded non-2xx bodies of ``dialect_type``'s wire."""
    return [p.read_bytes() for p in _fixture_files(dialect_type) if p.name.startswith("error-") and p.suffix == ".json"]


# ----------------------------------------------------------------------------------------------
# hostile pieces


def nested_json(depth: int, *, opening: bytes = b"[", inner: bytes = b"1") -> bytes:
    """JSON nested ``depth`` levels deep: arrays (``opening=b"["``) or objects (``b'{"a":'``)."""
    closing = b"]" if opening == b"[" else b"}"
    return opening * depth + inner + closing * depth


HOSTILE: tuple[bytes, ...] = (
    nested_json(100_000),
    nested_json(65),
    nested_json(64),
    nested_json(5_000, opening=b'{"a":'),
    b"[" * 200_000,
    b'{"x": "' + b"y" * (1 << 20) + b'"}',
    b"z" * (1 << 20),
    b"<" * 200_000,
    b"\xff\xfe\xc3\x28\xed\xa0\x80\xf0\x28\x8c",  # invalid UTF-8, and a surrogate encoded as UTF-8
    b'"\\ud800"',
    b'{"text": "\\udfff", "content": "\\ud83d"}',
    b"1" * 5_000,  # more digits than Python turns into an int
    b"1e999",
    b"NaN",
    b"-Infinity",
    b"\x00",
    b"\r",
    b"\n\n",
    b"\r\n\r\n",
    b"data: " + nested_json(100_000) + b"\n\n",
    b"data: [DONE]\n\n",
    b"event: error\ndata: {}\n\n",
    b"[]",
    b"{}",
    b"null",
    b'"',
    b"\\",
)
hostile_pieces = st.sampled_from(HOSTILE) | st.binary(max_size=32)

_TOKENS = (
    b"data: ",
    b"data:",
    b"event: ",
    b"id: 1",
    b"retry: 10",
    b": ping",
    b"\n",
    b"\r\n",
    b"\r",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"[DONE]",
    b"null",
    b'"choices"',
    b'"delta"',
    b'"content"',
    b'"type"',
    b'"error"',
    b'"done": true',
    b'"candidates"',
    b'"message_stop"',
)
garbage = st.binary(max_size=512) | st.lists(st.sampled_from(_TOKENS) | hostile_pieces, max_size=40).map(b"".join)


# ----------------------------------------------------------------------------------------------
# JSON values of the wrong type


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "", "0", "tool_use", "STOP", "stop"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the root included), at most 2,000 of them."""
    found = [prefix]
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found.extend(_paths(child, (*prefix, key)))
        if len(found) > 2_000:
            break
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def retyped(draw: st.DrawFn, document: bytes) -> bytes:
    """``document`` (JSON text) with one value somewhere inside replaced by a random JSON value (unchanged when
    it is not JSON, or too deep for Python to walk: earlier mutations may have made it so)."""
    try:
        value = json.loads(document)
        paths = _paths(value)
    except (ValueError, RecursionError):
        return document
    path = draw(st.sampled_from(paths))
    try:
        return json.dumps(_replaced(value, path, draw(json_values))).encode("utf-8", "surrogatepass")
    except RecursionError:
        return document


_DATA_PREFIX = b"data: "


@st.composite
def retyped_line(draw: st.DrawFn, body: bytes) -> bytes:
    """One JSON line of ``body`` (an SSE ``data:`` line or an NDJSON line) retyped; a whole-JSON body retyped."""
    lines = body.split(b"\n")
    candidates = [i for i, line in enumerate(lines) if line.strip().startswith((b"{", b"[", _DATA_PREFIX + b"{"))]
    if len(candidates) <= 1 and body.lstrip()[:1] in (b"{", b"["):
        return draw(retyped(body))
    if not candidates:
        return body
    index = draw(st.sampled_from(candidates))
    line = lines[index].rstrip(b"\r")
    prefix = _DATA_PREFIX if line.startswith(_DATA_PREFIX) else b""
    lines[index] = prefix + draw(retyped(line[len(prefix) :])) + (b"\r" if lines[index].endswith(b"\r") else b"")
    return b"\n".join(lines)


# ----------------------------------------------------------------------------------------------
# byte-level mutations


Mutation = Callable[[bytes], bytes]


@st.composite
def _flip(draw: st.DrawFn, body: bytes) -> bytes:
    if not body:
        return body
    at = draw(st.integers(0, len(body) - 1))
    return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]


@st.composite
def _truncate(draw: st.DrawFn, body: bytes) -> bytes:
    return body[: draw(st.integers(0, len(body)))]


@st.composite
def _duplicate(draw: st.DrawFn, body: bytes) -> bytes:
    start = draw(st.integers(0, len(body)))
    end = draw(st.integers(start, len(body)))
    at = draw(st.integers(0, len(body)))
    return body[:at] + body[start:end] + body[at:]


@st.composite
def _delete(draw: st.DrawFn, body: bytes) -> bytes:
    start = draw(st.integers(0, len(body)))
    end = draw(st.integers(start, min(len(body), start + 64)))
    return body[:start] + body[end:]


@st.composite
def _insert(draw: st.DrawFn, body: bytes) -> bytes:
    at = draw(st.integers(0, len(body)))
    return body[:at] + draw(hostile_pieces) + body[at:]


def byte_mutation(body: bytes) -> st.SearchStrategy[bytes]:
    """One byte-level mutation of ``body``."""
    return st.one_of(_flip(body), _truncate(body), _duplicate(body), _delete(body), _insert(body))


def one_mutation(body: bytes) -> st.SearchStrategy[bytes]:
    """One mutation of ``body``: byte-level, or a JSON value retyped."""
    return st.one_of(byte_mutation(body), retyped_line(body))


@st.composite
def mutated(draw: st.DrawFn, body: bytes, max_mutations: int = 3) -> bytes:
    """``body`` after one to ``max_mutations`` mutations (:func:`one_mutation`)."""
    for _ in range(draw(st.integers(1, max_mutations))):
        body = draw(one_mutation(body))
    return body


# ----------------------------------------------------------------------------------------------
# AWS event-stream bodies


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream frame with string headers and valid CRCs."""
    block = b""
    for name, value in headers.items():
        raw_name, raw = name.encode(), value.encode()
        block += bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw)) + raw
    total = 12 + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + block + payload
    return message + struct.pack(">I", zlib.crc32(message))


def split_frames(body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The frames of a valid event-stream body as ``(string headers, payload)``."""
    try:
        messages = EventStreamDecoder().feed(body)
    except EventStreamError:
        return []
    return [({k: str(v) for k, v in m.headers.items()}, m.payload) for m in messages]


_EVENT_TYPES = ("messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata")


@st.composite
def mutated_frames(draw: st.DrawFn, body: bytes) -> bytes:
    """An event-stream ``body`` with one frame's payload mutated (or frames dropped, repeated, or a frame of
    a random event type added), then re-framed with valid CRCs."""
    frames = split_frames(body)
    if not frames:
        return draw(mutated(body))
    index = draw(st.integers(0, len(frames) - 1))
    headers, payload = frames[index]
    action = draw(st.sampled_from(["payload", "drop", "repeat", "event-type"]))
    if action == "payload":
        frames[index] = (headers, draw(mutated(payload, max_mutations=2)))
    elif action == "drop":
        del frames[index]
    elif action == "repeat":
        frames.insert(index, frames[index])
    else:
        frames[index] = ({**headers, ":event-type": draw(st.sampled_from(_EVENT_TYPES))}, payload)
    return b"".join(encode_frame(h, p) for h, p in frames)


def mutated_body(body: Body) -> st.SearchStrategy[bytes]:
    """The mutations that fit ``body``: frame-aware for event streams, byte and JSON mutations otherwise."""
    if body.name.endswith(".eventstream"):
        return mutated_frames(body.data) | mutated(body.data)
    return mutated(body.data)


# ----------------------------------------------------------------------------------------------
# network chunking


@st.composite
def splits(draw: st.DrawFn, data: bytes, max_cuts: int = 12) -> list[bytes]:
    """``data`` cut at up to ``max_cuts`` random points (pieces may be empty)."""
    if not data:
        return [data]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# ----------------------------------------------------------------------------------------------
# non-2xx responses


statuses = st.sampled_from([400, 401, 402, 403, 404, 408, 409, 413, 422, 424, 429, 500, 501, 502, 503, 504, 529]) | (
    st.integers(100, 599)
)
_HEADER_NAMES = (
    "retry-after",
    "Retry-After",
    "retry-after-ms",
    "x-should-retry",
    "x-amzn-ErrorType",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "content-type",
)
_HEADER_VALUES = (
    "0",
    "1",
    "1.5",
    "-3",
    "nan",
    "inf",
    "1e999",
    "1" * 400,
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Mon, 99 Foo 2015 07:28:00 GMT",
    "6m0s",
    "1h2m3.5s",
    "20ms",
    "9" * 40 + "s",
    "1" * 20_000,
    "true",
    "false",
    "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    "ValidationException",
    "text/html",
    "",
)
error_headers = st.dictionaries(
    st.sampled_from(_HEADER_NAMES), st.sampled_from(_HEADER_VALUES) | st.text(max_size=30), max_size=4
)
_ERROR_SHAPES = (
    lambda v: {"error": v},
    lambda v: [{"error": v}],
    lambda v: {"message": v},
    lambda v: {"detail": v},
    lambda v: {"type": "error", "error": v},
    lambda v: {"__type": v, "message": v},
    lambda v: v,
)
json_errors = st.builds(lambda shape, value: shape(value), st.sampled_from(_ERROR_SHAPES), json_values).map(
    lambda v: json.dumps(v).encode("utf-8", "surrogatepass")
)


def error_bodies(dialect_type: str) -> st.SearchStrategy[bytes]:
    """Bodies of a non-2xx answer: recorded ones mutated, JSON error shapes, HTML pages, garbage."""
    recorded = recorded_error_bodies(dialect_type) or [b'{"error": {"message": "x"}}']
    return st.one_of(
        st.sampled_from(recorded).flatmap(mutated),
        json_errors,
        st.sampled_from(HOSTILE),
        garbage,
        st.just(b"<html><title>502 Bad Gateway</title>" + b"<" * 100_000),
        st.just(json.dumps({"error": {"message": "input token count exceeds " * 7_000}}).encode()),
    )
