"""Lossless round trips, proven with hypothesis: markdown and JSON give back an equal message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtl_nb.gap import (
    ROLES,
    Entity,
    GAPFormatError,
    TransformHints,
    WrappedMessage,
    from_json,
    from_markdown,
    parse_all,
    to_json,
    to_markdown,
)
from gtl_nb.gap.model import join_surrogates

# Pieces that stress the formats: markers, the escape sequence, separators, quotes, line breaks,
# the null and none words, unicode line separators and non-printables.
TRICKY = [
    "[GAP:START]", "[GAP:CONTENT]", "[GAP:END]", "[\\GAP:END]", "[\\\\GAP:START]", "\\", "\n", "\r\n", "\r",
    "|", ":", ",", ";", "=", "(", ")", '"', "“”", "-", " ", "\t", "none", "Thread:", "From: x | Thread: y",
    "\u2028", "\x85", "\xa0", "\x00", "é", "🙂", "`", "```", "{}", "[", "]", "#",
]  # fmt: skip

texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(TRICKY)), max_size=6).map("".join)
optional_texts = st.none() | texts
# a timestamp is ISO-8601 (gap.model.iso_timestamp): as isoformat() writes it, with Z, or a date alone
timestamps = st.none() | st.builds(
    lambda moment, form: (
        moment.isoformat()
        if form == "iso"
        else moment.date().isoformat()
        if form == "date"
        else moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    ),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.sampled_from(("iso", "date", "z")),
)

entities = st.dictionaries(
    texts.filter(bool),  # an entity key is never empty
    st.builds(Entity, type=texts, value=optional_texts, defined_in=optional_texts),
    max_size=4,
)
hints = st.none() | st.builds(
    TransformHints,
    maintain_tense=optional_texts,
    preserve_perspective=optional_texts,
    pronoun_map=st.dictionaries(texts, texts, max_size=4),
)
messages = st.builds(
    WrappedMessage,
    content=texts,
    platform=texts,
    chat_id=texts,
    role=st.sampled_from(ROLES),
    model=optional_texts,
    timestamp=timestamps,
    thread_id=optional_texts,
    parent_messages=st.lists(texts, max_size=4).map(tuple),
    entities=entities,
    transform_hints=hints,
)


def same_order(first: WrappedMessage, second: WrappedMessage) -> bool:
    return list(first.entities) == list(second.entities) and list(first.hints.pronoun_map) == list(
        second.hints.pronoun_map
    )


@settings(max_examples=300)
@given(messages)
def test_markdown_round_trip_is_lossless(message):
    parsed = from_markdown(to_markdown(message))
    assert parsed == message
    assert same_order(parsed, message)


@settings(max_examples=300)
@given(messages)
def test_json_round_trip_is_lossless(message):
    parsed = from_json(to_json(message))
    assert parsed == message
    assert same_order(parsed, message)


@given(st.lists(messages, max_size=4), st.lists(texts.filter(lambda t: "[GAP:" not in t), min_size=5, max_size=5))
def test_parse_all_finds_every_block_among_prose(blocks, prose):
    # prose lines never contain a marker; every block is separated from the prose by line breaks
    parts = [prose[0]]
    for index, block in enumerate(blocks):
        parts += [to_markdown(block), prose[(index + 1) % len(prose)]]
    assert parse_all("\n".join(parts)) == blocks


@given(messages)
def test_markdown_header_lines_stay_on_one_line(message):
    text = to_markdown(message)
    header = text.split("\n[GAP:CONTENT]\n", 1)[0].split("\n")
    assert header[0] == "[GAP:START]"
    assert header[1].startswith("From: ") and " | Thread: " in header[1]
    assert header[2] == f"Context: {message.role} message" or header[2].startswith(
        f"Context: {message.role} message from "
    )
    assert header[3].startswith("Entities: ")
    assert all(line.isprintable() for line in header)


PIECES = [
    "[GAP:START]\n", "[GAP:CONTENT]\n", "[GAP:END]\n", "From: ", "Context: ", "Entities: ", "Chat: ", "Parents: ",
    "Hints: ", "Version: ", " | Thread: ", "user message from ", '"k" = ', '"', "-", "(", ")", ";", ",", "\n", "{",
    "}", ":", "\\", " ", "0.1.0", '{"pronoun_map": ', '"\\u12"',
]  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=3)), max_size=40).map("".join))
def test_arbitrary_text_parses_or_raises_a_format_error(text):
    for parse in (parse_all, from_json):
        try:
            parse(text)
        except GAPFormatError as exc:
            assert str(exc)


# Surrogate code points, alone and in pairs that are, or are not, written as one character elsewhere.
surrogate_texts = st.lists(
    st.one_of(
        st.text(max_size=4),
        st.integers(0xD800, 0xDFFF).map(chr),
        st.sampled_from(["\ud83d", "\ude00", "\ud83d\ude00", "\ude00\ud83d", "🙂", "\\ud83d"]),
    ),
    max_size=8,
).map("".join)


def distinct_once_joined(mapping: dict[str, object]) -> bool:
    """Whether the keys stay distinct once their surrogate pairs are joined (else the message refuses them)."""
    return len({join_surrogates(key) for key in mapping}) == len(mapping)


surrogate_messages = st.builds(
    WrappedMessage,
    content=surrogate_texts,
    platform=surrogate_texts,
    chat_id=surrogate_texts,
    model=st.none() | surrogate_texts,
    thread_id=st.none() | surrogate_texts,
    parent_messages=st.lists(surrogate_texts, max_size=3).map(tuple),
    entities=st.dictionaries(
        surrogate_texts.filter(bool),
        st.builds(Entity, type=surrogate_texts, value=st.none() | surrogate_texts),
        max_size=3,
    ).filter(distinct_once_joined),
    transform_hints=st.none()
    | st.builds(
        TransformHints,
        pronoun_map=st.dictionaries(surrogate_texts, surrogate_texts, max_size=3).filter(distinct_once_joined),
    ),
)


@settings(max_examples=300)
@given(surrogate_messages)
def test_surrogates_survive_both_round_trips(message):
    """A high surrogate followed by a low one is one character to JSON (the escapes ``\\ud83d\\ude00``
    read back as 😀): the markdown header wrote a message's two apart as two escapes and read back one
    character, so the message changed. Pairs are joined when the message is made; lone ones stay."""
    assert from_markdown(to_markdown(message)) == message
    assert from_json(to_json(message)) == message
    assert all(line.isprintable() for line in to_markdown(message).split("\n[GAP:CONTENT]\n")[0].split("\n"))


def test_a_surrogate_pair_is_one_character_in_the_message():
    message = WrappedMessage("\ud83d\ude00 \ud800", "p\ud83d\ude00", "c", entities={"k\ud83d\ude00": Entity("t")})
    assert message.content == "😀 \ud800" and message.platform == "p😀" and list(message.entities) == ["k😀"]


@settings(max_examples=200)
@given(surrogate_messages)
def test_gap_json_with_lone_surrogates_is_still_utf8(message):
    """A lone surrogate was written raw, so the JSON of a message read from a ``"\\ud800"`` escape could not
    be written to a file or a terminal (``gtl gap parse`` failed); it is written as that escape."""
    data = to_json(message).encode("utf-8")
    assert from_json(data) == message


def test_two_keys_that_are_one_once_pairs_are_joined_are_refused_not_merged():
    with pytest.raises(ValueError, match="same text once their surrogate pairs are joined"):
        WrappedMessage("x", "p", "c", entities={"\ud83d\ude00": Entity("t"), "😀": Entity("u")})
    with pytest.raises(ValueError, match="same text once their surrogate pairs are joined"):
        TransformHints(pronoun_map={"\ud83d\ude00": "a", "😀": "b"})
    document = '{"gap_version":"0.1.0","message":{"content":"x","source":{"platform":"p","chat_id":"c"},'
    document += '"context":{"entities":{"\ud83d\ude00":{},"😀":{}}}}}'
    with pytest.raises(GAPFormatError, match="surrogate pairs"):
        from_json(document)
