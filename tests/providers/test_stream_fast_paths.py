"""The shortcuts the streamed-answer decoders take for the commonest chunk give what the long way gives.

* ``SSEDecoder.feed`` reads a chunk that is exactly one ``data: …\\n\\n`` event, or a burst of such
  events, without splitting it into lines: the events (and the errors) must be those of the
  line-by-line parser, however the same bytes are cut or grouped.
* ``openai_chat._chunk_object`` parses a chunk's JSON with msgspec first: the value, or the error,
  must be ``parse_json_object``'s.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import wire
from hypothesis import given, settings
from hypothesis import strategies as st

from gtl_nb.providers import openai_chat
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.limits import MalformedResponseError, parse_json_object
from gtl_nb.providers.openai import OpenAIDialect
from gtl_nb.providers.openai_chat import _chunk_object
from gtl_nb.providers.sse import SSEDecoder, SSEError, SSEEvent

# -- SSE ------------------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
_LINE = st.one_of(
    _TEXT.map(lambda text: f"data: {text}".encode()),
    _TEXT.map(lambda text: f"data:{text}".encode()),  # no space after the colon
    _TEXT.map(lambda text: f"event: {text}".encode()),
    _TEXT.map(lambda text: f"id: {text}".encode()),
    st.integers(0, 9999).map(lambda number: f"retry: {number}".encode()),
    _TEXT.map(lambda text: f": {text}".encode()),  # a comment
    st.binary(max_size=12).map(lambda raw: b"data: " + raw.replace(b"\n", b"").replace(b"\r", b"")),
)
# an event: its lines, then the blank line
_EVENT = st.lists(_LINE, min_size=0, max_size=3).map(lambda lines: b"".join(line + b"\n" for line in lines) + b"\n")


def _feed_all(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=8), st.data())
def test_an_event_per_chunk_reads_as_the_same_bytes_cut_anywhere_else(events: list[bytes], data: st.DataObject) -> None:
    body = b"".join(events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    elsewhere = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert _feed_all(events) == _feed_all(elsewhere) == _feed_all([bytes([byte]) for byte in body])


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=10), st.data())
def test_events_read_in_bursts_read_as_one_event_per_chunk(events: list[bytes], data: st.DataObject) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(events)), max_size=4))))
    bursts = [b"".join(events[start:end]) for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert _feed_all([burst for burst in bursts if burst]) == _feed_all(events)


@settings(max_examples=500, deadline=None)
@given(st.lists(_EVENT, min_size=1, max_size=6), st.integers(12, 60), st.booleans())
def test_data_payloads_are_what_feed_reads_or_nothing_is_taken(events: list[bytes], limit: int, primed: bool) -> None:
    chunk = b"".join(events)
    reader, fed = SSEDecoder(max_event_bytes=limit), SSEDecoder(max_event_bytes=limit)
    if primed:  # a stream that set an id before this read
        reader.feed(b"id: 9\n\n")
        fed.feed(b"id: 9\n\n")
    before = dict(vars(reader))
    payloads = reader.data_payloads(chunk)
    assert vars(reader) == before  # taken or not, the parser's state is untouched
    if payloads is None:
        return
    expected = fed.feed(chunk)
    got = [SSEEvent(payload.decode("utf-8", "replace"), "message", reader.last_event_id, None) for payload in payloads]
    assert got == expected
    assert not fed._buffer and not fed._has_fields  # feed, too, ends with nothing unfinished


def test_a_burst_of_data_events_keeps_the_event_id_and_falls_back_on_anything_else() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 3\ndata: a\n\n") == [SSEEvent("a", "message", "3", None)]
    assert decoder.feed(b"data: b\n\ndata: c\n\n") == [SSEEvent("b", id="3"), SSEEvent("c", id="3")]
    mixed = b"data: d\n\nevent: named\ndata: e\n\n: comment\n\ndata: f\n\n"
    assert decoder.feed(mixed) == [SSEEvent("d", id="3"), SSEEvent("e", "named", "3"), SSEEvent("f", id="3")]


def test_a_burst_with_an_event_over_the_limit_is_refused() -> None:
    limit = 100
    small, large = b"data: x\n\n", b"data: " + b"x" * (limit - 6) + b"\n\n"
    assert len(SSEDecoder(max_event_bytes=limit).feed(small + b"data: " + b"x" * (limit - 7) + b"\n\n")) == 2
    with pytest.raises(SSEError):
        SSEDecoder(max_event_bytes=limit).feed(small + large + small)


def test_the_shortcut_keeps_the_last_event_id_and_names_the_event_message() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\ndata: a\n\n") == [SSEEvent("a", "message", "7", None)]
    assert decoder.feed(b"data: b\n\n") == [SSEEvent("b", "message", "7", None)]  # the id stays, as the spec says


def test_the_shortcut_waits_for_an_event_already_begun() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: delta\n") == []
    assert decoder.feed(b"data: x\n\n") == [SSEEvent("x", "delta")]
    decoder = SSEDecoder()
    assert decoder.feed(b"da") == []  # an unfinished line in the buffer: the chunk continues it
    assert decoder.feed(b"data: x\n\n") == []  # one line "dadata: x", a field nobody knows
    assert _feed_all([b"da", b"ta: x\n\n"]) == [SSEEvent("x")]


def test_an_event_over_the_limit_is_refused_on_the_shortcut_too() -> None:
    limit = 100
    fits = b"data: " + b"x" * (limit - 7) + b"\n\n"  # its line and line end: exactly the limit
    assert SSEDecoder(max_event_bytes=limit).feed(fits)[0].data == "x" * (limit - 7)
    with pytest.raises(SSEError):
        SSEDecoder(max_event_bytes=limit).feed(b"data: " + b"x" * (limit - 6) + b"\n\n")
    with pytest.raises(SSEError):  # the long way says the same
        SSEDecoder(max_event_bytes=limit).feed(b"data: " + b"x" * (limit - 6) + b"\n\n" + b": more\n")


# -- a chunk's JSON -------------------------------------------------------------------------------------

_DOCUMENTS = [
    '{"choices":[{"index":0,"delta":{"content":"hi"}}]}',
    '{"a":1,"a":2}',
    '{"a":NaN}',
    '{"a":Infinity}',
    '{"a":1e400}',
    '{"a":-0.0,"b":1.5e300,"c":0.1}',
    '{"a":' + "9" * 4300 + "}",
    '{"a":' + "9" * 4301 + "}",
    '{"a":"\\ud800"}',  # an escaped lone surrogate: scrubbed to U+FFFD
    '{"a":"\\u00e9\\n"}',
    '\ufeff{"a":1}',  # a byte-order mark
    '{"a":"\ufffd"}',
    "[1,2]",
    '"text"',
    "{",
    "{}",
    '{"a":1} trailing',
    "[" * 70 + "]" * 70,
    '{"deep":' + "[" * 63 + "]" * 63 + "}",
    '{"deep":' + "[" * 64 + "]" * 64 + "}",
    '{"s":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
]


def _outcome(parse, text: str):  # type: ignore[no-untyped-def]
    try:
        return ("value", parse(text))
    except MalformedResponseError as exc:
        return ("error", exc.message)


@pytest.mark.parametrize("document", _DOCUMENTS)
def test_a_chunk_reads_as_parse_json_object_reads_it(document: str) -> None:
    what = "malformed stream chunk"
    expected = _outcome(lambda text: parse_json_object(text, lambda: f"{what} {text[:120]!r}"), document)
    assert _outcome(lambda text: _chunk_object(text, what), document) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=12,
    )
)
def test_any_json_value_reads_the_same(value: object) -> None:
    import json

    document = json.dumps({"v": value}, ensure_ascii=False)
    assert _outcome(lambda text: _chunk_object(text, "x"), document) == _outcome(
        lambda text: parse_json_object(text, lambda: f"x {text[:120]!r}"), document
    )


# -- a chunk's shape ------------------------------------------------------------------------------------

_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["text", "type", "x"]), inner),
    max_leaves=4,
)


def _maybe(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects holding any subset of ``fields``: the plain shape, and each way of leaving it."""
    return st.fixed_dictionaries({}, optional=fields)


_TEXTISH = st.one_of(st.none(), st.text(max_size=4), _ANY_JSON)
_DELTA = _maybe(
    content=st.one_of(st.text(max_size=4), st.none(), st.lists(_maybe(type=st.just("text"), text=st.text(max_size=3)))),
    role=st.just("assistant"),
    refusal=_TEXTISH,
    reasoning_content=_TEXTISH,
    reasoning=_TEXTISH,
    tool_calls=st.one_of(st.none(), st.just([{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}])),
)
_CHOICE = _maybe(
    index=st.one_of(st.none(), st.integers(0, 1), st.booleans(), st.just(0.0)),
    delta=st.one_of(_DELTA, st.none(), st.text(max_size=2)),
    message=st.one_of(st.none(), _DELTA),
    finish_reason=st.one_of(st.none(), st.sampled_from(["", "stop", "length", "tool_calls"]), st.integers(0, 1)),
    logprobs=st.none(),
)
_CHUNK = _maybe(
    id=st.just("chatcmpl-1"),
    model=st.one_of(st.none(), st.text(max_size=4), st.integers(0, 1)),
    usage=st.one_of(
        st.none(), st.just({"prompt_tokens": 3, "completion_tokens": 2}), st.lists(st.integers(), max_size=1)
    ),
    choices=st.one_of(st.lists(st.one_of(_CHOICE, st.integers(0, 1)), max_size=2), st.none(), st.just({})),
    error=st.one_of(st.none(), st.just({"message": "overloaded", "type": "server_error"})),
)


def _decoded(
    chunks: list[dict[str, Any] | str | bytes], *, plain: bool, reasoning: bool, burst: bool = False, ascii: bool = True
) -> list[Any]:
    """The events of ``chunks`` (objects, or JSON text as it is) and ``[DONE]``, by the plain way
    where it applies, or always by the long way; one read per event, or all of them in one read
    (``burst``: a fast upstream's answer). ``ascii=False`` writes non-ASCII text as UTF-8, not as
    ``\\u`` escapes."""
    request = wire.request_maker(session_id="s-1", model="gpt-4o-mini")(reasoning=reasoning)
    with pytest.MonkeyPatch.context() as patch:
        if not plain:
            patch.setattr(openai_chat, "_plain_chunk", lambda data: None)  # always the long way
        decoder = OpenAIDialect().response_decoder(request, Deployment(name="o", type="openai", api_key="k"))
        reads = []
        for chunk in chunks:
            if isinstance(chunk, bytes):
                reads.append(b"data: " + chunk + b"\n\n")
                continue
            text = chunk if isinstance(chunk, str) else json.dumps(chunk, ensure_ascii=ascii)
            reads.append(f"data: {text}\n\n".encode("utf-8", "surrogatepass"))
        reads.append(b"data: [DONE]\n\n")
        events = []
        for read in [b"".join(reads)] if burst else reads:
            events += decoder.feed(read)
        events += decoder.close()
    return events


@settings(max_examples=400, deadline=None)
@given(st.lists(_CHUNK, min_size=1, max_size=3), st.booleans(), st.booleans(), st.booleans())
def test_a_plain_chunk_decodes_to_the_events_the_long_way_gives(
    chunks: list[dict[str, Any]], reasoning: bool, burst: bool, ascii: bool
) -> None:
    plain = _decoded(chunks, plain=True, reasoning=reasoning, burst=burst, ascii=ascii)
    assert plain == _decoded(chunks, plain=False, reasoning=reasoning, ascii=ascii)


_TOKEN = '{"choices":[{"index":0,"delta":{"content":"ok"}}]}'


def _nested(depth: int) -> str:
    return '{"pad":' + "[" * (depth - 1) + "]" * (depth - 1) + ',"choices":[{"delta":{"content":"x"}}]}'


@pytest.mark.parametrize(
    "hostile",
    [
        _nested(64),  # as deep as a chunk may nest: read
        _nested(5000),  # past the recursion limit: refused (deeper than 64 only where nobody reads: below)
        '{"choices":[],"usage":{"a":' + "[" * 70 + "]" * 70 + "}}",  # too deep where the decoder reads
        '{"choices":[{"delta":{"content":"\\ud800 lone"}}]}',  # an escape: the long way scrubs it
        '{"choices":[{"delta":{"content":"caf\\u00e9"}}]}',
        b'{"choices":[{"delta":{"content":"\xff\xfe"}}]}',  # not UTF-8: replaced, as the SSE parser does
        "   ",  # a blank payload: skipped
        "[1]",
        '{"choices":[{"delta":{"refusal":"no"}}]}',
        '{"choices":[{"delta":{"content":"a"}}]},{"choices":[]}',
    ],
)
@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_hostile_payload_in_a_burst_reads_as_the_long_way_reads_it_alone(hostile: str | bytes, where: int) -> None:
    chunks: list[dict[str, Any] | str | bytes] = [_TOKEN, _TOKEN]
    chunks.insert(where, hostile)
    burst = _decoded(chunks, plain=True, reasoning=False, burst=True)
    assert burst == _decoded(chunks, plain=False, reasoning=False)
    assert burst == _decoded(chunks, plain=True, reasoning=False)


def test_a_burst_reads_each_payload_straight_from_its_bytes() -> None:
    """Every payload of a plain burst is decoded from its bytes in one loop: none goes to ``_sse_unit``."""
    request = wire.request_maker(session_id="s-1", model="gpt-4o-mini")(reasoning=False)
    decoder = OpenAIDialect().response_decoder(request, Deployment(name="o", type="openai", api_key="k"))
    burst = b"".join(b"data: " + _TOKEN.encode() + b"\n\n" for _ in range(40))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoder, "_sse_unit", lambda *a, **k: pytest.fail("a plain payload went the long way"))
        events = decoder.feed(burst)
    assert [event.text for event in events] == ["ok"] * 40


def test_a_chunk_nested_too_deep_only_where_nobody_reads_is_read_and_anywhere_else_refused() -> None:
    """msgspec builds nothing of a field the plain chunk does not name and stops at the interpreter's
    recursion limit: such a chunk is read. Where the decoder reads (``usage``), or past that limit,
    ``MAX_JSON_DEPTH`` holds."""
    assert openai_chat._plain_chunk(_nested(100)) is not None
    unclosed = '{"x":' + "[" * 1015  # short enough to go unscanned, deeper than the recursion limit
    assert len(unclosed) <= openai_chat._UNSCANNED_BYTES
    assert openai_chat._plain_chunk(unclosed) is None  # msgspec's RecursionError: the long way refuses it
    assert openai_chat._plain_chunk(_nested(100_000)) is None  # longer: scanned first
    deep_usage = '{"choices":[],"usage":{"a":' + "[" * 70 + "]" * 70 + "}}"
    assert openai_chat._plain_chunk(deep_usage) is None
    events = _decoded([_nested(100_000)], plain=True, reasoning=False, burst=True)
    assert [type(event).__name__ for event in events] == ["Error"]
    assert "nested" in events[0].message or "deep" in events[0].message


_LONG = "9" * 4301  # one digit more than json.loads reads (sys.get_int_max_str_digits)
_HI = ',"choices":[{"delta":{"content":"hi"}}]}'


@pytest.mark.parametrize(
    "document",
    [
        '{"x":' + _LONG + _HI,
        '{"choices":[{"logprobs":-' + _LONG + ',"delta":{"content":"hi"}}]}',
        '{"choices":[{"delta":{"role":' + _LONG + ',"content":"hi"}}]}',
        '{"x":' + _LONG[1:] + _HI,  # the longest it reads
        '{"pad":"' + "x" * 5000 + '"' + _HI,
    ],
)
def test_a_long_number_in_a_field_nobody_reads_decodes_as_the_long_way_decodes_it(document: str) -> None:
    import sys

    if sys.get_int_max_str_digits() != 4300:
        pytest.skip("the interpreter's integer digit limit is not the default")
    assert _decoded([document], plain=True, reasoning=False) == _decoded([document], plain=False, reasoning=False)


def test_an_event_type_cannot_be_subclassed() -> None:
    from gtl_nb.protocol.messages import Done

    with pytest.raises(TypeError, match="Done is a GTL event type and cannot be subclassed"):

        class _MyDone(Done):  # type: ignore[misc]
            pass


def test_the_plain_way_reads_the_commonest_chunks_and_leaves_the_rest() -> None:
    assert openai_chat._plain_chunk('{"model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}') is not None
    assert openai_chat._plain_chunk('{"choices":[],"usage":{"prompt_tokens":1}}') is not None
    assert openai_chat._plain_chunk('{"choices":[{"delta":{"content":"caf\\u00e9 \\ud83d\\ude00"}}]}') is not None
    for other in (
        '{"choices":[{"delta":{"content":[{"type":"text","text":"a"}]}}]}',  # content parts
        '{"choices":[{"delta":{"reasoning_content":"think"}}]}',
        '{"choices":[{"delta":{"tool_calls":[]}}]}',
        '{"choices":[{"message":{"content":"a"}}]}',
        '{"error":{"message":"x"}}',
        '{"choices":[{"index":true}]}',
        '{"choices":[{"delta":{"content":"\\ud800"}}]}',  # a lone surrogate: the long way scrubs it
        "[1]",
    ):
        assert openai_chat._plain_chunk(other) is None, other


# a child interpreter's set-up for the two tests below: an OpenAI stream decoder named ``decoder``
_OPENAI_DECODER = (
    "import msgspec\n"
    "from gtl_nb.protocol.messages import CompletionRequest\n"
    "from gtl_nb.providers.base import Deployment\n"
    "from gtl_nb.providers.openai import OpenAIDialect\n"
    "request = msgspec.convert({'session_id': 's', 'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]},"
    " CompletionRequest)\n"
    "decoder = OpenAIDialect().response_decoder(request, Deployment(name='o', type='openai', api_key='k'))\n"
)


def test_a_deep_chunk_cannot_crash_the_interpreter_whatever_its_limits(tmp_path: Any) -> None:
    """With the digit limit off and the recursion limit raised far, a megabyte of nesting must still be
    refused (scanned: it is long), not handed to msgspec's recursion (which would overflow the C stack)."""
    import subprocess
    import sys

    script = tmp_path / "deep.py"
    limits = "import sys\nsys.set_int_max_str_digits(0)\nsys.setrecursionlimit(1_000_000)\n"
    feed = (
        "depth = 500_000\n"
        'payload = b\'{"pad":\' + b\'[\' * depth + b\']\' * depth + b\',"choices":[{"delta":{"content":"x"}}]}\'\n'
        "events = decoder.feed(b'data: ' + payload + b'\\n\\n')\n"
        "print(type(events[0]).__name__, 'nested deeper' in events[0].message)\n"
    )
    script.write_text(limits + _OPENAI_DECODER + feed)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Error", "True"]


@pytest.mark.parametrize("depth", [1015, 4091])
def test_an_unclosed_chunk_cannot_crash_a_small_thread_stack(tmp_path: Any, depth: int) -> None:
    """An unclosed document nests a level a byte; under a raised recursion limit, on a 128 KiB thread
    stack, neither a chunk short enough to go unscanned nor a longer one may overflow it."""
    import subprocess
    import sys

    script = tmp_path / "unclosed.py"
    limits = "import sys, threading\nsys.setrecursionlimit(100_000)\n"
    script.write_text(
        limits + _OPENAI_DECODER + f"payload = b'{{\"x\":' + b'[' * {depth}\n"
        "threading.stack_size(128 * 1024)\n"
        "out = []\n"
        "reader = threading.Thread(target=lambda: out.extend(decoder.feed(b'data: ' + payload + b'\\n\\n')))\n"
        "reader.start(); reader.join()\n"
        "print(type(out[0]).__name__)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Error"]
