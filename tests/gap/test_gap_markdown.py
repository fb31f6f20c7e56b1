"""The GAP markdown block: exact form, defaults, escaping, several blocks and malformed input."""

from __future__ import annotations

import pytest

from gtl_nb.gap import (
    Entity,
    GAPFormatError,
    TransformHints,
    WrappedMessage,
    from_markdown,
    parse_all,
    to_markdown,
    update_entity,
    wrap_message,
)
from gtl_nb.gap.markdown import escape_content, unescape_content


def full_message() -> WrappedMessage:
    wrapped = wrap_message(
        "The system needs optimization",
        "claude.ai",
        "session_123",
        model="claude-3-opus",
        timestamp="2024-05-01T12:00:00+00:00",
        thread_id="t1",
        parent_messages=["m0", "m 1"],
    )
    return update_entity(wrapped, "postgres", "PostgreSQL 14.5", entity_type="database")


def test_to_markdown_writes_the_spec_lines_then_the_optional_ones():
    assert to_markdown(full_message()) == "\n".join(
        [
            "[GAP:START]",
            "From: claude.ai | Thread: t1",
            "Context: assistant message from 2024-05-01T12:00:00+00:00",
            'Entities: "the_system" = -, "postgres" = PostgreSQL 14.5 (database; session_123)',
            "Chat: session_123",
            "Model: claude-3-opus",
            "Parents: m0, m 1",
            "[GAP:CONTENT]",
            "The system needs optimization",
            "[GAP:END]",
        ]
    )


def test_non_default_hints_are_written_as_a_json_object():
    wrapped = wrap_message("x", "p", "c", transform_hints=TransformHints("past", None, {"I": "Claude"}))
    text = to_markdown(wrapped)
    assert 'Hints: {"maintain_tense": "past", "pronoun_map": {"I": "Claude"}}' in text.splitlines()
    assert from_markdown(text) == wrapped


def test_a_block_with_only_the_spec_lines_parses_with_defaults():
    text = (
        "[GAP:START]\n"
        "From: chatgpt | Thread: -\n"
        "Context: user message from 2024-01-02T03:04:05Z\n"
        'Entities: "the_system" = PostgreSQL 14.5 cluster, "the_database" = -\n'
        "[GAP:CONTENT]\n"
        "Why is the system slow?\n"
        "[GAP:END]\n"
    )
    wrapped = from_markdown(text)
    assert wrapped == WrappedMessage(
        content="Why is the system slow?",
        platform="chatgpt",
        chat_id="",
        role="user",
        timestamp="2024-01-02T03:04:05Z",
        entities={
            "the_system": Entity("user_defined", "PostgreSQL 14.5 cluster", None),
            "the_database": Entity("ambiguous_reference", None, None),
        },
        transform_hints=TransformHints.for_role("user"),
    )


def test_lenient_forms_are_accepted():
    text = (
        "[GAP:START]\n"
        "from:   claude.ai\n"
        "Context: Assistant message\n"
        "Entities:\n"
        "X-Future-Field: ignored\n"
        "\n"
        "[GAP:CONTENT]\n"
        "[GAP:END]"
    )
    wrapped = from_markdown(text)
    assert (wrapped.platform, wrapped.thread_id, wrapped.role, wrapped.timestamp) == ("claude.ai", None, "assistant",
                                                                                      None)  # fmt: skip
    assert wrapped.entities == {} and wrapped.content == ""


def test_values_that_need_it_are_quoted():
    wrapped = WrappedMessage(
        content="c",
        platform="a | b",
        chat_id="-",
        thread_id="",
        timestamp="2024-05-01 12:00:00Z",
        model="line\nbreak",
        parent_messages=("x,y", "none", '"q"'),
        entities={"k": Entity("weird; type", "v", "has (parens)")},
    )
    lines = to_markdown(wrapped).splitlines()
    assert lines[1] == 'From: "a | b" | Thread: ""'
    assert lines[2] == "Context: assistant message from 2024-05-01 12:00:00Z"  # (an ISO-8601 time needs no quotes)
    assert lines[3] == 'Entities: "k" = v ("weird; type"; "has (parens)")'
    assert 'Chat: "-"' in lines and 'Model: "line\\nbreak"' in lines
    assert 'Parents: "x,y", "none", "\\"q\\""' in lines
    assert from_markdown("\n".join(lines)) == wrapped


def test_markers_in_content_are_escaped_and_restored():
    content = "before\n[GAP:END]\n[GAP:START] inline [GAP:CONTENT]\nalready [\\GAP:END] and [\\\\GAP:START]"
    text = to_markdown(wrap_message(content, "p", "c", detect=False))
    body = text.split("[GAP:CONTENT]\n", 1)[1]
    assert body.count("[GAP:") == 1  # only the closing marker itself
    assert "[\\GAP:END]" in body and "[\\\\GAP:END]" in body and "[\\\\\\GAP:START]" in body
    assert from_markdown(text).content == content


@pytest.mark.parametrize(
    "content",
    ["", "\n", "[GAP:END]", "[\\GAP:END]", "x[GAP:START]y", "[[GAP:CONTENT]]", "\\[GAP:END]", "[\\\\\\GAP:END]"],
)
def test_escaping_is_exactly_reversible(content):
    escaped = escape_content(content)
    assert unescape_content(escaped) == content
    assert not any(marker in escaped for marker in ("[GAP:START]", "[GAP:CONTENT]", "[GAP:END]"))


def test_parse_all_returns_every_block_and_ignores_prose():
    first = wrap_message("one", "claude.ai", "m1", thread_id="t")
    second = wrap_message("two\nlines", "chatgpt", "m2", thread_id="t", parent_messages=["m1"], role="user")
    text = f"Notes before.\n\n{to_markdown(first)}\nsome prose\n{to_markdown(second)}\ntrailing text"
    assert parse_all(text) == [first, second]
    assert parse_all("no blocks here") == []


def test_crlf_files_parse_to_the_same_message():
    wrapped = wrap_message("line one\nline two", "claude.ai", "m1", detect=False)
    assert from_markdown(to_markdown(wrapped).replace("\n", "\r\n")).content == "line one\r\nline two"
    assert from_markdown(to_markdown(wrapped).replace("\n", "\r\n")).platform == "claude.ai"


def test_from_markdown_wants_exactly_one_block():
    with pytest.raises(GAPFormatError, match="no \\[GAP:START\\] block"):
        from_markdown("nothing")
    block = to_markdown(wrap_message("x", "p", "c"))
    with pytest.raises(GAPFormatError, match="2 blocks"):
        from_markdown(block + "\n" + block)


GOOD_HEADER = "From: p | Thread: -\nContext: user message from -\nEntities: none\n"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("intro\n[GAP:START]\n" + GOOD_HEADER + "[GAP:CONTENT]\nbody\n", 2, "has no [GAP:END]"),
        ("[GAP:START]\n" + GOOD_HEADER + "[GAP:CONTENT]\nbody\n[GAP:START]\n", 7, "inside the content"),
        ("[GAP:START]\n" + GOOD_HEADER, 1, "no [GAP:CONTENT] and [GAP:END]"),
        ("x\n[GAP:END]\n", 2, "without a [GAP:START]"),
        ("[GAP:CONTENT]\n", 1, "without a [GAP:START]"),
        ("[GAP:START]\n" + GOOD_HEADER + "[GAP:END]\n", 5, "[GAP:END] before the [GAP:CONTENT]"),
        ("[GAP:START]\n[GAP:START]\n", 2, "a new [GAP:START] before"),
        ("[GAP:START]\n" + GOOD_HEADER + "[GAP:CONTENT]\n[GAP:CONTENT]\n[GAP:END]", 6, "inside the content"),
        ("[GAP:START]\nFrom: p | Thread: -\nno colon here\n[GAP:CONTENT]\n[GAP:END]", 3, "'Key: value'"),
        ("[GAP:START]\nContext: user message from -\n[GAP:CONTENT]\n[GAP:END]", 1, "has no From:"),
        ("[GAP:START]\nFrom: p | Thread: -\n[GAP:CONTENT]\n[GAP:END]", 1, "has no Context:"),
        ("[GAP:START]\nFrom: p | Thread: -\nContext: robot message from -\n[GAP:CONTENT]\n[GAP:END]", 3,
         "role must be"),
        ("[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nEntities: the_system = x\n"
         "[GAP:CONTENT]\n[GAP:END]", 4, "expected a quoted entity key"),
        ('[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nEntities: "a" = "x" "b"\n'
         "[GAP:CONTENT]\n[GAP:END]", 4, "expected ','"),
        ('[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nEntities: "a" = - (t; -), "a" = -\n'
         "[GAP:CONTENT]\n[GAP:END]", 4, "appears twice"),
        ('[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nEntities: "a" = "x (t)\n'
         "[GAP:CONTENT]\n[GAP:END]", 4, "bad quoted value"),
        ("[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nHints: {nope}\n"
         "[GAP:CONTENT]\n[GAP:END]", 4, "expected a JSON object"),
        ('[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nHints: {"pronoun_map": {"I": 1}}\n'
         "[GAP:CONTENT]\n[GAP:END]", 4, "Hints.pronoun_map.I"),
        ("[GAP:START]\nFrom: p | Thread: -\nContext: user message from -\nVersion: 2.0\n"
         "[GAP:CONTENT]\n[GAP:END]", 4, "unsupported GAP version"),
        ("[GAP:START]\nFrom: p | Thread: -\nFrom: q | Thread: -\n[GAP:CONTENT]\n[GAP:END]", 3, "appears twice"),
        ("[GAP:START]\nFrom: - | Thread: -\nContext: user message from -\n[GAP:CONTENT]\n[GAP:END]", 2,
         "cannot be null"),
        ("[GAP:START]\nFrom: p | Thread: t | extra\nContext: user message from -\n[GAP:CONTENT]\n[GAP:END]", 2,
         "unexpected text"),
        ("[GAP:START]\nFrom: p | Thred: t\nContext: user message from -\n[GAP:CONTENT]\n[GAP:END]", 2,
         "expected 'Thread:'"),
    ],
)  # fmt: skip
def test_malformed_blocks_name_the_problem_and_the_line(text, line, fragment):
    with pytest.raises(GAPFormatError) as caught:
        parse_all(text)
    assert caught.value.line == line
    assert f"line {line}" in str(caught.value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_column_is_reported_for_entity_errors():
    text = GOOD_HEADER.replace("Entities: none", 'Entities: "a" = "x" "b"')
    text = f"[GAP:START]\n{text}[GAP:CONTENT]\n[GAP:END]"
    with pytest.raises(GAPFormatError, match="column 21"):
        parse_all(text)


def test_a_later_malformed_block_fails_even_after_good_ones():
    good = to_markdown(wrap_message("x", "p", "c"))
    with pytest.raises(GAPFormatError) as caught:
        parse_all(good + "\n[GAP:START]\nbroken\n")
    assert caught.value.line == good.count("\n") + 2


def test_a_value_left_empty_is_null_where_null_is_allowed():
    """``Thread:`` with nothing after it is what a hand-written header means by no thread: null, as
    ``-`` is (the writer writes an empty string ``""``, so both still round-trip)."""
    block = '[GAP:START]\nFrom: p | Thread:\nContext: user message from -\nEntities: "db" = \nbody\n'
    parsed = from_markdown(block.replace("body\n", "[GAP:CONTENT]\nhi\n[GAP:END]\n"))
    assert parsed.thread_id is None
    assert parsed.entities["db"].value is None and parsed.entities["db"].type == "ambiguous_reference"
    for thread in ("", None, "none", "-"):
        wrapped = wrap_message("hi", "p", "c", thread_id=thread)
        assert from_markdown(to_markdown(wrapped)).thread_id == thread
