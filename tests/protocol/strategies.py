"""Hypothesis strategies for every GTL message type, and for hostile frames and byte streams.

Importable as ``strategies`` from any test (``tests/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import itertools
import json
import typing
from typing import Any

import msgspec
from hypothesis import strategies as st

from gtl_nb.protocol import messages as m

text = st.text(max_size=40)
ident = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
opt_int = st.none() | st.integers(min_value=0, max_value=10**9)
opt_count = st.none() | st.integers(min_value=1, max_value=10**9)  # a request's max_tokens: at least 1
opt_float = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
json_scalar = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10)
json_obj = st.dictionaries(st.text(max_size=8), json_scalar, max_size=4)

tool_calls = st.builds(
    m.ToolCall, id=ident, name=ident, arguments=json_obj.map(lambda d: json.dumps(d, ensure_ascii=False))
)
chat_messages = st.builds(
    m.Message,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=st.none() | text,
    images=st.lists(st.sampled_from(["data:image/png;base64,AAAA", "https://example.com/a.jpg"]), max_size=2),
    tool_calls=st.lists(tool_calls, max_size=2),
    tool_call_id=st.none() | ident,
    provider_data=st.none() | st.dictionaries(st.text(max_size=5), json_obj, max_size=2),
)
tools = st.builds(
    m.Tool,
    name=ident,
    description=text,
    parameters=st.just({"type": "object", "properties": {"x": {"type": "string"}}}),
)
efforts = st.sampled_from(typing.get_args(m.ReasoningEffort))
# the pairs a request takes: effort and budget agree on whether to think at all (none with 0)
reasoning_pairs = st.one_of(
    st.tuples(st.none() | efforts, st.none()),
    st.tuples(st.none(), st.integers(min_value=0, max_value=2**31 - 1)),
    st.tuples(efforts.filter(lambda effort: effort != "none"), st.integers(min_value=1, max_value=10**9)),
    st.just(("none", 0)),
)
requests = reasoning_pairs.flatmap(
    lambda pair: st.builds(
        m.CompletionRequest,
        session_id=ident,
        model=ident,
        messages=st.lists(chat_messages, min_size=1, max_size=3),
        provider=st.none() | ident,
        stream=st.booleans(),
        max_tokens=opt_count,
        temperature=st.none() | st.floats(0, 2, allow_nan=False),
        top_p=st.none() | st.floats(0, 1, allow_nan=False),
        stop=st.none() | st.lists(text, max_size=2),
        tools=st.none() | st.lists(tools, max_size=2),
        tool_choice=st.none() | st.sampled_from(["auto", "none", "required"]),
        providers=st.none() | st.lists(ident, max_size=3),
        metadata=st.none() | json_obj,
        reasoning=st.booleans(),
        reasoning_effort=st.just(pair[0]),
        reasoning_budget=st.just(pair[1]),
    )
)
statuses = st.builds(
    m.Status,
    session_id=ident,
    state=st.sampled_from(["queued", "streaming", "retrying", "failover", "cached"]),
    from_provider=st.none() | ident,
    to_provider=st.none() | ident,
    reason=st.none() | text,
)
tokens = st.builds(m.Token, session_id=ident, text=text)
reasonings = st.builds(m.Reasoning, session_id=ident, text=text)
tool_call_events = st.builds(m.ToolCallEvent, session_id=ident, function=tool_calls)
usages = st.builds(
    m.Usage,
    session_id=ident,
    tokens_in=opt_int,
    tokens_out=opt_int,
    cached_tokens_in=opt_int,
    reasoning_tokens_out=opt_int,
    cost=opt_float,
    cache_hit=st.booleans(),
)
dones = st.builds(
    m.Done,
    session_id=ident,
    finish_reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"]),
    provider=st.none() | ident,
    ttft_ms=opt_float,
    latency_ms=opt_float,
)
errors = st.builds(
    m.Error,
    session_id=ident,
    code=st.sampled_from(list(m.ErrorCode.__args__)),  # type: ignore[attr-defined]
    message=text,
    retryable=st.booleans(),
    provider=st.none() | ident,
    retry_after=opt_float,
    http_status=st.none() | st.integers(100, 599),
)
model_infos = st.builds(
    m.ModelInfo,
    name=ident,
    context_window=opt_int,
    max_tokens=opt_int,
    supports_streaming=st.booleans(),
    supports_functions=st.booleans(),
    supports_vision=st.booleans(),
    cost_per_1k_input=opt_float,
    cost_per_1k_output=opt_float,
)
provider_infos = st.builds(
    m.ProviderInfo, provider=ident, models=st.lists(model_infos, max_size=3), offline=st.booleans()
)
hellos = st.builds(
    m.Hello,
    versions=st.none() | st.lists(st.sampled_from(["1.0", "1.1", "2.0"]), max_size=3),
    version=st.none() | st.just("1.0"),
    features=st.lists(ident, max_size=3),
)
cancels = st.builds(m.Cancel, session_id=ident)

any_message = st.one_of(
    requests,
    statuses,
    tokens,
    reasonings,
    tool_call_events,
    usages,
    dones,
    errors,
    provider_infos,
    hellos,
    cancels,
)


# --- hostile input for the codec and the transports built on it --------------------------------
#
# ``json_values`` are arbitrary JSON values (strings full of brackets, quotes and backslashes, so a
# scanner that skips strings is exercised); ``good_frames`` / ``bad_frames`` are single frames
# without a newline (``bad_frames`` are never valid GTL messages); ``mutated_frames`` damage a good
# frame; ``frame_streams`` mix good and bad frames and cut the stream where a network might.

MAX_DEPTH = 64  # the codec's documented DEFAULT_MAX_DEPTH, restated so a change is a decision

json_text = st.text(alphabet=st.sampled_from('ab[]{}"\\/:, \n\tü€😀'), max_size=12) | st.text(max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=24,
)


def nested(depth: int, kind: str = "[") -> bytes:
    """A JSON value nested ``depth`` arrays (``"["``) or objects (``"{"``) deep."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"0" + b"}" * depth


def json_depth(value: Any) -> int:
    """How deep a Python JSON value nests arrays and objects (a scalar is 0)."""
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    return 0


def dumps(value: Any) -> bytes:
    """Compact JSON bytes that never contain a raw newline."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


good_frames = any_message.map(lambda message: msgspec.json.encode(message))
bad_frames = st.one_of(
    st.binary(max_size=40).map(lambda b: b"\xff" + b.replace(b"\n", b"")),  # not UTF-8, so not JSON
    json_values.filter(lambda v: not isinstance(v, dict)).map(dumps),  # JSON, but not an object
    json_text.map(lambda t: dumps({"type": "x-" + t, "session_id": "s"})),  # an unknown message type
    st.sampled_from([b"garbage", b"{", b'{"type":{}}', b'{"type":"token"}', b'{"type":"token","text":5}']),
    st.integers(MAX_DEPTH + 1, 300).map(nested),  # nested too deep
)


HOSTILE_PIECES = (
    b"[" * 2000,
    b'"\\ud800"',  # a lone surrogate escape
    b"\xed\xa0\x80",  # a surrogate encoded as UTF-8 bytes (invalid)
    b'{"type":{}}',
    b"\\",
    b'"',
    b"1e999999",
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A good frame truncated, with bytes flipped, inserted or deleted, or a hostile piece spliced in."""
    frame = bytearray(draw(good_frames))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(frame)))
        operation = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "hostile"]))
        if operation == "truncate":
            del frame[at:]
        elif operation == "flip" and at < len(frame):
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif operation == "delete":
            del frame[at : at + draw(st.integers(1, 8))]
        else:
            frame[at:at] = draw(st.sampled_from(HOSTILE_PIECES))
    return bytes(frame)


@st.composite
def frame_streams(draw: st.DrawFn, max_frame_bytes: int = 4096) -> tuple[list[Any], list[bytes]]:
    """``(expected, chunks)``: frames mixed good and bad, as the chunks a network might deliver.

    ``expected`` holds, per non-blank frame in order, the message or the string ``"bad"``; frames
    larger than ``max_frame_bytes`` are among the bad ones. Blank keep-alive lines and CRLF endings
    are mixed in.
    """
    expected: list[Any] = []
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["good", "good", "bad", "oversized", "blank"]))
        if kind == "good":
            message = draw(any_message)
            expected.append(message)
            lines.append(msgspec.json.encode(message) + draw(st.sampled_from([b"", b"\r"])))
        elif kind == "bad":
            expected.append("bad")
            lines.append(draw(bad_frames))
        elif kind == "oversized":
            expected.append("bad")
            lines.append(b"x" * (max_frame_bytes + draw(st.integers(1, 3 * max_frame_bytes))))
        else:
            lines.append(draw(st.sampled_from([b"", b" ", b"\r"])))
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    edges = [0, *cuts, len(stream)]
    return expected, [stream[a:b] for a, b in itertools.pairwise(edges)]
