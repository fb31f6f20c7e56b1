"""GAP JSON as people hand it over: with a byte-order mark, with escaped keys, beyond a limit."""

from __future__ import annotations

import json
import sys

import pytest

from gtl_nb.gap import GAPFormatError, from_json, to_json, wrap_message
from gtl_nb.gap.errors import GAPLimitError
from gtl_nb.gap.jsonfmt import is_meant_as_gap_json
from gtl_nb.gap.limits import MAX_JSON_DEPTH

SENT = wrap_message("The system needs an index.", "claude.ai", "c-1", thread_id="perf")
DOCUMENT = to_json(SENT)
ESCAPED_KEY = DOCUMENT.replace('"gap_version"', '"gap\\u005fversion"', 1)
THREAD = '"thread_id":"perf"'
DEEP = DOCUMENT.replace(THREAD, '"thread_id":' + "[" * 70 + "]" * 70, 1)
LONG_NUMBER = DOCUMENT.replace(THREAD, '"thread_id":' + "1" * 100_000, 1)


def test_the_fixtures_are_what_they_say():
    assert ESCAPED_KEY != DOCUMENT and DEEP != DOCUMENT and LONG_NUMBER != DOCUMENT


def test_a_byte_order_mark_is_dropped_from_text_as_from_bytes():
    assert from_json("\ufeff" + DOCUMENT) == SENT
    assert from_json(("\ufeff" + DOCUMENT).encode("utf-8")) == SENT


def test_an_escaped_key_reads_as_the_key_it_decodes_to():
    assert from_json(ESCAPED_KEY) == SENT
    every_letter = "".join(f"\\u{ord(c):04x}" for c in "gap_version")
    assert from_json(DOCUMENT.replace('"gap_version"', f'"{every_letter}"', 1)) == SENT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (DEEP, f"nested deeper than {MAX_JSON_DEPTH}"),
        (LONG_NUMBER, f"a number longer than {sys.get_int_max_str_digits()} digits"),
    ],
    ids=["deep", "long-number"],
)
def test_a_document_beyond_a_limit_is_a_limit_error_naming_it(text, reason):
    with pytest.raises(GAPLimitError, match=reason):
        from_json(text)
    assert issubclass(GAPLimitError, GAPFormatError)  # callers catching format errors still catch it


def test_malformed_json_is_a_format_error_but_no_limit_error():
    with pytest.raises(GAPFormatError) as raised:
        from_json(DOCUMENT[:-1])
    assert not isinstance(raised.value, GAPLimitError)


@pytest.mark.parametrize(
    "text",
    [
        DOCUMENT,
        ESCAPED_KEY,
        DEEP,
        LONG_NUMBER,
        "\ufeff" + DEEP,
        "  \n" + DEEP,
        ESCAPED_KEY.replace(THREAD, '"thread_id":' + "[" * 70 + "]" * 70, 1),
        # gap_version not first, a number too long: decoded with its numbers left as they are
        json.dumps({"message": {}, "gap_version": "0.1.0"}).replace("{}", '{"n": ' + "9" * 5000 + "}"),
    ],
    ids=["plain", "escaped", "deep", "long-number", "bom-deep", "blank-deep", "escaped-deep", "key-later"],
)
def test_gap_documents_are_recognised_even_beyond_a_limit(text):
    assert is_meant_as_gap_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"question": "what is a gap_version?"}',
        json.dumps({"examples": [{"gap_version": "0.1.0"}]}),
        '{"examples": ' + "[" * 70 + "]" * 70 + ', "gap_version": 1}',  # too deep, and gap_version not first
        '{"gap\\u005fversio": 1}',
        '{"gap\\u00": 1}',
        "[" + DOCUMENT + "]",
        "gap_version",
    ],
)
def test_other_json_and_text_are_not_taken_for_gap_documents(text):
    assert not is_meant_as_gap_json(text)


def test_a_pronoun_map_of_more_than_its_limit_is_refused_where_it_is_read():
    """Each word a pronoun_map names is one more pass over the content when it is transformed: a pasted
    block with sixteen thousand took 36 s over 389 KB. More than ``MAX_PRONOUN_MAP`` is refused by both
    readers (and by ``TransformHints`` itself); the limit itself is read and transformed."""
    from gtl_nb.gap import from_markdown, transform_for_platform, transform_pronouns
    from gtl_nb.gap.limits import MAX_PRONOUN_MAP
    from gtl_nb.gap.model import TransformHints

    def block(count: int) -> str:
        hints = json.dumps({"pronoun_map": {f"w{i}": "x" for i in range(count)}})
        return f"[GAP:START]\nFrom: p\nContext: user\nHints: {hints}\n[GAP:CONTENT]\nw1 w2\n[GAP:END]"

    with pytest.raises(GAPFormatError, match=f"at most {MAX_PRONOUN_MAP} entries, not {MAX_PRONOUN_MAP + 1}"):
        from_markdown(block(MAX_PRONOUN_MAP + 1))
    over = json.loads(to_json(wrap_message("hi", platform="p", chat_id="c")))
    over["message"]["transform_hints"]["pronoun_map"] = {f"w{i}": "x" for i in range(MAX_PRONOUN_MAP + 1)}
    with pytest.raises(GAPLimitError, match="pronoun_map"):
        from_json(json.dumps(over))
    with pytest.raises(ValueError, match="at most"):
        TransformHints(pronoun_map={f"w{i}": "x" for i in range(MAX_PRONOUN_MAP + 1)})
    with pytest.raises(ValueError, match="at most"):  # called directly, as the public API allows
        transform_pronouns("w1 w2", "user", pronoun_map={f"w{i}": "x" for i in range(MAX_PRONOUN_MAP + 1)})
    assert "x x" in transform_for_platform(from_markdown(block(MAX_PRONOUN_MAP)), "generic")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (DOCUMENT[:-2] + ',"content":"forged"}}', "content"),  # message.content twice
        (DOCUMENT.replace(THREAD, THREAD + ',"thread_id":"other"', 1), "thread_id"),
        (DOCUMENT.replace('"gap_version"', '"gap\\u005fversion":"0.1.0","gap_version"', 1), "gap_version"),
    ],
)
def test_a_key_twice_in_one_object_is_refused_not_read_last_wins(text, key):
    """``json`` keeps the last of two values and other parsers the first: a document saying
    ``content`` twice is two different messages to two readers, so neither value is taken."""
    with pytest.raises(GAPFormatError, match=f'key "{key}" appears twice'):
        from_json(text)


def test_a_key_twice_in_a_markdown_hints_object_is_refused():
    from gtl_nb.gap import from_markdown

    block = '[GAP:START]\nFrom: p\nContext: user\nHints: {"pronoun_map":{"I":"a","I":"b"}}\n[GAP:CONTENT]\nx\n[GAP:END]'
    with pytest.raises(GAPFormatError, match='line 4: Hints: the key "I" appears twice'):
        from_markdown(block)
